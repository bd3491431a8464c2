"""Predicted vs measured: the one row builder (planner.compare.comparison_rows) and its four users
(`planner compare`, `planner run`'s table, `planner validate`, the dashboard's evidence), plus the
evidence loader (uploads and folder scans of plan / measured.json / validation.json files)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from executor.launch import comparison_table
from planner.compare import compare, comparison_rows
from planner.cost import estimate
from planner.evidence import Evidence, compare_runs, scan_folder, validation_points, validation_summary
from planner.plan import Plan, PlanDocument, plan_hash
from planner.specs.catalog import load_cluster, load_model
from planner.uploads import MAX_UPLOAD_BYTES
from planner.validate import PlanResult

GIB = 2**30


def _doc() -> PlanDocument:
    model = load_model("tiny")
    cluster = load_cluster("localhost-cpu", gpus=2)
    plan = Plan(dp=2, micro_batch=2, global_batch=8, dtype="fp32")
    return PlanDocument(plan=plan, model=model, cluster=cluster, prediction=estimate(model, cluster, plan))


def _measured(doc: dict[str, Any], median: float = 0.5) -> dict[str, Any]:
    """The shape executor/run.py writes (values are test data, not a real run)."""
    return {"schema_version": 1, "kind": "measured", "status": "ok", "plan_hash": plan_hash(doc),
            "plan": "tp1 pp1 dp2 mb2", "warmup": 1, "step_times_s": [median] * 3,
            "step_time_s": {"median": median, "p10": median * 0.9, "p90": median * 1.2, "mean": median},
            "tokens_per_s": 1000.0, "losses": [5.0, 4.9],
            "memory": {"peak_bytes": 2**28, "weights_bytes": 2**20, "grads_bytes": 2**20, "rss_bytes": 2**30,
                       "optimizer_bytes": 2**21, "activations_bytes": 2**22, "activations_peak_bytes": 2**23},
            "time_breakdown": {"busy_s": 0.4, "waiting_s": 0.1},
            "env": {"torch": "test", "world_size": 2, "nnodes": 1, "device": "cpu", "backend": "gloo"}}


def test_comparison_rows_worked_example() -> None:
    """Hand-computed: a CPU plan predicted at 0.1 s / 0.5 GiB of training tensors, measured 0.115 s
    (p10 0.111, p90 0.119), 2^29 B peak, components 1 + 1 + 2 + 8 MiB (activations at their peak)."""
    doc = dataclasses.replace(_doc(), prediction={
        "step_time_s": 0.1, "tokens_per_s": 160.0, "memory_gib_per_gpu": 0.75,
        "memory": {"weights": 0.1, "grads": 0.1, "optimizer": 0.2, "activations": 0.1, "other": 0.25},
        "time": {"compute": 0.08, "optimizer": 0.01, "bubble": 0.004, "exposed": 0.006}})
    measured = {"step_time_s": {"median": 0.115, "p10": 0.111, "p90": 0.119}, "tokens_per_s": 139.1,
                "memory": {"peak_bytes": 2**29, "weights_bytes": 2**20, "grads_bytes": 2**20,
                           "optimizer_bytes": 2**21, "activations_peak_bytes": 2**23},
                "time_breakdown": {"busy_s": 0.1, "waiting_s": 0.015}}
    rows = {r.metric: r for r in comparison_rows(doc, doc.prediction, measured)}
    assert [r.metric for r in comparison_rows(doc, doc.prediction, measured)][:5] == [
        "step_time_s", "time.busy", "time.waiting", "tokens_per_s", "memory_gib_per_gpu"]
    step = rows["step_time_s"]
    assert (step.measured, step.measured_p10, step.measured_p90) == (0.115, 0.111, 0.119)
    assert step.error == pytest.approx(-0.015 / 0.115)  # -13.0%
    assert rows["time.busy"].predicted == pytest.approx(0.09) and rows["time.waiting"].predicted == pytest.approx(0.01)
    assert rows["tokens_per_s"].error == pytest.approx(160 / 139.1 - 1)
    # on CPU the peak is the training tensors: 0.5 GiB predicted, not the 0.75 GiB that holds "other"
    assert rows["memory_gib_per_gpu"].predicted == pytest.approx(0.5)
    assert rows["memory_gib_per_gpu"].measured == 0.5 and rows["memory_gib_per_gpu"].error == pytest.approx(0.0)
    assert rows["memory.activations"].measured == pytest.approx(8 / 1024)
    assert rows["memory.tensors"].measured == pytest.approx(12 / 1024)
    assert rows["memory.tensors"].predicted == pytest.approx(0.5)
    # a run with no memory block and no prediction: no numbers, no errors
    bare = {r.metric: r for r in comparison_rows(None, None, {"step_time_s": {"median": 1.0}})}
    assert bare["memory.tensors"].measured is None and bare["step_time_s"].error is None


def test_the_four_users_agree_on_one_run(tmp_path: Path) -> None:
    """planner compare, planner run's table, planner validate and the dashboard's evidence report the
    same predicted and measured step time and memory for the same plan and measured.json."""
    doc = _doc()
    raw = doc.to_json()
    m = _measured(raw, median=0.5)
    rows = {r.metric: r for r in comparison_rows(doc, doc.prediction, m)}

    cli = {r["metric"]: r for r in compare(doc, m)["rows"]}
    for metric in ("step_time_s", "tokens_per_s", "memory_gib_per_gpu", "time.busy", "memory.weights"):
        assert (cli[metric]["predicted"], cli[metric]["measured"]) == (rows[metric].predicted, rows[metric].measured)

    table = comparison_table(doc, m)
    step_err = f"{rows['step_time_s'].error * 100:+.1f}%"
    mem_err = f"{rows['memory_gib_per_gpu'].error * 100:+.1f}%"
    assert step_err in table and mem_err in table and f"{rows['memory_gib_per_gpu'].measured:.3f} GiB" in table

    result = PlanResult("x", doc, tmp_path / "plan.json", [m, {**m, "status": "failed"}]).to_json()
    assert result["measured_step_time_s"] == rows["step_time_s"].measured
    assert result["measured_memory_gib"] == pytest.approx(rows["memory.tensors"].measured)
    assert result["predicted_memory_gib"] == pytest.approx(rows["memory.tensors"].predicted)
    assert result["components"]["busy"] == {"predicted_s": rows["time.busy"].predicted, "measured_s": 0.4}

    ev = Evidence()
    ev.add(raw, "plan.json")
    ev.add(m, "run/measured.json")
    (run,) = compare_runs(ev)
    assert [(r.metric, r.predicted, r.measured) for r in run.rows] == [
        (r.metric, r.predicted, r.measured) for r in comparison_rows(doc, doc.prediction, m)]


def test_validate_takes_medians_over_launches(tmp_path: Path) -> None:
    doc = _doc()
    raw = doc.to_json()
    launches = [_measured(raw, 0.1), _measured(raw, 0.3), {"status": "failed"}, _measured(raw, 0.2)]
    launches[1]["time_breakdown"] = {"busy_s": 0.2, "waiting_s": 0.1}
    r = PlanResult("x", doc, tmp_path / "p.json", launches).to_json()
    assert r["launch_medians_s"] == [0.1, 0.3, 0.2] and r["measured_step_time_s"] == 0.2
    assert r["launch_spread"] == pytest.approx(2.0)
    assert r["components"]["busy"]["measured_s"] == 0.4  # median of 0.4, 0.2, 0.4


def test_compare_runs_matches_plans_by_hash() -> None:
    raw = _doc().to_json()
    ev = Evidence()
    ev.add(raw, "plan.json")
    ev.add(_measured(raw), "run1/measured.json")
    ev.add({**_measured(raw), "plan_hash": "0" * 16, "predicted": {"step_time_s": 0.25}}, "run2/measured.json")
    ev.add({**_measured(raw), "status": "failed", "error": "RuntimeError: boom", "step_time_s": None},
           "run3/measured.json")
    runs = compare_runs(ev)
    assert [r.prediction_from for r in runs] == ["plan.json", "measured.json", "plan.json"]
    step = runs[0].row("step_time_s")
    assert step is not None and step.predicted == pytest.approx(raw["prediction"]["step_time_s"])
    assert step.error == pytest.approx((step.predicted - 0.5) / 0.5)
    second = runs[1].row("step_time_s")
    assert second is not None and second.error == pytest.approx(-0.5)
    assert runs[2].status == "failed" and "boom" in (runs[2].error or "")
    assert not ev.problems


def test_evidence_sorts_files_and_reports_unusable_ones() -> None:
    ev = Evidence()
    raw = _doc().to_json()
    ev.add([raw, raw], "plans.json")  # `planner plan --json` output
    ev.add({"kind": "validation", "plans": []}, "validation.json")
    ev.add({"something": "else"}, "other.json")
    ev.add_bytes(b"{broken", "broken.json")
    assert len(ev.plans) == 1 and len(ev.validations) == 1
    assert any("other.json: not a plan" in p for p in ev.problems)
    assert any("broken.json: malformed JSON" in p for p in ev.problems)


VALIDATION = {
    "kind": "validation", "model": "tiny", "cluster": {"name": "localhost-cpu", "gpu": {"name": "cpu"}},
    "nproc_per_node": 2, "global_batch": 8,
    "summary": {"n_plans": 2, "mape": 0.2, "spearman": 1.0, "worst": 0.2, "worst_plan": "dp"},
    "plans": [
        {"name": "dp", "plan": "tp1 pp1 dp2 mb2", "predicted_step_time_s": 0.016,
         "measured_step_time_s": 0.02, "error": -0.2, "launch_medians_s": [0.019, 0.021]},
        {"name": "pp", "plan": "tp1 pp2 dp1 mb1", "predicted_step_time_s": 0.04,
         "measured_step_time_s": 0.05, "error": -0.2, "launch_medians_s": [0.05]},
    ],
}


def test_scan_folder_and_validation_reports(tmp_path: Path) -> None:
    raw = _doc().to_json()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "plan.json").write_text(json.dumps(raw))
    (tmp_path / "run" / "measured.json").write_text(json.dumps(_measured(raw)))
    (tmp_path / "validation.json").write_text(json.dumps(VALIDATION))
    (tmp_path / "notes.json").write_text('{"hello": 1}')
    (tmp_path / "big.trace.json").write_bytes(b" " * (MAX_UPLOAD_BYTES + 1))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "measured.json").write_text("{")
    ev = scan_folder(str(tmp_path))
    assert len(ev.measured) == 1 and len(ev.plans) == 1 and len(ev.validations) == 1
    assert not ev.problems and len(ev.skipped) == 2  # notes.json and the big trace
    points = validation_points(ev.validations[0][1])
    assert [p.measured_s for p in points] == [0.02, 0.05] and [p.launch_max_s for p in points] == [0.021, 0.05]
    assert points[0].error == pytest.approx(0.016 / 0.02 - 1)
    s = validation_summary(ev.validations[0][1])
    assert (s.n_plans, s.mape, s.spearman, s.worst_plan, s.cluster, s.ranks) == (2, 0.2, 1.0, "dp", "localhost-cpu", 2)
    # without a summary block the MAPE and worst error come from the plans: |0.016/0.02 - 1| = |0.04/0.05 - 1| = 0.2
    bare = validation_summary({"plans": VALIDATION["plans"]})
    assert bare.mape == pytest.approx(0.2) and bare.worst == pytest.approx(0.2) and bare.spearman is None
    assert scan_folder(str(tmp_path / "missing")).problems == [f"{tmp_path / 'missing'}: no such folder"]
    assert scan_folder("bad\0path").problems  # a NUL byte: reported, not raised


def test_shipped_validation_reports_summarise() -> None:
    """The reports under examples/validation: the summary the dashboard shows is the one the README quotes."""
    root = Path(__file__).resolve().parent.parent / "examples" / "validation"
    report = json.loads((root / "cpu-2ranks" / "validation.json").read_text())
    s = validation_summary(report)
    assert s.n_plans == 12 and round(s.mape * 100, 1) == 9.4 and round(s.spearman, 2) == 0.93
    assert s.worst_plan == "DP ZeRO-2" and round(s.worst * 100, 1) == 15.7
