"""The optimizer's host time per DTensor parameter (ClusterSpec.dtensor_optimizer_tensor_s,
Framework.dtensor_params): charged for exactly the layouts whose parameters the executor makes DTensors,
once per parameter tensor and step.

Under FSDP2 (ZeRO-2/3, and ZeRO-1 where it runs as FSDP2) and `replicate` (ZeRO-0 under TP or a
pipeline) the executor's parameters are DTensors, under tensor parallelism alone those it shards (and the
norms under SP), and torch.optim's per-tensor AdamW runs each
of its element-wise ops through DTensor's dispatch (on the 2-vCPU VM 140 us per tensor against 23 for a
plain one, 2026-12-06); DDP and ZeroRedundancyOptimizer keep plain tensors. The worker
(tests/executor_workers/dtensor_params.py) builds the executor's `tiny` GPT under each wrapper on two CPU
ranks and reports which parameters are DTensors and how many tensors there are: the reference for which
plans the cost model charges and for how many tensors.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from two_rank_worker import run_two_rank_worker

from planner.cost import batch_from_plans, evaluate
from planner.plan import Plan
from planner.specs.catalog import localhost_cpu, model_preset

pytestmark = pytest.mark.slow

PER_TENSOR = 1e-3  # seconds per DTensor parameter and step, for the test


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    pytest.importorskip("torch")
    return run_two_rank_worker("dtensor_params.py", tmp_path_factory.mktemp("dtensor_params"))


def _optimizer_extra(plan: Plan) -> float:
    """What the cost model adds to the optimizer step of `plan` (the `tiny` GPT) at PER_TENSOR seconds
    per DTensor parameter."""
    spec = model_preset("tiny")
    base = dataclasses.replace(localhost_cpu(), gpus_per_node=plan.tp * plan.pp * plan.dp, compute_slots_per_node=0)
    charged = dataclasses.replace(base, dtensor_optimizer_tensor_s=PER_TENSOR)
    batch = batch_from_plans([plan])
    return float(evaluate(spec, charged, batch).optimizer[0] - evaluate(spec, base, batch).optimizer[0])


def _plan(entry: dict[str, Any], global_batch: int = 8) -> Plan:
    if entry["layout"] in ("tp", "tp_sp"):
        return Plan(tp=2, micro_batch=4, global_batch=global_batch, dtype="fp32",
                    sequence_parallel=entry["layout"] == "tp_sp")
    return Plan(dp=2, pp=entry["pp"], zero_stage=entry["zero"], micro_batch=4 // entry["pp"],
                global_batch=global_batch, dtype="fp32")


def test_the_dtensor_cost_is_charged_where_the_executor_builds_dtensors(built: list[dict[str, Any]]) -> None:
    assert len(built) == 10
    assert {e["wrapper"] for e in built} == {"ddp", "replicate", "fsdp", "none"}
    assert any(0 < e["dtensors"] < e["tensors"] for e in built)  # TP leaves norms plain without SP
    for entry in built:
        extra = _optimizer_extra(_plan(entry))
        if not entry["dtensors"]:
            assert extra == 0.0, entry
        elif entry["pp"] == 1:  # the whole model on the rank: once per DTensor parameter torch counts
            assert extra == pytest.approx(entry["dtensors"] * PER_TENSOR, rel=1e-9), entry
        else:  # the first pipeline stage's share of them
            assert 0.0 < extra < entry["dtensors"] * PER_TENSOR, entry


def test_the_dtensor_cost_is_paid_once_per_step(built: list[dict[str, Any]]) -> None:
    """The optimizer steps once per step, whatever the number of micro-batches."""
    fsdp = next(e for e in built if e["wrapper"] == "fsdp" and e["pp"] == 1)
    assert _optimizer_extra(_plan(fsdp, global_batch=8)) == pytest.approx(
        _optimizer_extra(_plan(fsdp, global_batch=64)), rel=1e-12)
    assert _optimizer_extra(_plan(fsdp)) > 0
