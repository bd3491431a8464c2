"""Which published measured training runs the planner can express as plans, and why not the rest.

    python benchmarks/measured_runs.py            # tables (markdown), as in the README
    python benchmarks/measured_runs.py --json     # everything, for machines
    python benchmarks/measured_runs.py --rows     # one line per row: status, plan or reasons

Reads planner/data/validation/measured-2026/ (see SOURCES.md there) through planner.measured; every
row is expressible, incomplete in its source, or blocked by named missing planner features. The target
of "Express today's training runs" is >= 95% of rows expressible, every other one with a named reason.
`--substitute` maps systems the catalog lacks to the nearest catalog system (flagged; for exploring only).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.measured import SOURCES, MeasuredRun, NotExpressed, express_all, planner_features, printed_runs
from planner.measured.reasons import kind
from planner.measured.report import SOURCE_NAMES, markdown, pct, provenance, status, tally


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"measured_runs.py: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--rows", action="store_true", help="one line per row")
    p.add_argument("--source", nargs="+", choices=SOURCES, default=list(SOURCES), help="sources to read")
    p.add_argument("--limit", type=int, default=0, help="only the first N rows of each source (smoke tests)")
    p.add_argument("--substitute", action="store_true", help="map missing systems to the nearest catalog one")
    args = p.parse_args(argv)
    if args.limit < 0:
        p.error(f"--limit must be >= 0, got {args.limit}")
    return args


def load(sources: list[str], limit: int, substitute: bool) -> list[MeasuredRun | NotExpressed]:
    runs = []
    for s in sources:
        rows = printed_runs([s])
        runs += rows[:limit] if limit else rows
    return express_all(runs, substitute)


def tables(results: list[MeasuredRun | NotExpressed]) -> str:
    t = tally(results)
    head = ["source", "rows", "expressible", "incomplete in the source", "blocked by the planner",
            "expressible of complete rows"]
    body = [[(f"{s}: {SOURCE_NAMES[s]}" if s in SOURCE_NAMES else f"**{s}**"), x.rows,
             f"{x.expressible} ({pct(x.share)})", x.source_incomplete, x.planner_blocked, pct(x.share_complete)]
            for s, x in t.items()]
    sources = [s for s in t if s != "all"]
    reasons = t["all"].reasons.most_common()
    rhead = ["reason", "kind", *sources, "all", "rows it alone blocks"]
    rbody = [[r, kind(r), *[t[s].reasons.get(r, 0) for s in sources], n, t["all"].alone.get(r, 0)]
             for r, n in reasons]
    command = " ".join(["python benchmarks/measured_runs.py", *sys.argv[1:]])
    out = [f"Published measured runs expressible as planner plans ({provenance()}; `{command}`)", "",
           markdown(head, body), "",
           "Reasons (rows citing each; a row may cite several; 'alone' = the only reason a row is not expressible):",
           "", markdown(rhead, rbody, right=set(range(2, len(rhead))))]
    combos = Counter(r.reasons for r in results if status(r) == "planner")
    if combos:
        out += ["", "Rows blocked by the planner, by their whole set of reasons (what unlocks them):", "",
                markdown(["missing features", "rows"], [[" + ".join(c), n] for c, n in combos.most_common()])]
    alone = [(r, n) for r, n in t["all"].alone.most_common() if kind(r) == "planner"]
    if alone:
        r, n = alone[0]
        out += ["", f"Most rows unlocked by one feature: {n} rows, by fixing '{r}'."]
    out += ["", f"Planner features found: {', '.join(sorted(planner_features()))}. Target: >= 95% expressible "
            f"(now {pct(t['all'].share)} of all rows, {pct(t['all'].share_complete)} of the rows the sources "
            f"define completely)."]
    return "\n".join(out)


def row_lines(results: list[MeasuredRun | NotExpressed]) -> str:
    lines = []
    for r in results:
        what = (f"{r.plan.describe()} {r.plan.dtype} on {r.cluster.num_gpus}x {r.cluster.gpu.name}"
                if isinstance(r, MeasuredRun) else "; ".join(r.reasons))
        lines.append(f"{r.run.source}[{r.run.row}] {status(r)}: {r.run.label} -> {what}")
    return "\n".join(lines)


def to_json(results: list[MeasuredRun | NotExpressed]) -> dict:
    rows = []
    for r in results:
        d = {"source": r.run.source, "row": r.run.row, "label": r.run.label, "status": status(r),
             "framework": r.run.framework, "step_time_s": r.run.step_time_s, "memory_gib": r.run.memory_gib,
             "notes": list(r.run.notes)}
        if isinstance(r, MeasuredRun):
            d.update(plan=r.plan.to_dict(), model=r.model.name, cluster=r.cluster.name,
                     num_gpus=r.cluster.num_gpus, substitutions=list(r.substitutions))
        else:
            d["reasons"] = list(r.reasons)
        rows.append(d)
    return {"provenance": provenance(), "features": sorted(planner_features()),
            "summary": {s: x.to_json() for s, x in tally(results).items()}, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = load(args.source, args.limit, args.substitute)
    if args.json:
        print(json.dumps(to_json(results), indent=1))
    elif args.rows:
        print(row_lines(results))
    else:
        print(tables(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
