"""The layer graph: every op of a Transformer with its FLOPs, parameters, saved activations and TP sharding.

The cost model walks this graph; nothing else re-derives op sizes. All sizes are *per token* of a
micro-batch (or per token x key position for the s^2 attention terms), unsharded; the cost model
divides by the parallel degrees according to each op's `tp` kind:

- ``column``: output features split over TP ranks (Megatron column-parallel linear);
- ``row``: input features split (row-parallel linear; its output needs an all-reduce / reduce-scatter);
- ``heads``: attention heads split (the attention core between the two);
- ``replicated``: every TP rank holds and computes it (norms, dropout, residuals without sequence
  parallelism; with sequence parallelism these are split along the sequence instead);
- ``vocab``: vocabulary-parallel embedding, LM head and cross-entropy.

Saved-activation accounting follows Korthikanti et al. 2022 ("Reducing Activation Recomputation in
Large Transformer Models", Sec. 4.1): with dropout, a GPT layer saves 34·s·b·h + 5·a·s²·b bytes in
16-bit precision, of which 10·sbh is replicated across TP ranks (norm inputs, dropout masks, inputs of
the column-parallel linears) and 24·sbh + 5as²b is split by TP.

Layers differ in the 2025 families (DeepSeek-V3's first dense layers, Llama 4's interleaved MoE and
RoPE-free layers, gpt-oss's alternating sliding-window layers): each distinct layer is a `LayerKind`
and `LayerGraph.pattern` says which kind every layer is. Local attention counts the keys a query sees
(`key_positions`: min(window, s) for a sliding window, the chunk for chunked attention) where full
attention counts all s. Multi-token prediction modules (DeepSeek-V3) are extra ops after the head
(`post_ops`, named `mtp.<d>.*`): Megatron-LM builds them on the last pipeline stage, beside the head,
outside the decoder layers it splits over the stages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np

from planner.precision import DTYPE_BYTES, base_dtype
from planner.specs.model import ModelSpec

MASK_BYTES = 1  # dropout masks are stored as bool (1 byte per element)
LOSS_BYTES = 4  # cross-entropy keeps fp32 softmax / log-probabilities for backward
LSE_BYTES = 4  # flash attention saves an fp32 log-sum-exp per head and token


@dataclass(frozen=True)
class Op:
    """One operation of the model (forward direction).

    `gemm` = (in_features, out_features, instances per token) for matrix multiplies;
    `saved` = bytes saved for backward per token (given the activation dtype);
    `saved_s` = bytes saved per token per key position (the s^2 attention terms);
    `saved_sel` = bytes saved per token only while the attention core is not recomputed (selective
    recompute drops them together with the s^2 terms: they live inside the recomputed region);
    `io` = bytes read + written by a memory-bound kernel per token (forward);
    `io_s` = the same per token per key position;
    `io_bwd` / `kernels_bwd` = the backward's bytes and launches where they are counted (0: 1.5x the
    forward's bytes, compute.ELEMENTWISE_BWD_FACTOR); `width` = elements per token a norm or RoPE
    streams (what their eager PyTorch decompositions are counted against).
    """

    name: str
    kind: str  # gemm | attention | elementwise | embedding | loss
    tp: str  # column | row | heads | replicated | vocab
    group: str  # pre | layer | post
    params: int = 0
    flops: float = 0.0  # forward FLOPs per token (2 per multiply-add)
    flops_s: float = 0.0  # forward FLOPs per token per key position (attention scores and context)
    gemm: tuple[int, int, float] | None = None
    saved: float = 0.0
    saved_s: float = 0.0
    saved_sel: float = 0.0
    io: float = 0.0
    io_s: float = 0.0
    bias: int = 0  # bias parameters (replicated across TP ranks for row-parallel linears)
    elements: float = 0.0  # activation-function evaluations per token (GELU / SiLU): arithmetic bound on CPUs
    kernels: int = 1  # kernel launches in forward (for the fixed per-kernel overhead)
    io_bwd: float = 0.0
    kernels_bwd: int = 0
    width: float = 0.0
    routed: bool = False  # executed only for the tokens routed to it (MoE experts)
    # Attention cores only: heads, the query + key and value + output widths per token (what the kernel
    # reads and writes), and local attention (a query sees a sliding window of `window` keys, or its
    # `chunk` of the sequence).
    heads: int = 0
    qk_width: int = 0
    vo_width: int = 0
    window: int = 0
    chunk: int = 0
    frozen: bool = False  # fine-tuning: parameters not trained (no gradient, optimizer state, weight-grad GEMM)


def key_positions(op: Op, seq: Any) -> Any:
    """Keys each query is counted against in a sequence of `seq` tokens (numbers or numpy arrays).

    Full attention: all s (Megatron-LM's model-FLOPs convention; a causal kernel computes about half,
    see `causal_fraction`). A sliding window: min(window, s), what a kernel restricted to the window
    computes for a query at the end of the sequence. Chunked attention: s is cut into chunks of
    `chunk` tokens (the last one shorter) and each is attended on its own: (sum of chunk^2) / s.
    """
    if op.window:
        return np.minimum(op.window, seq)
    if op.chunk:
        whole, rest = np.floor_divide(seq, op.chunk), np.mod(seq, op.chunk)
        return (whole * op.chunk * op.chunk + rest * rest) / seq
    return seq


def causal_fraction(op: Op, seq: Any) -> Any:
    """Fraction of the counted query-key products a causal fused kernel computes (it skips masked
    blocks): 1/2 for full or chunked attention; for a window w < s the queries see
    sum_i min(w, i) = s w - w (w - 1) / 2 keys, i.e. 1 - (w - 1) / (2 s) of s w. Kernels compute whole
    tiles, so a window of a tile or two computes up to one more tile per query row (left out)."""
    if op.window:
        w = np.minimum(op.window, seq)
        return np.where(np.asarray(seq) > op.window, 1.0 - (w - 1) / (2.0 * seq), 0.5)
    return 0.5


@dataclass(frozen=True)
class LayerKind:
    """One kind of Transformer layer (all layers of a kind have the same ops and sizes)."""

    name: str
    ops: tuple[Op, ...]

    @property
    def params(self) -> int:
        return sum(op.params for op in self.ops)


@dataclass(frozen=True)
class LayerGraph:
    """The model as ops: embedding (`pre_ops`), the layers, the head and loss (`post_ops`).

    Layers come in `kinds` (one for a uniform model; e.g. dense and MoE layers for a model that
    interleaves them); `pattern[i]` is the kind index of layer i. The cost model prices each kind
    once and counts kinds per pipeline stage.
    """

    model: ModelSpec
    dtype: str
    pre_ops: tuple[Op, ...]
    kinds: tuple[LayerKind, ...]
    pattern: tuple[int, ...]
    post_ops: tuple[Op, ...]

    @property
    def kind_counts(self) -> tuple[int, ...]:
        """Layers of each kind."""
        counts = [0] * len(self.kinds)
        for k in self.pattern:
            counts[k] += 1
        return tuple(counts)

    @property
    def layer_ops(self) -> tuple[Op, ...]:
        """The ops of one layer of a uniform model (ValueError if layers differ: use `kinds`)."""
        if len(self.kinds) != 1:
            raise ValueError(f"{self.model.name} has {len(self.kinds)} kinds of layers; use LayerGraph.kinds")
        return self.kinds[0].ops

    @property
    def layer_params(self) -> float:
        """Parameters of one layer, averaged over the layers."""
        return sum(n * k.params for n, k in zip(self.kind_counts, self.kinds, strict=True)) / len(self.pattern)

    @property
    def total_params(self) -> int:
        pre = sum(op.params for op in self.pre_ops)
        post = sum(op.params for op in self.post_ops)
        layers = sum(n * k.params for n, k in zip(self.kind_counts, self.kinds, strict=True))
        return pre + layers + post

    @property
    def active_params(self) -> int:
        """Parameters touched per token: for MoE, top_k of num_experts expert MLPs."""
        m = self.model
        total = self.total_params
        if not m.is_moe:
            return total
        inactive = 0
        groups = [(n, kind.ops) for n, kind in zip(self.kind_counts, self.kinds, strict=True)]
        for n, ops in [*groups, (1, self.pre_ops + self.post_ops)]:
            expert = sum(op.params for op in ops if op.routed)
            inactive += n * (expert * (m.num_experts - m.top_k) // m.num_experts)
        return total - inactive

    @property
    def mtp_params(self) -> int:
        """Parameters of the multi-token prediction modules (DeepSeek-V3: not in its 671B)."""
        return sum(op.params for op in self.post_ops if op.name.startswith("mtp."))

    def forward_flops(self, batch: int, seq: int) -> float:
        """Model forward FLOPs for `batch` sequences of `seq` tokens (full s^2 attention, as Megatron
        counts; local attention its window or chunk: `key_positions`)."""
        tokens = batch * seq

        def ops_flops(ops: tuple[Op, ...]) -> float:
            return sum(op.flops * tokens + op.flops_s * tokens * key_positions(op, seq) for op in ops)

        layers = sum(n * ops_flops(k.ops) for n, k in zip(self.kind_counts, self.kinds, strict=True))
        return ops_flops(self.pre_ops) + layers + ops_flops(self.post_ops)

    def train_flops(self, batch: int, seq: int) -> float:
        """FLOPs of one forward and backward pass, op by op in execution order: forward, the input
        gradient where anything before the op is trained (Narayanan et al. 2021: together with the
        weight gradient, backward = 2x forward), the weight gradient where its weights are trained.
        Full training trains the embedding, so every op computes both (3x forward); under LoRA the
        ops before the first adapter compute no input gradient and frozen layers no weight gradient."""
        tokens = batch * seq
        total = 0.0
        upstream = False  # does the op's input carry a gradient?
        for _, op, _ in self.nodes():
            fwd = op.flops * tokens + op.flops_s * tokens * seq
            trained = not op.frozen and (op.params > 0 or op.kind == "gemm")  # a tied head trains the embedding
            if op.kind == "gemm":
                total += fwd * (1 + (1 if upstream else 0) + (1 if trained else 0))
            else:  # the attention core: its backward (2x) is needed when its inputs carry gradients
                total += fwd * (3 if upstream else 1)
            upstream = upstream or trained
        return total

    def layer_saved_bytes(self, batch: int, seq: int) -> float:
        """Bytes one layer saves for backward (no parallelism, no recompute), averaged over the layers."""
        tokens = batch * seq
        per_kind = [sum((op.saved + op.saved_sel) * tokens + op.saved_s * tokens * key_positions(op, seq)
                        for op in k.ops) for k in self.kinds]
        return sum(n * b for n, b in zip(self.kind_counts, per_kind, strict=True)) / len(self.pattern)

    def nodes(self) -> Iterator[tuple[str, Op, int | None]]:
        """Every op of the model in execution order as (module path, op, layer index or None).

        Module paths are the executor's module names (`embed`, `layers.3.attn.qkv`, `lm_head`).
        """
        for op in self.pre_ops:
            yield op.name, op, None
        for i, k in enumerate(self.pattern):
            for op in self.kinds[k].ops:
                yield f"layers.{i}.{op.name}", op, i
        for op in self.post_ops:
            yield op.name, op, None


def _linear(name: str, fin: int, fout: int, tp: str, bias: bool, group: str, dtype_b: int,
            copies: float = 1.0, params_copies: int = 1, routed: bool = False,
            save_input: bool = True) -> Op:
    """A linear layer y = x W (+ b): saves its input for the weight gradient."""
    return Op(
        name=name,
        kind="gemm",
        tp=tp,
        group=group,
        params=params_copies * (fin * fout + (fout if bias else 0)),
        flops=2.0 * fin * fout * copies,
        gemm=(fin, fout, copies),
        bias=params_copies * fout if bias else 0,
        saved=dtype_b * fin * copies if save_input else 0.0,
        routed=routed,
    )


def _norm(name: str, width: int, m: ModelSpec, tp: str, group: str, dtype_b: int) -> Op:
    """LayerNorm (weight and bias; saves its input, plus 8 B of statistics per token left out) or RMSNorm.

    RMSNorm as PyTorch and torchtitan run it is unfused: x * rsqrt(mean(x^2)) * w saves both the
    input and the normalised tensor (2 tensors of the input's size).
    """
    if m.norm == "layernorm":
        return Op(name=name, kind="elementwise", tp=tp, group=group, params=2 * width,
                  saved=dtype_b * width, io=2.0 * dtype_b * width)
    return Op(name=name, kind="elementwise", tp=tp, group=group, params=width,
              saved=2 * dtype_b * width, io=3.0 * dtype_b * width, kernels=4, width=width)


def _qkv_ops(m: ModelSpec, b: int, rope: bool) -> list[Op]:
    """The projections to queries, keys and values (and a per-head q/k norm).

    Multi-head latent attention (DeepSeek-V2 Sec. 2.1, DeepSeek-V3 Sec. 2.1.1): the hidden state goes
    down to a query latent (q_down, normalised, then q_up to every head's nope + rope query) and to a
    key-value latent plus one shared rotary key (kv_down; the latent is normalised and kv_up gives every
    head's nope key and value). As Megatron-LM splits it, the down projections are replicated over TP
    ranks and the up projections column-parallel (whole heads).
    """
    h = m.hidden
    if not m.is_mla:
        ops = [_linear("attn.qkv", h, m.q_width + 2 * m.kv_hidden, "column", m.qkv_bias, "layer", b)]
        if m.qk_norm != "none" and rope:
            # Qwen3 (every layer), Llama 4 (its RoPE layers): a norm over each query and key head, applied
            # to the local heads, after the projections. RMSNorm with a weight saves its input and the
            # normalised tensor; the weightless one (Llama 4's L2Norm) its input.
            width = m.q_width + m.num_kv_heads * m.head_dim
            weighted = m.qk_norm == "rmsnorm"
            ops.append(Op(name="attn.qk_norm", kind="elementwise", tp="heads", group="layer",
                          params=2 * m.head_dim if weighted else 0, saved=(2 if weighted else 1) * b * width,
                          io=(3 if weighted else 2) * b * width, kernels=4 if weighted else 3,
                          width=width if weighted else 0))
        return ops
    dqk, a = m.qk_head_dim, m.num_heads
    if m.q_lora_rank:
        q = [_linear("attn.q_down", h, m.q_lora_rank, "replicated", False, "layer", b),
             _norm("attn.q_norm", m.q_lora_rank, m, "replicated", "layer", b),
             _linear("attn.q_up", m.q_lora_rank, a * dqk, "column", False, "layer", b)]
    else:
        q = [_linear("attn.q", h, a * dqk, "column", False, "layer", b)]
    kv = [_linear("attn.kv_down", h, m.kv_lora_rank + m.qk_rope_head_dim, "replicated", False, "layer", b),
          _norm("attn.kv_norm", m.kv_lora_rank, m, "replicated", "layer", b),
          _linear("attn.kv_up", m.kv_lora_rank, a * (m.qk_nope_head_dim + m.v_head_dim), "column", False,
                  "layer", b)]
    return q + kv


def _attention_ops(m: ModelSpec, b: int, flash: bool, window: int = 0, chunk: int = 0,
                   rope: bool = True) -> list[Op]:
    """Norm-free attention sub-layer: projections, (RoPE), the core, the out-projection.

    Widths per token: queries q = a·d_qk, keys k = kv_heads·d_qk (MLA: a·d_qk, the shared rotary key
    expanded to every head), values v = kv_heads·d_v, output a·d_v (d_qk = d_v = h/a for GPT/Llama).
    The core's FLOPs per key are 2·a·(d_qk + d_v) (QK^T and PV; 4h when d = h/a).
    """
    a, dqk, dv = m.num_heads, m.qk_head_dim, m.head_dim
    kv_heads = a if m.is_mla else m.num_kv_heads
    q, k, v, out = a * dqk, kv_heads * dqk, kv_heads * dv, a * dv
    sinks = a if m.attention_sinks else 0  # one learned logit per head, split with the heads
    common = dict(name="attn.core", kind="attention", tp="heads", group="layer", params=sinks,
                  flops_s=2.0 * a * (dqk + dv), heads=a, qk_width=q + k, vo_width=v + out, window=window,
                  chunk=chunk)
    if flash:
        # Fused kernel (FlashAttention / SDPA): saves Q, K, V and the fp32 log-sum-exp; the output it
        # also needs is the out-projection's input, counted there. No s^2 tensors are materialised.
        core = Op(**common, saved=b * (q + k + v) + LSE_BYTES * a, io=b * (q + k + v + out), kernels=1)
    else:
        # Unfused ("math") attention as in Megatron-LM 2022: QK^T saves Q and K, softmax saves its
        # output (2as^2b), dropout its mask (as^2b) and output (2as^2b), which the context bmm saves
        # together with V (Korthikanti et al. 2022, Sec. 4.1). With GQA the unfused path first
        # repeats K and V to every query head (Megatron-LM's DotProductAttention, PyTorch's math SDPA),
        # so the bmms save the expanded K and V: 2(h - kv) more per token. Selective recompute keeps
        # only the core's inputs Q, K, V (unexpanded) and drops the expansion with the s^2 tensors.
        # Local attention keeps these tensors for the keys a query sees only (`key_positions`).
        dropout = m.dropout > 0
        saved_s = a * (b + (MASK_BYTES + b if dropout else 0))
        # Fused scale-mask-softmax reads the scores and writes the probabilities; dropout reads them
        # and writes its output and mask. (The bmm outputs/inputs are counted with the bmm.)
        io_s = a * (2 * b + ((2 * b + MASK_BYTES) if dropout else 0))
        if m.position == "alibi":
            # ALiBi's per-head bias enters as the scores GEMM's C operand (Megatron-DeepSpeed: torch.baddbmm
            # of the [b·a, 1, s] bias with beta = 1): out-of-place baddbmm first copies the broadcast bias
            # into the full scores buffer, which the GEMM then reads back: write + read of the scores.
            # (Fused kernels compute the bias from per-head slopes in registers: no traffic.)
            io_s += a * 2 * b
        core = Op(**common, saved=b * (q + k + v), saved_sel=b * (a * (dqk + dv) - k - v), saved_s=saved_s,
                  io_s=io_s, kernels=4 if dropout else 3)
    proj = _linear("attn.proj", out, m.hidden, "row", m.bias, "layer", b)
    ops = [*_qkv_ops(m, b, rope), core, proj]
    if rope:  # rotates the rotary part of every query and key head (MLA: d_rope of each, one shared key)
        rot = a * m.qk_rope_head_dim + m.qk_rope_head_dim if m.is_mla else q + k
        ops.insert(len(ops) - 2, Op(name="attn.rope", kind="elementwise", tp="heads", group="layer",
                                    io=2.0 * b * rot, kernels=2, width=rot))
    return ops


def _residual(name: str, m: ModelSpec, b: int) -> Op:
    """(Bias +) dropout (if any) + residual add, one fused memory-bound kernel; saves the dropout mask.

    It reads the branch output and the residual stream and writes the sum (and the mask).
    """
    h = m.hidden
    dropout = m.dropout > 0
    return Op(name=name, kind="elementwise", tp="replicated", group="layer",
              saved=MASK_BYTES * h if dropout else 0.0,
              io=3.0 * b * h + (MASK_BYTES * h if dropout else 0.0))


def _mlp_ops(m: ModelSpec, b: int, moe: bool | None = None) -> list[Op]:
    """A dense MLP of ffn_hidden, or (`moe`, default: the model's) the mixture of experts."""
    h, f = m.hidden, m.ffn_hidden
    gated = m.activation == "swiglu"
    up_width = 2 * f if gated else f
    if not (m.is_moe if moe is None else moe):
        # GELU saves its input (f); SwiGLU, silu(gate) * up as PyTorch runs it, saves the gate, the
        # silu output and the up projection (3f).
        act = Op(name="mlp.act", kind="elementwise", tp="column", group="layer",
                 saved=b * (3 * f if gated else f), io=b * (up_width + f) + (b * 2 * f if gated else 0),
                 kernels=2 if gated else 1, elements=f)
        return [
            _linear("mlp.up", h, up_width, "column", m.bias, "layer", b),
            act,
            _linear("mlp.down", f, h, "row", m.bias, "layer", b),
        ]
    # Mixture of experts: a replicated router, then top_k expert MLPs per token (capacity-padded).
    # The router is a linear layer: it saves its input (the norm output, which no other op saves in an
    # MoE layer) for its weight gradient, plus the fp32 routing probabilities.
    e, k = m.num_experts, m.top_k
    f = m.expert_ffn
    up_width = 2 * f if gated else f
    work = k * m.capacity_factor  # expert-token pairs computed per token
    router = Op(name="moe.router", kind="gemm", tp="replicated", group="layer",
                params=h * e + (e if m.router_bias else 0), bias=e if m.router_bias else 0,
                flops=2.0 * h * e, gemm=(h, e, 1.0), saved=b * h + LOSS_BYTES * e, io=b * 2.0 * e,
                kernels=3)
    dispatch = Op(name="moe.dispatch", kind="elementwise", tp="replicated", group="layer",
                  io=2.0 * b * h * k, kernels=2)
    up = _linear("moe.experts.up", h, up_width, "column", m.bias, "layer", b, copies=work,
                 params_copies=e, routed=True)
    act = Op(name="moe.experts.act", kind="elementwise", tp="column", group="layer",
             saved=b * (3 * f if gated else f) * work, io=b * (up_width + f) * work, routed=True,
             elements=f * work)
    down = _linear("moe.experts.down", f, h, "row", m.bias, "layer", b, copies=work,
                   params_copies=e, routed=True)
    combine = Op(name="moe.combine", kind="elementwise", tp="replicated", group="layer",
                 saved=b * h * k, io=3.0 * b * h * k, kernels=2)
    return [router, dispatch, up, act, down, combine, *_shared_expert_ops(m, b)]


def _shared_expert_ops(m: ModelSpec, b: int) -> list[Op]:
    """The shared expert (DeepSeekMoE, Dai et al. 2024; DeepSeek-V3; Llama 4): a dense MLP every token
    of an MoE layer passes beside its routed experts, split by TP like a dense MLP. Qwen2-MoE scales
    its output by sigmoid(x w) (a replicated h -> 1 gate)."""
    h, f = m.hidden, m.shared_ffn_hidden
    if not f:
        return []
    gated = m.activation == "swiglu"
    up_width = 2 * f if gated else f
    ops = [_linear("moe.shared.up", h, up_width, "column", m.bias, "layer", b),
           Op(name="moe.shared.act", kind="elementwise", tp="column", group="layer",
              saved=b * (3 * f if gated else f), io=b * (up_width + f) + (b * 2 * f if gated else 0),
              kernels=2 if gated else 1, elements=f),
           _linear("moe.shared.down", f, h, "row", m.bias, "layer", b)]
    if m.shared_expert_gate:
        ops.append(_linear("moe.shared.gate", h, 1, "replicated", False, "layer", b, save_input=False))
    return ops


def _pre_ops(m: ModelSpec, b: int) -> list[Op]:
    h = m.hidden
    params = m.vocab_size * h
    if m.position == "learned":
        params += m.max_position * h
    params += m.type_vocab_size * h
    ops = [Op(name="embed", kind="embedding", tp="vocab", group="pre", params=params,
              io=b * 3.0 * h, kernels=2 if m.position == "learned" else 1)]
    if m.head == "mlm" or m.embedding_norm:  # BERT and BLOOM normalise the embedding output
        ops.append(_norm("embed.norm", h, m, "replicated", "pre", b))
    if m.dropout > 0:  # Megatron's embedding dropout: outside the checkpointed layers, its mask always kept
        ops.append(Op(name="embed.dropout", kind="elementwise", tp="replicated", group="pre",
                      saved=MASK_BYTES * h, io=2.0 * b * h + MASK_BYTES * h, elements=h))
    return ops


def _post_ops(m: ModelSpec, b: int) -> list[Op]:
    h, v = m.hidden, m.vocab_size
    ops: list[Op] = []
    if m.head == "lm":
        ops.append(_norm("final_norm", h, m, "replicated", "post", b))
        head = _linear("lm_head", h, v, "vocab", False, "post", b)
    else:  # BERT MLM head: dense + GELU + LayerNorm transform, then the (tied) decoder with a bias
        if m.pooler:
            ops.append(Op(name="pooler", kind="elementwise", tp="replicated", group="post",
                          params=h * h + h))
        ops.append(_linear("mlm.transform", h, h, "replicated", True, "post", b))
        ops.append(Op(name="mlm.act", kind="elementwise", tp="replicated", group="post",
                      saved=b * h, io=2.0 * b * h, elements=h))
        ops.append(_norm("mlm.norm", h, m, "replicated", "post", b))
        head = _linear("lm_head", h, v, "vocab", False, "post", b)
    if m.tied_embeddings:
        head = replace(head, params=0)
    if m.head == "mlm":
        head = replace(head, params=head.params + v)  # decoder bias
    ops.append(head)
    ops.append(Op(name="loss", kind="loss", tp="vocab", group="post", saved=LOSS_BYTES * v,
                  io=(b + 2 * LOSS_BYTES) * v, kernels=3))
    return ops


def _mtp_ops(m: ModelSpec, b: int, flash: bool) -> list[Op]:
    """Multi-token prediction (DeepSeek-V3 Sec. 2.2): module d predicts token t + 1 + d from the previous
    module's (or the model's) hidden state and the embedding of token t + d: both normalised
    (`enorm`, `hnorm`), concatenated and projected 2h -> h (`proj`), one Transformer layer (an MoE layer
    with full attention), a final norm and the shared output head, and its own cross-entropy. The
    embedding and the head are the model's (no parameters here); the projection is column-parallel
    with its output gathered, as Megatron-LM's MTP does."""
    h, v = m.hidden, m.vocab_size
    ops: list[Op] = []
    for d in range(m.mtp_layers):
        p = f"mtp.{d}."
        layer = [replace(op, name=p + "layer." + op.name, group="post") for op in _layer_ops(m, b, flash, m.is_moe)]
        ops += [Op(name=p + "embed", kind="embedding", tp="vocab", group="post", io=b * 3.0 * h),
                _norm(p + "enorm", h, m, "replicated", "post", b),
                _norm(p + "hnorm", h, m, "replicated", "post", b),
                _linear(p + "proj", 2 * h, h, "column", False, "post", b),
                *layer,
                _norm(p + "norm", h, m, "replicated", "post", b),
                replace(_linear(p + "lm_head", h, v, "vocab", False, "post", b), params=0),
                Op(name=p + "loss", kind="loss", tp="vocab", group="post", saved=LOSS_BYTES * v,
                   io=(b + 2 * LOSS_BYTES) * v, kernels=3)]
    return ops


def _layer_ops(m: ModelSpec, b: int, flash: bool, moe: bool, window: int = 0, chunk: int = 0,
               rope: bool | None = None) -> list[Op]:
    """One Transformer layer: pre-norm attention and MLP (or MoE) sub-layers with residuals."""
    return [
        _norm("attn.norm", m.hidden, m, "replicated", "layer", b),
        *_attention_ops(m, b, flash, window, chunk, m.position == "rope" if rope is None else rope),
        _residual("attn.residual", m, b),
        _norm("mlp.norm", m.hidden, m, "replicated", "layer", b),
        *_mlp_ops(m, b, moe),
        _residual("mlp.residual", m, b),
    ]


def _layer_kinds(m: ModelSpec, b: int, flash: bool) -> tuple[tuple[LayerKind, ...], tuple[int, ...]]:
    """The distinct layers of `m` (MLP or MoE, full or local attention, with or without RoPE) in order
    of first appearance, and the kind of every layer."""
    keys: dict[tuple[bool, int, int, bool], int] = {}
    kinds: list[LayerKind] = []
    pattern: list[int] = []
    for i in range(m.num_layers):
        window, chunk = m.layer_window(i)
        key = (m.layer_is_moe(i), window, chunk, m.layer_rope(i))
        if key not in keys:
            moe, _, _, rope = key
            name = "moe" if moe else "dense"
            name += f".window{window}" if window else f".chunk{chunk}" if chunk else ""
            name += ".nope" if m.position == "rope" and not rope else ""
            keys[key] = len(kinds)
            kinds.append(LayerKind(name=name, ops=tuple(_layer_ops(m, b, flash, moe, window, chunk, rope))))
        pattern.append(keys[key])
    return tuple(kinds), tuple(pattern)


LORA_OPS = {"qkv": ("attn.qkv",), "proj": ("attn.proj",), "up": ("mlp.up", "moe.experts.up"),
            "down": ("mlp.down", "moe.experts.down")}


def _lora(ops: tuple[Op, ...], rank: int, targets: tuple[str, ...], b: int) -> tuple[Op, ...]:
    """LoRA (Hu et al. 2021) on a layer: every base parameter frozen; each targeted linear layer W (in x
    out) gets adapters A (in x r) and B (r x out), y = x W + (x A) B. Tensor parallelism splits A's input
    for a row-parallel W and B's output for a column-parallel one (the other factor is replicated).
    Frozen layers need not save their input (no weight gradient); A saves it, B saves x A."""
    names = {n for t in targets for n in LORA_OPS[t]}
    out: list[Op] = []
    for op in ops:
        if not op.params and op.kind != "gemm":
            out.append(op)
            continue
        # every base weight is frozen, the LM head's tied weight (the embedding's) too
        target = op.kind == "gemm" and op.name in names
        keep_input = op.kind != "gemm"  # norms still need their input for the input gradient
        out.append(replace(op, frozen=True, saved=op.saved if keep_input else 0.0))
        if target:
            fin, fout, copies = op.gemm  # type: ignore[misc]
            experts = (op.params - op.bias) // (fin * fout)  # expert copies of the weight (1 if dense)
            a_tp, b_tp = ("row", "replicated") if op.tp == "row" else ("replicated", "column")
            out.append(Op(name=f"{op.name}.lora_a", kind="gemm", tp=a_tp, group=op.group, params=experts * fin * rank,
                          flops=2.0 * fin * rank * copies, gemm=(fin, rank, copies), saved=b * fin * copies,
                          routed=op.routed))
            out.append(Op(name=f"{op.name}.lora_b", kind="gemm", tp=b_tp, group=op.group,
                          params=experts * rank * fout, flops=2.0 * rank * fout * copies, gemm=(rank, fout, copies),
                          saved=b * rank * copies, routed=op.routed))
    return tuple(out)


@lru_cache(maxsize=256)
def build_graph(model: ModelSpec, dtype: str | None = None, flash_attention: bool = True,
                lora: tuple[int, tuple[str, ...]] | None = None) -> LayerGraph:
    """The layer graph of `model`, with activation sizes for `dtype` (default: the model's dtype).

    `flash_attention` selects the attention kernel: fused (no s^2 activations) or the unfused
    "math" path of Megatron-LM 2022 (softmax and dropout tensors of size a·s^2·b are kept).
    """
    dt = base_dtype(dtype or model.dtype)  # a low-precision recipe keeps activations in its base format
    b = DTYPE_BYTES[dt]
    pre = _pre_ops(model, b)
    kinds, pattern = _layer_kinds(model, b, flash_attention)
    post = _post_ops(model, b) + _mtp_ops(model, b, flash_attention)
    lg = LayerGraph(model=model, dtype=dt, pre_ops=tuple(pre), kinds=kinds, pattern=pattern,
                    post_ops=tuple(post))
    return with_lora(lg, lora)


FUSED_NORMS = ("attn.norm", "mlp.norm")  # the norms a fused norm + linear module runs before QKV and the MLP


def with_fused_norms(lg: LayerGraph) -> LayerGraph:
    """`lg` with each layer's pre-attention and pre-MLP RMSNorm fused into the linear layer after it, as
    Transformer Engine's LayerNormLinear / LayerNormMLP run them (Megatron-Core's default layer spec): the
    norm keeps only its input (and 4 B of rsigma per token, left out), not its normalised tensor; the
    linear keeps its own input as before. LayerNorm already saves its input alone."""
    if lg.model.norm != "rmsnorm":
        return lg

    return _map_ops(lg, lambda op: replace(op, saved=op.saved / 2) if op.name in FUSED_NORMS else op)


# Linear layers whose input is the attention output, which a fused attention kernel also keeps for its
# own backward (FlashAttention's and cuDNN's backward read the output O beside Q, K, V and the log-sum-exp)
ATTENTION_OUTPUT_LINEARS = ("attn.proj",)


def with_quantized_saved_inputs(lg: LayerGraph, element_bytes: float, quantized: Callable[[Op], bool],
                                fused_attention: bool) -> LayerGraph:
    """`lg` with each trained low-precision linear layer (`quantized(op)`; not a frozen weight, not a
    LoRA adapter) keeping its input for the weight-gradient GEMM as the quantised copy it ran the forward
    GEMM on, `element_bytes` per element (scales included), instead of in the activation dtype. So
    Transformer Engine's linear layers do under FP8: `_Linear.forward` saves the FP8 `inputmat` (or its
    transpose) unless the recipe overrides the weight-gradient precision, and `_LayerNormLinear` the FP8
    `ln_out` its fused norm kernel wrote (TE 1.x, transformer_engine/pytorch/module/linear.py and
    layernorm_linear.py); TE 2.x keeps the column-wise quantised copy. The output projection's input
    stays in 16 bits too where a fused attention kernel keeps it (ATTENTION_OUTPUT_LINEARS): the copy is
    added to it there."""
    b = DTYPE_BYTES[lg.dtype]

    def keep_quantized(op: Op) -> Op:
        if not op.saved or op.frozen or ".lora_" in op.name or not quantized(op):
            return op
        kept_by_attention = op.saved if fused_attention and op.name in ATTENTION_OUTPUT_LINEARS else 0.0
        return replace(op, saved=kept_by_attention + op.saved * element_bytes / b)

    return _map_ops(lg, keep_quantized)


def _map_ops(lg: LayerGraph, fn: Callable[[Op], Op]) -> LayerGraph:
    """`lg` with `fn` applied to every op: the embedding's, each layer kind's and the head's."""
    return replace(lg, pre_ops=tuple(map(fn, lg.pre_ops)),
                   kinds=tuple(replace(k, ops=tuple(map(fn, k.ops))) for k in lg.kinds),
                   post_ops=tuple(map(fn, lg.post_ops)))


# PyTorch eager (no torch.compile): the bytes per element (read + written) and the launches of the ops
# PyTorch dispatches, forward and backward, counted on its own code with a TorchDispatchMode
# (tests/test_eager_ops.py recounts them). A 16-bit input adds a copy to fp32 and the cast back, each
# (b + 4) bytes per element, and their launches.
# F.rms_norm's composite (x.float(), pow, mean, + eps, rsqrt, x * rstd, * weight, cast back; its autograd
# backward 14 ops): what eager PyTorch ran on GPUs before its fused RMSNorm kernel (pytorch/pytorch#153666,
# May 2025), and still runs where no fused kernel is registered.
EAGER_RMS_NORM = ((28.0, 92.0), (6, 14), (2, 3))  # fp32 (forward, backward) bytes, launches; launches of the casts
# torchtitan's complex RoPE (models/common/rope.py, apply_rotary_emb): view q and k as complex in fp32,
# multiply by the cached rotations, cast back; the backward multiplies by the conjugate. (The rotation
# cache, 8 B per rotated pair and token, shared by every head, is read twice forward and resolved and
# read six times backward: 0.1 B per element each for Llama 3 8B's 40 heads, left out.)
EAGER_ROPE = ((8.0, 8.0), (2, 4), (4, 4))


def _eager(op: Op, counts: tuple, b: int) -> Op:
    (fwd, bwd), (k_fwd, k_bwd), (c_fwd, c_bwd) = counts
    cast = 2 * (b + 4) if b < 4 else 0  # the fp32 copy and the cast back
    casts = 1 if b < 4 else 0
    return replace(op, io=(fwd + cast) * op.width, io_bwd=(bwd + cast) * op.width,
                   kernels=k_fwd + casts * c_fwd, kernels_bwd=k_bwd + casts * c_bwd)


def with_eager_ops(lg: LayerGraph, composite_rms_norm: bool) -> LayerGraph:
    """`lg` as eager PyTorch runs it (torchtitan without torch.compile): RoPE as torchtitan's complex
    multiply in fp32 and, with `composite_rms_norm`, every RMSNorm as F.rms_norm's composite, each op's
    bytes and launches as PyTorch dispatches them. Inductor (torch.compile) fuses each of these chains
    into one or two kernels, which the graph's default costs describe."""
    b = DTYPE_BYTES[lg.dtype]
    norms = composite_rms_norm and lg.model.norm == "rmsnorm"

    def eager(op: Op) -> Op:
        if op.name.endswith("rope") and op.width:
            return _eager(op, EAGER_ROPE, b)
        if norms and op.kind == "elementwise" and op.name.endswith("norm") and op.width:
            return _eager(op, EAGER_RMS_NORM, b)
        return op

    return _map_ops(lg, eager)


def with_lora(lg: LayerGraph, lora: tuple[int, tuple[str, ...]] | None) -> LayerGraph:
    """`lg` fine-tuned with LoRA adapters of rank lora[0] on the layers named lora[1] (None: `lg`)."""
    if not lora:
        return lg
    rank, targets = lora
    b = DTYPE_BYTES[lg.dtype]
    return replace(lg, pre_ops=_lora(lg.pre_ops, rank, (), b),
                   kinds=tuple(replace(k, ops=_lora(k.ops, rank, targets, b)) for k in lg.kinds),
                   post_ops=_lora(lg.post_ops, rank, (), b))
