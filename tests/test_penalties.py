"""The cost model charges for what practitioners avoid, so the search cannot win by ignoring a cost.

Pipeline p2p over slow links, tensor parallelism across nodes and data-parallel reductions that
cannot hide behind a short backward must each make a plan slower than its well-placed twin.
"""

from __future__ import annotations

import dataclasses

import pytest

from planner.cost import batch_from_plans, cost_terms, estimate
from planner.plan import Plan
from planner.search import Constraints, search
from planner.specs.catalog import load_cluster, model_preset


def test_pipeline_p2p_over_the_network_costs_more_than_over_nvlink() -> None:
    model = model_preset("megatron-1.7b")
    plan = Plan(pp=2, micro_batch=1, global_batch=16)
    one_node = load_cluster("dgx-a100-80gb", gpus=2)  # both stages on one node: NVLink
    two_nodes = dataclasses.replace(one_node, gpus_per_node=1, num_nodes=2, topology=None)  # two nodes: IB
    near, far = estimate(model, one_node, plan), estimate(model, two_nodes, plan)
    assert far["time"]["pp_comm"] > 5 * near["time"]["pp_comm"]
    assert far["step_time_s"] > near["step_time_s"]


def test_tensor_parallel_across_nodes_is_penalised() -> None:
    model = model_preset("gpt3-175b")
    cluster = load_cluster("dgx-a100-80gb", gpus=64)
    inside = Plan(tp=8, pp=8, micro_batch=1, global_batch=64, placement=("tp", "cp", "dp", "pp"))
    across = dataclasses.replace(inside, placement=("pp", "tp", "cp", "dp"))  # tp ranks 8 apart: 8 nodes
    p_in, p_out = estimate(model, cluster, inside), estimate(model, cluster, across)
    assert p_out["time"]["tp_comm"] > 5 * p_in["time"]["tp_comm"]
    assert p_out["step_time_s"] > 1.2 * p_in["step_time_s"]


def test_search_keeps_tensor_parallel_groups_inside_a_node() -> None:
    model = model_preset("megatron-18b")
    cluster = load_cluster("dgx-a100-80gb", gpus=64)
    result = search(model, cluster, 256, top_k=20, constraints=Constraints(tp=8))
    assert result.plans
    for plan in result.plans:
        stride = 1
        for dim in plan.placement:
            if dim == "tp":
                break
            stride *= getattr(plan, dim)
        assert stride * plan.tp <= cluster.gpus_per_node, plan


def test_data_parallel_reduction_not_hidden_behind_a_short_backward() -> None:
    """One micro-batch's backward is the only window the gradient reduction can hide behind; a plan
    with a tiny micro-batch and a large model has most of its reduction exposed."""
    model = model_preset("megatron-7.5b")
    cluster = load_cluster("dgx-a100-80gb", gpus=64)
    small = Plan(dp=64, micro_batch=1, global_batch=64)
    pred = estimate(model, cluster, small)
    terms = cost_terms(model, cluster, batch_from_plans([small]))
    backward_one_mb = model.num_layers * float(terms.layer_bwd[0, 0])
    dp_comm = pred["time"]["dp_comm"]
    assert dp_comm > backward_one_mb  # the reduction is longer than the window
    assert pred["time"]["exposed"] >= dp_comm - backward_one_mb - 1e-12
    ideal = pred["time"]["compute"] + pred["time"]["optimizer"] + pred["time"]["bubble"]
    assert pred["step_time_s"] >= ideal + (dp_comm - backward_one_mb)


def test_overlapped_communication_still_slows_compute() -> None:
    """Hidden communication costs `overlap_slowdown` x its length: with the slowdown set to zero the
    same plan is predicted faster."""
    model = model_preset("megatron-7.5b")
    cluster = load_cluster("dgx-a100-80gb", gpus=64)
    plan = Plan(dp=64, micro_batch=8, global_batch=512)
    free = dataclasses.replace(cluster, overlap_slowdown=0.0)
    assert estimate(model, cluster, plan)["step_time_s"] > estimate(model, free, plan)["step_time_s"]


def test_zero3_pays_per_micro_batch_gathers() -> None:
    model = model_preset("megatron-7.5b")
    cluster = load_cluster("dgx-a100-80gb", gpus=64)
    few = estimate(model, cluster, Plan(dp=64, micro_batch=8, global_batch=512, zero_stage=3))
    many = estimate(model, cluster, Plan(dp=64, micro_batch=1, global_batch=512, zero_stage=3))
    assert many["time"]["dp_comm"] == pytest.approx(8 * few["time"]["dp_comm"], rel=0.05)


def test_the_last_gradient_bucket_is_never_hidden() -> None:
    """A bucket is reduced once all its gradients are ready (Li et al. 2020, PyTorch DDP), and the
    backward produces the first layers' and the embedding's gradients last: gradients that fit in
    one bucket are reduced after the backward, however long it is, in the closed form and in the
    step simulation alike."""
    from planner.simulate import simulate_plans

    model = model_preset("tiny")  # ~3.5M parameters: 14 MB of fp32 gradients, one 25 MiB bucket
    cluster = load_cluster("dgx-a100-80gb", gpus=2)
    plan = Plan(dp=2, micro_batch=64, global_batch=128)
    pred = estimate(model, cluster, plan)
    terms = cost_terms(model, cluster, batch_from_plans([plan]))
    backward_one_mb = model.num_layers * float(terms.layer_bwd[0, 0])
    dp_comm = pred["time"]["dp_comm"]
    assert 0 < dp_comm < backward_one_mb  # a window long enough to hide it, were it bucketed finer
    assert pred["time"]["exposed"] == pytest.approx(dp_comm, rel=1e-9)
    sim = simulate_plans(model, cluster, [plan])[0]
    assert sim.step_time_s == pytest.approx(pred["step_time_s"], rel=1e-9)
