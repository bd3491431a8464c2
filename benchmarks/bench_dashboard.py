"""Dashboard timings in a real headless Chromium (Debian's, driven by Playwright): what a user waits for.

Usage: python benchmarks/bench_dashboard.py [--repeats 5]

Starts `streamlit run app.py` on a free localhost port (scripts/screenshots.py's helpers) and measures,
from the browser's side (the action until the new content is on the page and the script is idle):

- the first table on a cold server (the first session imports the library and searches) and in a new
  session on a warm server (the search is cached);
- an input change (global batch) whose search is not cached yet, and one whose search is;
- a what-if step (one slider step: re-scores one plan in the what-if fragment).

Prints a table of the median, fastest and slowest of each; nothing is asserted (the machine is shared
and times wander), tests/test_app_browser.py checks behaviour, not speed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _shots() -> Any:
    spec = importlib.util.spec_from_file_location("dashboard_screenshots", ROOT / "scripts" / "screenshots.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


shots = _shots()


def timed(action: Callable[[], None], done: Callable[[], None], page: Any) -> float:
    start = time.perf_counter()
    action()
    done()
    shots.wait_idle(page)
    return time.perf_counter() - start


def first_table(page: Any, url: str) -> float:
    return timed(lambda: page.goto(url, wait_until="commit"), lambda: shots.wait_for_table(page), page)


def set_batch(page: Any, batch: int) -> float:
    box = page.get_by_label("Global batch (sequences)")

    def act() -> None:
        box.fill(str(batch))
        box.press("Enter")

    return timed(act, lambda: page.get_by_text(f"global batch {batch} x seq").first.wait_for(timeout=120_000),
                 page)


def whatif_step(page: Any, key: str = "ArrowRight") -> float:
    head = page.locator(".st-key-wi_head")
    before = head.inner_text()
    slider = page.get_by_role("slider", name="Micro-batch")

    def changed() -> None:
        page.wait_for_function("([sel, old]) => { const e = document.querySelector(sel); "
                               "return e && e.innerText !== old; }", arg=[".st-key-wi_head", before], timeout=60_000)

    return timed(lambda: slider.press(key), changed, page)


def run(repeats: int) -> list[tuple[str, list[float]]]:
    from playwright.sync_api import sync_playwright

    results: dict[str, list[float]] = {}
    log = Path(tempfile.gettempdir()) / "bench-dashboard.streamlit.log"
    with shots.serve(shots.free_port(), log) as url, sync_playwright() as pw:
        browser = shots.launch_chromium(pw)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1000})
            results["first table, cold server (imports + search)"] = [first_table(page, url)]
            warm = []
            for _ in range(repeats):
                fresh = browser.new_page(viewport={"width": 1440, "height": 1000})
                warm.append(first_table(fresh, url))
                fresh.close()
            results["first table, new session (search cached)"] = warm
            batches = [256, 128, 1024, 64, 2048, 32, 4096][:repeats]
            results["input change, search not cached"] = [set_batch(page, b) for b in batches]
            results["input change, search cached"] = [set_batch(page, b) for b in [512, *batches][:repeats]]
            page.get_by_role("tab", name="What-if").click()
            page.locator(".st-key-wi_head").wait_for(timeout=60_000)
            shots.wait_idle(page)
            steps = []
            for i in range(repeats):
                steps.append(whatif_step(page, "ArrowRight" if i % 2 == 0 else "ArrowLeft"))
            results["what-if step (one slider step)"] = steps
        finally:
            browser.close()
    log.unlink(missing_ok=True)
    return list(results.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    why = shots.missing_requirements()
    if why:
        print(f"bench_dashboard: {why}", file=sys.stderr)
        return 2
    rows = run(max(1, args.repeats))
    print("| measurement | median s | fastest s | slowest s | runs |")
    print("|---|---:|---:|---:|---:|")
    for name, times in rows:
        print(f"| {name} | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} | {len(times)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
