"""`planner explain`'s track record: how close the model came on published runs like the plan.

The shipped record (planner/data/accuracy_record.json) must be what the cost model predicts today, so a
change of prices that does not rewrite it fails here; the selection and the statistics are checked
against runs picked by hand from the published tables and arithmetic done here.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from planner.track_record import MIN_RUNS, Record, RecordRow, load, similar, summary_line

ROOT = Path(__file__).resolve().parents[1]


def _row(framework: str = "nemo", gpu: str = "H100-SXM5-80GB", dtype: str = "bf16", tp: int = 4, cp: int = 1,
         seq_len: int = 4096, error: float = 0.0, label: str = "") -> RecordRow:
    return RecordRow("src", label, framework, gpu, dtype, tp, cp, seq_len, error)


def test_the_shipped_record_is_what_the_model_predicts_today() -> None:
    """Rewrite it with `python benchmarks/accuracy_measured.py --write-record` after changing a price."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from accuracy_measured import expressible, record_rows

    from planner.measured import SOURCES
    from planner.measured.accuracy import predict

    record = load()
    assert record is not None
    runs, _, _ = expressible(list(SOURCES), 0, False)
    preds, failed = predict(runs)
    assert not failed
    now = record_rows(preds)
    assert [(r.source, r.label) for r in record.rows] == [(r.source, r.label) for r in now]
    stale = [(old.label, old.error, new.error) for old, new in zip(record.rows, now, strict=True)
             if abs(old.error - new.error) > 2e-6
             or dataclasses.replace(old, error=0.0) != dataclasses.replace(new, error=0.0)]
    assert not stale, f"accuracy_record.json is stale (rewrite it with --write-record): {stale[:3]}"


def test_the_deepest_criteria_with_enough_runs_are_matched() -> None:
    rows = ([_row(error=-0.10), _row(error=-0.20), _row(error=0.40)]  # nemo H100 bf16 tp4 4k
            + [_row(dtype="fp8", error=0.05)] * 2  # too few fp8 runs to narrow to
            + [_row(gpu="GB200-186GB", error=0.5)] * 4)
    record = Record(tuple(rows), "test")
    matched, runs = similar(record, _row(dtype="fp8", tp=8))
    # nemo (9 runs) -> on H100 (5) -> fp8 leaves 2: stop at the GPU
    assert matched == ["nemo", "on H100-SXM5-80GB"] and len(runs) == 5
    matched, runs = similar(record, _row())
    assert len(matched) == 6 and sorted(r.error for r in runs) == [-0.20, -0.10, 0.40]
    line = summary_line(record, _row())
    # |-0.1|, |-0.2|, |0.4| -> MAPE 23.3%; bias +3.3%; range -20% .. +40%
    assert "3 published runs like this one" in line and "MAPE 23.3%" in line and "bias +3.3%" in line
    assert "(-20.0% to +40.0%)" in line and "fewer than" not in line


def test_a_framework_with_too_few_runs_has_no_record() -> None:
    record = Record(tuple([_row()] * 5 + [_row(framework="fsdp")] * (MIN_RUNS - 1)), "test")
    assert similar(record, _row(framework="fsdp")) == ([], [])
    assert "fewer than 3 published measured runs under the framework profile 'fsdp'" in summary_line(
        record, _row(framework="fsdp"))


@pytest.fixture(scope="module")
def record() -> Record:
    r = load()
    assert r is not None
    return r


def test_explain_prints_the_record_of_torchtitans_long_context_runs(record: Record) -> None:
    """Llama 3.1 8B at 256k tokens, CP 8 on eight 500 W H100s in fp8 under torchtitan: the runs like it
    are torchtitan's Table 2 (Dec 2024) at CP 2 / 4 / 8, read here by their labels."""
    from planner.cost import estimate
    from planner.measured.systems import cluster_for
    from planner.plan import Plan, PlanDocument
    from planner.report import explain
    from planner.specs.catalog import model_preset

    cluster, _ = cluster_for("h100-96gb-500w")
    assert cluster is not None
    m = dataclasses.replace(model_preset("llama3-8b"), seq_len=262144)
    c = cluster.with_gpus(8)
    plan = Plan(cp=8, dp=1, global_batch=1, framework="torchtitan-compile-2024", recompute="full", dtype="fp8")
    doc = PlanDocument(plan=plan, model=m, cluster=c, prediction=estimate(m, c, plan))
    line = next(x for x in explain(doc.to_json()).splitlines() if x.startswith("track record"))
    table2 = [r.error for r in record.rows if "Table 2" in r.label and "CP 1" not in r.label
              and "Llama 3.1 8B" in r.label]
    assert len(table2) == 3
    mape = sum(abs(e) for e in table2) / 3
    assert "3 published runs like this one (torchtitan, on H100-SXM5-96GB-500W, fp8, context parallel, " \
           "seq >=64k, tp 1)" in line
    assert f"MAPE {mape * 100:.1f}%" in line


def test_plan_prints_the_best_plans_track_record(capsys: pytest.CaptureFixture[str]) -> None:
    """`planner plan` ends its table with the record of the best plan's kind: NeMo runs on DGX H100 in
    FP8 (the published NeMo FP8 runs on H100 number far more than 3)."""
    from planner.cli import main

    rc = main(["plan", "--model", "llama3-70b", "--cluster", "dgx-h100", "--gpus", "64", "--global-batch", "128",
               "--seq-len", "8192", "--framework", "nemo", "--dtype", "fp8", "--top", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    line = next(x for x in out.splitlines() if x.startswith("plan 1 track record: "))
    assert "(nemo, on H100-SXM5-80GB, fp8" in line
