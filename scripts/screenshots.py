"""Screenshots of the dashboard's main views for the README (docs/img/*.png).

Usage: python scripts/screenshots.py [--out docs/img] [--measured RUNS_FOLDER]

Starts the dashboard as `planner dashboard` does on a free localhost port, opens it in Debian's
headless Chromium through Playwright (Playwright's own browser download is not needed), clicks
through the tabs and saves one PNG per view. The helpers (`free_port`, `serve`, `launch_chromium`,
`wait_for_chart`, `wait_idle`, `wait_for_table`) are shared with tests/test_app_browser.py and
benchmarks/bench_dashboard.py.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# (file name, tab, URL query, page height): the default problem, a pipelined one, and one with many
# micro-batches for the schedule's overview
PIPELINED = "?model=llama2-70b&global_batch=32&pp=4&schedules=1f1b,gpipe"
MANY = "?model=llama2-70b&global_batch=1024&pp=8"
VIEWS = (("plans", "Plans", "", 1100), ("pareto", "Pareto front", "", 900), ("selected", "Selected plan", "", 1150),
         ("compare", "Compare", PIPELINED, 1500), ("schedule", "Pipeline schedule", PIPELINED, 760),
         ("schedule-overview", "Pipeline schedule", MANY, 1250), ("whatif", "What-if", PIPELINED, 1250))
MEASURED = ROOT / "examples" / "validation" / "cpu-2ranks"


def missing_requirements() -> str | None:
    """Why a browser run cannot happen here (None when chromium and playwright are both present)."""
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        return f"chromium not found at {CHROMIUM} (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(port: int, log: Path, timeout: float = 60.0, app: Path | None = None) -> Iterator[str]:
    """Serve the dashboard as `planner dashboard` does (streamlit run app.py, libraries imported
    before the first visitor) on 127.0.0.1:port until the block ends; yields the URL. `app` serves
    another Streamlit script the same way (the benchmark's bare reference page)."""
    from planner.dashboard_cmd import app_path, dashboard_command

    cmd = [*dashboard_command("127.0.0.1", port), "--server.fileWatcherType", "none"]
    if app is not None:
        cmd[cmd.index(str(app_path()))] = str(app)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}: {log.read_text()[-2000:]}")
            health = f"{url}/_stcore/health"
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=2) as r:
                if r.read().strip() == b"ok":
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"streamlit did not become healthy in {timeout:.0f} s")
            time.sleep(0.5)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def launch_chromium(pw: Any) -> Any:
    """Debian's chromium, headless, with background networking off."""
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def wait_for_chart(page: Any, title: str, timeout_ms: int = 90_000) -> None:
    """Wait until a rendered plotly chart with this title is on the page."""
    page.wait_for_selector(f".js-plotly-plot .gtitle:has-text('{title}')", timeout=timeout_ms)


def wait_idle(page: Any, timeout_ms: int = 120_000) -> None:
    """Wait until the app script is not running (Streamlit's status widget shows while it runs)."""
    page.wait_for_function("() => { const s = document.querySelector(\"[data-testid='stApp']\"); "
                           "return s && s.getAttribute('data-test-script-state') === 'notRunning'; }",
                           timeout=timeout_ms)


def wait_for_table(page: Any, timeout_ms: int = 120_000) -> None:
    """Wait until the ranked plans table and the search summary are on the page."""
    page.locator("[data-testid='stDataFrame']").first.wait_for(timeout=timeout_ms)
    page.get_by_text("plans in", exact=False).first.wait_for(timeout=timeout_ms)


def open_app(page: Any, url: str) -> None:
    page.goto(url, wait_until="domcontentloaded")
    wait_for_table(page)
    wait_idle(page)
    page.wait_for_timeout(500)  # let the remaining charts finish drawing


def capture(out_dir: Path, measured: Path | None = MEASURED, width: int = 1500) -> list[Path]:
    """Save one screenshot per main view (and of the Measured view reading `measured`)."""
    from playwright.sync_api import sync_playwright

    out_dir.mkdir(parents=True, exist_ok=True)
    saved = []
    log = Path(tempfile.gettempdir()) / "dashboard-screenshots.streamlit.log"
    with serve(free_port(), log) as url, sync_playwright() as pw:
        browser = launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": width, "height": 1000})
            for name, tab, query, height in VIEWS:
                page.set_viewport_size({"width": width, "height": height})
                joiner = "&" if query else "?"
                page.goto(url + "/" + query + f"{joiner}view={tab.replace(' ', '+')}", wait_until="domcontentloaded")
                ready = {"whatif": ".st-key-wi_head", "plans": "[data-testid='stDataFrame']"}.get(
                    name, ".js-plotly-plot")
                page.locator(ready).first.wait_for(timeout=120_000)
                wait_idle(page)
                if name == "whatif":  # one step up the pp slider, so the deltas show
                    page.get_by_role("slider", name="Pipeline stages (pp)").press("ArrowRight")
                    page.wait_for_selector(".st-key-wi_head :text('micro-batches per step')")
                    wait_idle(page)
                page.wait_for_timeout(1500)
                path = out_dir / f"dashboard-{name}.png"
                page.screenshot(path=str(path))
                saved.append(path)
            if measured is not None:
                page.set_viewport_size({"width": width, "height": 1500})
                page.goto(url + "/?view=Measured", wait_until="domcontentloaded")
                box = page.get_by_label("...or a folder to scan (on this machine)")
                inside = measured.resolve().is_relative_to(ROOT)  # shown relative to the served checkout
                box.fill(str(measured.resolve().relative_to(ROOT)) if inside else str(measured))
                box.press("Enter")
                wait_for_chart(page, "Step time: predicted vs measured")
                wait_idle(page)
                page.wait_for_timeout(1500)
                path = out_dir / "dashboard-measured.png"
                page.screenshot(path=str(path))
                saved.append(path)
        finally:
            browser.close()
    log.unlink(missing_ok=True)
    return saved


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--measured", type=Path, default=MEASURED,
                    help="a folder of plan + measured.json / validation.json files for the Measured view "
                         "(default: examples/validation/cpu-2ranks)")
    args = ap.parse_args()
    why = missing_requirements()
    if why:
        print(f"screenshots: {why}", file=sys.stderr)
        return 2
    for p in capture(args.out, args.measured):
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
