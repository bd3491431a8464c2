"""The analytic cost model pinned to hand-derived numbers from the papers, plus monotonicity
properties over random small models and plans.

References (DESIGN.md):
- Narayanan et al. 2021 (SC'21): FLOPs per iteration with full recompute
  96·B·s·l·h²·(1 + s/(6h) + V/(16·l·h)); pipeline bubble (p−1)/m (1F1B), (p−1)/(v·m) (interleaved).
- Korthikanti et al. 2022: activation bytes per layer sbh(34 + 5as/h) and its TP / SP / selective /
  full-recompute variants; model FLOPs 72·B·L·s·h²·(1 + s/(6h) + V/(12·h·L)).
- Rajbhandari et al. 2020 (ZeRO): model states per GPU, optimizer K = 12 bytes/param sharded over N_d
  from stage 1, gradients from stage 2, weights at stage 3 (this code: 2-byte weights, 4-byte fp32
  gradients, 12-byte optimizer for bf16; 4 / 4 / 8 for fp32).
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.cost import batch_from_plans, cost_terms, estimate, evaluate
from planner.cost.memory import layer_activation_bytes
from planner.errors import PlanError
from planner.graph import build_graph
from planner.plan import Plan, check_plan
from planner.specs.catalog import cluster_preset, model_preset
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

GIB = 2**30
DGX = cluster_preset("dgx-a100-80gb")
PROPERTY = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def cluster(n: int) -> ClusterSpec:
    return DGX.with_gpus(n)


def scores(model: ModelSpec, plan: Plan, n: int | None = None):
    c = cluster(n or plan.world_size)
    check_plan(model, c, plan)
    return evaluate(model, c, batch_from_plans([plan]))


# ---- FLOPs ----------------------------------------------------------------------------------

GPT_FLOP_MODELS = ["gpt3-175b", "megatron-1t", "megatron-18b"]


@pytest.mark.parametrize("name", GPT_FLOP_MODELS)
def test_narayanan_flops_with_full_recompute(name: str) -> None:
    """Narayanan et al. 2021 Eq. (3): with full recompute a layer runs forward twice and backward once
    (4 x 24Bsh^2 + 4 x 4Bs^2h), the LM head forward once and backward once (3 x 2BshV):
    96·B·s·l·h²·(1 + s/(6h) + V/(16lh)). The graph counts full s^2 attention and no bias FLOPs,
    so the match is exact for GPT shapes (f = 4h, MHA), with or without biases."""
    m = model_preset(name)
    B, s, L, h, V = 64, m.seq_len, m.num_layers, m.hidden, m.vocab_size
    expected = 96 * B * s * L * h * h * (1 + s / (6 * h) + V / (16 * L * h))
    for model in (m, dataclasses.replace(m, bias=False)):
        plan = Plan(tp=8, pp=1, dp=1, micro_batch=1, global_batch=B, recompute="full")
        sc = evaluate(model, cluster(8), batch_from_plans([plan]))
        assert abs(sc.hw_flops[0] / expected - 1) < 1e-9
        assert sc.tokens[0] == B * s


@pytest.mark.parametrize("name", GPT_FLOP_MODELS)
def test_korthikanti_model_flops(name: str) -> None:
    """Model FLOPs (what MFU counts) do not depend on recompute: 72·B·L·s·h²·(1 + s/(6h) + V/(12hL))
    = 3 x forward. Hardware FLOPs add what is recomputed: nothing, the attention scores and context
    (4·B·s²·h per layer) for selective, a whole layer forward for full."""
    m = model_preset(name)
    B, s, L, h, V = 32, m.seq_len, m.num_layers, m.hidden, m.vocab_size
    model_flops = 72 * B * L * s * h * h * (1 + s / (6 * h) + V / (12 * h * L))
    extra = {"none": 0.0, "selective": 4 * B * s * s * h * L,
             "full": B * L * (24 * s * h * h + 4 * s * s * h)}
    for rc, add in extra.items():
        sc = evaluate(m, cluster(8), batch_from_plans([Plan(tp=8, global_batch=B, recompute=rc)]))
        assert abs(sc.model_flops[0] / model_flops - 1) < 1e-9, rc
        assert abs(sc.hw_flops[0] / (model_flops + add) - 1) < 1e-9, rc


def test_prediction_rates_follow_from_flops_and_step_time() -> None:
    m = model_preset("gpt3-175b")
    c = cluster(1024)
    plan = Plan(tp=8, pp=16, dp=8, micro_batch=1, global_batch=1536, recompute="full")
    pred = estimate(m, c, plan)
    sc = evaluate(m, c, batch_from_plans([plan]))
    step = pred["step_time_s"]
    assert step == sc.step_time[0] > 0
    assert pred["tokens_per_s"] == pytest.approx(1536 * 2048 / step, rel=1e-12)
    assert pred["tflops_per_gpu"] == pytest.approx(sc.model_flops[0] / step / 1024 / 1e12, rel=1e-12)
    assert pred["hw_tflops_per_gpu"] == pytest.approx(sc.hw_flops[0] / step / 1024 / 1e12, rel=1e-12)
    assert pred["mfu"] == pytest.approx(pred["tflops_per_gpu"] * 1e12 / c.gpu.peak("bf16"), rel=1e-12)
    assert pred["hw_tflops_per_gpu"] > pred["tflops_per_gpu"]  # full recompute costs FLOPs
    assert 0 < pred["mfu"] < pred["hfu"] < 1


# ---- activations (Korthikanti et al. 2022) ----------------------------------------------------


def _korthikanti(s: int, b: int, h: int, a: int, t: int, sp: bool, rc: str) -> float:
    """Table 2 of Korthikanti et al. 2022, bytes per layer (16-bit, dropout, unfused attention)."""
    s2 = 0.0 if rc == "selective" else 5 * a * s / (h * t)
    if rc == "full":
        return 2 * s * b * h / (t if sp else 1)
    if sp:
        return s * b * h * (34 / t + s2)
    return s * b * h * (10 + 24 / t + s2)


@pytest.mark.parametrize("rc", ["none", "selective", "full"])
@pytest.mark.parametrize(("t", "sp"), [(1, False), (2, False), (4, False), (8, False), (2, True),
                                       (4, True), (8, True)])
def test_layer_activation_bytes_match_korthikanti(t: int, sp: bool, rc: str) -> None:
    """No parallelism sbh(34 + 5as/h); TP sbh(10 + 24/t + 5as/(ht)); TP+SP sbh(34/t + 5as/(ht));
    selective recompute drops the 5as/h term; full recompute keeps the layer input, 2sbh (split by t
    with SP)."""
    m = model_preset("gpt3-175b")  # dropout 0.1
    lg = build_graph(m, "bf16", flash_attention=False)
    s, h, a = m.seq_len, m.hidden, m.num_heads
    rc_i = ["none", "selective", "full"].index(rc)
    for b in (1, 4):
        args = (lg.layer_ops, "bf16", h, np.array([b * s], dtype=float), np.array([s]), np.array([t]),
                np.array([sp]))
        kept, full = layer_activation_bytes(*args, rc_i), layer_activation_bytes(*args, 0)
        assert kept[0] == pytest.approx(_korthikanti(s, b, h, a, t, sp, rc), rel=1e-12)
        assert full[0] == pytest.approx(_korthikanti(s, b, h, a, t, sp, "none"), rel=1e-12)


def test_unparallelised_layer_is_34sbh_plus_5as2b() -> None:
    m = model_preset("megatron-22b")
    lg = build_graph(m, "bf16", flash_attention=False)
    s, h, a, b = m.seq_len, m.hidden, m.num_heads, 2
    kept = layer_activation_bytes(lg.layer_ops, "bf16", h, np.array([b * s], dtype=float), np.array([s]),
                                  np.array([1]), np.array([False]), 0)
    assert kept[0] == 34 * s * b * h + 5 * a * s * s * b


@pytest.mark.parametrize(("schedule", "vpp"), [("1f1b", 1), ("interleaved-1f1b", 2), ("interleaved-1f1b", 3)])
def test_first_stage_holds_whole_model_activations(schedule: str, vpp: int) -> None:
    """Korthikanti Sec. 4.2.3: with 1F1B the first stage holds p micro-batches of L/p layers, i.e.
    sbhL/t·(34 + 5as/h) with TP+SP; the interleaved schedule multiplies that by (1 + (p−1)/(p·v)). Sec. 4.3:
    beside them the embedding's dropout masks, sbhp/t with SP (the micro-batches in flight)."""
    m = model_preset("gpt3-175b")
    s, h, a, L, t, p = m.seq_len, m.hidden, m.num_heads, m.num_layers, 8, 8
    plan = Plan(tp=t, pp=p, dp=16, micro_batch=1, global_batch=16 * 4 * p, schedule=schedule, vpp=vpp,
                sequence_parallel=True, flash_attention=False)
    pred = estimate(m, cluster(1024), plan)
    per_layer = s * h / t * (34 + 5 * a * s / h)
    factor = 1 + (p - 1) / (p * vpp) if vpp > 1 else 1.0
    layers = float(evaluate(m, cluster(1024), batch_from_plans([plan])).mem_layer_activations[0])
    assert layers == pytest.approx(L * per_layer * factor, rel=1e-12)
    if vpp == 1:  # (interleaved, the first chunk's embedding stays in flight longer than p micro-batches)
        assert m.dropout > 0
        assert pred["memory"]["activations"] * GIB - layers == pytest.approx(s * h * p / t, rel=1e-12)


# ---- model states (ZeRO) ----------------------------------------------------------------------


@pytest.mark.parametrize(("dtype", "wb", "gb", "ob"), [("bf16", 2, 4, 12), ("fp32", 4, 4, 8)])
@pytest.mark.parametrize(("dp", "cp"), [(8, 1), (4, 2)])
@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_zero_model_state_bytes(zero: int, dp: int, cp: int, dtype: str, wb: int, gb: int, ob: int) -> None:
    """Rajbhandari et al. 2020 Sec. 5 on a pp=1, tp=1 plan (every GPU holds all Ψ parameters):
    optimizer K·Ψ/N_d from stage 1, gradients /N_d from stage 2, weights /N_d at stage 3,
    with N_d = dp x cp (context-parallel ranks also hold replicas)."""
    m = model_preset("gpt2")
    psi = m.params
    nd = dp * cp
    plan = Plan(tp=1, pp=1, dp=dp, cp=cp, micro_batch=1, global_batch=dp, zero_stage=zero, dtype=dtype)
    mem = estimate(m, cluster(8), plan)["memory"]
    assert mem["weights"] * GIB == pytest.approx(wb * psi / (nd if zero >= 3 else 1), rel=1e-12)
    assert mem["grads"] * GIB == pytest.approx(gb * psi / (nd if zero >= 2 else 1), rel=1e-12)
    assert mem["optimizer"] * GIB == pytest.approx(ob * psi / (nd if zero >= 1 else 1), rel=1e-12)


def test_zero_without_data_parallelism_shards_nothing() -> None:
    m = model_preset("gpt2")
    mems = [estimate(m, cluster(1), Plan(global_batch=4, zero_stage=z))["memory"] for z in range(4)]
    for key in ("weights", "grads", "optimizer"):
        assert len({mem[key] for mem in mems}) == 1


def test_zero3_counts_the_gathered_layer_buffers() -> None:
    """ZeRO-3 gathers each layer's full weights before use (current + prefetched: two layers)."""
    m = model_preset("gpt2")
    lg = build_graph(m)
    z2 = estimate(m, cluster(8), Plan(dp=8, global_batch=8, zero_stage=2))["memory"]
    z3 = estimate(m, cluster(8), Plan(dp=8, global_batch=8, zero_stage=3))["memory"]
    assert (z3["other"] - z2["other"]) * GIB == pytest.approx(2 * lg.layer_params * 2, rel=1e-12)


def test_zero3_without_replicas_is_zero0() -> None:
    """With dp x cp = 1 nothing is sharded and nothing is gathered: every ZeRO stage is ZeRO-0."""
    m = model_preset("gpt2")
    preds = [estimate(m, cluster(2), Plan(tp=2, global_batch=4, zero_stage=z)) for z in range(4)]
    assert all(p == preds[0] for p in preds)


def test_gpt3_175b_memory_by_hand_and_verdicts() -> None:
    """GPT-3 175B, tp 8 x pp 16 with full recompute, bf16, 1F1B (Narayanan et al. 2021 trained it on
    80 GB A100s with this kind of split): by hand, the first stage holds 96/16 = 6 layers of 12h^2 + 13h
    parameters / 8 (tp) plus the vocabulary-parallel embedding (V + s)·h / 8 (positions replicated):
    18 bytes each (2 weights + 4 fp32 gradients + 12 Adam, Rajbhandari et al. 2020); activations are
    the layer inputs 2sbh of p = 16 in-flight micro-batches x 6 layers (Korthikanti et al. 2022, full
    recompute) plus one layer's working set sbh(10 + 24/t + 5as/(ht)) and the embedding's saved
    tensors; the runtime reserve is 2 GiB. The whole model on one GPU (tp = pp = 1) needs 18 bytes x
    175e9 = 2.9 TiB, far over 80 GB."""
    m = model_preset("gpt3-175b")
    s, h, a, V, t = m.seq_len, m.hidden, m.num_heads, m.vocab_size, 8
    plan = Plan(tp=8, pp=16, dp=8, global_batch=1536, recompute="full")
    pred = estimate(m, cluster(1024), plan)
    # per layer: the four weight matrices (12h^2) and the QKV / MLP-up biases (3h + 4h) split by t; the
    # two row-parallel biases and the two LayerNorms (2h + 4h) replicated
    params = 6 * ((12 * h * h + 7 * h) / t + 6 * h) + V * h / t + s * h / t
    states = 18 * params
    acts = 16 * 6 * 2 * s * h + s * h * (10 + 24 / t + 5 * a * s / (h * t))
    mem = pred["memory"]
    assert (mem["weights"] + mem["grads"] + mem["optimizer"]) * GIB == pytest.approx(states, rel=0.02)
    assert pred["memory_gib_per_gpu"] * GIB == pytest.approx(states + acts + 2 * GIB, rel=0.05)
    assert pred["fits"] and pred["memory_gib_per_gpu"] < 80
    whole = estimate(m, cluster(1024), Plan(tp=1, pp=1, dp=1024, global_batch=1024))
    assert not whole["fits"] and whole["memory_gib_per_gpu"] * GIB > 18 * 175e9


def test_headroom_changes_only_the_limit() -> None:
    m = model_preset("gpt2")
    plan = Plan(dp=8, global_batch=64, micro_batch=8)
    a, b = estimate(m, cluster(8), plan, headroom=0.0), estimate(m, cluster(8), plan, headroom=0.5)
    assert a["memory_gib_per_gpu"] == b["memory_gib_per_gpu"]
    assert a["memory_limit_gib"] == pytest.approx(80.0) and b["memory_limit_gib"] == pytest.approx(40.0)


# ---- pipeline bubble --------------------------------------------------------------------------


@pytest.mark.parametrize(("pp", "schedule", "vpp", "mb"), [
    (8, "1f1b", 1, 1), (8, "gpipe", 1, 1), (8, "interleaved-1f1b", 2, 1), (8, "interleaved-1f1b", 3, 1),
    (16, "1f1b", 1, 2), (16, "interleaved-1f1b", 3, 1), (4, "interleaved-1f1b", 4, 2),
])
def test_bubble_is_p_minus_1_over_v_stage_times(pp: int, schedule: str, vpp: int, mb: int) -> None:
    """bubble = (p−1)/(v·m) of the m·t pipeline time, i.e. (p−1)/v stage times. The stages of GPT-3
    are nearly uniform (the first also embeds, the last also runs the LM head), so the bubble lies
    between (p−1)/v times the middle stage time and 1% above it."""
    m = model_preset("gpt3-175b")
    dp = 1024 // (8 * pp)
    plan = Plan(tp=8, pp=pp, dp=dp, micro_batch=mb, global_batch=1536, schedule=schedule, vpp=vpp)
    sc = scores(m, plan)
    n_mb = plan.grad_accum
    terms = cost_terms(m, cluster(1024), batch_from_plans([plan]))
    mid = m.num_layers / pp * (terms.layer_fwd[0, 0] + terms.layer_bwd[0, 0]) + sc.pp_comm[0] / n_mb
    formula = (pp - 1) / vpp * mid
    assert formula <= sc.bubble[0] <= 1.01 * formula
    pred = estimate(m, cluster(1024), plan)
    assert pred["time"]["bubble"] == sc.bubble[0]


def test_interleaving_divides_the_bubble_by_v() -> None:
    m = model_preset("gpt3-175b")
    base = {"tp": 8, "pp": 8, "dp": 16, "micro_batch": 1, "global_batch": 1536}
    b1 = estimate(m, cluster(1024), Plan(**base))["time"]["bubble"]
    for v in (2, 3, 4):
        bv = estimate(m, cluster(1024), Plan(**base, schedule="interleaved-1f1b", vpp=v))["time"]["bubble"]
        # each interleaved stage time also carries v times the p2p traffic, hence not exactly b1 / v
        assert bv == pytest.approx(b1 / v, rel=0.02)


def test_no_pipeline_no_bubble() -> None:
    pred = estimate(model_preset("gpt2"), cluster(8), Plan(dp=8, global_batch=64))
    assert pred["time"]["bubble"] == 0.0 and pred["time"]["pp_comm"] == 0.0


# ---- rank placement -----------------------------------------------------------------------------

ORDERS = list(itertools.permutations(("tp", "cp", "dp", "pp")))


@pytest.mark.parametrize(("name", "sizes"), [
    ("gpt2", {"tp": 2, "cp": 16, "pp": 1, "dp": 1}),
    ("gpt2", {"tp": 1, "cp": 4, "pp": 4, "dp": 2}),
    ("mixtral-8x7b", {"tp": 4, "cp": 8, "pp": 1, "dp": 1}),
    ("mixtral-8x7b", {"tp": 2, "cp": 4, "pp": 1, "dp": 4, "ep": 4}),
])
def test_size_one_dimensions_do_not_move_any_group(name: str, sizes: dict[str, int]) -> None:
    """Where a dimension of size 1 sits in the rank order changes no rank's neighbours, so all
    orders that agree on the non-trivial dimensions must predict the same thing."""
    m = model_preset(name)
    plans = [Plan(**sizes, global_batch=64, placement=o) for o in ORDERS]
    sc = evaluate(m, cluster(32), batch_from_plans(plans))
    by_active: dict[tuple[str, ...], set[float]] = {}
    for i, p in enumerate(plans):
        active = tuple(d for d in p.placement if getattr(p, d) > 1)
        by_active.setdefault(active, set()).add(float(sc.step_time[i]))
    assert all(len(v) == 1 for v in by_active.values()), by_active


def test_same_links_same_prediction_for_tied_embeddings() -> None:
    """tp2 pp4 cp2 dp2 on 8-GPU nodes: with tp or pp innermost the 4 pipeline stages share a node
    either way (ranks 0,2,4,6 or 0,1,2,3), so the tied-embedding all-reduce between the first and
    last stage stays inside the node in both."""
    m = model_preset("gpt2")
    a, b = (estimate(m, cluster(32), Plan(tp=2, pp=4, cp=2, dp=2, global_batch=64, placement=o))
            for o in (("tp", "pp", "cp", "dp"), ("pp", "tp", "cp", "dp")))
    assert a == b


# ---- legality -------------------------------------------------------------------------------


def test_estimate_rejects_an_illegal_plan_naming_the_rule() -> None:
    m = model_preset("gpt3-175b")
    with pytest.raises(PlanError) as err:
        estimate(m, cluster(1024), Plan(tp=8, pp=16, dp=8, global_batch=1536, micro_batch=5))
    assert err.value.field == "global_batch"
    with pytest.raises(PlanError) as err:
        estimate(m, cluster(40), Plan(tp=5, dp=8, global_batch=8))
    assert err.value.field == "tp" and "96" in str(err.value)
    with pytest.raises(PlanError) as err:
        estimate(m, cluster(8), Plan(tp=8, dp=2, global_batch=8))
    assert err.value.field == "world_size"


# ---- properties over random small models and plans --------------------------------------------

POW2 = (1, 2, 4, 8)


@st.composite
def models(draw: st.DrawFn) -> ModelSpec:
    heads = draw(st.sampled_from(POW2))
    kv = draw(st.sampled_from([d for d in POW2 if heads % d == 0]))
    hidden = heads * draw(st.sampled_from([8, 16, 32]))
    experts = draw(st.sampled_from([0, 0, 0, 2, 4, 8]))
    return ModelSpec(
        name="random", num_layers=draw(st.sampled_from([1, 2, 3, 4, 6, 8])), hidden=hidden,
        num_heads=heads, num_kv_heads=kv, ffn_hidden=hidden * draw(st.sampled_from([2, 4])),
        vocab_size=draw(st.integers(64, 4096)), seq_len=draw(st.sampled_from([32, 64, 128, 256])),
        activation=draw(st.sampled_from(["gelu", "swiglu"])),
        norm=draw(st.sampled_from(["layernorm", "rmsnorm"])),
        position=draw(st.sampled_from(["learned", "rope"])), tied_embeddings=draw(st.booleans()),
        bias=draw(st.booleans()), dropout=draw(st.sampled_from([0.0, 0.1])), num_experts=experts,
        top_k=draw(st.integers(1, experts)) if experts else 0,
    )


def tp_ok(m: ModelSpec, tp: int) -> bool:
    return m.num_heads % tp == 0 and m.num_kv_heads % tp == 0 and m.ffn_hidden % tp == 0


@st.composite
def problems(draw: st.DrawFn) -> tuple[ModelSpec, Plan]:
    """A random legal (model, plan) pair; the cluster is a DGX A100 slice of plan.world_size GPUs."""
    m = draw(models())
    tp = draw(st.sampled_from([t for t in POW2 if tp_ok(m, t)]))
    pp = draw(st.sampled_from([p for p in POW2 if m.num_layers % p == 0]))
    cp = draw(st.sampled_from([1, 2]))
    dp = draw(st.sampled_from([1, 2, 4]))
    ep = draw(st.sampled_from([e for e in POW2 if m.num_experts % e == 0 and dp % e == 0])) if m.is_moe else 1
    mb = draw(st.sampled_from([1, 2, 4]))
    n_mb = draw(st.integers(1, 8))
    vpps = [v for v in (2, 3, 4) if pp > 1 and m.num_layers % (pp * v) == 0 and n_mb % pp == 0]
    schedule = draw(st.sampled_from(["1f1b", "gpipe"] + (["interleaved-1f1b"] if vpps else [])))
    vpp = draw(st.sampled_from(vpps)) if schedule == "interleaved-1f1b" else 1
    sp = tp > 1 and (m.seq_len // cp) % tp == 0 and draw(st.booleans())
    plan = Plan(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, vpp=vpp, micro_batch=mb, global_batch=dp * mb * n_mb,
                schedule=schedule, recompute=draw(st.sampled_from(["none", "selective", "full"])),
                sequence_parallel=sp, zero_stage=draw(st.sampled_from([0, 1, 2, 3])),
                flash_attention=draw(st.booleans()))
    return m, plan


def _finite_nonneg(x: float) -> bool:
    return math.isfinite(x) and x >= 0


@PROPERTY
@given(problems())
def test_step_time_positive_and_breakdowns_sane(problem: tuple[ModelSpec, Plan]) -> None:
    m, plan = problem
    pred = estimate(m, cluster(plan.world_size), plan)
    assert math.isfinite(pred["step_time_s"]) and pred["step_time_s"] > 0
    assert all(_finite_nonneg(v) for v in pred["time"].values()), pred["time"]
    assert all(_finite_nonneg(v) for v in pred["memory"].values()), pred["memory"]
    t = pred["time"]
    # Communication can only add what it lasts: the step beyond compute, bubble and optimizer is at most
    # the whole of every collective and send (the overlap slowdown is a fraction of what is hidden).
    comm = t["tp_comm"] + t["pp_comm"] + t["dp_comm"] + t["cp_comm"] + t["ep_comm"]
    assert pred["step_time_s"] >= t["compute"] + t["bubble"] + t["optimizer"] - 1e-12
    assert pred["step_time_s"] - t["compute"] - t["bubble"] - t["optimizer"] <= comm * (1 + 1e-9) + 1e-12
    assert 0 < pred["mfu"] <= pred["hfu"]
    if plan.pp == 1:
        assert t["bubble"] == 0.0


@PROPERTY
@given(problems())
def test_memory_never_grows_with_tp(problem: tuple[ModelSpec, Plan]) -> None:
    """Doubling tp (and the GPU count; dp, pp, cp and batch unchanged) never raises memory per GPU."""
    m, plan = problem
    t2 = 2 * plan.tp
    legal = tp_ok(m, t2) and t2 <= 16 and (not plan.sequence_parallel or (m.seq_len // plan.cp) % t2 == 0)
    if not legal:
        return
    before = scores(m, plan).mem_total[0]
    after = scores(m, dataclasses.replace(plan, tp=t2)).mem_total[0]
    assert after <= before * (1 + 1e-12)


@PROPERTY
@given(problems())
def test_memory_never_grows_with_pp_under_1f1b(problem: tuple[ModelSpec, Plan]) -> None:
    """Doubling pp under 1F1B never raises memory per GPU (the first stage holds min(p, m) micro-
    batches of L/p layers). Not a property of GPipe (all m micro-batches in flight) nor of the
    interleaved schedule, whose first stage holds L·(1 + (p−1)/(p·v)) layers, growing with p."""
    m, plan = problem
    plan = dataclasses.replace(plan, schedule="1f1b", vpp=1)
    if m.num_layers % (2 * plan.pp):
        return
    before = scores(m, plan).mem_total[0]
    after = scores(m, dataclasses.replace(plan, pp=2 * plan.pp)).mem_total[0]
    assert after <= before * (1 + 1e-12)


@PROPERTY
@given(problems())
def test_memory_never_grows_with_zero_stage(problem: tuple[ModelSpec, Plan]) -> None:
    """Model states (weights + grads + optimizer) never grow with the ZeRO stage; total memory never
    grows from stage 0 to 1 to 2. ZeRO-3 also holds two gathered (unsharded) layers, so its total
    stays below ZeRO-2's when the weights it shards away exceed that buffer: for a dense model with
    N_d >= 2 and at least 4 layers per stage (2 bytes x Ψ_stage/2 >= 2 bytes x 2 layers)."""
    m, plan = problem
    if plan.dp * plan.cp == 1:
        return
    sc = [scores(m, dataclasses.replace(plan, zero_stage=z)) for z in range(4)]
    states = [s.mem_weights[0] + s.mem_grads[0] + s.mem_optimizer[0] for s in sc]
    total = [s.mem_total[0] for s in sc]
    for z in range(3):
        assert states[z + 1] <= states[z] * (1 + 1e-12)
    assert total[1] <= total[0] * (1 + 1e-12)
    assert total[2] <= total[1] * (1 + 1e-12)
    if not m.is_moe and m.num_layers // plan.pp >= 4:
        assert total[3] <= total[2] * (1 + 1e-12)


@PROPERTY
@given(problems())
def test_recompute_trades_activation_memory_for_compute(problem: tuple[ModelSpec, Plan]) -> None:
    """none -> selective -> full: activation memory never grows, compute time never shrinks (and
    hardware FLOPs never shrink)."""
    m, plan = problem
    sc = [scores(m, dataclasses.replace(plan, recompute=r)) for r in ("none", "selective", "full")]
    for a, b in itertools.pairwise(sc):
        assert b.mem_activations[0] <= a.mem_activations[0] * (1 + 1e-12)
        assert b.compute[0] >= a.compute[0] * (1 - 1e-12)
        assert b.hw_flops[0] >= a.hw_flops[0]
        assert b.model_flops[0] == a.model_flops[0]


def test_unfused_attention_bmms_leave_the_tensor_cores_for_heads_not_a_whole_number_of_16_byte_vectors() -> None:
    """cuBLAS's tensor-core kernels need 16-byte aligned operands; a head of d 16-bit elements is
    aligned iff 2d is a multiple of 16 (d = 8, 64, 128 are; 4, 108, 150 are not). Misaligned BMMs run
    at the GPU's fp32 CUDA-core peak; a device whose 16-bit peak is its fp32 peak (no tensor cores)
    and fp32 training are unaffected."""
    from planner.cost.compute import bmm_rate_dtype
    h100 = cluster_preset("dgx-h100").gpu
    assert [bmm_rate_dtype(h100, "bf16", (d, d)) for d in (8, 64, 128)] == ["bf16"] * 3
    assert [bmm_rate_dtype(h100, "bf16", (d, d)) for d in (4, 108, 150)] == ["fp32"] * 3
    assert bmm_rate_dtype(h100, "bf16", (192, 100)) == "fp32"  # either head width misaligned
    assert bmm_rate_dtype(h100, "fp8", (128, 128)) == "bf16"  # fp8 recipes keep attention in bf16
    assert bmm_rate_dtype(h100, "fp32", (3, 3)) == "fp32"
    assert bmm_rate_dtype(h100, "bf16", (0, 0)) == "bf16"  # unknown widths: taken as aligned
