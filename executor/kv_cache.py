"""Inference with a KV cache on the executor's model (executor/model.py), tensor parallel or not.

Why a separate module: the model's `forward` is the training path (whole sequences, no cache). A
serving step runs a flattened batch of tokens from many requests (decode tokens and prefill chunks,
as vLLM does): every linear layer, norm and MLP runs once over all of the step's tokens through the
model's own modules (so tensor parallelism applied by executor/tensor_parallel.py works unchanged:
column-parallel q/k/v give this rank's heads, the row-parallel output projection all-reduces), and
attention runs per sequence against that sequence's cached keys and values (PagedAttention's
semantics, Kwon et al. 2023: each sequence reads exactly its own context).

The cache holds, per layer, K and V of shape (slots, local KV heads, max context, head_dim): one
slot per running request (a contiguous region per request instead of paged blocks: the same bytes
read per step, without a block table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from executor.errors import UnsupportedPlan
from executor.model import Transformer, apply_rope, rope_tables
from planner.specs.model import ModelSpec


def check_servable(spec: ModelSpec) -> None:
    """Refuse (UnsupportedPlan) the attention variants this cached forward does not implement."""
    unsupported = (
        (getattr(spec, "kv_lora_rank", 0), "kv_lora_rank", "multi-head latent attention"),
        (getattr(spec, "window_layers", ()), "window_layers", "local (sliding-window or chunked) attention"),
        (getattr(spec, "qk_norm", "none") != "none", "qk_norm", "query/key norms"),
        (getattr(spec, "attention_sinks", False), "attention_sinks", "attention sinks"),
        (getattr(spec, "nope_layers", ()), "nope_layers", "RoPE-free layers"),
        (getattr(spec, "mtp_layers", 0), "mtp_layers", "multi-token prediction"),
        (spec.head != "lm" or not spec.causal, "head", "non-causal or non-LM models"),
        (getattr(spec, "position", "") == "alibi", "position", "ALiBi positions"),
    )
    for bad, field, what in unsupported:
        if bad:
            raise UnsupportedPlan(f"serving {what} is not implemented by the executor yet", field=field)


@dataclass
class Segment:
    """`tokens` new tokens of the request in cache slot `slot`, at positions start .. start + n - 1."""

    slot: int
    start: int
    tokens: torch.Tensor  # (n,) token ids
    sample: bool  # sample a next token from its last position


class KVCache:
    """Per-layer K and V for `slots` requests of up to `max_context` tokens (this rank's KV heads)."""

    def __init__(self, model: Transformer, slots: int, max_context: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        spec = model.spec
        layer = next(iter(model.layers.values()))
        w = layer.attn.qkv.k.weight
        local_kv = (w.to_local() if hasattr(w, "to_local") else w).shape[0] // spec.head_dim
        shape = (slots, local_kv, max_context, spec.head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in model.layers]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in model.layers]
        self.max_context = max_context

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))


class CachedForward:
    """Runs serving steps of `model` against a `KVCache` (see the module docstring)."""

    def __init__(self, model: Transformer, cache: KVCache) -> None:
        check_servable(model.spec)
        self.model, self.cache, self.spec = model, cache, model.spec
        self.head_dim = self.spec.head_dim
        self.scale = 1.0 / math.sqrt(self.head_dim)
        device = cache.k[0].device
        self.rope = self.spec.position == "rope"
        if self.rope:
            base = float(getattr(next(iter(model.layers.values())).attn, "rope_base", 10000.0))
            cos, sin = rope_tables(cache.max_context, self.head_dim, device, base)
            self.cos, self.sin = cos, sin

    def _embed(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        emb = self.model.embed
        assert emb is not None
        x = emb.tok(tokens[None])
        if emb.pos is not None:
            x = x + emb.pos(positions)[None]
        if emb.type is not None:
            x = x + emb.type.weight[0]
        if emb.norm is not None:
            x = emb.norm(x)
        return x

    @torch.inference_mode()
    def step(self, segments: list[Segment]) -> torch.Tensor:
        """Run one step over `segments`; returns the greedy next token of each sampling segment."""
        tokens = torch.cat([s.tokens for s in segments])
        lengths = [int(s.tokens.numel()) for s in segments]
        positions = torch.cat([torch.arange(s.start, s.start + n) for s, n in zip(segments, lengths, strict=True)])
        slots = torch.cat([torch.full((n,), s.slot) for s, n in zip(segments, lengths, strict=True)])
        device = self.cache.k[0].device
        tokens, positions, slots = tokens.to(device), positions.to(device), slots.to(device)
        x = self._embed(tokens, positions)
        for i, layer in enumerate(self.model.layers.values()):
            x = x + self._attention(layer.attn, i, x, positions, slots, segments, lengths)
            x = x + layer.mlp(x) if layer.moe is None else x + layer.moe(layer.mlp(x))
        ends = torch.tensor([sum(lengths[: j + 1]) - 1 for j, s in enumerate(segments) if s.sample],
                            device=device, dtype=torch.long)
        if ends.numel() == 0:
            return torch.empty(0, dtype=torch.long)
        h = x[:, ends]
        if self.model.final_norm is not None:
            h = self.model.final_norm(h)
        assert self.model.lm_head is not None
        logits = self.model.lm_head(h)
        return logits[0].argmax(dim=-1).cpu()

    def _attention(self, attn: torch.nn.Module, index: int, x: torch.Tensor, positions: torch.Tensor,
                   slots: torch.Tensor, segments: list[Segment], lengths: list[int]) -> torch.Tensor:
        t, d = x.shape[1], self.head_dim
        q, k, v = attn.qkv(attn.norm(x))
        q = q.view(t, -1, d)
        k = k.view(t, -1, d)
        v = v.view(t, -1, d)
        if self.rope:
            cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # (t, 1, d)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        ck, cv = self.cache.k[index], self.cache.v[index]
        ck[slots, :, positions] = k
        cv[slots, :, positions] = v
        outs = []
        offset = 0
        for s, n in zip(segments, lengths, strict=True):
            ctx = s.start + n
            qs = q[offset: offset + n].transpose(0, 1)[None]  # (1, heads, n, d)
            ks = ck[s.slot, :, :ctx][None]
            vs = cv[s.slot, :, :ctx][None]
            mask = None
            if n > 1:  # a prompt chunk: causal within the chunk, all earlier positions visible
                mask = torch.ones(n, ctx, dtype=torch.bool, device=x.device).tril(s.start)
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=self.scale,
                                               enable_gqa=ks.shape[1] != qs.shape[1])
            outs.append(o[0].transpose(0, 1).reshape(n, -1))
            offset += n
        return attn.proj(torch.cat(outs)[None])
