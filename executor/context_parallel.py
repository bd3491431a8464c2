"""Context parallelism: ring attention over the cp group, each rank holding seq/cp tokens of every sequence.

Split (load-balanced causal, as Megatron-Core and torchtitan split it): every sequence is cut into 2·cp
equal chunks and cp rank i holds chunks i and 2cp−1−i, so under a causal mask every rank has the same
attention work. Token ids, targets and positions are sliced that way before the model runs
(`Trainer.train_step`); the learned position table and RoPE use the global positions (`apply_cp`).

Ring attention (Liu et al. 2023, "Ring Attention with Blockwise Transformers"), the implementation the
cost model prices (planner/cost/terms.py): in forward the local K and V travel once around the ring,
cp − 1 sends of this rank's K/V chunk, each overlapped with the attention of the block already here;
the partial outputs are merged by their log-sum-exp (as FlashAttention merges tiles). In backward the
K/V chunks travel around again and the accumulated K/V gradients travel with them (cp − 1 sends each)
back to their owner: forward once, backward twice, on the wire exactly the (cp − 1)/cp of a ring
all-gather of the full K and V that traffic.py counts per exchange. With the head-tail split each step
is one of three dense blocks, no mask needed: the own chunk pair (causal), an earlier rank's first
chunk against all local queries, or a later rank's pair against the local second chunk.

Block kernel: on CPU the fused FlashAttention-for-CPU kernel and its backward
(`aten._scaled_dot_product_flash_attention_for_cpu`, the kernel `F.scaled_dot_product_attention` runs
on CPU), given the merged output and log-sum-exp so that each block's gradient is exact; otherwise
(the plan's unfused "math" attention, query/key and value heads of different widths as in MLA, other
devices) the same block in plain matmuls. torch's own `context_parallel` (torch 2.13) has no rule for
the CPU kernel, so the executor carries this ring.

Gradients of replicated weights are averaged over the dp x cp ranks (executor/trainer.py), the cost
model's gradient group; the loss of each rank is the mean over its own tokens, the same count on
every rank, so their average is the mean over the whole sequence.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from executor.errors import UnsupportedPlan
from executor.model import AttentionCore, Transformer
from planner.plan import Plan
from planner.specs.model import ModelSpec

_aten = torch.ops.aten
KV_TAG, GRAD_TAG = 71, 72  # distinct tags: a K/V send and a gradient send may be in flight together


def check_cp(spec: ModelSpec, plan: Plan) -> None:
    """UnsupportedPlan naming what the ring attention does not implement (before any process starts)."""
    cp = plan.cp
    if cp == 1:
        return
    if spec.seq_len % (2 * cp):
        raise UnsupportedPlan(f"context parallelism splits each sequence into 2*cp = {2 * cp} chunks (load-balanced "
                              f"causal split): seq_len {spec.seq_len} is not divisible by {2 * cp}", field="cp")
    if spec.window_layers:
        raise UnsupportedPlan("context parallelism with sliding-window or chunked attention layers is not run by "
                              "the executor (its ring attention computes full causal blocks)", field="cp")
    if spec.attention_sinks:
        raise UnsupportedPlan("context parallelism with attention sinks is not run by the executor (its ring "
                              "attention has no sink logit)", field="cp")
    if spec.dropout > 0:
        raise UnsupportedPlan(f"context parallelism with attention dropout (dropout {spec.dropout}) is not run by "
                              "the executor (its ring attention has no dropout); set dropout 0", field="cp")
    if spec.mtp_layers:
        raise UnsupportedPlan("context parallelism with multi-token prediction is not run by the executor (the "
                              "MTP modules shift tokens along the whole sequence)", field="cp")


def chunk_positions(seq_len: int, cp: int, cp_rank: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Global positions of the tokens cp rank `cp_rank` holds: chunks i and 2cp−1−i of 2cp."""
    c = seq_len // (2 * cp)
    first = torch.arange(cp_rank * c, (cp_rank + 1) * c, device=device)
    second = torch.arange((2 * cp - 1 - cp_rank) * c, (2 * cp - cp_rank) * c, device=device)
    return torch.cat([first, second])


class Ring:
    """This rank's place in the cp ring: sends go to the next rank, receives come from the previous."""

    def __init__(self, ranks: list[int], rank: int, group: dist.ProcessGroup) -> None:
        self.size = len(ranks)
        self.index = ranks.index(rank)
        self.next = ranks[(self.index + 1) % self.size]
        self.prev = ranks[(self.index - 1) % self.size]
        self.group = group

    def shift(self, buf: torch.Tensor, tag: int) -> _Pending:
        """Send `buf` to the next rank and receive the previous rank's buffer of the same shape."""
        buf = buf.contiguous()
        out = torch.empty_like(buf)
        # One batch: NCCL coalesces the pair (separate isend / irecv on a 2-rank ring would queue each
        # rank's receive behind its own send and deadlock); gloo runs the two as isend / irecv.
        works = dist.batch_isend_irecv([dist.P2POp(dist.isend, buf, self.next, self.group, tag),
                                        dist.P2POp(dist.irecv, out, self.prev, self.group, tag)])
        return _Pending(out, works, buf)


class _Pending:
    def __init__(self, out: torch.Tensor, works: list[Any], keep: torch.Tensor) -> None:
        self.out, self.works, self.keep = out, works, keep  # keep: the send buffer stays alive until done

    def wait(self) -> torch.Tensor:
        for w in self.works:
            if w is not None:
                w.wait()
        return self.out


# ---- one attention block: (local queries) x (one K/V chunk) --------------------------------------------------


def _expand(x: torch.Tensor, heads: int) -> torch.Tensor:
    """GQA: repeat each K/V head for its group of query heads."""
    return x if x.shape[1] == heads else x.repeat_interleave(heads // x.shape[1], dim=1)


def _fold(g: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """The gradient of `_expand`: sum over each K/V head's group of query heads."""
    if g.shape[1] == kv_heads:
        return g
    b, _, t, d = g.shape
    return g.view(b, kv_heads, -1, t, d).sum(2)


def _use_flash(flash: bool, q: torch.Tensor, v: torch.Tensor) -> bool:
    return flash and q.device.type == "cpu" and q.shape[-1] == v.shape[-1]


def _scores(q: torch.Tensor, k: torch.Tensor, causal: bool, scale: float) -> torch.Tensor:
    s = (q @ k.transpose(-2, -1)).to(torch.promote_types(q.dtype, torch.float32)) * scale
    if causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu(1)
        s = s.masked_fill(mask, float("-inf"))
    return s


def block_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, flash: bool
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, log-sum-exp) of softmax(q kᵀ scale) v over this block alone; lse in fp32, (B, H, Tq)."""
    heads = q.shape[1]
    k, v = _expand(k, heads), _expand(v, heads)
    if _use_flash(flash, q, v):
        out, lse = _aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out, lse
    s = _scores(q, k, causal, scale)
    lse = torch.logsumexp(s, dim=-1)
    return (torch.exp(s - lse.unsqueeze(-1)).to(v.dtype) @ v), lse


def block_backward(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                   lse: torch.Tensor, causal: bool, scale: float, flash: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of this block's share of the loss, given the merged output and log-sum-exp
    of the whole row (FlashAttention's backward: P = exp(S − lse), dS = P ∘ (dP − rowsum(dO ∘ O)))."""
    heads = q.shape[1]
    ke, ve = _expand(k, heads), _expand(v, heads)
    if _use_flash(flash, q, ve):
        dq, dk, dv = _aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout.contiguous(), q.contiguous(), ke.contiguous(), ve.contiguous(), out.contiguous(),
            lse.contiguous(), 0.0, causal, scale=scale)
    else:
        p = torch.exp(_scores(q, ke, causal, scale) - lse.unsqueeze(-1))
        dv = (p.to(dout.dtype).transpose(-2, -1) @ dout)
        dp = (dout @ ve.transpose(-2, -1)).float()
        ds = p * (dp - (dout.float() * out.float()).sum(-1, keepdim=True))
        dq = (ds.to(q.dtype) @ ke) * scale
        dk = (ds.to(q.dtype).transpose(-2, -1) @ q) * scale
    return dq, _fold(dk, k.shape[1]), _fold(dv, v.shape[1])


# ---- the ring --------------------------------------------------------------------------------------------------


def _block_of_step(step: int, ring: Ring, causal: bool, t: int) -> tuple[slice, slice, bool]:
    """(query rows, key rows, causal) of the block computed at ring step `step` under the head-tail split:
    the K/V chunk pair here came from rank (index − step) mod cp."""
    every = slice(None)
    if not causal:
        return every, every, False
    if step == 0:
        return every, every, True  # the own pair: positions ascend in the same order on both sides
    half = t // 2
    src = (ring.index - step) % ring.size
    if src < ring.index:  # its first chunk precedes both local chunks, its second follows both
        return every, slice(0, half), False
    return slice(half, None), every, False  # only the local second chunk follows both of its chunks


def _pack(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.cat([k.reshape(-1), v.reshape(-1)])


def _unpack(buf: torch.Tensor, k_shape: torch.Size, v_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    n = k_shape.numel()
    return buf[:n].view(k_shape), buf[n:].view(v_shape)


class RingAttention(torch.autograd.Function):
    """softmax(q kᵀ/√d) v over the whole sequence, from this rank's q, k, v chunks (B, H, T/cp, d)."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ring: Ring, causal: bool,
                flash: bool) -> torch.Tensor:
        scale = q.shape[-1] ** -0.5
        t = q.shape[-2]
        b, h = q.shape[0], q.shape[1]
        # Laid out (B, T, H, d) as SDPA lays out its output, so that the caller's transpose back to
        # (B, T, H·d) is a view, not a copy the output projection would save as well.
        out = torch.zeros((b, t, h, v.shape[-1]), dtype=torch.float32, device=q.device).transpose(1, 2)
        lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
        buf = _pack(k, v)
        for step in range(ring.size):
            pending = ring.shift(buf, KV_TAG) if step < ring.size - 1 else None  # overlapped with the block
            kb, vb = _unpack(buf, k.shape, v.shape)
            rows, keys, blk_causal = _block_of_step(step, ring, causal, t)
            o, l_blk = block_forward(q[:, :, rows], kb[:, :, keys], vb[:, :, keys], blk_causal, scale, flash)
            old = lse[:, :, rows]
            new = torch.logaddexp(old, l_blk)
            out[:, :, rows] = out[:, :, rows] * torch.exp(old - new).unsqueeze(-1) \
                + o.float() * torch.exp(l_blk - new).unsqueeze(-1)
            lse[:, :, rows] = new
            if pending is not None:
                buf = pending.wait()
        out = out.to(q.dtype)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.ring, ctx.causal, ctx.flash, ctx.scale = ring, causal, flash, scale
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, out, lse = ctx.saved_tensors
        ring, causal, flash, scale = ctx.ring, ctx.causal, ctx.flash, ctx.scale
        t = q.shape[-2]
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        buf = _pack(k, v)
        own: torch.Tensor | None = None  # this rank's chunk's gradient from its own queries
        travelling: _Pending | None = None  # the accumulated gradient of the chunk held, from the previous rank
        for step in range(ring.size):
            pending = ring.shift(buf, KV_TAG) if step < ring.size - 1 else None
            kb, vb = _unpack(buf, k.shape, v.shape)
            rows, keys, blk_causal = _block_of_step(step, ring, causal, t)
            dq_b, dk_b, dv_b = block_backward(dout[:, :, rows], q[:, :, rows], kb[:, :, keys], vb[:, :, keys],
                                              out[:, :, rows], lse[:, :, rows], blk_causal, scale, flash)
            dq[:, :, rows] += dq_b.float()
            dk, dv = torch.zeros_like(k), torch.zeros_like(v)
            dk[:, :, keys] = dk_b
            dv[:, :, keys] = dv_b
            grad = _pack(dk, dv)
            if step == 0:
                own = grad
            else:
                if travelling is not None:
                    grad = travelling.wait() + grad
                travelling = ring.shift(grad, GRAD_TAG)  # on to the next holder; after the last step, the owner
            if pending is not None:
                buf = pending.wait()
        assert own is not None
        if travelling is not None:
            own = own + travelling.wait()
        dk, dv = _unpack(own, k.shape, v.shape)
        return dq.to(q.dtype), dk, dv, None, None, None


class RingAttentionCore(nn.Module):
    """Drop-in for `AttentionCore` (op `attn.core`, no parameters) computing it by ring attention."""

    def __init__(self, core: AttentionCore, ring: Ring) -> None:
        super().__init__()
        self.flash, self.causal, self.ring = core.flash, core.causal, ring

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return RingAttention.apply(q, k, v, self.ring, self.causal, self.flash)


def apply_cp(model: Transformer, ring: Ring, positions: torch.Tensor) -> None:
    """Ring attention in every attention layer of `model` (a whole model or a pipeline stage) and the
    global `positions` of the local tokens for the position table and RoPE. Call before checkpointing,
    so that selective recompute wraps the ring core."""
    if model.embed is not None:
        model.embed.positions = positions
    for layer in model.layers.values():
        attn = layer.attn
        if attn.core.sinks is not None or attn.core.window or attn.core.chunk:
            raise UnsupportedPlan("context parallelism with sliding-window / chunked attention or attention sinks "
                                  "is not run by the executor", field="cp")
        attn.core = RingAttentionCore(attn.core, ring)
        attn.positions = positions
