"""`planner compare plan.json measured.json`: predicted vs measured for one run of one plan.

`comparison_rows(doc, prediction, measured)` is the one place predicted-vs-measured rows are built:
`planner compare`, `planner run` (executor.launch), `planner validate` and the dashboard's evidence
tables all format its rows. `compare(doc, measured)` is the library call behind `planner compare`: it
checks that the measured file belongs to the plan (`plan_hash`, the hash the executor writes into
measured.json) and reports step time, tokens/s and memory per GPU, and memory per component where
both sides have it. The error of a prediction is (predicted - measured) / measured, as in
`planner validate`'s MAPE.

A measured file from another plan, or one that is not a measured.json at all, is a `PlannerError`
naming the field (`plan_hash`, `kind`, `step_time_s.median`, ...): exit status 2 in the CLI.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.cost import estimate
from planner.errors import PlannerError
from planner.io import dumps, load_json
from planner.plan import PlanDocument, document_from_json, plan_hash, refresh_prediction
from planner.specs.model import show
from planner.speed import SpeedRatio, at_speed, calibrated_rates, probe_rates, speed_ratio

GIB = 2**30
STATUSES = ("ok", "failed", "running")
# (component name in the prediction's `memory` block, key in measured.json's `memory` block)
MEMORY_COMPONENTS = (("weights", "weights_bytes"), ("grads", "grads_bytes"), ("optimizer", "optimizer_bytes"),
                     ("activations", "activations_peak_bytes"))
# the step split a CPU run measures (measured.json's `time_breakdown`, see executor.ledger.breakdown),
# and the prediction's time terms each side sums: (name, prediction `time` keys, measured key)
TIME_COMPONENTS = (("busy", ("compute", "optimizer"), "busy_s"),
                   ("waiting", ("bubble", "exposed"), "waiting_s"))
TIME_LABELS = {"busy": "busy (compute, optimizer, host)", "waiting": "waiting (comm, bubble)"}
# the speed probe's rows: (measured.json key, label, unit); calibration vs run
SPEED_ROWS = (("gemm_flops_per_s", "machine speed: GEMM (probe; calibration vs run)", "FLOP/s"),
              ("stream_bytes_per_s", "machine speed: memory (probe; calibration vs run)", "B/s"))


def time_components(pred: dict[str, Any] | None, measured: dict[str, Any]) -> list[tuple[str, float | None, float]]:
    """(component, predicted s, measured s) of the busy / waiting split, where the run measured it.

    busy is what the busiest rank's training thread spent on the CPU; waiting is the rest of the step.
    Predicted: compute + optimizer (host overheads are part of compute) vs bubble + exposed communication.
    """
    tb = measured.get("time_breakdown")
    if not isinstance(tb, dict):
        return []
    time = (pred or {}).get("time") or {}
    out = []
    for name, keys, key in TIME_COMPONENTS:
        m = number_at(tb, key)
        if m is None:
            continue
        parts = [number_at(time, k) for k in keys]
        out.append((name, None if any(p is None for p in parts) else float(sum(parts)), m))  # type: ignore[arg-type]
    return out


def comparable_peak_gib(doc: PlanDocument, pred: dict[str, Any] | None) -> float | None:
    """The predicted peak memory per GPU on the definition measured.json's `peak_bytes` uses: on CPU
    the training tensors (weights, grads, optimizer state, activations at their peak); on CUDA what
    the caching allocator saw, i.e. all but the runtime's reserved memory (context, NCCL buffers)."""
    if doc.cluster.device == "cpu":
        parts = [number_at(pred, "memory", name) for name, _ in MEMORY_COMPONENTS]
        return None if any(p is None for p in parts) else float(sum(parts))  # type: ignore[arg-type]
    total = number_at(pred, "memory_gib_per_gpu")
    return None if total is None else max(0.0, total - doc.cluster.reserved_memory_bytes / GIB)


@dataclass(frozen=True)
class ComparisonRow:
    """One predicted-vs-measured quantity of one run (None where that side has no number)."""

    # step_time_s, tokens_per_s, memory_gib_per_gpu, time.<busy|waiting>, memory.<kind|tensors>, speed.<gemm|stream>
    metric: str
    label: str  # the same, for people
    unit: str  # "s", "tokens/s", "GiB", or the speed probe's "FLOP/s" / "B/s"
    predicted: float | None
    measured: float | None
    measured_p10: float | None = None  # step time only
    measured_p90: float | None = None

    @property
    def error(self) -> float | None:
        """(predicted - measured) / measured, the sign convention of MAPE in `planner validate`."""
        if self.predicted is None or not self.measured:
            return None
        return (self.predicted - self.measured) / self.measured

    def to_json(self) -> dict[str, Any]:
        out = {"metric": self.metric, "unit": self.unit, "predicted": self.predicted, "measured": self.measured,
               "error": self.error}
        if self.metric == "step_time_s":
            out.update(measured_p10=self.measured_p10, measured_p90=self.measured_p90)
        return out


def measured_component_bytes(memory: Any, key: str) -> float | None:
    """A measured memory component in bytes; activations at their peak (all in-flight micro-batches),
    or the saved bytes of one micro-batch in files written before the peak was recorded."""
    value = number_at(memory, key)
    if value is None and key == "activations_peak_bytes":
        value = number_at(memory, "activations_bytes")
    return value


def comparison_rows(doc: PlanDocument | None, prediction: dict[str, Any] | None,
                    measured: dict[str, Any]) -> list[ComparisonRow]:
    """Every predicted-vs-measured row of one run, in display order: step time (median, p10, p90),
    the busy / waiting split where the run measured it, tokens/s, peak memory per GPU (on the measured
    definition when the plan document is known), memory per component, and the training tensors'
    total (weights + grads + optimizer + activations at their peak, the sum `planner validate` uses).

    `prediction` is the plan's prediction (or None); `measured` a parsed measured.json. Callers pick
    the rows they show; this is the only place the pairs are built."""
    steps = measured.get("step_time_s")
    memory = measured.get("memory")
    peak = number_at(memory, "peak_bytes")
    if doc is not None:
        predicted_peak = comparable_peak_gib(doc, prediction)
    else:
        predicted_peak = number_at(prediction, "memory_gib_per_gpu")
    rows = [ComparisonRow("step_time_s", "step time (median)", "s", number_at(prediction, "step_time_s"),
                          number_at(steps, "median"), number_at(steps, "p10"), number_at(steps, "p90"))]
    rows += [ComparisonRow(f"time.{name}", TIME_LABELS[name], "s", p, m)
             for name, p, m in time_components(prediction, measured)]
    rows.append(ComparisonRow("tokens_per_s", "tokens/s", "tokens/s", number_at(prediction, "tokens_per_s"),
                              number_at(measured, "tokens_per_s")))
    rows.append(ComparisonRow("memory_gib_per_gpu", "peak memory per GPU", "GiB", predicted_peak,
                              None if peak is None else peak / GIB))
    parts_p, parts_m = [], []
    for name, key in MEMORY_COMPONENTS:
        p, b = number_at(prediction, "memory", name), measured_component_bytes(memory, key)
        rows.append(ComparisonRow(f"memory.{name}", name, "GiB", p, None if b is None else b / GIB))
        parts_p.append(p)
        parts_m.append(b)
    has_p, has_m = isinstance((prediction or {}).get("memory"), dict), any(b is not None for b in parts_m)
    rows.append(ComparisonRow("memory.tensors", "training tensors", "GiB",
                              sum(p or 0.0 for p in parts_p) if has_p else None,
                              sum(b or 0.0 for b in parts_m) / GIB if has_m else None))
    rows += speed_rows(doc, measured)
    return rows


def speed_rows(doc: PlanDocument | None, measured: dict[str, Any]) -> list[ComparisonRow]:
    """The speed probe's rates (planner.speed): while the plan's cluster was calibrated (the
    "predicted" side) and during this run; their error is how much faster or slower the machine ran.
    None where the profile or the run has no probe (GPU presets, older files)."""
    if doc is None or speed_ratio(doc.cluster, measured) is None:  # no probe on a side, or different probes
        return []
    cal, run = calibrated_rates(doc.cluster), probe_rates(measured.get("speed_probe"))
    return [ComparisonRow(f"speed.{key.split('_')[0]}", label, unit, cal[key], run[key])
            for key, label, unit in SPEED_ROWS]


def step_time_at_speed(doc: PlanDocument, ratio: SpeedRatio) -> float:
    """The plan's step time on its profile re-based to `ratio`: what the model would have said, had it been
    calibrated at the speed a run had (`planner run`, `compare` and `validate` print it)."""
    return float(estimate(doc.model, at_speed(doc.cluster, ratio), doc.plan)["step_time_s"])


class MeasuredError(PlannerError, ValueError):
    """A measured.json that is malformed or belongs to another plan."""


def _number(obj: dict[str, Any], key: str, where: str, required: bool, positive: bool = False) -> float | None:
    if key not in obj:
        if required:
            raise MeasuredError("missing", field=f"{where}{key}")
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise MeasuredError(f"must be a number, got {show(v)}", field=f"{where}{key}")
    try:
        f = float(v)
    except OverflowError:
        raise MeasuredError(f"out of range: {show(v)}", field=f"{where}{key}") from None
    if not math.isfinite(f) or f < 0 or (positive and f == 0):
        raise MeasuredError(f"must be a finite {'positive' if positive else 'non-negative'} number, got {show(v)}",
                            field=f"{where}{key}")
    return f


def check_measured(measured: Any) -> dict[str, Any]:
    """Validate the parts of a measured.json that compare reads; MeasuredError names the field."""
    if not isinstance(measured, dict):
        raise MeasuredError(f"expected a JSON object, got {type(measured).__name__}", field="measured")
    kind = measured.get("kind", "measured")
    if kind != "measured":
        raise MeasuredError(f"{show(kind)} is not a measured run (expected \"measured\")", field="kind")
    h = measured.get("plan_hash")
    if not isinstance(h, str) or not h:
        raise MeasuredError(f"must be the plan's hash (a string), got {show(h)}", field="plan_hash")
    status = measured.get("status", "ok")
    if status not in STATUSES:
        raise MeasuredError(f"must be one of {', '.join(STATUSES)}, got {show(status)}", field="status")
    st = measured.get("step_time_s")
    if st is not None or status == "ok":
        if not isinstance(st, dict):
            raise MeasuredError(f"must be an object with median/p10/p90, got {show(st)}", field="step_time_s")
        for k in ("median", "p10", "p90"):
            _number(st, k, "step_time_s.", required=(k == "median"), positive=True)
    _number(measured, "tokens_per_s", "", required=False, positive=True)
    mem = measured.get("memory")
    if mem is not None:
        if not isinstance(mem, dict):
            raise MeasuredError(f"must be an object, got {show(mem)}", field="memory")
        for k in ("peak_bytes", *(key for _, key in MEMORY_COMPONENTS)):
            _number(mem, k, "memory.", required=False)
    tb = measured.get("time_breakdown")
    if tb is not None:
        if not isinstance(tb, dict):
            raise MeasuredError(f"must be an object, got {show(tb)}", field="time_breakdown")
        for _, _, key in TIME_COMPONENTS:
            _number(tb, key, "time_breakdown.", required=False)
    times = measured.get("step_times_s", [])
    if not isinstance(times, list) or not all(
            isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) for t in times):
        raise MeasuredError("must be a list of numbers", field="step_times_s")
    return measured


def number_at(obj: Any, *keys: str) -> float | None:
    """obj[k1][k2]... as a float; None where a key is missing or the value is not a number."""
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return float(obj) if isinstance(obj, (int, float)) and not isinstance(obj, bool) else None


def compare(doc: PlanDocument | dict[str, Any], measured: Any) -> dict[str, Any]:
    """Predicted vs measured for a plan (a PlanDocument or the plan file's JSON) and a measured.json
    (parsed). Raises PlannerError naming `plan_hash` when the measurement belongs to another plan."""
    if isinstance(doc, PlanDocument):
        return _compare(doc, doc.hash, measured)
    return _compare(document_from_json(doc), plan_hash(doc), measured)


def _compare(document: PlanDocument, expected: str, measured: Any) -> dict[str, Any]:
    m = check_measured(measured)
    if m["plan_hash"] != expected:
        raise MeasuredError(f"the measured run belongs to another plan ({show(m['plan_hash'], 20)} != this plan's "
                            f"{expected}); run `planner run` on this plan or pass its own measured.json",
                            field="plan_hash")
    had = bool(document.prediction)
    stale = refresh_prediction(document)  # always what the file now says, never a stored number
    pred, origin = document.prediction, ("plan" if had and not stale else "estimated")
    by_metric = {r.metric: r for r in comparison_rows(document, pred, m)}
    order = ["step_time_s", "tokens_per_s", "memory_gib_per_gpu", *(f"time.{name}" for name, _, _ in TIME_COMPONENTS)]
    rows = [by_metric[k] for k in order if k in by_metric]
    parts = [by_metric[f"memory.{name}"] for name, _ in MEMORY_COMPONENTS]
    rows += [r for r in parts if r.predicted is not None and r.measured is not None]  # where both sides have it
    rows += [r for r in by_metric.values() if r.metric.startswith("speed.")]
    ratio = speed_ratio(document.cluster, m)
    if ratio is not None:  # what the model would have said, calibrated at the speed this run had
        rows.append(ComparisonRow("step_time_at_run_speed_s", "step time at this run's machine speed", "s",
                                  step_time_at_speed(document, ratio), by_metric["step_time_s"].measured))
    return {
        "plan": document.plan.describe(), "plan_hash": expected, "status": m.get("status", "ok"),
        "error": m.get("error"), "prediction_from": origin, "stale_prediction": stale,
        "timed_steps": len(m.get("step_times_s", [])), "steps_completed": m.get("steps_completed"),
        "rows": [r.to_json() for r in rows], "speed_note": ratio.drift_note() if ratio is not None else None,
    }


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "s":
        return f"{v * 1e3:.2f} ms" if v < 1 else f"{v:.3f} s"
    if unit == "GiB":
        return f"{v:.3f} GiB"
    if unit in ("FLOP/s", "B/s"):
        return f"{v / 1e9:.1f} G{unit}"
    return f"{v:,.0f}"


def render(result: dict[str, Any]) -> str:
    from planner.report import table

    def err(r: dict[str, Any]) -> str:  # the speed probe's rows: the run's rate over the calibration's
        if r["metric"].startswith("speed."):
            return f"x{r['measured'] / r['predicted']:.2f}"
        return "-" if r["error"] is None else f"{r['error'] * 100:+.1f}%"

    rows = [[r["metric"], _fmt(r["predicted"], r["unit"]), _fmt(r["measured"], r["unit"]), err(r)]
            for r in result["rows"]]
    head = (f"plan {result['plan']} ({result['plan_hash']}): {result['timed_steps']} timed steps, status "
            f"{result['status']}; prediction from the {result['prediction_from']} model"
            if result["prediction_from"] == "estimated" else
            f"plan {result['plan']} ({result['plan_hash']}): {result['timed_steps']} timed steps, status "
            f"{result['status']}")
    lines = [head, table(["metric", "predicted", "measured", "error"], rows, align="lrrr")]
    if result.get("stale_prediction"):
        lines.append(f"note: {result['stale_prediction']}")
    if result.get("speed_note"):
        lines.append(result["speed_note"])
    if result["status"] != "ok":
        error = " ".join(str(result.get("error") or "no error recorded").split())[:300]
        lines.append(f"note: the run {result['status']}: {error}; the measured values cover the steps "
                     "completed before it stopped")
    return "\n".join(lines)


def cmd_compare(args: argparse.Namespace) -> int:
    raw = load_json(args.plan)
    if isinstance(raw, list):
        if not raw:
            raise PlannerError(f"{args.plan}: empty list of plans")
        raw = raw[0]
    document = document_from_json(raw, source=Path(args.plan).name)
    measured = load_json(args.measured)
    try:
        result = _compare(document, plan_hash(raw), measured)  # the hash the executor wrote: of the file
    except MeasuredError as exc:
        raise MeasuredError(f"{Path(args.measured).name}: {str(exc).removeprefix(f'{exc.field}: ')}",
                            field=exc.field) from None
    if args.json:
        print(dumps(result))
    else:
        print(render(result))
    return 0


def register(sub: Any) -> None:
    """Add `planner compare` to the CLI's subcommands."""
    p = sub.add_parser("compare", help="predicted vs measured for a plan and its measured.json")
    p.add_argument("plan", help="plan JSON (planner plan --out)")
    p.add_argument("measured", help="measured.json written by planner run")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_compare)
