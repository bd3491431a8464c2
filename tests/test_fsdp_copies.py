"""FSDP2 copies a layer's bytes beside each of its collectives (Framework.fsdp_copy_passes), counted by
torch on two CPU ranks and compared with what the cost model charges.

FSDP2 (the executor's and torchtitan's ZeRO-2/3) copies the rank's shard into the all-gather's input,
the all-gather's output into the unsharded parameters and the unsharded gradients into the
reduce-scatter's input: per micro-batch one all-gather under ZeRO-2 (its parameters resharded after
backward), two under ZeRO-3 (forward and backward), and one reduce-scatter. The worker
(tests/executor_workers/fsdp_copies.py) counts the bytes those ops write in a step of 2 and of 4 layers;
their difference is two layers' copies. The cost model prices each copy as a read and a write at the
device's memory rate, so on a device that moves one byte per second its per-layer term is twice the
bytes written.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from two_rank_worker import run_two_rank_worker

from planner.cost import batch_from_plans
from planner.cost.terms import cost_terms
from planner.framework import framework
from planner.plan import Plan
from planner.specs.catalog import localhost_cpu
from planner.specs.model import ModelSpec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("torch")
    return run_two_rank_worker("fsdp_copies.py", tmp_path_factory.mktemp("fsdp_copies"))


def _charged_per_layer(sizes: dict[str, int], zero: int) -> float:
    """The cost model's copy seconds per layer and micro-batch on a device moving 1 B/s (no launch
    cost, no cache, no core sharing, no host time): bytes read + written."""
    base = localhost_cpu()
    gpu = dataclasses.replace(base.gpu, memory_bandwidth=1.0, memory_efficiency=1.0, kernel_overhead_s=0.0,
                              cache_bandwidth=0.0, cache_bytes=0.0)
    cluster = dataclasses.replace(base, gpu=gpu, gpus_per_node=2, compute_slots_per_node=0,
                                  fsdp_layer_overhead_s=0.0)
    spec = ModelSpec(name="copies", num_layers=2, dtype="fp32", **sizes)
    plans = [Plan(dp=2, micro_batch=1, global_batch=2, zero_stage=z, dtype="fp32", framework="this") for z in (0, zero)]
    compute = cost_terms(spec, cluster, batch_from_plans(plans)).layer_compute
    per_kind = np.asarray(compute).reshape(len(plans), -1)
    return float(per_kind[1].sum() - per_kind[0].sum())


@pytest.mark.parametrize("zero", [2, 3])
def test_fsdp2_copies_are_charged_as_torch_counts_them(measured: dict[str, Any], zero: int) -> None:
    counted = measured["bytes"]
    two, four = counted[f"zero{zero}_layers2"], counted[f"zero{zero}_layers4"]
    written_per_layer = sum(four.values()) / 2 - sum(two.values()) / 2
    # per micro-batch: all-gathers (1 under ZeRO-2, 2 under ZeRO-3), each writing the shard and the
    # unsharded layer, and one reduce-scatter writing the unsharded gradients
    assert four["all_gather_out"] - two["all_gather_out"] == pytest.approx(
        (zero - 1) * (four["reduce_scatter_in"] - two["reduce_scatter_in"]), rel=0.02)
    assert framework("this").fsdp_copy_passes == 1
    assert _charged_per_layer(measured["sizes"], zero) == pytest.approx(2 * written_per_layer, rel=0.02)
