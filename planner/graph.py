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
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import lru_cache

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
    `io_s` = the same per token per key position.
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
    routed: bool = False  # executed only for the tokens routed to it (MoE experts)
    frozen: bool = False  # fine-tuning: parameters not trained (no gradient, optimizer state, weight-grad GEMM)


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
        for n, kind in zip(self.kind_counts, self.kinds, strict=True):
            expert = sum(op.params for op in kind.ops if op.routed)
            inactive += n * (expert * (m.num_experts - m.top_k) // m.num_experts)
        return total - inactive

    def forward_flops(self, batch: int, seq: int) -> float:
        """Model forward FLOPs for `batch` sequences of `seq` tokens (full s^2 attention, as Megatron counts)."""
        tokens = batch * seq

        def ops_flops(ops: tuple[Op, ...]) -> float:
            return sum(op.flops * tokens + op.flops_s * tokens * seq for op in ops)

        layers = sum(n * ops_flops(k.ops) for n, k in zip(self.kind_counts, self.kinds, strict=True))
        return ops_flops(self.pre_ops) + layers + ops_flops(self.post_ops)

    def train_flops(self, batch: int, seq: int) -> float:
        """FLOPs of one forward and backward pass (Narayanan et al. 2021: backward = 2x forward), less
        the weight-gradient GEMMs of frozen layers (one forward's worth each)."""
        tokens = batch * seq
        frozen = sum(op.flops * n for n, k in zip(self.kind_counts, self.kinds, strict=True) for op in k.ops
                     if op.frozen and op.kind == "gemm")
        frozen += sum(op.flops for op in self.pre_ops + self.post_ops if op.frozen and op.kind == "gemm")
        return 3.0 * self.forward_flops(batch, seq) - frozen * tokens

    def layer_saved_bytes(self, batch: int, seq: int) -> float:
        """Bytes one layer saves for backward (no parallelism, no recompute), averaged over the layers."""
        tokens = batch * seq
        per_kind = [sum((op.saved + op.saved_sel) * tokens + op.saved_s * tokens * seq for op in k.ops)
                    for k in self.kinds]
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
              saved=2 * dtype_b * width, io=3.0 * dtype_b * width, kernels=4)


def _attention_ops(m: ModelSpec, b: int, flash: bool) -> list[Op]:
    h, kv, a = m.hidden, m.kv_hidden, m.num_heads
    qkv = _linear("attn.qkv", h, h + 2 * kv, "column", m.qkv_bias, "layer", b)
    if flash:
        # Fused kernel (FlashAttention / SDPA): saves Q, K, V and the fp32 log-sum-exp; the output it
        # also needs is the out-projection's input, counted there. No s^2 tensors are materialised.
        core = Op(name="attn.core", kind="attention", tp="heads", group="layer",
                  flops_s=4.0 * h, saved=b * (h + 2 * kv) + LSE_BYTES * a, io=b * 2.0 * (h + kv),
                  kernels=1)
    else:
        # Unfused ("math") attention as in Megatron-LM 2022: QK^T saves Q and K, softmax saves its
        # output (2as^2b), dropout its mask (as^2b) and output (2as^2b), which the context bmm saves
        # together with V (Korthikanti et al. 2022, Sec. 4.1). With GQA the unfused path first
        # repeats K and V to every query head (Megatron-LM's DotProductAttention, PyTorch's math SDPA),
        # so the bmms save the expanded K and V: 2(h - kv) more per token. Selective recompute keeps
        # only the core's inputs Q, K, V (unexpanded) and drops the expansion with the s^2 tensors.
        dropout = m.dropout > 0
        saved_s = a * (b + (MASK_BYTES + b if dropout else 0))
        # Fused scale-mask-softmax reads the scores and writes the probabilities; dropout reads them
        # and writes its output and mask. (The bmm outputs/inputs are counted with the bmm.)
        io_s = a * (2 * b + ((2 * b + MASK_BYTES) if dropout else 0))
        core = Op(name="attn.core", kind="attention", tp="heads", group="layer",
                  flops_s=4.0 * h, saved=b * (h + 2 * kv), saved_sel=2.0 * b * (h - kv), saved_s=saved_s,
                  io_s=io_s, kernels=4 if dropout else 3)
    proj = _linear("attn.proj", h, h, "row", m.bias, "layer", b)
    ops = [qkv, core, proj]
    if m.position == "rope":
        ops.insert(1, Op(name="attn.rope", kind="elementwise", tp="heads", group="layer",
                         io=2.0 * b * (h + kv), kernels=2))
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


def _mlp_ops(m: ModelSpec, b: int) -> list[Op]:
    h, f = m.hidden, m.ffn_hidden
    gated = m.activation == "swiglu"
    up_width = 2 * f if gated else f
    if not m.is_moe:
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
    work = k * m.capacity_factor  # expert-token pairs computed per token
    router = Op(name="moe.router", kind="gemm", tp="replicated", group="layer", params=h * e,
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
    return [router, dispatch, up, act, down, combine]


def _pre_ops(m: ModelSpec, b: int) -> list[Op]:
    h = m.hidden
    params = m.vocab_size * h
    if m.position == "learned":
        params += m.max_position * h
    params += m.type_vocab_size * h
    ops = [Op(name="embed", kind="embedding", tp="vocab", group="pre", params=params,
              io=b * 3.0 * h, kernels=2 if m.position == "learned" else 1)]
    if m.head == "mlm":  # BERT normalises the embedding sum
        ops.append(_norm("embed.norm", h, m, "replicated", "pre", b))
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
        if not op.params:
            out.append(op)
            continue
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
    layer = [
        _norm("attn.norm", model.hidden, model, "replicated", "layer", b),
        *_attention_ops(model, b, flash_attention),
        _residual("attn.residual", model, b),
        _norm("mlp.norm", model.hidden, model, "replicated", "layer", b),
        *_mlp_ops(model, b),
        _residual("mlp.residual", model, b),
    ]
    post = _post_ops(model, b)
    kind = LayerKind(name="moe" if model.is_moe else "dense", ops=tuple(layer))
    lg = LayerGraph(model=model, dtype=dt, pre_ops=tuple(pre), kinds=(kind,),
                    pattern=(0,) * model.num_layers, post_ops=tuple(post))
    return with_lora(lg, lora)


def with_lora(lg: LayerGraph, lora: tuple[int, tuple[str, ...]] | None) -> LayerGraph:
    """`lg` fine-tuned with LoRA adapters of rank lora[0] on the layers named lora[1] (None: `lg`)."""
    if not lora:
        return lg
    rank, targets = lora
    b = DTYPE_BYTES[lg.dtype]
    return replace(lg, pre_ops=_lora(lg.pre_ops, rank, (), b),
                   kinds=tuple(replace(k, ops=_lora(k.ops, rank, targets, b)) for k in lg.kinds),
                   post_ops=_lora(lg.post_ops, rank, (), b))
