"""Hybrid sharding (HSDP, Plan.shard_group): ZeRO shards over groups of f of the dp x cp gradient ranks
and replicates across them. Checked against published sizes, its two limits (a shard group of one is
plain data parallelism; a shard group of all is ZeRO), the plan rules, the search and the exports.
The executor's collectives are counted against traffic.py byte for byte in tests/test_crosscheck.py
(dp4-hsdp2-zero3) and its numerics in tests/test_executor_dist.py (dp4-hsdp2-zero3, cp2-dp2-hsdp2-zero2)."""

from __future__ import annotations

import dataclasses

import pytest

from planner.cost import estimate
from planner.cost.traffic import comm_terms
from planner.errors import PlanError
from planner.export import export_files, export_warnings
from planner.graph import build_graph
from planner.plan import Plan, PlanDocument, check_plan
from planner.search import Constraints, search
from planner.specs.catalog import cluster_preset, model_preset

GIB = 2**30
H100 = cluster_preset("dgx-h100")


def test_model_state_shards_over_the_shard_group_only() -> None:
    """Llama 3 70B (70.6 B parameters, Meta's model card) on 64 H100s, ZeRO-3 over shard groups of 8:
    weights 2 B, fp32 gradients 4 B and Adam state 12 B per parameter, each divided by 8, not by 64."""
    m = model_preset("llama3-70b")
    plan = Plan(dp=64, micro_batch=1, global_batch=64, zero_stage=3, shard_group=8, recompute="full")
    mem = estimate(m, H100.with_gpus(64), plan)["memory"]
    for part, per_param in (("weights", 2), ("grads", 4), ("optimizer", 12)):
        assert mem[part] * GIB == pytest.approx(70.6e9 * per_param / 8, rel=0.01)


@pytest.mark.parametrize("zero", [1, 2, 3])
def test_a_shard_group_of_all_ranks_is_zero(zero: int) -> None:
    m, c = model_preset("llama3-8b"), H100.with_gpus(32)
    plain = Plan(dp=32, micro_batch=1, global_batch=64, zero_stage=zero)
    whole = dataclasses.replace(plain, shard_group=32)
    assert not whole.hybrid
    assert estimate(m, c, whole) == estimate(m, c, plain)


def test_a_shard_group_of_one_is_plain_data_parallelism() -> None:
    """ZeRO-1 sharded over one rank: nothing to reduce-scatter or gather inside the group, and the
    replicas all-reduce the whole gradient, as DDP (ZeRO-0) does; every state is whole on each GPU."""
    m, c = model_preset("llama3-8b"), H100.with_gpus(32)
    ddp = estimate(m, c, Plan(dp=32, micro_batch=1, global_batch=64, zero_stage=0))
    one = estimate(m, c, Plan(dp=32, micro_batch=1, global_batch=64, zero_stage=1, shard_group=1))
    assert one["step_time_s"] == pytest.approx(ddp["step_time_s"], rel=1e-12)
    assert one["time"]["dp_comm"] == pytest.approx(ddp["time"]["dp_comm"], rel=1e-12)
    assert one["memory"] == pytest.approx(ddp["memory"], rel=1e-12)


def test_traffic_by_hand() -> None:
    """dp 4, ZeRO-3, shard groups of 2, two micro-batches: per micro-batch a reduce-scatter of the fp32
    gradients (its buffer: all P parameters x 4 B) inside the pair, then an all-reduce of the half it
    keeps (P x 4 / 2 B) with the other pair, and two all-gathers of the weights (forward, backward)."""
    m = model_preset("tiny")
    plan = Plan(dp=4, micro_batch=1, global_batch=8, zero_stage=3, shard_group=2, dtype="fp32")
    p = build_graph(m, "fp32").total_params
    terms = comm_terms(m, plan)
    assert terms["dp.grads_rs"] == pytest.approx(2 * 4 * p)
    assert terms["dp.grads_replicas"] == pytest.approx(2 * 4 * p / 2)
    assert terms["dp.weights"] == pytest.approx(2 * 2 * 4 * p)
    assert "dp.grads_replicas" not in comm_terms(m, dataclasses.replace(plan, shard_group=None))


def test_node_local_shards_move_less_over_the_network() -> None:
    """ZeRO-3 on 4 nodes: with the shard group inside a node, the per-layer all-gathers stay on NVLink
    and only an eighth of each gradient crosses nodes, so data-parallel time falls."""
    m, c = model_preset("llama3-8b"), H100.with_gpus(32)
    full = Plan(dp=32, micro_batch=1, global_batch=32, zero_stage=3)
    local = dataclasses.replace(full, shard_group=8)
    assert estimate(m, c, local)["time"]["dp_comm"] < estimate(m, c, full)["time"]["dp_comm"]


@pytest.mark.parametrize(("fields", "message"), [
    ({"dp": 8, "zero_stage": 3, "shard_group": 3}, "must divide"),
    ({"dp": 8, "zero_stage": 0, "shard_group": 4}, "needs zero_stage"),
])
def test_plan_rules(fields: dict, message: str) -> None:
    plan = Plan(micro_batch=1, global_batch=8, **fields)
    with pytest.raises(PlanError, match=message):
        check_plan(model_preset("llama3-8b"), H100.with_gpus(8), plan)


def test_plan_rules_experts_and_values() -> None:
    with pytest.raises(PlanError, match="expert parallelism"):
        check_plan(model_preset("mixtral-8x7b"), H100.with_gpus(8),
                   Plan(dp=8, ep=2, micro_batch=1, global_batch=8, zero_stage=1, shard_group=4))
    for bad in (0, -2, True, 2.0):
        with pytest.raises(PlanError, match="positive integer"):
            Plan(dp=8, zero_stage=1, shard_group=bad)


def test_describe_and_round_trip() -> None:
    plan = Plan(dp=8, micro_batch=1, global_batch=8, zero_stage=3, shard_group=4)
    assert "z3/hs4" in plan.describe()
    assert Plan.from_dict(plan.to_dict()) == plan
    assert "shard_group" not in Plan(dp=8).to_dict()  # old plans keep their hash


def test_search_with_a_fixed_shard_group() -> None:
    m, c = model_preset("llama3-8b"), H100.with_gpus(32)
    result = search(m, c, 64, constraints=Constraints(shard_group=8, tp=1, pp=1, cp=1), top_k=5, rerank=2)
    assert result.plans and all(p.shard_group == 8 and p.zero_stage >= 1 for p in result.plans)
    for plan, pred in zip(result.plans, result.predictions, strict=True):
        assert pred["step_time_s"] == pytest.approx(estimate(m, c, plan)["step_time_s"], rel=1e-9)


def test_search_with_a_shard_group_keeps_the_mixture_of_experts_plans_without_ep() -> None:
    """Hybrid sharding is not modelled with expert parallelism; the search leaves out only the ep > 1
    plans: every hybrid plan of the search fixed to ep 1 is also in the search that leaves ep free (it
    used to drop every structure of a mixture-of-experts model whose dp allowed an ep > 1)."""
    m, c = model_preset("qwen3-30b-a3b"), H100.with_gpus(32)
    fixed = {"shard_group": 16, "zero_stages": (3,), "tp": 1, "pp": 1, "recompute": ("full",)}
    free = search(m, c, 64, constraints=Constraints(**fixed), top_k=10_000, rerank=0)
    ep1 = search(m, c, 64, constraints=Constraints(**fixed, ep=1), top_k=10_000, rerank=0)
    assert len(ep1.plans) == ep1.fitting and len(free.plans) == free.fitting  # every fitting plan returned
    hybrid = {p for p in ep1.plans if p.hybrid}
    assert hybrid and hybrid <= set(free.plans)
    assert all(p.ep == 1 for p in free.plans if p.hybrid)
    assert free.pruned.get("hybrid sharding with expert parallelism", 0) > 0


def _doc(**fields) -> PlanDocument:
    m, c = model_preset("llama3-8b"), H100.with_gpus(32)
    plan = Plan(micro_batch=1, global_batch=32, **fields)
    check_plan(m, c, plan)
    return PlanDocument(plan=plan, model=m, cluster=c)


def test_exports() -> None:
    """torchtitan's (dp_replicate, dp_shard x cp) mesh and Megatron's distributed-optimizer instances
    express it; Megatron-FSDP and DeepSpeed shard over all data-parallel ranks and say so."""
    job = export_files(_doc(dp=32, zero_stage=3, shard_group=8), "torchtitan")["torchtitan_job.py"]
    assert "data_parallel_replicate_degree = 4" in job and "data_parallel_shard_degree = 8" in job
    args = export_files(_doc(dp=32, zero_stage=1, shard_group=8), "megatron")["megatron.args"].splitlines()
    assert "--num-distributed-optimizer-instances 4" in args
    for fmt in ("megatron", "deepspeed"):
        assert any("shard_group" in w for w in export_warnings(_doc(dp=32, zero_stage=3, shard_group=8), fmt))
