"""Collective times against hand computations: the ring within a node, the hierarchical ring across
nodes, and NCCL's tree for all-reduce across many nodes (NCCL's tuning model, src/graph/tuning.cc)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from planner.cost.comm import collective_time
from planner.specs.catalog import cluster_preset

DGX = cluster_preset("dgx-h100")


def _one(op: str, nbytes: float, size: int, stride: int, gpus: int) -> float:
    return float(collective_time(DGX.with_gpus(gpus), op, np.array([nbytes]), np.array([size]),
                                 np.array([stride]))[0])


def test_ring_within_a_node_by_hand() -> None:
    """8 GPUs on NVLink 4: 2 (g - 1) latencies + 2 (g - 1)/g S / busbw (all-gather; an all-reduce there takes
    NVLink SHARP, below)."""
    link = DGX.intra_node
    s = 256 * 2**20
    expected = 7 * link.latency + 7 / 8 * s / link.bus_bandwidth
    assert _one("all_gather", s, 8, 1, 8) == pytest.approx(expected, rel=1e-12)


def test_all_reduce_in_an_h100_node_runs_at_the_measured_nvls_rate() -> None:
    """NVLink SHARP on 8 H100s: NCCL's maintainer gives 'a peak busBw of ~480GB/s (algbw ~275GB/s)'
    (NVIDIA/nccl-tests#212), against ~370 GB/s for the ring; at 2 GPUs NVLS is no faster (NVIDIA/nccl#1455)
    and the ring stands; A100's NVSwitch has no in-switch reduction."""
    s = 4 * 2**30

    def busbw(cluster, g: int) -> float:  # nccl-tests' bus bandwidth of one all-reduce of s bytes
        t = float(collective_time(cluster.with_gpus(8), "all_reduce", np.array([s]), np.array([g]),
                                  np.array([1]))[0])
        return 2 * (g - 1) / g * s / t

    assert busbw(DGX, 8) == pytest.approx(480e9, rel=0.02)
    assert busbw(DGX, 2) == pytest.approx(DGX.intra_node.bus_bandwidth, rel=0.01)
    a100 = cluster_preset("dgx-a100-80gb")
    assert busbw(a100, 8) == pytest.approx(a100.intra_node.bus_bandwidth, rel=0.01)


def test_many_node_all_reduce_takes_the_tree() -> None:
    """A data-parallel group of 641 GPUs, one per node (stride 8 on 8-GPU nodes): a ring pays 2 x 640
    network latencies per call, NCCL's double binary tree 2 log2(641); for a small bucket the tree
    wins and the time is its formula (latency + 2 S / (0.9 busbw))."""
    inter = DGX.inter_node
    s = 64 * 2**10  # 64 KiB
    t = _one("all_reduce", s, 641, 8, 641 * 8)
    tree = 2 * math.log2(641) * inter.latency + 2 * s / (0.9 * inter.bus_bandwidth)
    ring = 2 * 640 * inter.latency + 2 * 640 / 641 * s / inter.bus_bandwidth
    assert t == pytest.approx(tree, rel=1e-12)
    assert t < ring / 20


def test_large_messages_keep_the_ring() -> None:
    """At 1 GiB over 4 nodes the ring's full bus bandwidth beats the tree's 0.9 of it."""
    inter = DGX.inter_node
    s = 2**30
    t = _one("all_reduce", s, 4, 8, 32)
    ring = 2 * 3 * inter.latency + 2 * 3 / 4 * s / inter.bus_bandwidth
    assert t == pytest.approx(ring, rel=1e-12)


def test_functional_collectives_price_at_their_own_measurement() -> None:
    """A calibrated link that timed torch's functional all-reduce on its own (what DTensor's TP issues;
    on gloo it costs more than the in-place call) prices the executor's TP at that measurement, by hand:
    alpha + 2 (g - 1)/g x S / busbw; a profile issuing plain collectives, or a link without the
    measurement, keeps the plain one."""
    import dataclasses

    from planner.cost import batch_from_plans, cost_terms
    from planner.plan import Plan
    from planner.specs.catalog import localhost_cpu, model_preset

    plain = {"group": 2, "alpha": 1e-4, "busbw": 2e9}
    func = {"group": 2, "alpha": 5e-4, "busbw": 5e8}
    base = localhost_cpu()
    link = dataclasses.replace(base.intra_node, collectives={"all_reduce": [plain], "all_reduce_functional": [func]})
    cluster = dataclasses.replace(base, intra_node=link, inter_node=link, gpus_per_node=2)
    s = 3e6
    t = float(collective_time(cluster, "all_reduce_functional", np.array([s]), np.array([2]), np.array([1]))[0])
    assert t == pytest.approx(5e-4 + s / 5e8, rel=1e-12)
    model = model_preset("tiny")
    act = 8 * model.seq_len * model.hidden * 4.0  # 8 sequences, fp32
    plan = Plan(tp=2, micro_batch=8, global_batch=8, dtype="fp32")

    def layer_tp(framework: str, c=cluster) -> float:
        return float(cost_terms(model, c, batch_from_plans([dataclasses.replace(plan, framework=framework)]))
                     .layer_tp[0, 0])

    # this executor: 2 forward all-reduces and, with q, k, v and the MLP up as separate linears, 4 backward
    assert layer_tp("this") == pytest.approx(6 * (5e-4 + act / 5e8), rel=1e-9)
    # Megatron-LM: fused QKV, in-place collectives: 2 + 2
    assert layer_tp("megatron-lm") == pytest.approx(4 * (1e-4 + act / 2e9), rel=1e-9)
    no_func = dataclasses.replace(cluster, intra_node=dataclasses.replace(link, collectives={"all_reduce": [plain]}))
    assert layer_tp("this", no_func) == pytest.approx(6 * (1e-4 + act / 2e9), rel=1e-9)
