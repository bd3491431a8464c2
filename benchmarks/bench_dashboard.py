"""Dashboard timings in a real headless Chromium (Debian's, driven by Playwright): what a user waits for.

Usage: python benchmarks/bench_dashboard.py [--repeats 5]

Serves the dashboard as `planner dashboard` does (scripts/screenshots.py's helpers) on a free
localhost port and measures, from the browser's side (the action until the new content is on the
page and the script is idle):

- the first table on a fresh server (the first session runs the default search), and in a new
  session on a running server (the search is cached): on a first visit (a new browser profile, so
  Streamlit's JavaScript is loaded and compiled again) and in a new tab of a browser
  that has them cached;
- an input change (global batch) whose search is not cached yet, and one whose search is;
- a what-if step (one step of the pipeline-stages slider on the default problem's best plan:
  re-scores one plan in the what-if fragment).

In the same run it serves a bare Streamlit page the same way (a title, a 10-row table and one line of
text: what any Streamlit dashboard pays before drawing anything of its own) and measures its first
table likewise; the table gives each first-table wait as a ratio to that floor.

Beside each wait it prints the server's share (the page script's or the what-if fragment's own run
time, which app.py logs when PLANNER_DASHBOARD_TIMING is set); the rest is the browser drawing and
the transport. It also prints the load average: on a shared machine the browser's share grows with
it. Nothing is asserted (times wander); tests/test_app_browser.py checks behaviour, not speed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
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


class ServerLog:
    """The `dashboard-timing <what> <seconds>` lines the server wrote since the last read."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def runs(self, what: str) -> list[float]:
        text = self.path.read_text(errors="replace")
        new, self.offset = text[self.offset:], len(text)
        return [float(line.split()[2]) for line in new.splitlines()
                if line.startswith("dashboard-timing ") and line.split()[1] == what]


def timed(action: Callable[[], None], done: Callable[[], None], page: Any, log: ServerLog,
          what: str = "page") -> tuple[float, float]:
    """(seconds the user waits, seconds the server's runs took) for one action."""
    log.runs(what)
    start = time.perf_counter()
    action()
    done()
    shots.wait_idle(page)
    wait = time.perf_counter() - start
    return wait, sum(log.runs(what))


def first_table(page: Any, url: str, log: ServerLog) -> tuple[float, float]:
    return timed(lambda: page.goto(url, wait_until="commit"), lambda: shots.wait_for_table(page), page, log)


def set_batch(page: Any, batch: int, log: ServerLog) -> tuple[float, float]:
    box = page.get_by_label("Global batch (sequences)")

    def act() -> None:
        box.fill(str(batch))
        box.press("Enter")

    return timed(act, lambda: page.get_by_text(f"global batch {batch} x seq").first.wait_for(timeout=120_000),
                 page, log)


def whatif_step(page: Any, key: str, log: ServerLog) -> tuple[float, float]:
    before = page.locator(".st-key-wi_head").inner_text()
    slider = page.get_by_role("slider", name="Pipeline stages (pp)")

    def changed() -> None:
        page.wait_for_function("([sel, old]) => { const e = document.querySelector(sel); "
                               "return e && e.innerText !== old; }", arg=[".st-key-wi_head", before], timeout=60_000)

    return timed(lambda: slider.press(key), changed, page, log, "what-if")


BARE_PAGE = """import pandas as pd
import streamlit as st

st.title("Parallelism planner")
st.dataframe(pd.DataFrame({"plan": [f"plan {i}" for i in range(10)], "step s": [1.0 + i for i in range(10)]}))
st.write("searched 0 plans in 0.00 s")
"""


def bare_floor(repeats: int) -> dict[str, list[tuple[float, float]]]:
    """First-table waits of the bare reference page (BARE_PAGE), measured as the dashboard's are."""
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="bench-dashboard-bare-"))
    app, path = folder / "bare.py", folder / "bare.log"
    app.write_text(BARE_PAGE)
    out: dict[str, list[tuple[float, float]]] = {"first visit": [], "new tab": []}
    with shots.serve(shots.free_port(), path, app=app) as url, sync_playwright() as pw:
        browser = shots.launch_chromium(pw)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1000})
            page = context.new_page()
            _bare_table(page, url)  # the server's first session, as the dashboard's fresh-server row
            for _ in range(repeats):
                other = browser.new_page(viewport={"width": 1440, "height": 1000})
                out["first visit"].append((_bare_table(other, url), 0.0))
                other.close()
                tab = context.new_page()
                out["new tab"].append((_bare_table(tab, url), 0.0))
                tab.close()
        finally:
            browser.close()
    for f in (app, path):
        f.unlink(missing_ok=True)
    folder.rmdir()
    return out


def _bare_table(page: Any, url: str) -> float:
    start = time.perf_counter()
    page.goto(url, wait_until="commit")
    shots.wait_for_table(page)
    shots.wait_idle(page)
    return time.perf_counter() - start


def run(repeats: int) -> list[tuple[str, list[tuple[float, float]]]]:
    from playwright.sync_api import sync_playwright

    results: dict[str, list[tuple[float, float]]] = {}
    path = Path(tempfile.gettempdir()) / f"bench-dashboard-{os.getpid()}.streamlit.log"
    os.environ["PLANNER_DASHBOARD_TIMING"] = "1"
    with shots.serve(shots.free_port(), path) as url, sync_playwright() as pw:
        log = ServerLog(path)
        browser = shots.launch_chromium(pw)
        try:
            context = browser.new_context(viewport={"width": 1440, "height": 1000})
            page = context.new_page()
            results["first table, fresh server (the search runs)"] = [first_table(page, url, log)]
            fresh, tabs = [], []
            for _ in range(repeats):
                other = browser.new_page(viewport={"width": 1440, "height": 1000})  # a first visit
                fresh.append(first_table(other, url, log))
                other.close()
                tab = context.new_page()  # a link opened in a browser that has the page's scripts cached
                tabs.append(first_table(tab, url, log))
                tab.close()
            results["first table, new session, first visit (search cached)"] = fresh
            results["first table, new tab, scripts cached (search cached)"] = tabs
            batches = [256, 128, 1024, 64, 2048, 32, 4096][:repeats]
            results["input change, search not cached"] = [set_batch(page, b, log) for b in batches]
            results["input change, search cached"] = [set_batch(page, b, log) for b in [*batches[:repeats - 1], 512]]
            page.get_by_role("tab", name="What-if").click()
            page.locator(".st-key-wi_head").wait_for(timeout=60_000)
            shots.wait_idle(page)
            results["what-if step (one slider step)"] = [
                whatif_step(page, "ArrowRight" if i % 2 == 0 else "ArrowLeft", log) for i in range(repeats)]
        finally:
            browser.close()
    path.unlink(missing_ok=True)
    return list(results.items())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    why = shots.missing_requirements()
    if why:
        print(f"bench_dashboard: {why}", file=sys.stderr)
        return 2
    load_before = os.getloadavg()[0]
    repeats = max(1, args.repeats)
    rows = run(repeats)
    floor = bare_floor(repeats)
    load_after = os.getloadavg()[0]
    floors = {"first table, new session, first visit (search cached)": statistics.median(
        w for w, _ in floor["first visit"]),
              "first table, new tab, scripts cached (search cached)": statistics.median(
        w for w, _ in floor["new tab"])}
    floors["first table, fresh server (the search runs)"] = floors[
        "first table, new session, first visit (search cached)"]
    rows += [("bare Streamlit page (title, 10-row table), first visit", floor["first visit"]),
             ("bare Streamlit page (title, 10-row table), new tab", floor["new tab"])]
    print(f"{os.cpu_count()} CPUs; load average {load_before:.1f} before, {load_after:.1f} after")
    print("| measurement | wait, median s | fastest s | slowest s | server run, median s | runs | x bare page |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, pairs in rows:
        waits, server = [w for w, _ in pairs], [s for _, s in pairs]
        ratio = f"{statistics.median(waits) / floors[name]:.2f}" if name in floors else "-"
        print(f"| {name} | {statistics.median(waits):.2f} | {min(waits):.2f} | {max(waits):.2f} | "
              f"{statistics.median(server):.3f} | {len(pairs)} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
