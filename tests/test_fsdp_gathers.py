"""Under ZeRO-2, FSDP2 all-gathers the parameters before every micro-batch's forward
(Framework.zero2_gather_per_microbatch): it reshards them after each backward. Counted by torch on two
CPU ranks and compared with the calls the cost model charges.

The worker (tests/executor_workers/fsdp_gathers.py) counts FSDP2's all-gather calls in a step of the
executor's `tiny` GPT with one and two micro-batches: under ZeRO-2 one per FSDP unit (each layer and the
root) and micro-batch, under ZeRO-3 twice that (forward and backward). DeepSpeed's and Megatron's ZeRO-2
gather the updated parameters once per step, after the optimizer.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from two_rank_worker import run_two_rank_worker

from planner.cost import batch_from_plans
from planner.cost.terms import cost_terms
from planner.plan import Plan
from planner.specs.catalog import localhost_cpu, model_preset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def counted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("torch")
    return run_two_rank_worker("fsdp_gathers.py", tmp_path_factory.mktemp("fsdp_gathers"))


def _gather_calls(zero: int, micro_batches: int, framework: str) -> float:
    """The passes of the parameter all-gather over the stage the cost model charges per step."""
    cluster = dataclasses.replace(localhost_cpu(), gpus_per_node=2)
    plan = Plan(dp=2, micro_batch=1, global_batch=2 * micro_batches, zero_stage=zero, dtype="fp32",
                framework=framework)
    comms = cost_terms(model_preset("tiny"), cluster, batch_from_plans([plan]), volumes=True).comms
    return float(np.asarray(next(c for c in comms if c.name == "dp.weights").calls)[0])


def test_zero2_under_fsdp2_gathers_before_every_micro_batch(counted: dict[str, Any]) -> None:
    units = counted["layers"] + 1  # every layer and the root module
    assert counted["zero2_mb1"] == units and counted["zero2_mb2"] == 2 * units
    assert counted["zero3_mb2"] == 2 * counted["zero2_mb2"]
    # the model: one pass over the stage per FSDP2 all-gather round, as torch counted them
    for zero in (2, 3):
        for m in (1, 2):
            assert _gather_calls(zero, m, "this") == counted[f"zero{zero}_mb{m}"] / units
    # a framework that gathers once per step after the optimizer (Megatron-Core's distributed optimizer)
    assert _gather_calls(2, 2, "megatron-core") == 1.0
