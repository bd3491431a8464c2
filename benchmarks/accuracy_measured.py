"""How close the planner's predictions are to published measured GPU training runs.

    python benchmarks/accuracy_measured.py          # tables (markdown), as in the README
    python benchmarks/accuracy_measured.py --json   # every row and summary, for machines
    python benchmarks/accuracy_measured.py --rows   # one line per predicted row
    python benchmarks/accuracy_measured.py --write-record   # also store every row as the track record
                                                            # `planner explain` prints (planner.track_record)

Every expressible run with a measured step time (benchmarks/measured_runs.py says which and why not the
rest) is predicted under its printed configuration, once however many tables print it
(`planner.measured.reprints`), both by the closed form (`planner.cost.estimate`) and
by the step simulation the search re-ranks with (`planner.simulate.simulate_plans`). Error =
(predicted - measured) / measured; MAPE = mean |error|, bias = mean error, worst = the largest |error|.
Buckets follow "Accuracy on measured GPU runs" (issue 14): sequence length, model size (total parameters
of the model as run, proxies included), TP width, GPU, framework, precision. Memory is compared on the
definition each source measured (planner.measured.accuracy). Targets (issue 14): MAPE <= 8%, |bias| <= 3%,
every sequence-length and model-size bucket <= 12%, memory MAPE <= 10%.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.framework import framework_root
from planner.io import atomic_write_text
from planner.measured import SOURCES, MeasuredRun, distinct, express_all, printed_runs
from planner.measured.accuracy import BUCKET_ORDER, BUCKETS, Prediction, by_bucket, predict, summarise
from planner.measured.report import SOURCE_NAMES, markdown, pct, provenance
from planner.track_record import RECORD_FILE, RecordRow
from planner.track_record import to_json as record_json

RECORD_PATH = Path(__file__).resolve().parents[1] / "planner" / "data" / RECORD_FILE

MEMORY_DEFINITIONS = {
    "reserved": "torch max reserved (caching allocator), max over GPUs; predicted reserved, less the runtime reserve",
    "device": "nvidia-smi (whole process), max over GPUs; predicted reserved peak with the runtime reserve",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"accuracy_measured.py: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--rows", action="store_true", help="one line per predicted row")
    p.add_argument("--source", nargs="+", choices=SOURCES, default=list(SOURCES), help="sources to read")
    p.add_argument("--limit", type=int, default=0, help="only the first N rows of each source (smoke tests)")
    p.add_argument("--substitute", action="store_true", help="map missing systems to the nearest catalog one")
    p.add_argument("--write-record", action="store_true",
                   help=f"write every predicted row to planner/data/{RECORD_FILE} (all sources, no --limit)")
    args = p.parse_args(argv)
    if args.limit < 0:
        p.error(f"--limit must be >= 0, got {args.limit}")
    if args.write_record and (args.limit or args.substitute or set(args.source) != set(SOURCES)):
        p.error("--write-record records every source's expressible runs: drop --limit, --source and --substitute")
    return args


def expressible(sources: list[str], limit: int, substitute: bool) -> tuple[list[MeasuredRun], int, int]:
    """The expressible runs of the sources' rows, each run once; the rows read; the reprints left out."""
    rows = []
    for s in sources:
        printed = printed_runs([s])
        rows += printed[:limit] if limit else printed
    once = distinct(rows)
    results = express_all(once.runs, substitute)
    return [r for r in results if isinstance(r, MeasuredRun)], len(rows), len(once.reprints)


def _errors(preds: list[Prediction], simulated: bool = False) -> list[tuple[float, str]]:
    return [(p.sim_error if simulated else p.error, p.run.run.label) for p in preds]


def source_table(preds: list[Prediction], runs: list[MeasuredRun]) -> str:
    head = ["source", "rows predicted", "MAPE", "bias", "worst row (error)", "simulated MAPE", "simulated bias"]
    body = []
    for s in [*SOURCES, "all"]:
        ps = preds if s == "all" else [p for p in preds if p.run.source == s]
        if not ps and s != "all":
            continue
        est, sim = summarise(_errors(ps)), summarise(_errors(ps, True))
        worst = f"{est.worst_label} ({pct(est.worst, True)})" if ps else "-"
        body.append([s if s != "all" else "**all**", est.rows, pct(est.mape), pct(est.bias, True), worst,
                     pct(sim.mape), pct(sim.bias, True)])
    return markdown(head, body, right={1, 2, 3, 5, 6})


def bucket_tables(preds: list[Prediction]) -> str:
    out = []
    for name, key in BUCKETS.items():
        est = by_bucket(preds, key, order=BUCKET_ORDER.get(name))
        sim = by_bucket(preds, key, simulated=True, order=BUCKET_ORDER.get(name))
        rows = [[k, v.rows, pct(v.mape), pct(v.bias, True), pct(sim[k].mape), pct(sim[k].bias, True)]
                for k, v in est.items()]
        out.append(markdown([name, "rows", "MAPE", "bias", "simulated MAPE", "simulated bias"], rows))
    return "\n\n".join(out)


def memory_table(preds: list[Prediction]) -> str:
    head = ["source", "memory measured as", "rows", "MAPE", "bias", "worst row (error)"]
    body = []
    for s in SOURCES:
        ps = [p for p in preds if p.run.source == s and p.memory_error is not None]
        if not ps:
            continue
        errs = [(p.memory_error, p.run.run.label) for p in ps]
        m = summarise(errs)  # type: ignore[arg-type]
        definition = MEMORY_DEFINITIONS[ps[0].run.run.memory_definition]
        body.append([s, definition, m.rows, pct(m.mape), pct(m.bias, True), f"{m.worst_label} ({pct(m.worst, True)})"])
    return markdown(head, body, right={2, 3, 4})


def oom_lines(runs: list[MeasuredRun], preds: list[Prediction]) -> list[str]:
    """Memory verdicts against what happened: runs that ran but are predicted not to fit, and reported OOMs."""
    ran_oom = [p for p in preds if not p.fits]
    lines = [f"- Ran, but predicted not to fit in memory: {len(ran_oom)} of {len(preds)} predicted rows."]
    from planner.cost import estimate

    reported = [r for r in runs if r.run.oom]
    if reported:
        caught = sum(1 for r in reported if not estimate(r.model, r.cluster, r.plan)["fits"])
        lines.append(f"- Reported out of memory by the source: {len(reported)}; predicted not to fit: {caught}.")
    return lines


def report(runs: list[MeasuredRun], preds: list[Prediction], failed: list, n_rows: int, wall: float,
           command: str = "python benchmarks/accuracy_measured.py", reprints: int = 0) -> str:
    no_time = sum(1 for r in runs if r.step_time_s is None)
    subs = sum(1 for r in runs if r.substitutions)
    again = (f" ({reprints} reprint a run another table of the same source printed: counted once)"
             if reprints else "")
    out = [f"Predicted vs measured step time of the published runs ({provenance()}; `{command}`)", "",
           f"{n_rows} rows read{again}, {len(runs)} expressible, {len(preds)} predicted "
           f"({no_time} expressible rows print no step time; {len(failed)} failed in the cost model"
           + (f"; {subs} rows on a substituted system" if subs else "") + ").", "",
           "Per source (closed form = `planner.cost.estimate`; simulated = `planner.simulate.simulate_plans`):", "",
           source_table(preds, runs), "", "By bucket (all sources):", "", bucket_tables(preds), "",
           "Memory, where the source measured it:", "", memory_table(preds), "", *oom_lines(runs, preds)]
    for r, err in failed:
        out.append(f"- Prediction failed: {r.run.label}: {err}")
    out += ["", "Source descriptions: " + "; ".join(f"{k} = {v}" for k, v in SOURCE_NAMES.items()) + ".",
            f"Wall time {wall:.1f} s."]
    return "\n".join(out)


def to_json(runs: list[MeasuredRun], preds: list[Prediction], failed: list, reprints: int = 0) -> dict:
    def summary(ps: list[Prediction]) -> dict:
        return {"estimate": summarise(_errors(ps)).to_json(), "simulated": summarise(_errors(ps, True)).to_json()}

    return {
        "provenance": provenance(),
        "reprints_counted_once": reprints,
        "sources": {s: summary([p for p in preds if p.run.source == s]) for s in SOURCES},
        "all": summary(preds),
        "buckets": {name: {k: v.to_json() for k, v in by_bucket(preds, key, order=BUCKET_ORDER.get(name)).items()}
                    for name, key in BUCKETS.items()},
        "rows": [{"source": p.run.source, "row": p.run.run.row, "label": p.run.run.label,
                  "measured_s": p.measured_s, "estimate_s": p.estimate_s, "simulated_s": p.simulated_s,
                  "error": p.error, "simulated_error": p.sim_error, "fits": p.fits,
                  "memory_measured_gib": p.run.memory_gib, "memory_predicted_gib": p.memory_gib or None,
                  "memory_definition": p.run.run.memory_definition or None, "memory_error": p.memory_error,
                  "plan": p.run.plan.describe(), "dtype": p.run.plan.dtype, "substitutions": list(p.run.substitutions)}
                 for p in preds],
        "failed": [{"label": r.run.label, "error": e} for r, e in failed],
        "no_step_time": [r.run.label for r in runs if r.step_time_s is None],
    }


def record_rows(preds: list[Prediction]) -> list[RecordRow]:
    """The track record: each predicted run as the kind of run it was and its step-time error."""
    return [RecordRow(source=p.run.source, label=p.run.run.label, framework=framework_root(p.run.plan.framework),
                      gpu=p.run.cluster.gpu.name, dtype=p.run.plan.dtype, tp=p.run.plan.tp, cp=p.run.plan.cp,
                      seq_len=p.run.model.seq_len, error=p.error) for p in preds]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    runs, n_rows, reprints = expressible(args.source, args.limit, args.substitute)
    preds, failed = predict(runs)
    if args.write_record:
        atomic_write_text(RECORD_PATH, record_json(record_rows(preds), f"python benchmarks/accuracy_measured.py, "
                                                                     f"{provenance()}"))
        print(f"wrote {RECORD_PATH} ({len(preds)} runs)", file=sys.stderr)
    if args.json:
        print(json.dumps(to_json(runs, preds, failed, reprints), indent=1))
    elif args.rows:
        for p in preds:
            print(f"{p.run.source}[{p.run.run.row}] {pct(p.error, True):>7} sim {pct(p.sim_error, True):>7} "
                  f"measured {p.measured_s:.3g} s predicted {p.estimate_s:.3g} s | {p.run.plan.describe()} "
                  f"{p.run.plan.dtype} | {p.run.run.label}")
    else:
        command = " ".join(["python benchmarks/accuracy_measured.py", *(argv if argv is not None else sys.argv[1:])])
        print(report(runs, preds, failed, n_rows, time.perf_counter() - t0, command, reprints))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
