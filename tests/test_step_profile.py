"""benchmarks/step_profile.py's attribution of a profiled step's time to op classes, on a hand-written
torch.profiler trace whose answer is worked out below: each outermost op counts once with everything
it calls, frames that only contain ops count nothing, and only the busiest thread is read."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from step_profile import measured_classes


def _op(name: str, ts: int, dur: int, cat: str = "cpu_op", tid: int = 1) -> dict:
    return {"ph": "X", "name": name, "ts": ts, "dur": dur, "cat": cat, "tid": tid, "pid": 1}


def test_each_outermost_op_counts_once_in_its_class(tmp_path: Path) -> None:
    events = [
        _op("DistributedDataParallel.forward", 0, 100, "user_annotation"),  # a container: counts nothing
        _op("aten::linear", 0, 30), _op("aten::addmm", 1, 28), _op("aten::copy_", 1, 3),  # gemm 30
        _op("aten::view", 31, 2),  # host 2
        _op("aten::gelu", 35, 10),  # elementwise 10
        _op("aten::_scaled_dot_product_flash_attention_for_cpu", 50, 20),  # attention 20
        _op("autograd::engine::evaluate_function: AddmmBackward0", 100, 50), _op("aten::mm", 101, 48),  # gemm 50
        _op("autograd::engine::evaluate_function: GeluBackward0", 150, 16),
        _op("aten::gelu_backward", 151, 14),  # elementwise 16
        _op("autograd::engine::evaluate_function: torch::autograd::AccumulateGrad", 166, 4),  # host 4
        _op("Optimizer.step#AdamW.step", 170, 30, "user_annotation"), _op("aten::lerp_", 171, 9),  # optimizer 30
        _op("torch.distributed.ddp.reducer::copy_bucket_to_grad", 200, 6),  # optimizer 6
        _op("c10d::allreduce_", 206, 8), _op("aten::div_", 207, 1),  # communication 8 (mostly waiting)
        _op("aten::mm", 0, 100, tid=2),  # another thread with less op time: not read
    ]
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    seconds, ops = measured_classes(trace, steps=2)
    us = {k: round(v * 1e6 * 2) for k, v in seconds.items()}  # back to microseconds over both steps
    assert us == {"gemm": 80, "host": 6, "elementwise": 26, "attention": 20, "optimizer": 36, "communication": 8}
    assert ops == 10 // 2  # linear, view, gelu, attention, three autograd nodes, the step, the copy, the all-reduce


def test_a_plan_it_cannot_split_by_class_is_refused() -> None:
    from step_profile import predicted_classes

    from planner.errors import PlannerError
    from planner.plan import Plan, PlanDocument
    from planner.specs.catalog import cluster_preset, model_preset

    doc = PlanDocument(Plan(tp=1, pp=2, dp=1, micro_batch=1, global_batch=4), model_preset("tiny"),
                       cluster_preset("dgx-h100"))
    with pytest.raises(PlannerError, match="one pipeline stage, no tensor"):
        predicted_classes(doc, {})
