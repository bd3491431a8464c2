"""Expert tensor parallelism narrower than tp (etp; Megatron-Core's MoE parallel folding), by hand.

Mixtral 8x7B (its config.json): 32 layers, hidden 4096, 8 experts of 3 x 4096 x 14336 weights, top-2.
Its experts hold 32 x 8 x 3 x 4096 x 14336 = 45,097,156,608 parameters. On 16 GPUs with tp 4, dp 4:
- etp = tp = 4, ep 4 (ep divides dp): each GPU holds 45,097,156,608 / (4 x 4) expert parameters, replicated
  over dp / ep = 1 rank;
- etp 1, ep 8 (ep divides tp / etp x dp = 16): each GPU holds 45,097,156,608 / (1 x 8), replicated over
  tp x dp / (etp x ep) = 2 ranks, which ZeRO-1 shards the Adam state over.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from planner.cost import estimate
from planner.cost.traffic import comm_terms
from planner.errors import PlanError
from planner.export import ExportError, export_files
from planner.plan import Plan, PlanDocument, check_plan
from planner.search import Constraints, enumerate_plans, search
from planner.specs.catalog import cluster_preset, model_preset

GIB = 2**30
EXPERT_PARAMS = 32 * 8 * 3 * 4096 * 14336
MODEL = model_preset("mixtral-8x7b")
CLUSTER = cluster_preset("dgx-h100").with_gpus(16)
BASE = Plan(tp=4, dp=4, ep=4, sequence_parallel=True, global_batch=64, zero_stage=1)
FOLDED = dataclasses.replace(BASE, ep=8, etp=1)


def test_the_expert_count_by_hand() -> None:
    assert EXPERT_PARAMS == 45_097_156_608


def test_folded_experts_hold_and_shard_their_weights_over_etp_x_ep() -> None:
    """Weights (bf16) grow by the expert parameters per GPU, 2 B each: 45.1 B / 8 - 45.1 B / 16; the
    Adam state (12 B, ZeRO-1) is the same: 45.1 B / 16 x 12 either way (sharded over 1 and over 2)."""
    base, folded = (estimate(MODEL, CLUSTER, p)["memory"] for p in (BASE, FOLDED))
    extra = EXPERT_PARAMS / 8 - EXPERT_PARAMS / 16
    assert (folded["weights"] - base["weights"]) * GIB == pytest.approx(2 * extra, rel=1e-9)
    assert folded["optimizer"] == pytest.approx(base["optimizer"], rel=1e-9)


def test_etp_1_removes_the_experts_tensor_parallel_collectives() -> None:
    """Per MoE layer, of the 4 sync points of one forward + backward (an all-gather and a reduce-scatter
    each, with sequence parallelism) the two around the experts have no TP group when etp = 1, and
    backward re-gathers only the attention's input: 32 layers x 16 micro-batches x (2 fewer of each, and
    one re-gather fewer) buffers of 4096 tokens x 4096 x 2 B."""
    base, folded = comm_terms(MODEL, BASE), comm_terms(MODEL, FOLDED)
    buffer = 4096 * 4096 * 2
    calls = 32 * 16 * 2
    assert base["tp.layers_sp_gather"] - folded["tp.layers_sp_gather"] == pytest.approx(calls * buffer)
    assert base["tp.layers_sp_scatter"] - folded["tp.layers_sp_scatter"] == pytest.approx(calls * buffer)
    assert base["tp.regather"] - folded["tp.regather"] == pytest.approx(32 * 16 * buffer)


@pytest.mark.parametrize(("change", "field"), [
    ({"etp": 3}, "etp"),  # does not divide tp 4
    ({"etp": 1, "sequence_parallel": False}, "etp"),  # each rank dispatches its own share of the tokens
    ({"etp": 1, "ep": 16, "dp": 4}, "ep"),  # 16 > 8 experts
    ({"etp": 2, "ep": 16}, "ep"),  # ep must divide tp / etp x dp = 8 ... and num_experts
])
def test_illegal_folded_plans_are_refused(change: dict, field: str) -> None:
    with pytest.raises(PlanError) as err:
        check_plan(MODEL, CLUSTER, dataclasses.replace(BASE, **change))
    assert err.value.field == field


def test_a_dense_model_has_no_expert_tensor_parallelism() -> None:
    llama = model_preset("llama3-8b")
    with pytest.raises(PlanError, match="mixture-of-experts"):
        check_plan(llama, CLUSTER, dataclasses.replace(BASE, ep=1, etp=1))


def test_the_search_folds_only_when_asked() -> None:
    """Without --etp no plan carries an etp; with --etp 1 the MoE plans with tp > 1 fold, ep over
    tp x dp ranks (here ep 8 > dp on some)."""
    plain = search(MODEL, CLUSTER, 64, top_k=50, rerank=0)
    assert all(p.etp is None for p in plain.plans)
    folded = search(MODEL, CLUSTER, 64, top_k=50, rerank=0, constraints=Constraints(etp=1))
    tp_plans = [p for p in folded.plans if p.tp > 1]
    assert tp_plans and all(p.expert_tp == 1 and p.sequence_parallel for p in tp_plans)
    for p in folded.plans:
        check_plan(MODEL, CLUSTER, p)
    # every folded plan enumerated, not only the best, is one check_plan accepts: sequence parallel
    batches = list(enumerate_plans(MODEL, CLUSTER, 64, "bf16", constraints=Constraints(etp=1)))
    assert all(np.all(b.sp | (b.etp == b.tp)) for b in batches)
    assert any(np.any(b.etp != b.tp) for b in batches)


def test_exports_say_what_runs_it() -> None:
    """Megatron-LM gets --expert-tensor-parallel-size; Megatron-DeepSpeed has no equivalent (refused)."""
    doc = PlanDocument(plan=FOLDED, model=MODEL, cluster=CLUSTER)
    args = export_files(doc, "megatron")["megatron.args"].splitlines()
    assert "--expert-tensor-parallel-size 1" in args and "--expert-model-parallel-size 8" in args
    with pytest.raises(ExportError, match="etp 1 < tp 4"):
        export_files(doc, "deepspeed")


def test_the_executor_refuses_a_folded_plan_before_starting() -> None:
    from executor.run import check_executable
    from planner.errors import PlannerError

    with pytest.raises(PlannerError, match="etp 1 < tp 4"):
        check_executable(PlanDocument(plan=FOLDED, model=MODEL, cluster=CLUSTER))


def test_the_search_refuses_etp_for_a_dense_model() -> None:
    with pytest.raises(PlanError, match="mixture-of-experts") as err:
        search(model_preset("llama3-8b"), CLUSTER, 64, constraints=Constraints(etp=1))
    assert err.value.field == "etp"
