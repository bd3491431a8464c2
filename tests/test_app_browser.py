"""End to end: `streamlit run app.py` in a real headless Chromium (Debian's, driven by Playwright).

Skipped, with the reason printed, where chromium or playwright is missing. Setup:
`apt-get install -y chromium` and `pip install playwright` (Playwright's own browser download is not used).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.browser


def _helpers() -> types.ModuleType:
    """scripts/screenshots.py: server start/stop and the chromium launch, shared with the README shots."""
    path = ROOT / "scripts" / "screenshots.py"
    spec = importlib.util.spec_from_file_location("dashboard_screenshots", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


shots = _helpers()


def test_dashboard_in_headless_chromium(tmp_path: Path) -> None:
    why = shots.missing_requirements()
    if why:
        print(f"skipping the browser test: {why}")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with shots.serve(shots.free_port(), tmp_path / "streamlit.log") as url, sync_playwright() as pw:
        browser = shots.launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            shots.open_app(page, url)  # waits for the Pareto chart to be drawn
            assert page.locator(".js-plotly-plot .scatterlayer .point").count() > 10
            page.get_by_role("tab", name="Pipeline schedule").click()
            shots.wait_for_chart(page, "Predicted pipeline schedule")
            assert page.locator("[data-testid='stException']").count() == 0
            page.get_by_role("tab", name="Plans").click()
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot))
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
