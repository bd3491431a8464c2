"""planner.cost.model_state: one pipeline rank's weights, gradients and optimizer state.

1. It equals what the cost model's `prediction()["memory"]` reports (the stage the prediction picks:
   the first or the last) on many plans, so the cost model and this function cannot drift apart.
2. Against an independent count: the parameters of the executor's model (torch's own count of the
   modules it builds), summed over the pipeline ranks of an unsharded plan.
(The per-rank sharding of real built jobs is checked in tests/test_dry_run.py.)
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from executor.model import Transformer
from executor.pipeline_parallel import split_stage, stage_indices
from planner.cost import estimate
from planner.cost.model_state import model_state_bytes
from planner.errors import PlanError
from planner.plan import Plan
from planner.specs.catalog import load_cluster, load_model

GIB = 2**30
KEYS = ("weights", "grads", "optimizer")


def _plans() -> list[tuple[str, Plan]]:
    out = []
    grid = itertools.product(("gpt3-175b", "llama3-70b", "mixtral-8x7b", "gpt2"), ("bf16", "fp32"),
                             (1, 2, 8), (1, 2, 4), (1, 3), (2, 16), (1, 2), (0, 1, 2, 3))
    for name, dtype, tp, pp, vpp, dp, cp, zero in grid:
        model = load_model(name)
        ep = 8 if model.is_moe and dp >= 8 and tp == 1 else 1
        fields = {"tp": tp, "pp": pp, "dp": dp, "cp": cp, "ep": ep, "vpp": vpp, "micro_batch": 1,
                  "global_batch": dp * 8, "zero_stage": zero, "dtype": dtype,
                  "schedule": "interleaved-1f1b" if vpp > 1 else "1f1b"}
        try:
            plan = Plan(**fields)
            if vpp > 1 and pp == 1:
                continue
            from planner.plan import check_plan

            check_plan(model, load_cluster("dgx-h100", gpus=plan.world_size), plan)
        except PlanError:
            continue
        out.append((name, plan))
    return out


def _variants() -> list[tuple[str, Plan]]:
    """Uneven pipelines, the embedding / loss counted in the split, LoRA and low-precision recipes."""
    base = {"micro_batch": 1, "schedule": "1f1b"}
    fields = [
        ("llama3-405b", {"tp": 8, "pp": 8, "dp": 4, "global_batch": 32, "first_stage_layers": 15,
                         "last_stage_layers": 15, "zero_stage": 1}),
        ("llama3-405b", {"tp": 8, "pp": 8, "dp": 4, "vpp": 3, "global_batch": 32, "first_stage_layers": 18,
                         "last_stage_layers": 18, "schedule": "interleaved-1f1b"}),
        ("llama3-405b", {"tp": 8, "pp": 16, "dp": 2, "vpp": 8, "global_batch": 32, "embedding_in_split": True,
                         "loss_in_split": True, "schedule": "interleaved-1f1b", "zero_stage": 2}),
        ("llama3-8b", {"tp": 2, "pp": 2, "dp": 4, "global_batch": 32, "finetune": "lora"}),
        ("llama3-8b", {"pp": 4, "dp": 2, "global_batch": 32, "finetune": "lora", "zero_stage": 3}),
        ("gpt2", {"pp": 4, "dp": 2, "global_batch": 16, "finetune": "lora", "zero_stage": 1}),
        ("llama3-70b", {"tp": 4, "pp": 4, "dp": 4, "global_batch": 64, "dtype": "fp8", "zero_stage": 1}),
        ("llama3-70b", {"tp": 4, "pp": 2, "dp": 8, "global_batch": 64, "dtype": "fp8", "zero_stage": 3}),
        ("mixtral-8x7b", {"pp": 4, "dp": 16, "ep": 8, "global_batch": 64, "dtype": "fp8", "zero_stage": 2}),
        # torchtitan's pipelined FSDP2 stages keep their gradients unsharded (pipeline_unsharded_grads)
        ("llama3-405b", {"tp": 8, "pp": 8, "dp": 8, "global_batch": 64, "first_stage_layers": 15,
                         "last_stage_layers": 15, "zero_stage": 2, "framework": "torchtitan-async-tp"}),
        ("llama3-70b", {"tp": 4, "pp": 4, "dp": 4, "global_batch": 64, "zero_stage": 3, "framework": "torchtitan"}),
        ("llama3-70b", {"tp": 4, "dp": 8, "global_batch": 64, "zero_stage": 2, "framework": "torchtitan"}),
    ]
    out = []
    for name, f in fields:
        plan = Plan(**{**base, **f})
        from planner.plan import check_plan

        check_plan(load_model(name), load_cluster("dgx-h100", gpus=plan.world_size), plan)
        out.append((name, plan))
    return out


PLANS = _plans() + _variants()


def test_enough_plans_of_every_kind() -> None:
    assert len(PLANS) > 300
    assert any(p.ep > 1 for _, p in PLANS) and any(p.vpp > 1 for _, p in PLANS)
    assert {p.zero_stage for _, p in PLANS} == {0, 1, 2, 3} and any(p.cp > 1 for _, p in PLANS)


def test_equals_the_cost_models_memory_for_the_stage_it_reports() -> None:
    """The prediction reports one rank class (the one with the most memory): its weights, gradients and
    optimizer state are those of one of the plan's pipeline ranks."""
    picked = {"first": 0, "last": 0, "middle": 0, "variants": 0}
    variants = {id(p) for _, p in _variants()}
    for name, plan in PLANS:
        model = load_model(name)
        cluster = load_cluster("dgx-h100", gpus=plan.world_size)
        predicted = estimate(model, cluster, plan)["memory"]
        got = tuple(predicted[k] * GIB for k in KEYS)
        ranks = {r: tuple(getattr(model_state_bytes(model, plan, r), k) for k in KEYS) for r in range(plan.pp)}
        match = [r for r, v in ranks.items() if got == pytest.approx(v, rel=1e-12)]
        assert match, (name, plan.describe(), got, ranks)
        distinct = ranks[0] != pytest.approx(ranks[plan.pp - 1], rel=1e-12)
        picked["first"] += 0 in match and distinct
        picked["last"] += plan.pp - 1 in match and distinct
        picked["middle"] += all(0 < r < plan.pp - 1 for r in match)
        picked["variants"] += any(p is plan for _, p in PLANS if id(p) in variants)
    assert picked["first"] > 20 and picked["last"] > 20, picked  # both branches exercised


def test_bytes_are_params_times_the_documented_bytes_per_parameter() -> None:
    model = load_model("llama3-70b")
    plan = Plan(tp=8, pp=4, dp=16, micro_batch=1, global_batch=128, zero_stage=1, dtype="bf16")
    s = model_state_bytes(model, plan, 1)
    assert (s.weights, s.grads, s.optimizer) == (2 * s.weight_params, 4 * s.grad_params, 12 * s.optimizer_params)
    assert s.weight_params == s.grad_params == 16 * s.optimizer_params  # ZeRO-1: only the optimizer sharded
    assert s.total == s.weights + s.grads + s.optimizer
    with pytest.raises(ValueError, match="pp_rank"):
        model_state_bytes(model, plan, 4)


@pytest.mark.parametrize("name", ["gpt2", "llama3-8b", "mixtral-8x7b"])
@pytest.mark.parametrize(("pp", "vpp"), [(1, 1), (4, 1), (4, 2)])
def test_pipeline_ranks_sum_to_the_executors_parameter_count(name: str, pp: int, vpp: int) -> None:
    """Every rank's share (first, middle, last) against torch's count of the modules each rank builds."""
    model = dataclasses.replace(load_model(name), num_layers=8)
    plan = Plan(pp=pp, vpp=vpp, micro_batch=1, global_batch=8, dtype="fp32",
                schedule="interleaved-1f1b" if vpp > 1 else "1f1b")
    with torch.device("meta"):
        full = Transformer(model)
    for rank in range(pp):
        parts = [split_stage(full, s, pp * vpp) for s in stage_indices(rank, pp, vpp)] if pp > 1 else [full]
        counted = sum(p.numel() for part in parts for p in part.parameters())
        assert model_state_bytes(model, plan, rank).weight_params == counted, (rank, counted)
