"""Compute time of the layer graph's ops on one GPU (roofline per op, vectorised over plans).

Each op runs at max(compute-bound time, memory-bound time):
- GEMMs: FLOPs / (peak x efficiency(FLOPs)) + fixed kernel cost, against the bytes of A, B and C;
- memory-bound ops (norms, activations, dropout, residual adds, softmax): bytes / achieved bandwidth
  plus a fixed launch cost per kernel.
Backward is 2x the forward GEMM work (input gradient + weight gradient, Narayanan et al. 2021) and 2x
1.5x the memory traffic of element-wise ops; a fused (flash) attention backward is 2.5x its forward (it
recomputes the scores: five matmuls against two, Dao 2023).

Low-precision recipes (planner/precision.py) run the linear layers' GEMMs (not the LM head, not the
MoE router) at the GPU's FP8 / FP4 peak, plus the memory-bound quantisation of their operands: in
forward the input and the weight, in backward the output gradient and (per-tensor FP8 on Hopper)
transposed copies of the input and the weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.cost.memory import MATMUL_POLICIES, policy_recomputed
from planner.graph import DTYPE_BYTES, LayerGraph, Op, causal_fraction, key_positions
from planner.precision import RECIPES, QuantiseTraffic, base_dtype, gemm_peak_key, quantise_traffic
from planner.specs.cluster import GPUSpec

Array = np.ndarray
FLASH_BWD_FACTOR = 2.5
# Tensor-core GEMM kernels load their operands in 16-byte vectors: every matrix pointer, leading
# dimension and batch stride must be a multiple of 16 bytes (cuBLAS's Tensor Core usage requirements,
# the "tensorop restrictions" NVIDIA's CUTLASS maintainers point to in NVIDIA/cutlass#75).
TENSOR_CORE_ALIGNMENT_BYTES = 16
# Backward of a memory-bound op reads the saved input and the output gradient and writes the input
# gradient: three tensor passes against the forward's two.
ELEMENTWISE_BWD_FACTOR = 1.5


@dataclass
class OpTimes:
    """Forward and backward seconds of a set of ops for one micro-batch (arrays over plans)."""

    fwd: Array
    bwd: Array
    wgrad: Array | float = 0.0  # the part of bwd that computes weight gradients (skipped for frozen weights)


def _divisor(op: Op, tp: Array, sp: Array) -> Array:
    """How many ways TP (or sequence parallelism) splits an op's tokens x features."""
    if op.tp in ("column", "row", "heads", "vocab") and op.kind != "embedding":
        return tp
    return np.where(sp, tp, 1)  # replicated ops (and the embedding output): split by SP only


def low_precision(op: Op, dtype: str) -> bool:
    """Whether `op` runs in the low-precision format of recipe `dtype` (linear layers only; the LM
    head and the MoE router stay in the base format, as Transformer Engine and torchao leave them)."""
    return RECIPES[dtype].low_precision and op.kind == "gemm" and op.tp != "vocab" and op.name != "moe.router"


def gemm_op_times(op: Op, gpu: GPUSpec, dtype: str, tokens: Array, tp: Array, ep: Array,
                  num_experts: int, quantise: QuantiseTraffic | None = None) -> OpTimes:
    """Roofline time of a (possibly routed) linear layer for `tokens` local tokens under recipe `dtype`,
    its operands quantised with `quantise`'s traffic (None: the recipe's default, `quantise_traffic`).

    No separate cost for operands fetched from memory: on a CPU host the calibrated curve is timed on
    autograd's linear forward + backward with inputs, weights and output gradients cycling through 64
    MB, beyond the last-level cache, as a training step reads them (`planner calibrate`; docs §2), and
    a GPU's operand loads overlap its math."""
    lowp = low_precision(op, dtype)
    base = base_dtype(dtype)
    peak_key = gemm_peak_key(dtype, gpu.peak_flops) if lowp else base
    fin, fout, copies = op.gemm  # type: ignore[misc]
    k = np.full_like(tp, fin, dtype=np.float64)
    n = np.full_like(tp, fout, dtype=np.float64)
    if op.tp == "row":
        k = k / tp
    elif op.tp in ("column", "vocab"):
        n = n / tp
    inst = (num_experts / ep) if op.routed else np.ones_like(tp, dtype=np.float64)
    m = tokens * copies / inst
    flops = 2.0 * m * k * n
    b = DTYPE_BYTES[base]
    e = RECIPES[dtype].element_bytes if lowp else b
    nbytes = gpu.memory_time(e * (m * k + k * n) + b * m * n)
    # forward writes m x n; backward computes the input gradient (m x k) and the weight gradient (k x n)
    fwd = inst * np.maximum(gpu.gemm_time(flops, peak_key, (m, n)), nbytes)
    dgrad = inst * np.maximum(gpu.gemm_time(flops, peak_key, (m, k)), nbytes)
    wgrad = inst * np.maximum(gpu.gemm_time(flops, peak_key, (k, n)), nbytes)
    if lowp:  # quantise: read the bf16 operands, write the low-precision ones and their scales
        r = RECIPES[dtype]
        q = quantise or quantise_traffic(dtype)
        fwd = fwd + inst * gpu.memory_time(q.input_fwd * m * k + q.weight_fwd * k * n, q.kernels_fwd)
        bwd_q = q.input_bwd * m * k + q.weight_bwd * k * n + q.grad_output_bwd * m * n
        # rescaling the input- and weight-gradient GEMMs' outputs after the GEMM (precision.Recipe)
        bwd_q = bwd_q + r.rescale_passes_bwd * 2 * b * (m * k + k * n)
        kernels = q.kernels_bwd + 2 * r.rescale_passes_bwd
        return OpTimes(fwd=fwd, bwd=dgrad + wgrad + inst * gpu.memory_time(bwd_q, kernels), wgrad=inst * wgrad)
    return OpTimes(fwd=fwd, bwd=dgrad + wgrad, wgrad=wgrad)


def misaligned_head_width(dtype: str, head_dims: tuple[int, int]) -> int:
    """The first of `head_dims` (query/key, value head widths; 0 = unknown) whose `dtype` elements are
    not a whole number of 16-byte vectors (TENSOR_CORE_ALIGNMENT_BYTES), 0 if none."""
    b = DTYPE_BYTES[base_dtype(dtype)]
    return next((d for d in head_dims if d and (d * b) % TENSOR_CORE_ALIGNMENT_BYTES), 0)


def bmm_rate_dtype(gpu: GPUSpec, dtype: str, head_dims: tuple[int, int]) -> str:
    """The peak the unfused attention's batched GEMMs run at: `dtype`'s, or the GPU's fp32 (CUDA-core)
    peak where a head is not a whole number of 16-byte vectors.

    The score and context BMMs address each head's queries, keys and values at multiples of the head
    width (the heads' batch stride, and in a fused QKV projection their offsets), so a head of d
    elements of b bytes is tensor-core aligned only if d·b is a multiple of 16 bytes. cuBLAS then runs
    its non-tensor-core (SIMT) kernels, which multiply on the CUDA cores at the fp32 FMA rate. Measured
    on A100 by the BLOOM team (chronicles-prequel.md, "NHEADs comparison": 13824 wide, 78 layers, same
    layout): 64 or 96 heads (216, 144 wide) 121-125 s per step, 128 heads (108 wide: 216 bytes) 163 s.
    Fused (flash) kernels are not affected: they pad the head to their tile."""
    base = base_dtype(dtype)
    fp32 = gpu.peak_flops.get("fp32", 0.0)
    if misaligned_head_width(base, head_dims) and 0.0 < fp32 < gpu.peak(base):
        return "fp32"
    return base


def attention_times(op: Op, gpu: GPUSpec, dtype: str, flash: bool, causal: bool, tokens: Array,
                    seq: Array, tp: Array, heads: int, kv_hidden: int, hidden: int, kernel: str = "",
                    resident: Array | float = 1.0, head_dims: tuple[int, int] = (0, 0)) -> OpTimes:
    """The attention core (scores, softmax, context) for `tokens` queries against `seq` keys.

    A query is counted against `key_positions(op, seq)` keys (all s, or its sliding window / chunk);
    a causal fused kernel computes `causal_fraction` of those products. Widths come from the op (the
    graph's heads, q + k and v + out per token); `heads`, `kv_hidden` and `hidden` are used only for an
    op that carries none (a plain GPT/Llama core: q = out = hidden, k = v = kv_hidden). `kernel` names
    the fused kernel the framework calls ("" the GPU's default, "fa2" FlashAttention-2). `head_dims`:
    the query/key and value head widths (0: unknown, taken as aligned; see `bmm_rate_dtype`).
    """
    dtype = base_dtype(dtype)
    keys = key_positions(op, seq)
    flops = op.flops_s * tokens * keys / tp
    b = DTYPE_BYTES[dtype]
    if op.heads:
        heads, qk, vo = op.heads, op.qk_width, op.vo_width
    else:
        qk, vo = hidden + kv_hidden, hidden + kv_hidden
    if flash:
        work = flops * (causal_fraction(op, seq) if causal else 1.0)  # fused kernels skip masked blocks
        io = b * tokens * (qk + vo) / tp
        eff = gpu.attention_fraction(kernel)
        core = work / (gpu.sustained_peak(dtype) * eff) if eff else gpu.gemm_time(work, dtype)
        fwd = np.maximum(core, gpu.memory_time(io, resident=resident))
        return OpTimes(fwd=fwd, bwd=FLASH_BWD_FACTOR * fwd)
    # Unfused: two batched GEMMs (QK^T, probabilities x V) plus memory-bound softmax/dropout.
    scores = b * (heads / tp) * tokens * keys  # bytes of one a x s x keys tensor
    bmm = np.maximum(gpu.gemm_time(flops / 2.0, bmm_rate_dtype(gpu, dtype, head_dims)),
                     gpu.memory_time(scores + b * tokens * qk / tp, resident=resident))
    elem = gpu.memory_time(op.io_s * tokens * keys / tp, op.kernels - 2, resident)
    fwd = 2.0 * bmm + elem
    bwd = 4.0 * bmm + ELEMENTWISE_BWD_FACTOR * elem
    return OpTimes(fwd=fwd, bwd=bwd)


def elementwise_times(op: Op, gpu: GPUSpec, tokens: Array, tp: Array, sp: Array,
                      resident: Array | float = 1.0) -> OpTimes:
    """Memory bound, unless the device evaluates activation functions slower than it streams them."""
    div = _divisor(op, tp, sp)
    fwd = gpu.memory_time(op.io * tokens / div, op.kernels, resident)
    if op.elements and gpu.activation_rate:
        fwd = np.maximum(fwd, op.elements * tokens / div / gpu.activation_rate)
    if op.io_bwd:  # counted (eager PyTorch's autograd ops: planner.graph.with_eager_ops)
        return OpTimes(fwd=fwd, bwd=gpu.memory_time(op.io_bwd * tokens / div, op.kernels_bwd, resident))
    return OpTimes(fwd=fwd, bwd=ELEMENTWISE_BWD_FACTOR * fwd)


@dataclass
class LayerTimes:
    """Per micro-batch, per layer (or per pre/post block) compute seconds."""

    fwd: Array
    bwd: Array
    attn_fwd: Array  # the attention core alone (what selective recompute repeats)
    attn_bwd: Array
    col_gemm: list[Array]  # weight-gradient time of each column-parallel GEMM (0 if frozen): a backward window
    col_fwd: list[Array]  # forward time of each column-parallel GEMM (= its input-gradient time)
    row_fwd: list[Array]  # forward time of each row-parallel GEMM (= its input-gradient time)
    policy_fwd: tuple[Array, ...]  # [i]: the forward work matmul policy MATMUL_POLICIES[i] repeats in backward


def ops_times(ops: list[Op], lg: LayerGraph, gpu: GPUSpec, dtype: str, flash: bool, tokens: Array,
              seq: Array, tp: Array, sp: Array, ep: Array, attention_kernel: str = "",
              etp: Array | None = None, resident: Array | float = 1.0,
              quantise: QuantiseTraffic | None = None) -> LayerTimes:
    """Sum the op times of `ops` (one layer, or the pre/post ops) for one micro-batch. A frozen linear
    layer (fine-tuning: LoRA) computes no weight gradient; attention runs the framework's kernel, and
    low-precision linear layers quantise with the framework's traffic (`quantise`; None: the default).

    `etp` (default tp): the routed experts' tensor-parallel size. Narrower than tp, each rank dispatches
    its own tp / etp share of the tokens (sequence parallel) to experts split over etp ranks only
    (Megatron-Core's MoE parallel folding): the same FLOPs per rank in fewer, larger GEMMs.
    `resident`: the fraction of the ops' memory traffic a host's cache level serves (a training step
    passes none: `planner.cost.terms.TRAINING_RESIDENT`)."""
    m = lg.model
    zero = np.zeros_like(tokens, dtype=np.float64)
    fwd, bwd, attn_f, attn_b = zero.copy(), zero.copy(), zero.copy(), zero.copy()
    sac = [zero.copy() for _ in MATMUL_POLICIES]
    cols: list[Array] = []
    col_fwd: list[Array] = []
    row_fwd: list[Array] = []
    recomputed = [policy_recomputed(policy, ops, m) for policy in MATMUL_POLICIES]
    for op in ops:
        if op.kind == "gemm":
            if op.routed and etp is not None:
                t = gemm_op_times(op, gpu, dtype, tokens * etp / tp, etp, ep, m.num_experts, quantise)
            else:
                t = gemm_op_times(op, gpu, dtype, tokens, tp, ep, m.num_experts, quantise)
            if op.tp == "column" and not op.routed and not op.name.endswith(".lora_b"):
                # the window the input-gradient reduction hides in: the weight-gradient GEMM (none if frozen)
                cols.append(np.zeros_like(t.fwd) if op.frozen else t.fwd)
                col_fwd.append(t.fwd)
            elif op.tp == "row" and not op.routed and not op.name.endswith(".lora_a"):
                row_fwd.append(t.fwd)
            if op.frozen:
                t = OpTimes(fwd=t.fwd, bwd=t.bwd - t.wgrad)
        elif op.kind == "attention":
            t = attention_times(op, gpu, dtype, flash, m.causal, tokens, seq, tp, m.num_heads,
                                m.kv_hidden, m.hidden, attention_kernel, resident, (m.qk_head_dim, m.head_dim))
            attn_f, attn_b = attn_f + t.fwd, attn_b + t.bwd
        else:  # elementwise, embedding, loss: memory bound
            t = elementwise_times(op, gpu, tokens, tp, sp, resident)
        fwd, bwd = fwd + t.fwd, bwd + t.bwd
        sac = [x + r.get(op.name, 0.0) * t.fwd for x, r in zip(sac, recomputed, strict=True)]
    return LayerTimes(fwd=fwd, bwd=bwd, attn_fwd=attn_f, attn_bwd=attn_b, col_gemm=cols, col_fwd=col_fwd,
                      row_fwd=row_fwd, policy_fwd=tuple(sac))
