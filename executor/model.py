"""A GPT/Llama/Mixtral-style decoder built from a `ModelSpec`, with no parallelism in it.

Module names mirror the op names of the planner's layer graph (`planner/graph.py`) so that parameter
counts, FLOPs and saved activations can be cross-checked op by op:

    embed                       token (+ learned position, + token type) embeddings
    layers.{i}.attn.norm        pre-attention norm
    layers.{i}.attn.qkv         container of the q, k, v projections (separate Linears, so that a
                                column-parallel split shards whole heads, also with GQA)
    layers.{i}.attn.qk_norm     Qwen3 / Llama 4: norm over each query and key head (q, k)
    layers.{i}.attn.q_down ...  multi-head latent attention (DeepSeek-V3): q_down, q_norm, q_up (or q),
                                kv_down, kv_norm, kv_up instead of qkv
    layers.{i}.attn.core        attention core: fused SDPA or the unfused "math" path; sliding-window
                                (banded), chunked and sink (gpt-oss: `sinks`, one logit per head) variants
    layers.{i}.attn.proj        output projection
    layers.{i}.mlp.norm         pre-MLP norm (also in MoE layers)
    layers.{i}.mlp.up           up projection (GELU) or a container of gate and up (SwiGLU)
    layers.{i}.mlp.down         down projection
    layers.{i}.moe.router       MoE router (no bias)
    layers.{i}.moe.experts.up   all experts' up (and gate) weights, stacked on a leading expert dim
    layers.{i}.moe.experts.down all experts' down weights
    layers.{i}.moe.shared       shared expert (DeepSeek-V3, Llama 4): up, down (and Qwen2-MoE's gate)
    final_norm, lm_head
    mtp.{d}.enorm, hnorm, proj, layer, norm   multi-token prediction modules (DeepSeek-V3), after the head

Layers differ where the spec says so (dense or MoE, full / sliding-window / chunked attention, with or
without RoPE), as the graph's layer kinds do.

Parallelism (tensor, pipeline, data, recompute) is applied from outside by the other executor
modules, as torchtitan does. `layers` is a `ModuleDict` keyed by the layer index so that a pipeline
stage that drops layers keeps the original fully-qualified names.
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F
from torch import nn

from planner.specs.model import ModelSpec


class ModelNotSupported(ValueError):
    """The spec describes a model this executor cannot build (a clear error, not a crash)."""


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor parameter (expert weights under expert-TP), else the tensor.

    Expert weights are used with batched matmuls on routed tokens, which DTensor has no rule for; the
    tensor-parallel style for experts (executor/tensor_parallel.py) handles the communication.
    """
    to_local = getattr(t, "to_local", None)
    return to_local() if to_local is not None else t


def make_norm(spec: ModelSpec, width: int) -> nn.Module:
    """LayerNorm (weight and bias, as the layer graph counts it) or RMSNorm (weight only)."""
    if spec.norm == "rmsnorm":
        return nn.RMSNorm(width, eps=1e-5)
    return nn.LayerNorm(width, eps=1e-5)


class Embedding(nn.Module):
    """Token embeddings plus learned positions and token types when the spec has them (op `embed`), then
    the embedding norm when it has one (op `embed.norm`, BLOOM's)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.tok = nn.Embedding(spec.vocab_size, spec.hidden)
        self.pos = nn.Embedding(spec.max_position, spec.hidden) if spec.position == "learned" else None
        self.type = nn.Embedding(spec.type_vocab_size, spec.hidden) if spec.type_vocab_size else None
        self.norm = make_norm(spec, spec.hidden) if spec.embedding_norm else None
        self.positions: torch.Tensor | None = None  # global positions of the tokens seen (None: 0, 1, ...)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens)
        if self.pos is not None:
            x = x + self.pos(token_positions(self.positions, tokens.shape[-1], tokens.device))
        if self.type is not None:  # every token has type 0 (single-segment language modelling)
            x = x + self.type.weight[0]
        return x if self.norm is None else self.norm(x)


class QKV(nn.Module):
    """The q, k and v projections (op `attn.qkv`), kept separate so TP can shard heads with GQA."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.q = nn.Linear(spec.hidden, spec.q_width, bias=spec.qkv_bias)
        self.k = nn.Linear(spec.hidden, spec.kv_hidden, bias=spec.qkv_bias)
        self.v = nn.Linear(spec.hidden, spec.kv_hidden, bias=spec.qkv_bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.q(x), self.k(x), self.v(x)


def token_positions(positions: torch.Tensor | None, seq: int, device: torch.device) -> torch.Tensor:
    """The global positions of a module's `seq` tokens: `positions` when set (context parallelism gives
    each rank chunks of the sequence, executor/context_parallel.py), else 0 .. seq-1."""
    if positions is None:
        return torch.arange(seq, device=device)
    return positions.to(device)


def rope_tables(seq: int, head_dim: int, device: torch.device, base: float = 10000.0,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables of rotary embeddings (Su et al. 2021), "rotate half" layout as in Llama, for the
    tokens at `positions` (default 0 .. seq-1)."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    angles = torch.outer(token_positions(positions, seq, device).to(torch.float32), inv)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, d) queries or keys by position."""
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).to(x.dtype)


class AttentionCore(nn.Module):
    """softmax(q kᵀ/√d) v (op `attn.core`); selective recompute checkpoints exactly this module.

    `flash=True` uses `F.scaled_dot_product_attention` (no s² tensors kept); `flash=False` is the
    unfused path of Megatron-LM 2022, whose scores, softmax and dropout tensors are saved for
    backward as the layer graph's non-flash accounting says. Local attention computes only the keys a
    query may see, as the graph counts them: chunked attention runs each chunk on its own; a sliding
    window shorter than the sequence runs banded (each query against its `window` keys, explicitly,
    also under `flash`: SDPA has no window). Attention sinks (gpt-oss) add a learned logit per head to
    the softmax's denominator; SDPA has none either, so a core with sinks always runs explicitly.
    """

    def __init__(self, spec: ModelSpec, flash: bool, window: int = 0, chunk: int = 0) -> None:
        super().__init__()
        self.flash = flash
        self.causal = spec.causal
        self.dropout = spec.dropout
        self.window, self.chunk = window, chunk
        self.sinks = nn.Parameter(torch.empty(spec.num_heads)) if spec.attention_sinks else None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        t = q.shape[-2]
        if self.chunk and self.chunk < t:
            return torch.cat([self._full(*qkv) for qkv in zip(*(x.split(self.chunk, dim=-2) for x in (q, k, v)),
                                                                   strict=True)], dim=-2)
        if self.window and self.window < t:
            return self._banded(q, k, v)
        return self._full(q, k, v)

    def _dropout(self, probs: torch.Tensor) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        return F.dropout(probs, p=p) if p > 0 else probs

    def _softmax(self, scores: torch.Tensor) -> torch.Tensor:
        """Softmax over the last dim, with the sink logits (one per local head) in the denominator."""
        if self.sinks is None:
            return F.softmax(scores, dim=-1)
        sink = _local(self.sinks).to(scores.dtype).view(1, -1, 1, 1).expand(*scores.shape[:-1], 1)
        return F.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]

    def _full(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.flash and self.sinks is None:
            p = self.dropout if self.training else 0.0
            return F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal,
                                                  enable_gqa=k.shape[1] != q.shape[1])
        k, v = _expand_kv(q, k, v)
        scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
        if self.causal:
            t = q.shape[-2]
            mask = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        return self._dropout(self._softmax(scores)) @ v

    def _banded(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal sliding window: query i against keys i - w + 1 .. i (left-padded, padding masked)."""
        w, t = self.window, q.shape[-2]
        k, v = _expand_kv(q, k, v)
        kb = F.pad(k, (0, 0, w - 1, 0)).unfold(-2, w, 1)  # (B, H, T, d, w): key i - w + 1 + j
        vb = F.pad(v, (0, 0, w - 1, 0)).unfold(-2, w, 1)
        scores = torch.einsum("bhtd,bhtdw->bhtw", q, kb) * q.shape[-1] ** -0.5
        pad = torch.arange(t, device=q.device).unsqueeze(1) + torch.arange(w, device=q.device) < w - 1
        scores = scores.masked_fill(pad, float("-inf"))
        return torch.einsum("bhtw,bhtdw->bhtd", self._dropout(self._softmax(scores)), vb)


def _expand_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """GQA: each K/V head serves a group of query heads (repeated, as the unfused path runs it)."""
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return k, v


class QKNorm(nn.Module):
    """A norm over each query and each key head (op `attn.qk_norm`): Qwen3's RMSNorm with a weight per
    head dimension, or Llama 4's weightless one."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        affine = spec.qk_norm == "rmsnorm"
        self.q = nn.RMSNorm(spec.head_dim, eps=1e-6, elementwise_affine=affine)
        self.k = nn.RMSNorm(spec.head_dim, eps=1e-6, elementwise_affine=affine)


class Attention(nn.Module):
    """Pre-norm self-attention sub-layer: norm → qkv → (q/k norm) → (rope) → core → proj → dropout."""

    def __init__(self, spec: ModelSpec, flash: bool, window: int = 0, chunk: int = 0, rope: bool = True) -> None:
        super().__init__()
        self.head_dim = spec.head_dim
        self.rope = rope
        self.dropout = spec.dropout
        self.norm = make_norm(spec, spec.hidden)
        self.qkv = QKV(spec)
        self.qk_norm = QKNorm(spec) if spec.qk_norm != "none" and rope else None
        self.core = AttentionCore(spec, flash, window, chunk)
        self.proj = nn.Linear(spec.attn_width, spec.hidden, bias=spec.bias)
        self.positions: torch.Tensor | None = None  # global positions of the tokens seen (None: 0, 1, ...)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x))
        b, t = q.shape[0], q.shape[1]
        # -1 infers the local head count, so the same code runs on column-sharded (TP) projections.
        q = q.view(b, t, -1, self.head_dim)
        k = k.view(b, t, -1, self.head_dim)
        if self.qk_norm is not None:
            q, k = self.qk_norm.q(q), self.qk_norm.k(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(b, t, -1, self.head_dim).transpose(1, 2)
        if self.rope:
            cos, sin = rope_tables(t, self.head_dim, q.device, positions=self.positions)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = self.core(q, k, v).transpose(1, 2).reshape(b, t, -1)
        return F.dropout(self.proj(out), p=self.dropout, training=self.training)


class LatentAttention(nn.Module):
    """Multi-head latent attention (DeepSeek-V2 Sec. 2.1; DeepSeek-V3, Kimi K2): queries through a
    low-rank latent (q_down, q_norm, q_up; or one projection q), keys and values from a shared latent
    (kv_down, which also gives one rotary key shared by every head; kv_norm; kv_up to every head's
    non-rotary key and value). Each head's query / key: d_nope + d_rope, its value d_v."""

    def __init__(self, spec: ModelSpec, flash: bool) -> None:
        super().__init__()
        h, a = spec.hidden, spec.num_heads
        self.nope, self.rope_dim, self.v_dim = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.v_head_dim
        self.kv_rank = spec.kv_lora_rank
        self.dropout = spec.dropout
        self.norm = make_norm(spec, h)
        if spec.q_lora_rank:
            self.q_down = nn.Linear(h, spec.q_lora_rank, bias=False)
            self.q_norm = make_norm(spec, spec.q_lora_rank)
            self.q_up = nn.Linear(spec.q_lora_rank, a * spec.qk_head_dim, bias=False)
        else:
            self.q = nn.Linear(h, a * spec.qk_head_dim, bias=False)
        self.kv_down = nn.Linear(h, self.kv_rank + self.rope_dim, bias=False)
        self.kv_norm = make_norm(spec, self.kv_rank)
        self.kv_up = nn.Linear(self.kv_rank, a * (self.nope + self.v_dim), bias=False)
        self.core = AttentionCore(spec, flash)
        self.proj = nn.Linear(spec.attn_width, h, bias=False)
        self.positions: torch.Tensor | None = None  # global positions of the tokens seen (None: 0, 1, ...)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        b, t = x.shape[0], x.shape[1]
        q = self.q_up(self.q_norm(self.q_down(x))) if hasattr(self, "q_up") else self.q(x)
        q = q.view(b, t, -1, self.nope + self.rope_dim).transpose(1, 2)
        latent, k_rope = self.kv_down(x).split([self.kv_rank, self.rope_dim], dim=-1)
        kv = self.kv_up(self.kv_norm(latent)).view(b, t, -1, self.nope + self.v_dim).transpose(1, 2)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        q_nope, q_rope = q.split([self.nope, self.rope_dim], dim=-1)
        cos, sin = rope_tables(t, self.rope_dim, x.device, positions=self.positions)
        q_rope = apply_rope(q_rope, cos, sin)
        k_rope = apply_rope(k_rope.unsqueeze(1), cos, sin).expand(-1, q.shape[1], -1, -1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        k = torch.cat([k_nope, k_rope], dim=-1)
        out = self.core(q, k, v).transpose(1, 2).reshape(b, t, -1)
        return F.dropout(self.proj(out), p=self.dropout, training=self.training)


class GatedUp(nn.Module):
    """SwiGLU's two input projections (op `mlp.up`): `gate` and `up`, each h → width (ffn_hidden)."""

    def __init__(self, spec: ModelSpec, width: int | None = None) -> None:
        super().__init__()
        width = width or spec.ffn_hidden
        self.gate = nn.Linear(spec.hidden, width, bias=spec.bias)
        self.up = nn.Linear(spec.hidden, width, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.gate(x)) * self.up(x)


class MLP(nn.Module):
    """Pre-norm dense feed-forward sub-layer: norm → up → GELU/SwiGLU → down → dropout."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.gated = spec.activation == "swiglu"
        self.dropout = spec.dropout
        self.norm = make_norm(spec, spec.hidden)
        self.up: nn.Module = GatedUp(spec) if self.gated else nn.Linear(spec.hidden, spec.ffn_hidden,
                                                                         bias=spec.bias)
        self.down = nn.Linear(spec.ffn_hidden, spec.hidden, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(self.norm(x))
        if not self.gated:
            h = F.gelu(h)
        return F.dropout(self.down(h), p=self.dropout, training=self.training)


class SharedExpert(nn.Module):
    """The shared expert of an MoE layer (ops `moe.shared.*`): a dense MLP every token passes; Qwen2-MoE
    scales it by sigmoid(x w_gate)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        f = spec.shared_ffn_hidden
        self.gated = spec.activation == "swiglu"
        self.up: nn.Module = GatedUp(spec, f) if self.gated else nn.Linear(spec.hidden, f, bias=spec.bias)
        self.down = nn.Linear(f, spec.hidden, bias=spec.bias)
        self.gate = nn.Linear(spec.hidden, 1, bias=False) if spec.shared_expert_gate else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        out = self.down(h if self.gated else F.gelu(h))
        return out * torch.sigmoid(self.gate(x)) if self.gate is not None else out


class MoENorm(nn.Module):
    """The pre-MLP norm of an MoE layer (op `mlp.norm`; the layer graph keeps that name for MoE)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.norm = make_norm(spec, spec.hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x)


class ExpertUp(nn.Module):
    """All experts' input projections, (E, h, f) each; SwiGLU keeps gate and up as separate tensors
    so that a split of the last dim (expert tensor parallelism) keeps matching gate/up columns."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        e, h, f = spec.num_experts, spec.hidden, spec.expert_ffn
        self.gated = spec.activation == "swiglu"
        self.w_up = nn.Parameter(torch.empty(e, h, f))
        self.b_up = nn.Parameter(torch.empty(e, f)) if spec.bias else None
        self.w_gate = nn.Parameter(torch.empty(e, h, f)) if self.gated else None
        self.b_gate = nn.Parameter(torch.empty(e, f)) if spec.bias and self.gated else None


class ExpertDown(nn.Module):
    """All experts' output projections (E, f, h) and biases (E, h)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        e, h, f = spec.num_experts, spec.hidden, spec.expert_ffn
        self.w_down = nn.Parameter(torch.empty(e, f, h))
        self.b_down = nn.Parameter(torch.empty(e, h)) if spec.bias else None


class GroupedExperts(nn.Module):
    """The expert MLPs (ops `moe.experts.up/act/down`) applied to tokens sorted by expert.

    Returns the down projection *without* its bias: the caller adds the bias after any
    tensor-parallel reduction, so the bias is added once.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.up = ExpertUp(spec)
        self.down = ExpertDown(spec)

    def forward(self, x: torch.Tensor, counts: list[int], first_expert: int = 0) -> torch.Tensor:
        """`x`: tokens sorted by expert; `counts[j]`: how many go to expert `first_expert + j`."""
        w_up = _local(self.up.w_up)
        w_gate = _local(self.up.w_gate) if self.up.w_gate is not None else None
        b_up = _local(self.up.b_up) if self.up.b_up is not None else None
        b_gate = _local(self.up.b_gate) if self.up.b_gate is not None else None
        w_down = _local(self.down.w_down)
        outs = []
        for j, chunk in enumerate(torch.split(x, counts, dim=0)):
            e = first_expert + j
            h = chunk @ w_up[e]
            if b_up is not None:
                h = h + b_up[e]
            if w_gate is not None:
                g = chunk @ w_gate[e]
                if b_gate is not None:
                    g = g + b_gate[e]
                h = F.silu(g) * h
            else:
                h = F.gelu(h)
            outs.append(h @ w_down[e])
        return torch.cat(outs, dim=0)


def expert_counts(expert_sorted: torch.Tensor, num_experts: int) -> list[int]:
    """Tokens routed to each expert.

    On the meta device (the dry run, executor/dry_run.py) there are no token values to route: the
    tokens are then spread evenly over the experts (balanced routing, as the cost model prices it),
    so that every expert computes and every all-to-all carries its balanced share.
    """
    if expert_sorted.is_meta:
        base, extra = divmod(expert_sorted.numel(), num_experts)
        return [base + (e < extra) for e in range(num_experts)]
    return torch.bincount(expert_sorted, minlength=num_experts).tolist()


class MoE(nn.Module):
    """Token-choice top-k mixture of experts (Mixtral-style: softmax over the top-k router logits).

    Dropless: every routed token is computed (no capacity padding or dropping), so the result does
    not depend on how the batch is split over data-parallel ranks. `dispatch` is replaced by the
    expert-parallel module with an all-to-all version when ep > 1.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.top_k = spec.top_k
        self.num_experts = spec.num_experts
        self.dropout = spec.dropout
        self.router = nn.Linear(spec.hidden, spec.num_experts, bias=spec.router_bias)
        self.experts = GroupedExperts(spec)
        self.shared = SharedExpert(spec) if spec.shared_ffn_hidden else None

    def dispatch(self, x_sorted: torch.Tensor, expert_sorted: torch.Tensor) -> torch.Tensor:
        """Run each expert on its tokens (all experts local); returns outputs in the same order."""
        return self.experts(x_sorted, expert_counts(expert_sorted, self.num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        tokens = x.reshape(-1, shape[-1])
        logits = self.router(tokens)
        top_logits, top_idx = logits.topk(self.top_k, dim=-1)
        gates = F.softmax(top_logits, dim=-1, dtype=torch.float32).to(x.dtype)
        flat_expert = top_idx.reshape(-1)
        order = torch.argsort(flat_expert, stable=True)
        token_of = order // self.top_k
        expert_sorted = flat_expert[order]
        out = self.dispatch(tokens[token_of], expert_sorted)
        b_down = self.experts.down.b_down
        if b_down is not None:
            out = out + _local(b_down)[expert_sorted]
        out = out * gates.reshape(-1)[order].unsqueeze(-1)
        combined = torch.zeros_like(tokens).index_add(0, token_of, out).reshape(shape)
        if self.shared is not None:
            combined = combined + self.shared(x)
        return F.dropout(combined, p=self.dropout, training=self.training)


class Block(nn.Module):
    """One Transformer layer: x + attn(x), then x + mlp(x) (or x + moe(mlp.norm(x))).

    `layer` selects what the spec says of that layer (dense or MoE MLP, local attention, RoPE); None
    is a plain layer of the model (the MTP module's: full attention, MoE in an MoE model)."""

    def __init__(self, spec: ModelSpec, flash: bool, layer: int | None = None) -> None:
        super().__init__()
        window, chunk = spec.layer_window(layer) if layer is not None else (0, 0)
        rope = spec.layer_rope(layer) if layer is not None else spec.position == "rope"
        moe = spec.layer_is_moe(layer) if layer is not None else spec.is_moe
        self.attn: nn.Module = LatentAttention(spec, flash) if spec.is_mla else \
            Attention(spec, flash, window, chunk, rope)
        if moe:
            self.mlp: nn.Module = MoENorm(spec)
            self.moe: MoE | None = MoE(spec)
        else:
            self.mlp = MLP(spec)
            self.moe = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        if self.moe is None:
            return x + self.mlp(x)
        return x + self.moe(self.mlp(x))


class MultiTokenPrediction(nn.Module):
    """One multi-token prediction module (DeepSeek-V3 Sec. 2.2; ops `mtp.<d>.*`): the previous depth's
    hidden state and the embedding of the token d + 1 ahead, each normalised, concatenated and
    projected 2h -> h, one Transformer layer, a final norm; the model's embedding and head are shared."""

    def __init__(self, spec: ModelSpec, flash: bool) -> None:
        super().__init__()
        self.enorm = make_norm(spec, spec.hidden)
        self.hnorm = make_norm(spec, spec.hidden)
        self.proj = nn.Linear(2 * spec.hidden, spec.hidden, bias=False)
        self.layer = Block(spec, flash)
        self.norm = make_norm(spec, spec.hidden)

    def forward(self, h: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        return self.layer(self.proj(torch.cat([self.enorm(embedded), self.hnorm(h)], dim=-1)))


class Transformer(nn.Module):
    """The whole model; a pipeline stage is the same class with some parts set to None.

    `forward` takes token ids (first stage) or hidden states (later stages) and returns logits
    (last stage) or hidden states.
    """

    def __init__(self, spec: ModelSpec, flash_attention: bool = True) -> None:
        super().__init__()
        if spec.head != "lm":
            raise ModelNotSupported(f"model {spec.name!r} has an {spec.head!r} head; the executor builds "
                                    "decoder language models (head 'lm') only")
        if spec.position == "alibi":
            raise ModelNotSupported(f"model {spec.name!r} uses ALiBi positions; the executor builds learned or "
                                    "rotary positions only")
        self.spec = spec
        self.embed: Embedding | None = Embedding(spec)
        self.layers = nn.ModuleDict({str(i): Block(spec, flash_attention, i) for i in range(spec.num_layers)})
        self.final_norm: nn.Module | None = make_norm(spec, spec.hidden)
        self.lm_head: nn.Linear | None = nn.Linear(spec.hidden, spec.vocab_size, bias=False)
        self.mtp = nn.ModuleList([MultiTokenPrediction(spec, flash_attention) for _ in range(spec.mtp_layers)]) \
            if spec.mtp_layers else None
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding and LM-head matrix when the spec ties them (and both live here).

        Call again after anything that replaces parameters (`to_empty`, tensor parallelism).
        """
        if self.spec.tied_embeddings and self.embed is not None and self.lm_head is not None:
            self.lm_head.weight = self.embed.tok.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x if self.embed is not None else None
        if self.embed is not None:
            x = self.embed(x)
            if self.spec.dropout > 0:  # Megatron's embedding dropout (op `embed.dropout`): after the
                # sequence-parallel scatter of the embedding's output, on this rank's shard
                x = F.dropout(x, p=self.spec.dropout, training=self.training)
        for layer in self.layers.values():
            x = layer(x)
        h = x
        if self.final_norm is not None:
            x = self.final_norm(x)
        if self.lm_head is not None:
            x = self.lm_head(x)
        if self.mtp is None or self.lm_head is None:
            return x
        # Multi-token prediction: depth d predicts token t + 2 + d from the embedding of token t + 1 + d
        # (the input rolled; its last d + 1 positions wrap around and `loss_fn` ignores them). The
        # logits of every depth follow the model's along the sequence dimension.
        if self.embed is None or tokens is None:
            raise ModelNotSupported("multi-token prediction needs the token ids and the embedding on the "
                                    "last stage: the executor runs it without pipeline parallelism")
        logits = [x]
        for d, module in enumerate(self.mtp):
            h = module(h, self.embed(torch.roll(tokens, -(d + 1), dims=1)))
            logits.append(self.lm_head(module.norm(h)))
        return torch.cat(logits, dim=1)


# ---- deterministic initialisation ---------------------------------------------------------------


def canonical_name(spec: ModelSpec, name: str) -> str:
    """The name a parameter is initialised under: a tied LM head is the embedding matrix."""
    if spec.tied_embeddings and name == "lm_head.weight":
        return "embed.tok.weight"
    return name


def _init_value(spec: ModelSpec, name: str, shape: torch.Size, seed: int) -> torch.Tensor:
    """The full (unsharded) initial value of parameter `name`, on CPU, fp32.

    Each parameter draws from its own generator seeded by (seed, name), so any split of the model
    (pipeline stages, shards) gets exactly the values a single process gets, independent of order.
    Scheme as GPT-2: N(0, 0.02), output projections N(0, 0.02/√(2L)), norms 1, biases 0.
    """
    leaf = name.rsplit(".", 1)[-1]
    if leaf.startswith("b_") or leaf in ("bias", "sinks") or ".lora_b." in name:  # LoRA's B starts at zero
        return torch.zeros(shape)
    if any(part.endswith("norm") for part in name.split(".")[:-1]):  # norm, q_norm, qk_norm.q, enorm, ...
        return torch.ones(shape)
    std = 0.02
    if name.endswith(("attn.proj.weight", "mlp.down.weight", "experts.down.w_down", "shared.down.weight")):
        std = 0.02 / math.sqrt(2 * spec.num_layers)
    g = torch.Generator().manual_seed(zlib.crc32(f"{seed}:{name}".encode()) & 0x7FFFFFFF)
    return torch.empty(shape).normal_(0.0, std, generator=g)


@torch.no_grad()
def init_weights(model: nn.Module, spec: ModelSpec, seed: int) -> None:
    """Fill every parameter (plain or DTensor shard) with its deterministic initial value."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    for name, p in model.named_parameters():
        full = _init_value(spec, canonical_name(spec, name), p.shape, seed)
        if isinstance(p, DTensor):
            target = p.to_local()
            # src_data_rank=None: every rank slices its own shard, no communication.
            shard = distribute_tensor(full.to(target.device), p.device_mesh, p.placements, src_data_rank=None)
            target.copy_(shard.to_local())
        else:
            p.copy_(full)  # copy_ moves the CPU value to the parameter's device


def build_model(spec: ModelSpec, flash_attention: bool = True, seed: int = 0,
                device: torch.device | str = "cpu") -> Transformer:
    """A fully initialised single-device model (the reference for the parallel runs)."""
    with torch.device("meta"):
        model = Transformer(spec, flash_attention)
    model.to_empty(device=device)
    model.tie_weights()
    init_weights(model, spec, seed)
    return model
