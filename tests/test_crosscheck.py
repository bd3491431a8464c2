"""Exact cross-checks of the planner against the executor's real model and runs (DESIGN.md, validation).

1. FLOPs: the layer graph's forward FLOPs x 3 equal what `torch.utils.flop_counter.FlopCounterMode`
   counts for one forward + backward of the executor's model (GPT, Llama-style, MoE; flash and math
   attention), and each op's forward FLOPs equal its module's.
2. Communication: `planner.cost.traffic.comm_terms` (bytes per step per rank of the first stage, buffer
   convention) equal the collectives counted on real 2-rank runs (tp2, tp2+SP, DDP, ZeRO-1, ZeRO-2,
   FSDP2, 1F1B, interleaved 1F1B, cp2 ring attention, dp2 + ep2) and 4-rank runs (tp2 x cp2,
   cp2 x dp2 ZeRO-1, ep2 x tp2, cp2 x dp2 x ep2), per kind (tp, cp, ep, pp, dp), with every place where
   the executor's implementation differs from the Megatron-LM one the cost model prices named, measured
   and explained below (`deviations`).
3. Activations: `estimate(...)["memory"]["activations"]` equals the bytes one micro-batch's forward
   saves for backward (`saved_tensors_hooks`) on one process (recompute none / selective / full, flash
   and math attention) and per rank under tp2 and tp2+SP.

The measuring code lives in tests/executor_workers/crosscheck.py (one torchrun launch on 2 ranks, one on 4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent / "executor_workers"))

from crosscheck import MICRO_BATCH, MICRO_BATCHES, MODELS, PLANS, PLANS_4, SavedBytes, plan_fields

from executor.activation_checkpoint import apply_ac
from executor.model import build_model
from executor.plans import local_plan
from executor.trainer import loss_fn
from planner.cost import estimate
from planner.cost.traffic import KINDS, comm_terms
from planner.graph import DTYPE_BYTES, build_graph
from planner.specs.model import ModelSpec

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "executor_workers" / "crosscheck.py"
GIB = 2**30
FLOPS_RTOL, COMM_RTOL, ACT_RTOL = 0.01, 0.05, 0.10


def _tokens(spec: ModelSpec, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, spec.vocab_size, (batch, spec.seq_len + 1), generator=g)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


# ---- 1. FLOPs ------------------------------------------------------------------------------------------
#
# FlopCounterMode counts the matmul family (mm, addmm, bmm, baddbmm, SDPA) at 2 FLOPs per multiply-add,
# and each of them costs exactly twice its forward in backward (input and weight gradient), so one
# forward + backward is 3 x forward, the convention of Narayanan et al. 2021 the graph follows. The
# first layer's input gradient is computed too (the embedding output requires grad). Norms, GELU/SiLU,
# RoPE, softmax and the loss count 0 in both.
#
# Causal attention: the graph counts the full s^2 score and context matmuls (Megatron's model-FLOPs
# convention). On CPU the fused SDPA kernel is invisible to FlopCounterMode (0 FLOPs), so we count
# under SDPBackend.MATH, which, like the executor's unfused path, computes the full s x s QK^T and masks
# it afterwards: full s^2 on both sides, which is what the graph counts. A causal-aware kernel
# (FlashAttention) executes about half of the attention-core FLOPs; the graph (model FLOPs) does not
# model that saving, and nothing here measures it.
#
# MoE: the graph prices top_k x capacity_factor expert-token pairs per token (capacity-padded experts
# compute every slot, padding included); the executor is dropless and computes exactly top_k pairs per
# token, whatever the routing balance. The two agree only at capacity_factor = 1, the MoE spec's value,
# so the comparison is apples to apples; with more capacity the graph counts slots this executor never
# computes.


def _graph_to_modules(spec: ModelSpec) -> dict[str, list[str]]:
    """Graph op -> the executor modules (layer 0) that run it (module names mirror the graph)."""
    mlp = {"moe.router": ["layers.0.moe.router"], "moe.experts": ["layers.0.moe.experts"]} if spec.is_moe else \
        {"mlp.up": ["layers.0.mlp.up"], "mlp.down": ["layers.0.mlp.down"]}
    return {"attn.qkv": ["layers.0.attn.qkv"], "attn.core": ["layers.0.attn.core"],
            "attn.proj": ["layers.0.attn.proj"], **mlp, "lm_head": ["lm_head"]}


@pytest.mark.parametrize("flash", [False, True], ids=["math", "flash"])
@pytest.mark.parametrize("model_key", ["gpt", "llama", "moe"])
def test_graph_flops_equal_flop_counter(model_key: str, flash: bool) -> None:
    spec = MODELS[model_key]
    b, s = 2, spec.seq_len
    model = build_model(spec, flash, seed=0)
    x = _tokens(spec, b)
    lg = build_graph(spec, "fp32", flash)

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        loss_fn(model(x[:, :-1]), x[:, 1:]).backward()
    counted = counter.get_total_flops()
    predicted = 3 * lg.forward_flops(b, s)
    assert counted == pytest.approx(predicted, rel=FLOPS_RTOL), (counted, predicted)
    # The s^2 part on its own: the attention core's two batched matmuls, fwd + bwd, all layers.
    bmm = sum(v for k, v in counter.get_flop_counts()["Global"].items() if "bmm" in str(k))
    attention = 3 * spec.num_layers * sum(op.flops_s for op in lg.layer_ops) * b * s * s
    assert bmm == pytest.approx(attention, rel=1e-12)

    # Op by op (forward only: FlopCounterMode attributes forward FLOPs to modules reliably).
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x[:, :-1])
    per_module = {k.removeprefix("Transformer."): sum(v.values()) for k, v in counter.get_flop_counts().items()}
    ops = {op.name: op for op in lg.layer_ops + lg.post_ops}
    for name, modules in _graph_to_modules(spec).items():
        graph_ops = [o for n, o in ops.items() if n == name or n.startswith(name + ".")]
        want = sum(o.flops * b * s + o.flops_s * b * s * s for o in graph_ops)
        got = sum(per_module.get(mod, 0) for mod in modules)
        assert got == pytest.approx(want, rel=1e-12), (name, got, want)


# ---- 3a. saved activations, one process ----------------------------------------------------------------
#
# Predicted: estimate()["memory"]["activations"] of a pp = 1 plan with one micro-batch, i.e. the graph's
# per-layer bytes kept under the recompute mode (`layer_activation_bytes`) x layers, plus the pre and
# post ops (`saved_bytes`: final norm input, LM-head input, the loss's fp32 log-probabilities). It
# leaves out the logits buffer and, under full recompute, the one layer rebuilt during backward (both
# in "other"); neither is saved for backward during the forward measured here.
# Measured: unique storages saved for backward during one micro-batch's forward and loss, parameters
# excluded, plus what checkpointing keeps: the inputs of each recomputed module (the block under full
# recompute, matching the graph's "layer input"; the attention core's Q, K, V under selective).
# Left out of the graph and so inside the tolerance: norm statistics (LayerNorm mean + rstd 8 B/token,
# RMSNorm rstd 4 B/token), int64 token ids and targets, RoPE cos/sin tables, the causal mask (s^2
# bools per layer on the math path), MoE routing indices, and under selective recompute the flash
# kernel's log-sum-exp (the graph keeps it; the checkpointed core rebuilds it). All < 3% here.


def _saved_single(spec: ModelSpec, flash: bool, recompute: str, batch: int) -> int:
    model = build_model(spec, flash, seed=0)
    apply_ac(model, recompute)  # hooks only: the same model as the trainer's recompute-then-materialise
    x = _tokens(spec, batch, seed=1)
    with SavedBytes(model) as saved:
        loss = loss_fn(model(x[:, :-1]), x[:, 1:])
    loss.backward()
    return saved.total


def _executor_only_single(spec: ModelSpec, tokens: int) -> float:
    """Bytes the executor's MoE layer saves beyond the graph (a deviation of the executor, not the graph):
    its combine uses `index_add`, whose autograd formula keeps the whole source tensor (the gated expert
    outputs, k x h per token) although its gradient needs only the index; Megatron-LM's unpermute
    (scatter_add) keeps only the pre-gate outputs and the probabilities, which the graph counts."""
    if not spec.is_moe:
        return 0.0
    return spec.num_layers * tokens * spec.top_k * spec.hidden * DTYPE_BYTES["fp32"]


SINGLE = [(m, f, rc) for m in ("gpt", "llama") for f in (False, True) for rc in ("none", "selective", "full")] + [
    ("moe", True, "none"), ("moe", False, "selective")]


@pytest.mark.parametrize(("model_key", "flash", "recompute"), SINGLE,
                         ids=[f"{m}-{'flash' if f else 'math'}-{rc}" for m, f, rc in SINGLE])
def test_activation_bytes_equal_saved_tensors_single_process(model_key: str, flash: bool, recompute: str) -> None:
    spec = MODELS[model_key]
    doc = local_plan(spec, micro_batch=MICRO_BATCH, global_batch=MICRO_BATCH, recompute=recompute,
                     flash_attention=flash)
    predicted = estimate(spec, doc.cluster, doc.plan)["memory"]["activations"] * GIB
    predicted += _executor_only_single(spec, MICRO_BATCH * spec.seq_len)
    measured = _saved_single(spec, flash, recompute, MICRO_BATCH)
    assert measured == pytest.approx(predicted, rel=ACT_RTOL), (measured, predicted, measured / predicted)


def test_activation_check_sees_the_recompute_modes() -> None:
    """The measurement has teeth: selective drops the s^2 tensors, full keeps about one tensor per layer."""
    spec = MODELS["gpt"]
    none, sel, full = (_saved_single(spec, False, rc, MICRO_BATCH) for rc in ("none", "selective", "full"))
    s2 = 4 * spec.num_heads * spec.seq_len**2 * MICRO_BATCH * spec.num_layers  # fp32 softmax outputs
    assert none - sel >= s2
    assert full < sel < none


# ---- 2 and 3b. the 2-rank launch -----------------------------------------------------------------------


def _launch(nproc: int, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp(f"crosscheck{nproc}") / "results.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(WORKER), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    results = json.loads(out.read_text()) if out.exists() else {}
    assert proc.returncode == 0, f"worker failed: {results}\n{proc.stderr[-3000:]}"
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _launch(2, tmp_path_factory)


@pytest.fixture(scope="module")
def runs4(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _launch(4, tmp_path_factory)


ALL_PLANS = {**PLANS, **PLANS_4}


def _plan(name: str) -> tuple[ModelSpec, Any]:
    model_key, fields = ALL_PLANS[name]
    spec = MODELS[model_key]
    return spec, local_plan(spec, **plan_fields(fields))


# ---- 2. communication ----------------------------------------------------------------------------------
#
# Both sides count the buffer each collective call is given (traffic.py's convention), per step, per
# rank of the first stage; the worker's ledger sees every collective at the dispatcher (DTensor's
# functional collectives, and c10d ops from DDP's reducer, FSDP2, ZeroRedundancyOptimizer and
# pipelining's sends), after warm-up steps (pipeline shape inference and DDP's bucket rebuild are
# one-off). traffic.py prices Megatron-LM's implementation; where the executor's differs, the
# difference is listed here, never folded into a tolerance:
#   executor_only: (why, kind, op, phase, bytes) collectives the executor issues that the cost model
#                  does not: they must be in the ledger and are taken out of it before comparing;
#   model_only:    (why, term or bytes) what traffic.py counts that the executor does not issue.
# What remains is defined identically on both sides and must agree within 5% (it agrees exactly).
#
# Same bytes, different collectives (not listed, by the buffer convention they are equal; the time model
# would price them differently):
# - DDP + ZeroRedundancyOptimizer (ZeRO-1 at tp = pp = 1) all-reduces the gradients and broadcasts each
#   parameter from its owner, where traffic.py (and model.py) reduce-scatter and all-gather: a ring
#   all-reduce moves twice the wire bytes of a reduce-scatter.
# - With SP the executor's vocabulary-parallel embedding all-reduces its output and keeps the local
#   sequence shard, where Megatron-LM reduce-scatters (same buffer, twice the wire bytes).


def _tokens_act(spec: ModelSpec, cp: int = 1) -> tuple[float, float, float]:
    """(activation bytes of one micro-batch on one cp rank, its logits bytes, micro-batches per step)."""
    tokens = MICRO_BATCH * spec.seq_len // cp
    return tokens * spec.hidden * 4.0, tokens * spec.vocab_size * 4.0, float(MICRO_BATCHES)


def _column_parallel_linears(spec: ModelSpec) -> int:
    """Separate ColwiseParallel-style inputs per layer: q, k, v and the MLP up (or gate and up; an MoE
    layer's experts take their input through one tensor-parallel region)."""
    return 3 + (1 if spec.is_moe else 2 if spec.activation == "swiglu" else 1)


def _expert_params_per_rank(spec: ModelSpec, plan: Any) -> float:
    """Routed-expert weights one rank holds (SwiGLU: gate, up and down, h x f each, no biases here)."""
    assert spec.activation == "swiglu" and not spec.bias
    return spec.num_layers * spec.num_experts / plan.ep * 3 * spec.hidden * spec.ffn_hidden / plan.tp


def deviations(name: str) -> tuple[list[tuple[str, str, str, str, float]], list[tuple[str, str | tuple[str, float]]]]:
    spec, doc = _plan(name)
    plan = doc.plan
    act, logits, m = _tokens_act(spec, plan.cp)
    layers = spec.num_layers
    executor_only: list[tuple[str, str, str, str, float]] = []
    model_only: list[tuple[str, str | tuple[str, float]]] = []
    if plan.tp > 1:
        # The LM head is ColwiseParallel(output_layouts=Replicate()): every micro-batch all-gathers the
        # full fp32 logits and computes an ordinary cross-entropy, where Megatron-LM's vocabulary-parallel
        # cross-entropy (DTensor's loss_parallel) keeps the logits sharded and all-reduces three fp32
        # values per token.
        executor_only.append(("logits all-gather", "tp", "all_gather", "other", m * logits))
        model_only.append(("vocab-parallel cross-entropy", "tp.loss"))
        if not plan.sequence_parallel:
            # Without SP, q, k, v (and gate, up) are separate ColwiseParallel linears, each turning the
            # replicated input into a DTensor of its own, so each all-reduces its input gradient in
            # backward (CommDebugMode: 3 in attn.qkv); Megatron-LM's fused QKV (and fused gate/up) linear
            # all-reduces once per block. With SP one PrepareModuleInput gathers the input for all of them
            # and the backward is one reduce-scatter, as in Megatron-LM.
            extra = _column_parallel_linears(spec) - 2
            executor_only.append(("unfused column-parallel input gradients", "tp", "all_reduce", "bwd",
                                  m * layers * extra * act))
        else:
            # DTensor's column-parallel linears save the all-gathered input (which the activation check
            # sees: more saved bytes) instead of the sequence shard, so backward does not re-gather it.
            model_only.append(("no backward re-gather of the saved sequence shards", "tp.regather"))
        if plan.recompute == "full":
            # Non-reentrant checkpointing stops recomputing once the last tensor backward needs is
            # rebuilt (the MLP down-projection's input), so that projection's all-reduce is not re-run.
            model_only.append(("recompute stops before the last all-reduce", ("tp", m * layers * act)))
    if plan.dp > 1 and plan.zero_stage == 2:
        # FSDP2 reshards after every backward, so ZeRO-2 (reshard_after_forward=False) all-gathers the
        # weights again in every micro-batch's forward; ZeRO-2 proper keeps them between micro-batches.
        params = build_graph(spec, "fp32").total_params
        executor_only.append(("weights re-gathered every micro-batch", "dp", "all_gather", "other",
                              (m - 1) * params * 4.0))
    if plan.ep > 1:
        # Before each dispatch the ranks of an ep group exchange how many tokens each sends to each
        # expert (one int64 per expert), so that every rank can size its receive buffers.
        executor_only.append(("token counts exchanged before each dispatch", "ep", "all_to_all", "other",
                              m * layers * spec.num_experts * 8.0))
        if plan.tp > 1:
            # Expert tensor parallelism: the partial expert outputs are all-reduced over tp on the tokens
            # the rank received (forward) and the routed tokens' input gradients before they are sent
            # back (backward): top_k rows per token (dropless), where traffic.py's tp.layers counts one
            # activation for each of these two sync points of the MLP.
            extra = m * layers * (spec.top_k - 1) * act
            executor_only.append(("expert-TP all-reduce of the received tokens", "tp", "all_reduce", "other", extra))
            executor_only.append(("expert-TP all-reduce of the routed tokens' gradient", "tp", "all_reduce", "bwd",
                                  extra))
        if plan.dp // plan.ep * plan.cp == 1:
            # An expert shard has no replica to average with (its edp group is this rank alone), so the
            # executor reduces no expert gradient; traffic.py's dp.grads counts every trained parameter.
            model_only.append(("expert gradients with no replica (dp / ep x cp = 1)",
                               ("dp", _expert_params_per_rank(spec, plan) * 4.0)))
    return executor_only, model_only


def _ledger(rows: list[dict[str, Any]]) -> Counter:
    out: Counter = Counter()
    for r in rows:
        if r["op"] != "recv":  # traffic.py counts what a rank sends
            out[(r["kind"], r["op"], r["phase"])] += r["bytes"]
    return out


def comm_comparison(name: str, rank_results: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """(measured, predicted) bytes by kind after taking out the listed deviations; measured is the mean
    over `rank_results` (one rank, or with expert parallelism every first-stage rank, see below)."""
    spec, doc = _plan(name)
    plan = doc.plan
    terms = comm_terms(spec, doc.plan)
    ledgers = [_ledger(r["rows"]) for r in rank_results]
    ledger: Counter = Counter({k: sum(x[k] for x in ledgers) / len(ledgers) for k in set().union(*ledgers)})
    assert not any(k[0] == "other" for k in ledger), ledger  # every collective belongs to tp, cp, ep, pp or dp
    executor_only, model_only = deviations(name)
    for why, kind, op, phase, nbytes in executor_only:
        have = ledger[(kind, op, phase)]
        assert have >= nbytes - 0.5, f"{name}: expected {why} ({nbytes} B of {op}), ledger has {have}"
        ledger[(kind, op, phase)] -= nbytes
    predicted = dict.fromkeys(KINDS, 0.0)
    for term, value in terms.items():
        predicted[term.split(".")[0]] += value
    for why, what in model_only:
        if isinstance(what, str):
            assert what in terms, f"{name}: traffic.py has no term {what} ({why})"
            predicted[what.split(".")[0]] -= terms[what]
        else:
            predicted[what[0]] -= what[1]
    measured = dict.fromkeys(KINDS, 0.0)
    for (kind, _op, _phase), nbytes in ledger.items():
        measured[kind] += nbytes
    if plan.cp > 1:
        # The ring attention's exchanges are sends of this rank's K/V chunk (or its gradient) to the next
        # cp rank, cp - 1 per pass: the steps of a ring all-gather, whose buffer (traffic.py's convention:
        # the gathered output, cp chunks) they carry (cp - 1)/cp of. Expressed in that convention:
        measured["cp"] *= plan.cp / (plan.cp - 1)
    return measured, predicted


def _check_comm(name: str, result: dict[str, Any]) -> None:
    assert "error" not in result, result
    first_stage = [r for r in result["ranks"] if r["first_stage"]]
    assert first_stage
    _, doc = _plan(name)
    # With expert parallelism a rank's combine all-to-all (and the expert-TP all-reduce before it) carries
    # the tokens routed to its experts, which depends on the routing; traffic.py prices balanced routing
    # (capacity factor 1: every expert gets tokens x top_k / experts). Over the ep group the tokens received
    # sum to the tokens sent, so the mean over the first-stage ranks (whole ep groups) is the balanced value.
    groups = [first_stage] if doc.plan.ep > 1 else [[r] for r in first_stage]
    # Plans with cp or ep agree byte for byte once the deviations are taken out (the README says so).
    rtol = 1e-9 if doc.plan.cp > 1 or doc.plan.ep > 1 else COMM_RTOL
    for ranks in groups:
        measured, predicted = comm_comparison(name, ranks)
        for kind in KINDS:
            assert measured[kind] == pytest.approx(predicted[kind], rel=rtol, abs=1.0), \
                (name, [r["rank"] for r in ranks], kind, measured, predicted)
        assert sum(measured.values()) > 0
        for kind in ("cp", "ep"):  # the new dimensions are measured, not only absent on both sides
            if getattr(doc.plan, kind) > 1:
                assert measured[kind] > 0, (name, kind, measured)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PLANS))
def test_comm_bytes_equal_counted_collectives(runs: dict[str, Any], name: str) -> None:
    _check_comm(name, runs[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PLANS_4))
def test_comm_bytes_equal_counted_collectives_four_ranks(runs4: dict[str, Any], name: str) -> None:
    _check_comm(name, runs4[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PLANS if PLANS[n][1].get("tp", 1) > 1])
def test_ledger_agrees_with_comm_debug_mode(runs: dict[str, Any], name: str) -> None:
    """For DTensor's collectives the ledger and torch's CommDebugMode count the same calls, and
    CommDebugMode's per-module view shows where the executor departs from Megatron-LM."""
    _, doc = _plan(name)
    r = runs[name]["ranks"][0]
    debug = r["comm_debug"]
    ours = Counter(row["op"] for row in r["micro_batch_rows"])
    theirs = {k.split(".")[-1].replace("_into_tensor", "").replace("_tensor", ""): v
              for k, v in debug["total"].items()}
    assert dict(ours) == theirs
    qkv_bwd = debug["modules"]["Transformer.layers.0.attn.qkv"]["backward"]
    if doc.plan.sequence_parallel:
        assert qkv_bwd == {"c10d_functional.reduce_scatter_tensor": 1}
    else:
        assert qkv_bwd == {"c10d_functional.all_reduce": 3}  # q, k and v each reduce their input gradient
    assert debug["modules"]["Transformer.lm_head"]["forward"].get("c10d_functional.all_gather_into_tensor", 0) >= 1


# ---- 3b. saved activations per tensor-parallel rank ----------------------------------------------------
#
# Same definitions as 3a, on each rank of tp2 / tp2+SP plans. The executor departs from Megatron-LM
# (which the graph's TP split follows, Korthikanti et al. 2022) in two places, each computed exactly:
# - the loss: without loss_parallel every rank gathers the logits and keeps the full-vocabulary fp32
#   log-probabilities, where the vocabulary-parallel cross-entropy keeps 1/t of them;
# - with SP, DTensor's column-parallel linears (QKV, MLP up, LM head) save their all-gathered input
#   instead of the sequence shard (and so skip the backward re-gather, see the communication check).


def tp_executor_only(spec: ModelSpec, plan: Any, gathered_inputs: bool = True) -> float:
    """Bytes per rank the executor saves beyond Megatron-LM's split; `gathered_inputs` False leaves out
    the SP gathered inputs (for a prediction under the executor's own profile, which counts them)."""
    tokens, t, beta = MICRO_BATCH * spec.seq_len // plan.cp, plan.tp, 4.0
    extra = (1 - 1 / t) * tokens * spec.vocab_size * beta  # full-vocabulary log-probabilities
    if plan.sequence_parallel and gathered_inputs:
        blocks = 2 * spec.num_layers + 1  # QKV and MLP up per layer, and the LM head
        extra += (1 - 1 / t) * tokens * spec.hidden * beta * blocks
    return extra


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PLANS if PLANS[n][1].get("tp", 1) > 1])
def test_activation_bytes_equal_saved_tensors_per_tp_rank(runs: dict[str, Any], name: str) -> None:
    """Predicted under the executor's own profile ("this", the CPU cluster's default), which counts the
    SP gathered inputs; the full-vocabulary log-probabilities stay a listed departure."""
    spec, doc = _plan(name)
    assert doc.plan.framework is None and doc.cluster.device == "cpu"  # so the profile is "this"
    predicted = estimate(spec, doc.cluster, doc.plan)["memory"]["activations"] * GIB
    predicted += tp_executor_only(spec, doc.plan, gathered_inputs=False)
    for r in runs[name]["ranks"]:
        measured = r["saved_bytes"]
        assert measured == pytest.approx(predicted, rel=ACT_RTOL), (name, r["rank"], measured, predicted)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PLANS if PLANS[n][1].get("cp", 1) > 1])
def test_activation_bytes_equal_saved_tensors_per_cp_rank(runs: dict[str, Any], name: str) -> None:
    """Context parallelism: each rank keeps its seq / cp tokens' activations; the ring attention saves
    what FlashAttention saves (q, k, v, output, log-sum-exp of the local chunks), as the graph counts."""
    spec, doc = _plan(name)
    predicted = estimate(spec, doc.cluster, doc.plan)["memory"]["activations"] * GIB
    whole = local_plan(spec, micro_batch=MICRO_BATCH, global_batch=MICRO_BATCH)
    assert predicted == pytest.approx(estimate(spec, whole.cluster, whole.plan)["memory"]["activations"] * GIB
                                      / doc.plan.cp, rel=1e-9)  # the graph's share: 1/cp of one process's
    for r in runs[name]["ranks"]:
        measured = r["saved_bytes"]
        assert measured == pytest.approx(predicted, rel=ACT_RTOL), (name, r["rank"], measured, predicted)


@pytest.mark.parametrize("name", [n for n in ALL_PLANS if ALL_PLANS[n][1].get("tp", 1) > 1
                                  and not ALL_PLANS[n][1].get("sequence_parallel")])
def test_this_profile_counts_the_executors_unfused_input_gradients(name: str) -> None:
    """Under the executor's own framework profile ("this": q, k, v and gate, up as separate linears) the
    cost model counts the backward all-reduces this cross-check lists as executor-only against Megatron-LM
    (and the ledger and CommDebugMode confirm on real runs: three in attn.qkv), byte for byte."""
    import dataclasses

    spec, doc = _plan(name)
    listed = [nbytes for why, *_rest, nbytes in deviations(name)[0] if why == "unfused column-parallel input gradients"]
    assert listed and listed[0] > 0
    this = comm_terms(spec, dataclasses.replace(doc.plan, framework="this"))
    assert this["tp.layers_unfused"] == pytest.approx(listed[0], rel=1e-12)
    assert "tp.layers_unfused" not in comm_terms(spec, doc.plan)  # Megatron-LM's fused linears: none


@pytest.mark.parametrize("name", [n for n in ALL_PLANS if ALL_PLANS[n][1].get("sequence_parallel")])
def test_this_profile_counts_the_executors_gathered_inputs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under the executor's own profile the SP column-parallel linears save their gathered input: the
    activation bytes this cross-check lists against Megatron-LM's split (3b) are predicted (against the
    same profile with the switch off), and the backward re-gather it lists as model-only (2) is not
    counted."""
    import dataclasses

    import planner.cost.terms as terms_module
    from planner.framework import framework

    spec, doc = _plan(name)
    this = dataclasses.replace(doc.plan, framework="this")
    megatron = dataclasses.replace(doc.plan, framework="megatron-lm")
    kept = estimate(spec, doc.cluster, this)["memory"]["activations"] * GIB
    monkeypatch.setattr(terms_module, "framework",
                        lambda name: dataclasses.replace(framework(name), sp_keeps_gathered_input=False))
    shards = estimate(spec, doc.cluster, this)["memory"]["activations"] * GIB
    monkeypatch.undo()
    listed = tp_executor_only(spec, doc.plan) - tp_executor_only(spec, doc.plan, gathered_inputs=False)
    assert listed > 0
    assert kept - shards == pytest.approx(listed, rel=1e-9)
    assert "tp.regather" in [term for _why, term in deviations(name)[1]] and "tp.regather" in comm_terms(spec, megatron)
    assert "tp.regather" not in comm_terms(spec, this)


@pytest.mark.parametrize("name", [n for n in ALL_PLANS if ALL_PLANS[n][1].get("tp", 1) > 1
                                  and ALL_PLANS[n][1].get("recompute") == "full"])
def test_this_profile_skips_the_last_collective_in_recompute(name: str) -> None:
    """Under the executor's own profile full recompute stops before a layer's last all-reduce (the
    departure this cross-check lists against Megatron-LM, and the ledger confirms on real runs)."""
    import dataclasses

    spec, doc = _plan(name)
    listed = [v for why, v in deviations(name)[1] if why == "recompute stops before the last all-reduce"]
    assert listed and listed[0][0] == "tp" and listed[0][1] > 0
    this = comm_terms(spec, dataclasses.replace(doc.plan, framework="this"))
    megatron = comm_terms(spec, dataclasses.replace(doc.plan, framework="megatron-lm"))
    assert megatron["tp.layers"] - this["tp.layers"] == pytest.approx(listed[0][1], rel=1e-12)


@pytest.mark.parametrize("name", [n for n in ALL_PLANS if ALL_PLANS[n][1].get("tp", 1) > 1])
def test_this_profile_counts_the_executors_logits_gather(name: str) -> None:
    """Under the executor's own profile the LM head's logits are gathered over TP (the all-gather this
    cross-check lists as executor-only against Megatron-LM's vocabulary-parallel loss) and the loss's
    three all-reduces per token are not issued."""
    import dataclasses

    spec, doc = _plan(name)
    listed = [nbytes for why, *_rest, nbytes in deviations(name)[0] if why == "logits all-gather"]
    assert listed and listed[0] > 0
    this = comm_terms(spec, dataclasses.replace(doc.plan, framework="this"))
    assert this["tp.logits_gather"] == pytest.approx(listed[0], rel=1e-12)
    assert "tp.loss" not in this and "tp.loss" in comm_terms(spec, doc.plan)
