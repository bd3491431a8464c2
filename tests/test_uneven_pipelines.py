"""Uneven pipelines (first / last stage layer counts, as Megatron-LM's --decoder-first/last-pipeline-
num-layers): the layer split, legality, the closed form and the simulation against a hand computation,
and the search expressing layer counts that pp does not divide."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from planner.cost import batch_from_plans, cost_terms, estimate
from planner.cost.stages import split_layers, stage_layout, virtual_stage_sizes
from planner.errors import PlanError
from planner.plan import Plan, check_plan
from planner.search import Constraints, search
from planner.simulate import run_schedule, simulate_plan
from planner.specs.catalog import cluster_preset, model_preset

A100 = cluster_preset("dgx-a100-80gb")


def test_split_of_126_layers_over_8_ranks_as_nemo_does() -> None:
    """NeMo's Llama 3.1 405B recipes: 126 layers, pp 8, first and last stage 15 layers: 15 + 6 x 16 + 15."""
    assert split_layers(126, 8, 15, 15) == [15, 16, 16, 16, 16, 16, 16, 15]
    with pytest.raises(ValueError, match="equal"):
        split_layers(126, 8, 15, 14)  # 97 left for 6 ranks


def test_virtual_stages_split_each_rank_evenly() -> None:
    """pp 2, vpp 2, 10 layers with 4 on the first rank: rank 0 holds 2 + 2 (virtual stages 0 and 2),
    rank 1 holds 3 + 3 (virtual stages 1 and 3), in layer order 0-1 | 2-4 | 5-6 | 7-9."""
    layout = stage_layout((0,) * 10, 1, 2, 2, 4, None)
    assert [v[0] for v in layout.virtual_layers] == [2, 3, 2, 3]
    assert layout.rank_layers[:, 0].tolist() == [4, 6]


def test_legality_names_the_rule() -> None:
    m = dataclasses.replace(model_preset("gpt2"), num_layers=10)
    c = A100.with_gpus(4)
    check_plan(m, c, Plan(pp=4, global_batch=4, first_stage_layers=1, last_stage_layers=3))
    with pytest.raises(PlanError, match="not divisible by pp") as err:
        check_plan(m, c, Plan(pp=4, global_batch=4))  # 10 % 4
    assert "first_stage_layers" in str(err.value)
    with pytest.raises(PlanError, match="equal counts"):
        check_plan(m, c, Plan(pp=4, global_batch=4, first_stage_layers=2, last_stage_layers=3))
    with pytest.raises(PlanError, match="not divisible by 2 model chunks"):
        check_plan(m, c, Plan(pp=4, vpp=2, schedule="interleaved-1f1b", global_batch=8, first_stage_layers=1,
                              last_stage_layers=3))


def test_closed_form_and_simulation_by_hand() -> None:
    """GPT-2 with 10 layers on pp 4 (first 1, last 3, middle 3 + 3), 8 micro-batches, 1F1B. From the
    cost terms' per-layer and embedding / head times, the closed form is m·max_r t_r + Σ_r t_r − max_r t_r
    (Narayanan et al. 2021) and the simulation follows the schedule with these per-stage times."""
    m = dataclasses.replace(model_preset("gpt2"), num_layers=10)
    c = A100.with_gpus(4)
    plan = Plan(pp=4, micro_batch=1, global_batch=8, first_stage_layers=1, last_stage_layers=3)
    terms = cost_terms(m, c, batch_from_plans([plan]))
    f, b = float(terms.layer_fwd[0, 0]), float(terms.layer_bwd[0, 0])
    send = 2 * float(terms.p2p[0]) + float(terms.pp_host[0])
    pre = float(terms.pre_fwd[0] + terms.pre_bwd[0])
    post = float(terms.post_fwd[0] + terms.post_bwd[0])
    t = [1 * (f + b) + pre + send, 3 * (f + b) + send, 3 * (f + b) + send, 3 * (f + b) + post + send]
    closed = 8 * max(t) + sum(t) - max(t)
    pred = estimate(m, c, plan)
    # no data parallelism; the tied embedding's gradient all-reduce and the optimizer follow the pipeline
    after = float(terms.emb_sync[0]) + pred["time"]["optimizer"]
    assert pred["step_time_s"] == pytest.approx(closed + after, rel=1e-9)
    # the simulation runs the same per-stage times through the 1F1B order
    fwd = np.array([f + float(terms.pre_fwd[0]), 3 * f, 3 * f, 3 * f + float(terms.post_fwd[0])])
    bwd = np.array([b + float(terms.pre_bwd[0]), 3 * b, 3 * b, 3 * b + float(terms.post_bwd[0])])
    host = float(terms.pp_host[0]) / 2
    makespan, *_ = run_schedule(fwd + host, bwd + host, 8, 4, 1, "1f1b", float(terms.p2p[0]))
    sim = simulate_plan(m, c, plan)
    assert sim.pipeline_s == pytest.approx(makespan, rel=1e-12)
    assert sim.stage_layers == [(0, 0), (1, 3), (4, 6), (7, 9)]


def test_memory_is_the_largest_stage_class() -> None:
    """With a light first stage (1 layer) the middle ranks (3 layers, 3 or 2 in-flight micro-batches
    on ranks 1 and 2) can hold more than the first: the peak is the largest class, never just the
    first or the last stage."""
    m = dataclasses.replace(model_preset("gpt2"), num_layers=10)
    c = A100.with_gpus(4)
    plan = Plan(pp=4, micro_batch=4, global_batch=32, first_stage_layers=1, last_stage_layers=3)
    even = estimate(m, c, Plan(pp=4, micro_batch=4, global_batch=32, first_stage_layers=4, last_stage_layers=2))
    uneven = estimate(m, c, plan)
    terms = cost_terms(m, c, batch_from_plans([plan]))
    act = float(terms.layer_act[0, 0])
    # rank 1 (3 layers, min(p - 1, m) = 3 micro-batches in flight) beats rank 0 (1 layer + embedding, 4)
    assert uneven["memory"]["activations"] * 2**30 >= 3 * 3 * act
    assert even["memory"]["activations"] * 2**30 >= 4 * 4 * act


def test_search_expresses_layer_counts_pp_does_not_divide() -> None:
    """Llama 3.1 405B (126 layers) on 8 pipeline stages: only uneven splits exist, and they are searched."""
    m = model_preset("llama3-405b")
    c = cluster_preset("dgx-h100").with_gpus(512)
    result = search(m, c, 256, top_k=3, constraints=Constraints(tp=8, pp=8, cp=1))
    assert result.plans
    for p in result.plans:
        assert p.uneven
        sizes = virtual_stage_sizes(126, 8, p.vpp, p.first_stage_layers, p.last_stage_layers, p.account)
        counts = [sum(sizes[r::8]) for r in range(8)]
        assert sum(counts) == 126 and len(set(counts[1:-1])) == 1 and counts[1] in (15, 16)
        check_plan(m, c, p)


def test_embedding_and_loss_counted_as_layers_as_nemo_405b() -> None:
    """NeMo's Llama 3.1 405B recipe: pp 8, vpp 8, the embedding and the loss counted as layers:
    126 + 2 = 128 units, 2 per virtual stage; the first virtual stage holds the embedding and 1 layer,
    the last 1 layer and the loss, every other one 2 layers; rank 0 thus 15 layers, rank 7 15, the rest 16."""

    sizes = virtual_stage_sizes(126, 8, 8, account=3)
    assert sizes[0] == 1 and sizes[-1] == 1 and set(sizes[1:-1]) == {2} and sum(sizes) == 126
    assert [sum(sizes[r::8]) for r in range(8)] == [15, 16, 16, 16, 16, 16, 16, 15]
    m = model_preset("llama3-405b")
    c = cluster_preset("dgx-h100").with_gpus(512)
    plan = Plan(tp=8, pp=8, dp=8, vpp=8, schedule="interleaved-1f1b", global_batch=256, recompute="full",
                embedding_in_split=True, loss_in_split=True)
    check_plan(m, c, plan)
    with pytest.raises(PlanError, match="not divisible by pp"):
        check_plan(m, c, dataclasses.replace(plan, embedding_in_split=False, loss_in_split=False))
    sim = simulate_plan(m, c, plan, events=False)
    assert sim.stage_layers[0] == (0, 0) and sim.stage_layers[1] == (1, 2) and sim.stage_layers[-1] == (125, 125)
