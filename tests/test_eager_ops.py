"""Eager PyTorch's elementwise ops (torchtitan without torch.compile), against what PyTorch dispatches.

The cost model prices a norm or RoPE in eager mode by the bytes its decomposition reads and writes and
its launches (planner.graph.with_eager_ops). The reference here is PyTorch itself: a TorchDispatchMode
records every aten op F.rms_norm and torchtitan's RoPE dispatch, forward and backward, and sums the
bytes of each op's tensors (views move no data and are skipped).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from dispatch_traffic import Traffic

from planner.cost import estimate
from planner.graph import build_graph, with_eager_ops
from planner.plan import Plan
from planner.specs.catalog import cluster_preset, model_preset

TOKENS = 2048


def _eager_op(name: str, dtype: str) -> tuple[float, float, int, int]:
    """(forward, backward) bytes per element and launches of op `name` in Llama 3 8B's eager graph."""
    lg = with_eager_ops(build_graph(model_preset("llama3-8b"), dtype), composite_rms_norm=True)
    op = next(op for op in lg.kinds[0].ops if op.name == name)
    return op.io / op.width, op.io_bwd / op.width, op.kernels, op.kernels_bwd


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_composite_rms_norm_bytes_and_launches_are_what_pytorch_dispatches(dtype: torch.dtype) -> None:
    x = torch.randn(TOKENS, 1024, dtype=dtype, requires_grad=True)
    w = torch.ones(1024, dtype=dtype, requires_grad=True)
    with Traffic() as fwd:
        y = F.rms_norm(x, (1024,), w, 1e-5)
    grad = torch.randn_like(y)
    with Traffic() as bwd:
        y.backward(grad)
    if any("_fused_rms_norm" in op for op in fwd.ops):
        pytest.skip("this PyTorch build runs a fused RMSNorm kernel on CPU: no composite to count")
    name = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]
    io, io_bwd, kernels, kernels_bwd = _eager_op("attn.norm", name)
    assert io == pytest.approx(fwd.bytes / x.numel(), rel=0.01)
    assert io_bwd == pytest.approx(bwd.bytes / x.numel(), rel=0.01)
    assert (kernels, kernels_bwd) == (len(fwd.ops), len(bwd.ops))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_torchtitan_rope_bytes_and_launches_are_what_pytorch_dispatches(dtype: torch.dtype) -> None:
    """torchtitan's complex RoPE on Llama 3 8B's 32 query and 8 key heads of 128. The model leaves out the
    rotation cache (8 B per rotated pair and token, shared by the heads): PyTorch reads it once per
    multiply forward (q, k) and resolves its conjugate and reads it again backward (six passes)."""
    rope = pytest.importorskip("torchtitan.models.common.rope")
    cache = torch.polar(torch.ones(TOKENS, 64), torch.randn(TOKENS, 64))[None, :, None, :]
    q = torch.randn(1, TOKENS, 32, 128, dtype=dtype, requires_grad=True)
    k = torch.randn(1, TOKENS, 8, 128, dtype=dtype, requires_grad=True)
    with Traffic() as fwd:
        q_out, k_out = rope.ComplexRoPE.apply_rotary_emb(q, k, cache)
    grads = [torch.randn_like(q_out), torch.randn_like(k_out)]
    with Traffic() as bwd:
        torch.autograd.backward([q_out, k_out], grads)
    elements = q.numel() + k.numel()
    cache_pass = cache.numel() * cache.element_size() / elements  # one read of the cache, per element
    io, io_bwd, kernels, kernels_bwd = _eager_op("attn.rope", "bf16" if dtype == torch.bfloat16 else "fp32")
    assert io + 2 * cache_pass == pytest.approx(fwd.bytes / elements, rel=1e-3)
    assert io_bwd + 6 * cache_pass == pytest.approx(bwd.bytes / elements, rel=1e-3)
    assert (kernels, kernels_bwd) == (len(fwd.ops), len(bwd.ops))


def test_eager_profiles_cost_only_the_eager_ops() -> None:
    """The same plan under torchtitan with torch.compile (of its blocks: the 2024 release, whose loss stayed
    eager as in the other two), eager (today's fused F.rms_norm) and eager on the 2024 composite: only
    compute time grows, in that order; communication and memory are the same."""
    model, cluster = model_preset("llama3-8b").with_seq_len(8192), cluster_preset("dgx-h100").with_gpus(8)
    runs = {fw: estimate(model, cluster, Plan(dp=8, global_batch=16, micro_batch=2, zero_stage=3,
                                              recompute="op-selective", framework=fw))
            for fw in ("torchtitan-compile-2024", "torchtitan", "torchtitan-2024")}
    compute = [runs[fw]["time"]["compute"] for fw in runs]
    assert compute[0] < compute[1] < compute[2]
    for key in ("tp_comm", "dp_comm"):
        assert len({runs[fw]["time"][key] for fw in runs}) == 1
    assert len({runs[fw]["memory_gib_per_gpu"] for fw in runs}) == 1


def test_explain_says_how_the_profile_runs_norms_and_rope() -> None:
    from planner.plan import PlanDocument
    from planner.report import explain

    model, cluster = model_preset("llama3-8b"), cluster_preset("dgx-h100").with_gpus(8)
    lines = {}
    for fw in ("torchtitan-2024", "torchtitan", "nemo"):
        plan = Plan(dp=8, global_batch=8, zero_stage=1, framework=fw)
        doc = PlanDocument(plan=plan, model=model, cluster=cluster, prediction=estimate(model, cluster, plan))
        lines[fw] = next(x for x in explain(doc.to_json()).splitlines() if x.startswith(f"framework {fw}"))
    assert "norms and RoPE eager (composite RMSNorm)," in lines["torchtitan-2024"]
    assert "norms and RoPE eager," in lines["torchtitan"]
    assert "norms and RoPE fused," in lines["nemo"]
    # and how it keeps gradients: NeMo's performance recipes in bf16 (grad_reduce_in_fp32 false), the rest fp32
    assert "gradients 2 B per parameter kept, reduced in 2 B, loss" in lines["nemo"]
    assert "gradients 4 B per parameter kept, reduced in 4 B, loss eager F.cross_entropy on fp32 logits" \
        in lines["torchtitan"]
