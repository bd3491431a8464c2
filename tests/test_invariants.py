"""Invariants of the cost model and the search over random legal models, clusters and plans.

tests/test_cost_model.py checks the monotonicity properties on DGX A100 slices with bf16 plans in
the default rank order, and tests/test_search.py checks the search on two fixed problems. Here the
same promises are checked over every cluster preset (A100/H100/H200/B200/MI300X nodes, multi-node,
and the CPU host), every dtype the GPU has a peak for, random rank placements, and random batches of
plans scored together:

- every plan the search returns (top K and Pareto front) is legal and fits memory, and re-scores
  alone exactly as it was scored in its batch;
- the vectorised path (many plans in one PlanBatch) equals the scalar path (`estimate`, one plan);
- step time is positive and finite, and every breakdown entry is finite and non-negative;
- per-GPU memory never grows when tp grows, when pp grows (1F1B), or when the ZeRO stage grows
  (other things equal). Known, documented exception: ZeRO-3 holds two layers of gathered
  (unsharded) weights, so on a stage with very few layers its total can exceed ZeRO-2's; there the
  model states (weights + grads + optimizer) are checked, and the total only from 4 layers a stage;
- recompute (none -> selective -> full) never increases activation memory and never decreases
  compute time.

Hypothesis runs with a fixed budget and derandomize=True, so the suite is reproducible in CI.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from planner.cost import batch_from_plans, estimate, evaluate, prediction
from planner.errors import PlanError
from planner.plan import DIMS, Plan, check_plan
from planner.search import search
from planner.specs.catalog import cluster_names, cluster_preset
from planner.specs.cluster import ClusterSpec
from planner.specs.model import DTYPES, ModelSpec

PROPERTY = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
CLUSTERS = {name: cluster_preset(name) for name in cluster_names()}
POW2 = (1, 2, 4, 8)
EPS = 1e-12


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def models(draw: st.DrawFn) -> ModelSpec:
    heads = draw(st.sampled_from(POW2))
    kv = draw(st.sampled_from([d for d in POW2 if heads % d == 0]))
    hidden = heads * draw(st.sampled_from([8, 16, 32, 64]))
    experts = draw(st.sampled_from([0, 0, 0, 2, 4, 8]))
    return ModelSpec(
        name="random", num_layers=draw(st.sampled_from([1, 2, 3, 4, 6, 8, 12])), hidden=hidden,
        num_heads=heads, num_kv_heads=kv, ffn_hidden=hidden * draw(st.sampled_from([2, 4])),
        vocab_size=draw(st.integers(64, 8192)), seq_len=draw(st.sampled_from([32, 64, 128, 256, 512])),
        activation=draw(st.sampled_from(["gelu", "swiglu"])), norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
        position=draw(st.sampled_from(["learned", "rope"])), tied_embeddings=draw(st.booleans()),
        bias=draw(st.booleans()), dropout=draw(st.sampled_from([0.0, 0.1])), num_experts=experts,
        top_k=draw(st.integers(1, experts)) if experts else 0,
        capacity_factor=draw(st.sampled_from([1.0, 1.25, 2.0])),
    )


@st.composite
def clusters(draw: st.DrawFn) -> ClusterSpec:
    """A preset cluster resized to a random legal GPU count (one partial node or whole nodes)."""
    base = CLUSTERS[draw(st.sampled_from(sorted(CLUSTERS)))]
    g = base.gpus_per_node
    n = draw(st.sampled_from(sorted({1, 2, 4, min(8, g), g, 2 * g} - {0}) if g <= 8 else [1, 2, 4, 8, 16]))
    return base.with_gpus(n)


def tp_ok(m: ModelSpec, tp: int) -> bool:
    return m.num_heads % tp == 0 and m.num_kv_heads % tp == 0 and m.ffn_hidden % tp == 0


@st.composite
def plans_for(draw: st.DrawFn, m: ModelSpec, c: ClusterSpec, dtype: str | None = None,
              flash: bool | None = None) -> Plan:
    """A random legal plan for (m, c): sizes multiply to the GPU count, every divisibility rule holds."""
    n = c.num_gpus
    tp = draw(st.sampled_from([t for t in divisors(n) if tp_ok(m, t)]))
    pp = draw(st.sampled_from([p for p in divisors(n // tp) if m.num_layers % p == 0]))
    cp = draw(st.sampled_from([x for x in divisors(n // (tp * pp)) if m.seq_len % x == 0 and x <= 4]))
    dp = n // (tp * pp * cp)
    ep = draw(st.sampled_from([e for e in divisors(dp) if m.num_experts % e == 0])) if m.is_moe else 1
    mb = draw(st.sampled_from([1, 2, 4]))
    n_mb = draw(st.integers(1, 8))
    vpps = [v for v in (2, 3, 4) if pp > 1 and m.num_layers % (pp * v) == 0 and n_mb % pp == 0]
    schedule = draw(st.sampled_from(["1f1b", "gpipe"] + (["interleaved-1f1b"] if vpps else [])))
    vpp = draw(st.sampled_from(vpps)) if schedule == "interleaved-1f1b" else 1
    sp = tp > 1 and (m.seq_len // cp) % tp == 0 and draw(st.booleans())
    dtypes = [d for d in DTYPES if d in c.gpu.peak_flops]
    plan = Plan(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, vpp=vpp, micro_batch=mb, global_batch=dp * mb * n_mb,
                schedule=schedule, recompute=draw(st.sampled_from(["none", "selective", "full"])),
                sequence_parallel=sp, zero_stage=draw(st.sampled_from([0, 1, 2, 3])),
                dtype=dtype or draw(st.sampled_from(dtypes)),
                placement=draw(st.permutations(DIMS)),
                flash_attention=draw(st.booleans()) if flash is None else flash)
    check_plan(m, c, plan)  # the strategy only builds legal plans
    return plan


@st.composite
def problems(draw: st.DrawFn) -> tuple[ModelSpec, ClusterSpec, Plan]:
    m, c = draw(models()), draw(clusters())
    return m, c, draw(plans_for(m, c))


def _finite_nonneg(x: float) -> bool:
    return math.isfinite(x) and x >= 0


def _scores(m: ModelSpec, c: ClusterSpec, plan: Plan):
    check_plan(m, c, plan)
    return evaluate(m, c, batch_from_plans([plan]))


def _resized(c: ClusterSpec, n: int) -> ClusterSpec | None:
    try:
        return c.with_gpus(n)
    except Exception:
        return None


# ---- search ---------------------------------------------------------------------------------------


@PROPERTY
@given(models(), clusters(), st.integers(1, 64))
def test_search_returns_only_legal_fitting_plans(m: ModelSpec, c: ClusterSpec, global_batch: int) -> None:
    try:
        result = search(m, c, global_batch, top_k=4, dtype="fp32" if c.device == "cpu" else "bf16")
    except PlanError as exc:  # nothing fits or nothing is legal: a clear, named refusal
        assert str(exc)
        return
    assert result.plans, "a search that does not raise returns at least one plan"
    # The re-ranked plans are ordered by simulated step time, the rest by the closed form.
    k = min(result.reranked, len(result.plans))
    simulated = [s["step_time_s"] for s in result.simulations[:k]]
    assert simulated == sorted(simulated)
    steps = [p["step_time_s"] for p in result.predictions[k:]]
    assert steps == sorted(steps)
    for plan, pred in [*zip(result.plans, result.predictions, strict=True), *result.pareto]:
        check_plan(m, c, plan)
        assert pred["fits"] and pred["memory_gib_per_gpu"] <= pred["memory_limit_gib"]
        assert math.isfinite(pred["step_time_s"]) and pred["step_time_s"] > 0
    plan, pred = result.plans[-1], result.predictions[-1]
    assert estimate(m, c, plan) == pred  # scored in a batch == scored alone (all of them: next test)


# ---- vectorised vs scalar -----------------------------------------------------------------------


@PROPERTY
@given(st.data())
def test_vectorised_batch_equals_scalar_estimates(data: st.DataObject) -> None:
    m, c = data.draw(models()), data.draw(clusters())
    dtype = data.draw(st.sampled_from([d for d in DTYPES if d in c.gpu.peak_flops]))
    flash = data.draw(st.booleans())
    plans = data.draw(st.lists(plans_for(m, c, dtype=dtype, flash=flash), min_size=2, max_size=6))
    scores = evaluate(m, c, batch_from_plans(plans))
    for i, plan in enumerate(plans):
        assert prediction(scores, i, c, dtype) == estimate(m, c, plan), plan.describe()


# ---- step time ---------------------------------------------------------------------------------


@PROPERTY
@given(problems())
def test_step_time_positive_finite_and_breakdowns_sane(problem: tuple[ModelSpec, ClusterSpec, Plan]) -> None:
    m, c, plan = problem
    pred = estimate(m, c, plan)
    assert math.isfinite(pred["step_time_s"]) and pred["step_time_s"] > 0
    assert math.isfinite(pred["tokens_per_s"]) and pred["tokens_per_s"] > 0
    assert all(_finite_nonneg(v) for v in pred["time"].values()), pred["time"]
    assert all(_finite_nonneg(v) for v in pred["memory"].values()), pred["memory"]
    assert math.isfinite(pred["memory_gib_per_gpu"]) and pred["memory_gib_per_gpu"] > 0


# ---- memory per GPU never grows with tp, pp, ZeRO --------------------------------------------------


@PROPERTY
@given(problems())
def test_memory_never_grows_with_tp(problem: tuple[ModelSpec, ClusterSpec, Plan]) -> None:
    m, c, plan = problem
    t2 = 2 * plan.tp
    bigger = _resized(c, 2 * c.num_gpus)
    assume(bigger is not None and tp_ok(m, t2)
           and (not plan.sequence_parallel or (m.seq_len // plan.cp) % t2 == 0))
    before = _scores(m, c, plan).mem_total[0]
    after = _scores(m, bigger, dataclasses.replace(plan, tp=t2)).mem_total[0]
    assert after <= before * (1 + EPS)


@PROPERTY
@given(problems())
def test_memory_never_grows_with_pp_under_1f1b(problem: tuple[ModelSpec, ClusterSpec, Plan]) -> None:
    m, c, plan = problem
    plan = dataclasses.replace(plan, schedule="1f1b", vpp=1)
    bigger = _resized(c, 2 * c.num_gpus)
    assume(bigger is not None and m.num_layers % (2 * plan.pp) == 0)
    before = _scores(m, c, plan).mem_total[0]
    after = _scores(m, bigger, dataclasses.replace(plan, pp=2 * plan.pp)).mem_total[0]
    assert after <= before * (1 + EPS)


@PROPERTY
@given(problems())
def test_memory_never_grows_with_zero_stage(problem: tuple[ModelSpec, ClusterSpec, Plan]) -> None:
    m, c, plan = problem
    sc = [_scores(m, c, dataclasses.replace(plan, zero_stage=z)) for z in range(4)]
    states = [s.mem_weights[0] + s.mem_grads[0] + s.mem_optimizer[0] for s in sc]
    total = [s.mem_total[0] for s in sc]
    for z in range(3):
        assert states[z + 1] <= states[z] * (1 + EPS), (z, states)
    assert total[1] <= total[0] * (1 + EPS) and total[2] <= total[1] * (1 + EPS), total
    if not m.is_moe and m.num_layers // plan.pp >= 4:  # the documented ZeRO-3 exception (module doc)
        assert total[3] <= total[2] * (1 + EPS), total


# ---- recompute ------------------------------------------------------------------------------------


@PROPERTY
@given(problems())
def test_recompute_never_adds_activation_memory_nor_saves_compute(
        problem: tuple[ModelSpec, ClusterSpec, Plan]) -> None:
    m, c, plan = problem
    sc = [_scores(m, c, dataclasses.replace(plan, recompute=r)) for r in ("none", "selective", "full")]
    for a, b in itertools.pairwise(sc):
        assert b.mem_activations[0] <= a.mem_activations[0] * (1 + EPS)
        assert b.compute[0] >= a.compute[0] * (1 - EPS)
