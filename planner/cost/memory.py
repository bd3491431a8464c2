"""Memory per GPU: weights, gradients, optimizer states, activations and the rest (vectorised).

Bytes per parameter (documented constants, mixed-precision Adam as Megatron-LM runs it):
- bf16/fp16 training: weights 2 B, fp32 main gradients 4 B, optimizer 12 B (fp32 master copy + Adam
  m and v; K = 12 in Rajbhandari et al. 2020, "ZeRO", Sec. 3.1). 18 B/param in all, as in
  Korthikanti et al. 2022 Fig. 1.
- fp32 training: weights 4 B, gradients 4 B, optimizer 8 B (Adam m and v).
ZeRO (Rajbhandari et al. 2020, Sec. 5): stage 1 shards the optimizer states over the N_d data-parallel
ranks, stage 2 also the gradients, stage 3 also the weights.

Activations (Korthikanti et al. 2022, Sec. 4): the sum over the layer graph of bytes saved for backward,
split by TP as each op's sharding says (replicated ops split only with sequence parallelism); selective
recompute drops what the attention core saves beyond its inputs (the s^2 tensors; on the unfused path
with GQA also the expanded K and V); full recompute keeps only each layer's input. Pipeline
in-flight micro-batches follow the schedule: 1F1B keeps min(p, m) on the first stage; interleaved
1F1B keeps (v·p + p − 1) model chunks of L/(v·p) layers, i.e. L·(1 + (p−1)/(v·p)) layers (Korthikanti
Sec. 4.2.3); GPipe keeps all m.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.framework import Framework, GradientPath
from planner.graph import DTYPE_BYTES, LSE_BYTES, LayerGraph, Op, key_positions
from planner.precision import RECIPES, base_dtype
from planner.specs.model import ModelSpec

Array = np.ndarray

WEIGHT_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
GRAD_BYTES = {"bf16": 4, "fp16": 4, "fp32": 4}
OPTIMIZER_BYTES = {"bf16": 12, "fp16": 12, "fp32": 8}


def grad_bytes(dtype: str, reduce_in_fp32: bool = True) -> int:
    """Bytes of one gradient element in the gradient buffer and its data-parallel reduction: fp32
    (GRAD_BYTES), or the 16-bit training dtype where the framework keeps them so (Framework
    .grad_reduce_in_fp32 False; fp32 training stays fp32)."""
    if reduce_in_fp32 or WEIGHT_BYTES[dtype] >= 4:
        return GRAD_BYTES[dtype]
    return WEIGHT_BYTES[dtype]


def gradient_path(fw: Framework, dtype: str) -> GradientPath:
    """How the framework `fw` keeps, reduces and accumulates gradients under `dtype`: the profile's own
    path where it states one for the dtype's 16-bit base, else one buffer of `grad_bytes` reduced as is
    (reduce-scattered under ZeRO-1, accumulated inside the weight-gradient GEMM)."""
    own = fw.gradient_override(base_dtype(dtype))
    if own is not None:
        return own
    b = float(grad_bytes(dtype, fw.grad_reduce_in_fp32))
    return GradientPath(buffer_bytes=b, reduce_bytes=b)


FP32_BYTES = 4


def loss_peak_bytes(kernel: str, logit_bytes: Array | float, vocab_parallel: Array | bool = False) -> Array:
    """Bytes per logit (token x vocabulary entry on this GPU) the cross-entropy holds at its peak: what it
    saves for backward plus the transients beside it then (Framework.cross_entropy):

    - "fused": Megatron's vocabulary-parallel cross-entropy (megatron/core/tensor_parallel/
      cross_entropy.py) casts the 16-bit logits to one fp32 buffer, turns it into the softmax in place,
      saves it and overwrites it with the gradient in backward: 4 B beside the `logit_bytes` logits;
    - "eager-fp32": torch's F.cross_entropy on `.float()` logits in eager autograd (torchtitan's loss
      until it was compiled in April 2025, pytorch/torchtitan#1033; the logits freed before backward
      by `del pred`): in backward the saved fp32 log-probabilities, the nll loss's fp32 gradient and
      log_softmax's fp32 gradient, 12 B; under vocabulary parallelism (`vocab_parallel`, torch's
      loss_parallel over DTensor shards) its handlers keep more fp32 temporaries, 16 B (both counted
      by torch's MemTracker in tests/test_loss_memory.py);
    - "compiled": the same loss compiled by Inductor saves the 16-bit logits (and a per-token
      log-sum-exp) and writes a 16-bit gradient: 2 x `logit_bytes`.
    """
    if kernel == "fused":
        return np.asarray(logit_bytes + FP32_BYTES, dtype=float)
    if kernel == "eager-fp32":
        return np.where(vocab_parallel, 4.0 * FP32_BYTES, 3.0 * FP32_BYTES)
    if kernel == "compiled":
        return np.asarray(2.0 * logit_bytes, dtype=float)
    raise ValueError(f"unknown cross-entropy kernel {kernel!r}")


# Bytes the optimizer step streams per parameter: read master/param, grad, m, v; write master, m, v
# (+ the 16-bit copy); gradient clipping (read grads) and zeroing (write grads).
OPTIMIZER_STEP_BYTES = {"bf16": 30 + 8, "fp16": 30 + 8, "fp32": 28 + 8}
# Low-precision recipes keep the bf16 weights and fp32 masters, gradients and moments of their base
# format (their low-precision weight copies are counted per linear layer, planner/cost/terms.py).
for _name, _r in RECIPES.items():
    for _table in (WEIGHT_BYTES, GRAD_BYTES, OPTIMIZER_BYTES, OPTIMIZER_STEP_BYTES):
        _table.setdefault(_name, _table[_r.base])


@dataclass
class StageParams:
    """Parameters held by one GPU of a stage, split by how they are replicated."""

    dense: Array  # replicated over the dp x cp ranks
    expert: Array  # replicated over dp x cp / ep ranks


def op_params_per_gpu(op: Op, tp: Array, ep: Array) -> Array:
    """Parameters of `op` one GPU holds: column / row / vocabulary-parallel weights split by tp (a
    row-parallel bias is replicated), routed experts also split by ep."""
    p = float(op.params)
    if op.tp == "replicated":
        return np.full_like(tp, p, dtype=np.float64)
    shard = (p - op.bias) / tp + op.bias if op.tp == "row" else p / tp
    return shard / ep if op.routed else shard


def stage_params(lg: LayerGraph, tp: Array, pp: Array, ep: Array, first: bool) -> StageParams:
    """Parameters on one GPU of the first (`first=True`) or the last pipeline stage (even split)."""
    m = lg.model
    zero = np.zeros_like(tp, dtype=np.float64)
    counts = np.asarray(lg.kind_counts, dtype=np.float64)
    dense, expert = zero.copy(), zero.copy()
    for n, kind in zip(counts, lg.kinds, strict=True):
        dense = dense + n * sum((op_params_per_gpu(op, tp, ep) for op in kind.ops if not op.routed), zero)
        expert = expert + n * sum((op_params_per_gpu(op, tp, ep) for op in kind.ops if op.routed), zero)
    dense, expert = dense / pp, expert / pp
    pre = sum((op_params_per_gpu(op, tp, ep) for op in lg.pre_ops), zero)
    post = sum((op_params_per_gpu(op, tp, ep) for op in lg.post_ops), zero)
    single = pp == 1
    if first:
        dense = dense + pre + np.where(single, post, 0.0)
    else:
        # With pipelining, the last stage keeps its own copy of a tied embedding for the LM head.
        tied_copy = m.vocab_size * m.hidden / tp if m.tied_embeddings else 0.0
        dense = dense + post + np.where(single, pre, tied_copy)
    return StageParams(dense=dense, expert=expert)


def _saved_divisor(op: Op, tp: Array, sp: Array, gathered: bool = False) -> Array:
    """TP split of what an op saves: sharded tensors by tp; replicated ones only with SP. A column-parallel
    GEMM saves its (replicated) input, under SP its sequence shard, or with `gathered` the all-gathered
    input (Framework.sp_keeps_gathered_input: not split)."""
    sharded = op.tp in ("row", "heads") or op.kind == "loss" or (op.tp == "column" and op.kind != "gemm")
    if sharded:
        return tp
    if gathered and op.kind == "gemm" and op.tp in ("column", "vocab") and not op.routed:
        return np.ones_like(tp)
    return np.where(sp, tp, 1)


def saved_bytes(ops: list[Op], tokens: Array, seq: Array, tp: Array, sp: Array,
                drop_s2: Array | bool = False, gathered: bool = False) -> Array:
    """Bytes `ops` save for backward for one micro-batch of `tokens` local tokens (`gathered`: the
    column-parallel GEMMs save their all-gathered input under SP, `_saved_divisor`)."""
    total = np.zeros_like(tokens, dtype=np.float64)
    for op in ops:
        total = total + op.saved * tokens / _saved_divisor(op, tp, sp, gathered)
        if op.saved_s or op.saved_sel:  # the attention core's (head-split) recomputable tensors
            s2 = (op.saved_s * key_positions(op, seq) + op.saved_sel) * tokens / tp
            total = total + np.where(drop_s2, 0.0, s2)
    return total


def layer_activation_bytes(ops: tuple[Op, ...] | list[Op], dtype: str, hidden: int, tokens: Array, seq: Array,
                           tp: Array, sp: Array, recompute: int, gathered: bool = False) -> Array:
    """Bytes one layer of `ops` keeps for backward per micro-batch under recompute mode
    0 (none), 1 (selective: drop the attention core's recomputable tensors) or 2 (full: keep only
    the layer's input, sequence-sharded with SP); `gathered` as in `saved_bytes`."""
    if recompute == 2:
        return DTYPE_BYTES[dtype] * hidden * tokens / np.where(sp, tp, 1)
    return saved_bytes(list(ops), tokens, seq, tp, sp, drop_s2=recompute == 1, gathered=gathered)


def matmul_outputs(op: Op, model: ModelSpec) -> list[float]:
    """Per-token output widths of the separate matmuls a GEMM op stands for, in execution order as
    torchtitan's Llama / PyTorch modules run them: the fused QKV is wq, wk, wv; a gated MLP's up is w1
    (gate), w3 (up); everything else one matmul."""
    _fin, fout, copies = op.gemm  # type: ignore[misc]
    if op.name == "attn.qkv":
        q = fout - 2 * model.kv_hidden
        return [q, model.kv_hidden, model.kv_hidden]
    if op.name in ("mlp.up", "moe.experts.up") and model.activation == "swiglu":
        return [fout / 2 * copies, fout / 2 * copies]
    return [fout * copies]


# Checkpoint policies that keep the outputs of chosen matmuls (and the layer's input) and recompute
# the rest of the layer in backward:
# - op-selective: torchtitan's per-op selective activation checkpointing (its `_custom_policy`: save
#   the output of every compute op in its save list, matmuls and the SDPA kernel, except every second
#   matmul of the layer);
# - save-matmuls: every matmul output, as JAX's `jax.checkpoint_policies.checkpoint_dots` (PaxML's
#   `SAVE_DOT_ONLY`); a fused attention kernel is not a dot, so it is recomputed;
# - save-matmuls-but-mlp-up: every matmul but the MLP's input projections (gate and up), as MaxText's
#   `save_dot_except_mlpwi` (`save_only_these_names` of the q / k / v / out projections and `mlpwo`);
# - save-attn-proj: the attention block's projections alone, as MaxText's `save_dot_except_mlp` and
#   PaxML's `SAVE_QKV_OUT_PROJ` (the combined QKV and output projections).
MATMUL_POLICIES = ("op-selective", "save-matmuls", "save-matmuls-but-mlp-up", "save-attn-proj")


def _mlp_up(op: Op) -> bool:
    return op.name in ("mlp.up", "moe.experts.up", "moe.shared.up")


def saved_matmul_flags(policy: str, ops: tuple[Op, ...] | list[Op], model: ModelSpec) -> list[bool]:
    """Whether `policy` keeps each matmul of one layer, in the order the modules run them
    (`matmul_outputs`): what the executor's policy decides per matmul call."""
    flags: list[bool] = []
    for op in ops:
        if op.kind != "gemm":
            continue
        for _ in matmul_outputs(op, model):
            if policy == "op-selective":
                flags.append(len(flags) % 2 == 0)  # the 1st, 3rd, ... matmul of the layer
            elif policy == "save-matmuls":
                flags.append(True)
            elif policy == "save-matmuls-but-mlp-up":
                flags.append(not _mlp_up(op))
            elif policy == "save-attn-proj":
                flags.append(op.name.startswith("attn."))
            else:
                raise ValueError(f"unknown matmul checkpoint policy {policy!r}")
    return flags


def kept_by_layer_order(policy: str) -> bool:
    """Whether `policy` names the matmuls it keeps by their place in the layer graph (the executor then
    needs each block to run exactly the graph's matmuls: dense, no adapters); torchtitan's op-selective
    keeps every other matmul call, however many a block runs."""
    return policy in MATMUL_POLICIES and policy != "op-selective"


def saves_attention(policy: str) -> bool:
    """Whether `policy` keeps the fused attention kernel's output and log-sum-exp (else it reruns it)."""
    return policy == "op-selective"


def _matmul_plan(policy: str, ops: tuple[Op, ...] | list[Op], model: ModelSpec) -> list[tuple[Op, float, float]]:
    """(GEMM op, output width saved, fraction of its matmul work recomputed) for each GEMM op."""
    flags = iter(saved_matmul_flags(policy, ops, model))
    out = []
    for op in ops:
        if op.kind != "gemm":
            continue
        widths = matmul_outputs(op, model)
        saved = sum(w for w in widths if next(flags))
        total = sum(widths)
        out.append((op, saved, (total - saved) / total if total else 0.0))
    return out


def policy_recomputed(policy: str, ops: tuple[Op, ...] | list[Op], model: ModelSpec) -> dict[str, float]:
    """Fraction of each op's forward that `policy` repeats in backward: every memory-bound op (norms,
    activations, rope, residuals), the attention core unless the policy saves it, and each GEMM's
    recomputed matmuls."""
    frac = {op.name: 1.0 for op in ops if op.kind not in ("gemm", "attention", "embedding", "loss")}
    if not saves_attention(policy):
        frac.update({op.name: 1.0 for op in ops if op.kind == "attention"})
    frac.update({op.name: f for op, _, f in _matmul_plan(policy, ops, model)})
    return frac


def policy_saved_bytes(policy: str, ops: tuple[Op, ...] | list[Op], model: ModelSpec, dtype: str, tokens: Array,
                       tp: Array, sp: Array) -> Array:
    """Bytes one layer keeps under `policy`: its input (the checkpoint's), the attention core's output
    and fp32 log-sum-exp where the policy saves them, and the saved matmul outputs (column-parallel
    ones split by tp; row-parallel ones are partial sums of the full width, reduce-scattered with SP)."""
    b = DTYPE_BYTES[dtype]
    seq_split = np.where(sp, tp, 1)
    total = b * model.hidden * tokens / seq_split
    if saves_attention(policy):
        for op in ops:
            if op.kind == "attention":
                total = total + (b * model.num_heads * model.head_dim + LSE_BYTES * model.num_heads) * tokens / tp
    for op, saved, _ in _matmul_plan(policy, ops, model):
        if not saved:
            continue
        div = tp if op.tp in ("column", "vocab") else (seq_split if op.tp == "row" else np.where(sp, tp, 1))
        total = total + b * saved * tokens / div
    return total


def in_flight_microbatches(pp: Array, vpp: Array, m: Array, sched: Array, rank: Array) -> Array:
    """Micro-batches of a pipeline rank's layers held at its peak (in units of all its layers).

    1F1B: rank r keeps min(p − r, m) micro-batches (Narayanan et al. 2021, Fig. 4); interleaved 1F1B
    runs 2(p − r − 1) + (v − 1)p warm-up chunk-forwards plus one (Megatron-LM's schedule), each a
    1/v of the rank's layers; GPipe keeps all m.
    """
    p, v = pp.astype(np.float64), vpp.astype(np.float64)
    mf = m.astype(np.float64)
    one_f_one_b = np.minimum(p - rank, mf)
    interleaved = np.minimum(v * mf, 2 * (p - rank - 1) + (v - 1) * p + 1) / v
    held = np.select([sched == 0, sched == 1], [one_f_one_b, interleaved], default=mf)
    return np.where(pp == 1, 1.0, held)
