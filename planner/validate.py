"""`planner validate`: run a diverse set of plans through the executor and compare with predictions.

The plans cover the search's best and the corners of the space that fit the local resources (pure
TP, PP, DP; interleaved; GPipe; full / selective recompute; ZeRO 1/2/3; sequence parallel; several
micro-batch sizes). Each plan is measured in several torchrun launches (round-robin, so slow drifts of
a shared machine spread over all plans); the median over launches is compared with the prediction
(step time and memory). Launches that disagree by more than 15% are repeated once.
Outputs: a table, MAPE, Spearman rank correlation, the worst plan, pairwise ordering of plans the
model separates by more than 25%, validation.json and an interactive plotly HTML. Where the runs
measured it (CPU ranks), the step is split into busy (the training thread on the CPU) and waiting
(communication, bubbles), compared with the prediction's compute + optimizer and bubble + exposed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from planner.compare import ComparisonRow, comparison_rows, step_time_at_speed
from planner.cost import estimate
from planner.errors import PlanError, PlannerError
from planner.io import atomic_write_bytes, atomic_write_json, atomic_write_text, check_folder_target, dumps
from planner.plan import Plan, PlanDocument, check_plan, plan_hash, save_plan
from planner.report import table
from planner.specs.catalog import load_cluster, load_model
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec
from planner.speed import SpeedRatio, speed_ratio

DEFAULT_MODEL = "tiny"
DISAGREEMENT = 0.15  # re-run a plan whose launches differ by more than this
ORDER_MARGIN = 0.25  # pairs of plans the model separates by more than this must be ordered right


@dataclass
class PlanResult:
    name: str
    doc: PlanDocument
    path: Path
    launches: list[dict[str, Any]] = field(default_factory=list)

    @property
    def predicted(self) -> float:
        return float(self.doc.prediction["step_time_s"])  # type: ignore[index]

    def _rows(self) -> list[dict[str, ComparisonRow]]:
        """Predicted-vs-measured rows of each successful launch, by metric."""
        return [{r.metric: r for r in comparison_rows(self.doc, self.doc.prediction, m)}
                for m in self.launches if m.get("status") == "ok"]

    def _medians(self) -> dict[str, tuple[float | None, float]]:
        """{metric: (predicted, median over launches of measured)} for every metric some launch measured."""
        per: dict[str, list[float]] = {}
        pred: dict[str, float | None] = {}
        for rows in self._rows():
            for metric, r in rows.items():
                if r.measured is not None:
                    per.setdefault(metric, []).append(r.measured)
                    pred[metric] = r.predicted
        return {metric: (pred[metric], statistics.median(vs)) for metric, vs in per.items()}

    @property
    def launch_medians(self) -> list[float]:
        return [rows["step_time_s"].measured for rows in self._rows()  # type: ignore[misc]
                if rows["step_time_s"].measured is not None]

    @property
    def measured(self) -> float | None:
        times = self.launch_medians
        return statistics.median(times) if times else None

    @property
    def spread(self) -> float:
        times = self.launch_medians
        return max(times) / min(times) - 1 if len(times) > 1 else 0.0

    def components(self) -> dict[str, tuple[float | None, float]]:
        """Busy / waiting split: {name: (predicted s, measured s: median over launches)}, where measured."""
        return {metric.removeprefix("time."): v for metric, v in self._medians().items() if metric.startswith("time.")}

    def measured_memory_gib(self) -> float | None:
        """Median over launches of the training tensors (activations at their peak)."""
        return self._medians().get("memory.tensors", (None, None))[1]

    def speed(self) -> SpeedRatio | None:
        """The machine's speed during this plan's launches over its calibration's (median over the
        launches that probed it; planner.speed), or None."""
        ratios = [r for r in (speed_ratio(self.doc.cluster, m) for m in self.launches if m.get("status") == "ok")
                  if r is not None]
        if not ratios:
            return None
        return SpeedRatio(statistics.median(r.compute for r in ratios), statistics.median(r.memory for r in ratios))

    def predicted_at_run_speed(self) -> float | None:
        """The step time predicted by the profile re-based to the speed measured during the runs."""
        ratio = self.speed()
        if ratio is None:
            return None
        return step_time_at_speed(self.doc, ratio)

    def to_json(self) -> dict[str, Any]:
        pred = self.doc.prediction or {}
        ratio, at_run = self.speed(), self.predicted_at_run_speed()
        predicted_tensors = {r.metric: r for r in comparison_rows(self.doc, pred, {})}["memory.tensors"].predicted
        return {
            "name": self.name, "plan": self.doc.plan.describe(), "plan_hash": plan_hash(self.doc.to_json()),
            "predicted_step_time_s": self.predicted, "measured_step_time_s": self.measured,
            "error": (self.predicted / self.measured - 1) if self.measured else None,
            "launch_medians_s": self.launch_medians,
            "launch_spread": self.spread,
            "predicted_memory_gib": predicted_tensors or 0.0,
            "measured_memory_gib": self.measured_memory_gib(),
            "predicted_time": pred.get("time", {}),
            "components": {name: {"predicted_s": p, "measured_s": m} for name, (p, m) in self.components().items()},
            "speed_ratio": ratio.to_json() if ratio else None,
            "predicted_at_run_speed_s": at_run,
            "error_at_run_speed": (at_run / self.measured - 1) if at_run and self.measured else None,
        }


def candidate_plans(model: ModelSpec, cluster: ClusterSpec, global_batch: int, dtype: str) -> list[tuple[str, Plan]]:
    """Named plans spanning the space, all legal for `cluster.num_gpus` ranks (illegal ones skipped)."""
    n = cluster.num_gpus
    half = n // 2 if n % 2 == 0 else 1
    base = dict(global_batch=global_batch, dtype=dtype)
    mb_max = max(1, global_batch // n)
    specs: list[tuple[str, dict[str, Any]]] = [
        ("pure DP", dict(dp=n, micro_batch=mb_max)),
        ("pure DP, micro-batch 1", dict(dp=n, micro_batch=1)),
        ("pure TP", dict(tp=n, micro_batch=global_batch)),
        ("TP + SP", dict(tp=n, micro_batch=global_batch, sequence_parallel=True)),
        ("pure PP 1F1B", dict(pp=n, micro_batch=1)),
        ("PP GPipe", dict(pp=n, micro_batch=1, schedule="gpipe")),
        ("PP interleaved", dict(pp=n, vpp=2, micro_batch=1, schedule="interleaved-1f1b")),
        ("PP, micro-batch 2", dict(pp=n, micro_batch=2)),
        ("DP full recompute", dict(dp=n, micro_batch=mb_max, recompute="full")),
        ("TP selective recompute", dict(tp=n, micro_batch=global_batch, recompute="selective")),
        ("DP ZeRO-1", dict(dp=n, micro_batch=mb_max, zero_stage=1)),
        ("DP ZeRO-2", dict(dp=n, micro_batch=mb_max, zero_stage=2)),
        ("DP ZeRO-3", dict(dp=n, micro_batch=mb_max, zero_stage=3)),
    ]
    if half > 1:
        specs += [
            ("TP x DP", dict(tp=half, dp=n // half, micro_batch=max(1, global_batch // (n // half)))),
            ("PP x DP", dict(pp=half, dp=n // half, micro_batch=1)),
            ("TP x PP", dict(tp=half, pp=n // half, micro_batch=1)),
        ]
    out = []
    for name, kw in specs:
        try:
            plan = Plan(**{**base, **kw})
            check_plan(model, cluster, plan)
        except PlannerError:
            continue
        out.append((name, plan))
    return out


def choose_plans(model: ModelSpec, cluster: ClusterSpec, global_batch: int, k: int, dtype: str,
                 executable: Any) -> list[tuple[str, Plan]]:
    """The search's best executable plan plus up to k-1 diverse named plans."""
    from planner.search import search

    def key(p: Plan) -> tuple:  # the placement of trivial (size-1) dimensions does not matter
        return (p.tp, p.pp, p.dp, p.cp, p.ep, p.vpp, p.micro_batch, p.schedule if p.pp > 1 else "",
                p.recompute, p.sequence_parallel, p.zero_stage)

    chosen: list[tuple[str, Plan]] = []
    result = search(model, cluster, global_batch, dtype=dtype, top_k=50)
    for p in result.plans:
        if executable(p):
            chosen.append(("search best", p))
            break
    seen = {key(p) for _, p in chosen}
    for name, p in candidate_plans(model, cluster, global_batch, dtype):
        if len(chosen) >= k:
            break
        if key(p) not in seen and executable(p) and estimate(model, cluster, p)["fits"]:
            chosen.append((name, p))
            seen.add(key(p))
    return chosen


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x: list[float]) -> np.ndarray:
        arr = np.asarray(x, dtype=np.float64)
        order = arr.argsort()
        r = np.empty(len(arr))
        r[order] = np.arange(len(arr), dtype=np.float64)
        for v in np.unique(arr):
            idx = arr == v
            r[idx] = r[idx].mean()
        return r

    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def summarize(results: list[PlanResult]) -> dict[str, Any]:
    ok = [r for r in results if r.measured]
    pred = [r.predicted for r in ok]
    meas = [r.measured for r in ok]  # type: ignore[misc]
    errors = [p / m - 1 for p, m in zip(pred, meas, strict=True)]
    pairs = wrong = 0
    for (a, b) in itertools.combinations(range(len(ok)), 2):
        hi, lo = max(pred[a], pred[b]), min(pred[a], pred[b])
        if hi / lo - 1 > ORDER_MARGIN:
            pairs += 1
            if (pred[a] - pred[b]) * (meas[a] - meas[b]) <= 0:
                wrong += 1
    worst = max(range(len(ok)), key=lambda i: abs(errors[i])) if ok else None
    best_pred = min(range(len(ok)), key=lambda i: pred[i]) if ok else None
    fastest_two = sorted(range(len(ok)), key=lambda i: meas[i])[:2]
    mem_err = [r.to_json() for r in ok]
    mem_pairs = [(m["predicted_memory_gib"], m["measured_memory_gib"]) for m in mem_err if m["measured_memory_gib"]]
    comp: dict[str, dict[str, Any]] = {}
    splits = [(r.components(), r.measured) for r in ok]  # once per plan: it reads every launch
    for name in ("busy", "waiting"):
        got = [(c[name], step) for c, step in splits if name in c and c[name][0] is not None]
        if got:  # error per plan as a share of its measured step time (waiting is often near 0)
            comp[name] = {"n_plans": len(got),
                          "mean_abs_error_of_step": float(np.mean([abs(p - m) / step for (p, m), step in got])),
                          "mean_predicted_share": float(np.mean([p / step for (p, _), step in got])),
                          "mean_measured_share": float(np.mean([m / step for (_, m), step in got]))}
    at_run = [r.predicted_at_run_speed() for r in ok]
    speeds = [r.speed() for r in ok]
    at_speed_summary = None
    if ok and all(p is not None for p in at_run):  # every plan's runs probed the machine's speed
        e = [p / m - 1 for p, m in zip(at_run, meas, strict=True)]  # type: ignore[operator]
        at_speed_summary = {"mape": float(np.mean(np.abs(e))), "spearman": spearman(at_run, meas),  # type: ignore[arg-type]
                            "worst": float(max(abs(x) for x in e)),
                            "compute_ratio": [min(s.compute for s in speeds), max(s.compute for s in speeds)],  # type: ignore[union-attr]
                            "memory_ratio": [min(s.memory for s in speeds), max(s.memory for s in speeds)]}  # type: ignore[union-attr]
    return {
        "n_plans": len(ok),
        "mape": float(np.mean(np.abs(errors))) if ok else None,
        "spearman": spearman(pred, meas) if ok else None,
        "worst": float(abs(errors[worst])) if worst is not None else None,
        "worst_plan": ok[worst].name if worst is not None else None,
        "pairs_separated": pairs, "pairs_misordered": wrong,
        "predicted_best": ok[best_pred].name if best_pred is not None else None,
        "predicted_best_in_measured_fastest_two": best_pred in fastest_two if best_pred is not None else None,
        "memory_mape": float(np.mean([abs(p / m - 1) for p, m in mem_pairs])) if mem_pairs else None,
        "components": comp,
        "at_run_speed": at_speed_summary,
    }


def write_html(path: Path, results: list[PlanResult], summary: dict[str, Any], title: str) -> None:
    """Interactive predicted-vs-measured scatter (plotly); PNG beside it when kaleido works."""
    import plotly.graph_objects as go

    ok = [r for r in results if r.measured]
    xs = [r.measured * 1e3 for r in ok]  # type: ignore[operator]
    ys = [r.predicted * 1e3 for r in ok]
    hi = max(xs + ys) * 1.1 if ok else 1.0
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, hi], y=[0, hi], mode="lines", name="predicted = measured",
                             line={"dash": "dash", "color": "grey"}))
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers+text", text=[r.name for r in ok],
                             textposition="top center", name="plans",
                             hovertext=[r.doc.plan.describe() for r in ok]))
    fig.update_layout(title=f"{title}: MAPE {summary['mape'] * 100:.1f}%, Spearman {summary['spearman']:.2f}"
                      if ok else title, xaxis_title="measured step time (ms)",
                      yaxis_title="predicted step time (ms)", width=900, height=700)
    atomic_write_text(path, fig.to_html(include_plotlyjs="cdn", full_html=True))
    with contextlib.suppress(Exception):  # optional static image (needs kaleido)
        atomic_write_bytes(path.with_suffix(".png"), fig.to_image(format="png"))


def run_validation(args: argparse.Namespace) -> int:
    """The `planner validate` command (local runs)."""
    from executor.launch import RunFailed, run_plan, run_plans
    from executor.run import check_executable

    nproc = args.nproc_per_node
    out_dir = Path(args.out_dir)
    check_folder_target(out_dir, "out_dir")
    model = load_model(args.model, seq_len=args.seq_len)  # a bad --model is named before minutes of calibrating
    out_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are known good
    if args.cluster is None:  # predictions need this machine's numbers: measure them now
        from planner.calibrate import build_profile, run_calibration, write_profile

        print(f"calibrating this machine with {nproc} ranks first (planner calibrate"
              f"{' --quick' if args.quick else ''})", file=sys.stderr)
        raw = run_calibration(nproc, quick=args.quick)
        args.cluster = str(write_profile(out_dir / "cluster-profile.json", build_profile(raw), raw))
    cluster = load_cluster(args.cluster, gpus=nproc)
    dtype = "fp32" if cluster.device == "cpu" else model.dtype

    def executable(p: Plan) -> bool:  # what executor.run would refuse (a model / degree combination)
        try:
            check_executable(PlanDocument(plan=p, model=model, cluster=cluster))
            return True
        except PlannerError:
            return False

    chosen = choose_plans(model, cluster, args.global_batch, args.plans, dtype, executable)
    if len(chosen) < 2:
        raise PlanError(f"fewer than 2 executable plans fit {model.name} on {nproc} ranks", field="plans")
    results = []
    for i, (name, plan) in enumerate(chosen):
        doc = PlanDocument(plan=plan, model=model, cluster=cluster,
                           prediction=estimate(model, cluster, plan), extra={"name": name})
        path = out_dir / "plans" / f"plan{i:02d}.json"
        save_plan(path, doc)
        results.append(PlanResult(name=name, doc=doc, path=path))
    launches = 1 if args.quick else args.launches
    steps, warmup = (args.steps or (5 if args.quick else 10)), (args.warmup if args.warmup is not None else 2)
    print(f"validating {len(results)} plans of {model.name} on {nproc} ranks ({cluster.name}), "
          f"{launches} launch(es) each, {steps} timed steps after {warmup} warm-up", file=sys.stderr)
    start = time.perf_counter()
    total = launches * len(results)
    done = 0

    def launch(batch: list[PlanResult]) -> None:
        """One torchrun launch measuring `batch` in turn; a failed launch retries plans one by one."""
        nonlocal done
        jobs = [(r.path, out_dir / "measured" / f"{r.path.stem}.{len(r.launches)}.json") for r in batch]
        measured = run_plans(jobs, nproc, steps=steps, warmup=warmup)
        for r, m, (_, out) in zip(batch, measured, jobs, strict=True):
            if m is None:
                try:
                    m = run_plan(r.path, nproc_per_node=nproc, steps=steps, warmup=warmup, out=out)
                except RunFailed as exc:
                    m = {"status": "failed", "error": str(exc)[-500:]}
            r.launches.append(m)
            done += 1
            print(f"  [{done}/{total}] {r.name}: " + (f"{m['step_time_s']['median'] * 1e3:.1f} ms" if
                  m.get("status") == "ok" else "FAILED") + f"  ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr)

    for round_no in range(launches):  # rotate the order so drifts spread over all plans
        k = round_no % len(results)
        launch(results[k:] + results[:k])
    if launches > 1:
        again = [r for r in results if r.spread > DISAGREEMENT]
        if again:
            total += len(again)
            launch(again)
    summary = summarize(results)
    summary["launches_per_plan"] = launches
    summary["seconds"] = time.perf_counter() - start
    report = {"kind": "validation", "model": model.name, "cluster": cluster.to_dict(), "nproc_per_node": nproc,
              "global_batch": args.global_batch, "summary": summary, "plans": [r.to_json() for r in results]}
    atomic_write_json(out_dir / "validation.json", report)
    write_html(out_dir / "validation.html", results, summary, f"{model.name} on {nproc} ranks")
    if args.json:
        sys.stdout.write(dumps(report) + "\n")
        return 0
    rows = []

    def split(r: PlanResult, name: str) -> str:  # "predicted/measured" in ms
        p, m = r.components().get(name, (None, None))
        return "-" if p is None or m is None else f"{p * 1e3:.0f}/{m * 1e3:.0f}"

    for r in results:
        j = r.to_json()
        rows.append([r.name, r.doc.plan.describe(), r.predicted * 1e3,
                     (r.measured or float("nan")) * 1e3,
                     f"{j['error'] * 100:+.1f}%" if j["error"] is not None else "failed",
                     "-" if j["error_at_run_speed"] is None else f"{j['error_at_run_speed'] * 100:+.1f}%",
                     f"{r.spread * 100:.0f}%", split(r, "busy"), split(r, "waiting"),
                     j["predicted_memory_gib"] * 1024, (j["measured_memory_gib"] or float("nan")) * 1024])
    print(table(["plan", "layout", "predicted ms", "measured ms", "error", "at run speed", "spread", "busy p/m ms",
                 "waiting p/m ms", "pred MiB", "meas MiB"], rows, align="llrrrrrrrrr"))
    s = summary
    print(f"\n{s['n_plans']} plans: step-time MAPE {s['mape'] * 100:.1f}%, Spearman {s['spearman']:.2f}, "
          f"worst {s['worst'] * 100:.1f}% ({s['worst_plan']}); {s['pairs_misordered']} of {s['pairs_separated']} "
          f"pairs separated by >{ORDER_MARGIN * 100:.0f}% misordered; predicted best '{s['predicted_best']}' "
          f"{'is' if s['predicted_best_in_measured_fastest_two'] else 'is NOT'} among the measured fastest two; "
          f"memory MAPE {s['memory_mape'] * 100:.1f}%" if s["memory_mape"] is not None else "")
    if s["components"] and cluster.compute_slowdown > 1.25:
        print(f"note: {nproc} ranks share {cluster.compute_slots_per_node:.1f} cores' worth of compute: a rank "
              "waiting for a core counts as waiting, so the measured busy / waiting split reads low / high")
    for name, c in s["components"].items():
        print(f"{name}: predicted {c['mean_predicted_share'] * 100:.0f}% of the step on average, measured "
              f"{c['mean_measured_share'] * 100:.0f}%; mean absolute error {c['mean_abs_error_of_step'] * 100:.1f}% "
              f"of the step")
    a = s["at_run_speed"]
    if a:
        print(f"at the machine's speed measured during the runs (speed probe, run / calibration: GEMM "
              f"x{a['compute_ratio'][0]:.2f}-{a['compute_ratio'][1]:.2f}, memory x{a['memory_ratio'][0]:.2f}-"
              f"{a['memory_ratio'][1]:.2f}): MAPE {a['mape'] * 100:.1f}%, Spearman {a['spearman']:.2f}, worst "
              f"{a['worst'] * 100:.1f}%")
    print(f"wrote {out_dir / 'validation.json'} and {out_dir / 'validation.html'}")
    return 0
