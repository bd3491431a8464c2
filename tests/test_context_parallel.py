"""Context parallelism (executor/context_parallel.py) without a training run: the head-tail split, the
block kernels against autograd, the ring against one process's attention on 2 and 3 gloo ranks, and the
plans it refuses. The whole training step under cp is checked in tests/test_executor_dist.py (numerics)
and its traffic in tests/test_crosscheck.py."""

from __future__ import annotations

import dataclasses
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from executor.context_parallel import Ring, RingAttention, block_backward, block_forward, chunk_positions
from executor.errors import UnsupportedPlan
from executor.plans import local_plan
from executor.run import check_executable
from planner.specs.model import ModelSpec

SPEC = ModelSpec(name="t", num_layers=2, hidden=32, num_heads=4, ffn_hidden=64, vocab_size=64, seq_len=16,
                 dtype="fp32", position="rope", norm="rmsnorm", activation="swiglu", bias=False)


def test_head_tail_chunks() -> None:
    # 16 tokens, cp 2: four chunks of 4; rank 0 holds chunks 0 and 3, rank 1 chunks 1 and 2.
    assert chunk_positions(16, 2, 0).tolist() == [0, 1, 2, 3, 12, 13, 14, 15]
    assert chunk_positions(16, 2, 1).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    for cp in (2, 3, 4):
        seq = 2 * cp * 3
        held = torch.cat([chunk_positions(seq, cp, r) for r in range(cp)])
        assert sorted(held.tolist()) == list(range(seq))  # every token once
        # causal work (keys at or before each query) is the same on every rank
        work = {int(sum(p + 1 for p in chunk_positions(seq, cp, r).tolist())) for r in range(cp)}
        assert len(work) == 1


@pytest.mark.parametrize("flash", [True, False], ids=["flash", "math"])
@pytest.mark.parametrize("causal", [True, False])
def test_block_kernels_match_autograd(flash: bool, causal: bool) -> None:
    """One block holding the whole sequence: forward is attention, backward given the merged output and
    log-sum-exp is autograd's gradient (GQA: 4 query heads over 2 K/V heads)."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 8, 16, generator=g, requires_grad=True)
    k = torch.randn(2, 2, 8, 16, generator=g, requires_grad=True)
    v = torch.randn(2, 2, 8, 16, generator=g, requires_grad=True)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    dout = torch.randn(ref.shape, generator=g)
    ref.backward(dout)
    out, lse = block_forward(q.detach(), k.detach(), v.detach(), causal, 16 ** -0.5, flash)
    torch.testing.assert_close(out, ref.detach())
    scores = (q @ k.repeat_interleave(2, 1).transpose(-2, -1)).detach() / 4
    if causal:
        scores = scores.masked_fill(torch.ones(8, 8, dtype=torch.bool).triu(1), float("-inf"))
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1))
    grads = block_backward(dout, q.detach(), k.detach(), v.detach(), out, lse, causal, 16 ** -0.5, flash)
    for mine, leaf in zip(grads, (q, k, v), strict=True):
        torch.testing.assert_close(mine, leaf.grad)


def _ring_worker(rank: int, world: int, port: int, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ring = Ring(list(range(world)), rank, dist.group.WORLD)
        worst = 0.0
        for flash in (True, False):
            for causal in (True, False):
                g = torch.Generator().manual_seed(1)
                seq = 4 * world
                q = torch.randn(2, 4, seq, 8, generator=g, requires_grad=True)
                k = torch.randn(2, 2, seq, 8, generator=g, requires_grad=True)
                v = torch.randn(2, 2, seq, 8, generator=g, requires_grad=True)
                ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
                dout = torch.randn(ref.shape, generator=g)
                ref.backward(dout)
                pos = chunk_positions(seq, world, rank)
                ql, kl, vl = (x.detach()[:, :, pos].clone().requires_grad_() for x in (q, k, v))
                o = RingAttention.apply(ql, kl, vl, ring, causal, flash)
                o.backward(dout[:, :, pos])
                for a, b in ((o, ref), (ql.grad, q.grad), (kl.grad, k.grad), (vl.grad, v.grad)):
                    worst = max(worst, float((a - b[:, :, pos]).abs().max()))
        out[rank] = worst
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_ring_attention_equals_one_process(world: int) -> None:
    """Outputs and the gradients of q, k and v on every rank equal one process's SDPA on the whole
    sequence (causal and bidirectional, fused and math blocks; cp = 3 has ranks both before and after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = mp.Manager().dict()
    mp.start_processes(_ring_worker, args=(world, port, out), nprocs=world, start_method="spawn")
    assert sorted(out.keys()) == list(range(world))
    assert max(out.values()) < 2e-6, dict(out)


@pytest.mark.parametrize(("change", "needle"), [
    ({"seq_len": 12}, "2*cp = 8 chunks"),
    ({"window_layers": (0,), "sliding_window": 4}, "sliding-window"),
    ({"window_layers": (0,), "attention_chunk": 4}, "chunked attention"),
    ({"attention_sinks": True}, "attention sinks"),
    ({"dropout": 0.1}, "attention dropout"),
    ({"mtp_layers": 1}, "multi-token prediction"),
])
def test_what_context_parallelism_refuses(change: dict, needle: str) -> None:
    spec = dataclasses.replace(SPEC, **change)
    with pytest.raises(UnsupportedPlan, match=needle.replace("*", r"\*")) as err:
        check_executable(local_plan(spec, cp=4, micro_batch=1, global_batch=1))
    assert err.value.field == "cp"
    check_executable(local_plan(SPEC, cp=4, micro_batch=1, global_batch=1))  # the plain model runs
