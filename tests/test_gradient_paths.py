"""Gradient paths of the framework profiles (planner.framework.GradientPath), against PyTorch and DeepSpeed.

The deepspeed profile (Megatron-DeepSpeed as BLOOM ran it in 2022) accumulates gradients outside the
weight-gradient GEMM: fp16 by autograd's in-place `grad += new` (DeepSpeed's ZeRO-1 optimizer sets the
grads to None after each step), bf16 by the BF16_Optimizer's copy of each micro-batch's bf16 grads into
an fp32 buffer (DeepSpeed 0.6.2's update_hp_grads). The reference for the bytes per parameter is what
PyTorch dispatches for those code paths (a TorchDispatchMode summing the bytes of every op's tensors,
as tests/test_eager_ops.py counts eager norms).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from dispatch_traffic import Traffic

import planner.cost.terms as terms_module
from planner.cost import estimate
from planner.cost.memory import gradient_path
from planner.errors import SpecError
from planner.framework import GradientPath, framework
from planner.plan import Plan
from planner.specs.catalog import cluster_preset, model_preset
from planner.specs.model import ModelSpec


def _backward_bytes(weight: torch.Tensor, x: torch.Tensor) -> int:
    """Bytes PyTorch moves in one micro-batch's backward through y = x @ weight.T (its GEMMs included)."""
    y = x @ weight.t()
    with Traffic() as t:
        y.backward(torch.ones_like(y))
    return t.bytes


def test_fp16_autograd_accumulation_is_the_profiles_bytes_per_parameter() -> None:
    """The second micro-batch's backward moves exactly the accumulation more than the first, whose
    gradient autograd adopts (DeepSpeed's ZeRO-1 optimizer sets the grads to None after each step)."""
    torch.manual_seed(0)
    weight = torch.randn(512, 256, dtype=torch.float16, requires_grad=True)
    x = torch.randn(64, 256, dtype=torch.float16)
    first = _backward_bytes(weight, x)
    assert weight.grad is not None
    second = _backward_bytes(weight, x)
    per_param = (second - first) / weight.numel()
    assert per_param == pytest.approx(6.0)
    assert framework("deepspeed").gradient_override("fp16").accumulation_bytes == per_param


def test_bf16_optimizer_update_is_the_profiles_bytes_per_parameter() -> None:
    """DeepSpeed 0.6.2's BF16_Optimizer: clear_lp_grads() sets the bf16 grads to None before each
    backward (autograd adopts the new gradient: nothing to accumulate) and update_hp_grads() then runs
    `hp_grad.data.add_(lp.grad.data.to(hp_grad.dtype).view(hp_grad.shape))` for each parameter."""
    torch.manual_seed(0)
    weight = torch.randn(512, 256, dtype=torch.bfloat16, requires_grad=True)
    x = torch.randn(64, 256, dtype=torch.bfloat16)
    hp_grad = torch.zeros(weight.shape, dtype=torch.float32)
    cold = _backward_bytes(weight, x)
    weight.grad = None  # clear_lp_grads()
    assert _backward_bytes(weight, x) == cold  # nothing accumulated in autograd
    with Traffic() as update:
        hp_grad.data.add_(weight.grad.data.to(hp_grad.dtype).view(hp_grad.shape))
    per_param = update.bytes / weight.numel()
    assert per_param == pytest.approx(18.0)
    assert framework("deepspeed").gradient_override("bf16").accumulation_bytes == per_param


def test_deepspeed_bf16_keeps_an_fp32_buffer_beside_its_bf16_grads() -> None:
    """BF16_Optimizer: an unpartitioned fp32 gradient buffer (4 B) beside the bf16 grads (2 B), all-reduced
    in bf16 (DeepSpeed's communication_data_type under bf16 and ZeRO stage 0); the fp16 ZeRO-1 path keeps
    the 16-bit grads alone and all-reduces them (ZeRO stage 1 ignored contiguous_gradients, 2021-2024, and
    its fallback all-reduces flattened buckets). Megatron-LM (the default
    profile) keeps one fp32 main_grad it accumulates inside the GEMM."""
    bf16, fp16 = gradient_path(framework("deepspeed"), "bf16"), gradient_path(framework("deepspeed"), "fp16")
    assert (bf16.buffer_bytes, bf16.reduce_bytes, bf16.reduce_op) == (2 + 4, 2, "all_reduce")
    assert (fp16.buffer_bytes, fp16.reduce_bytes, fp16.reduce_op) == (2, 2, "all_reduce")
    assert gradient_path(framework("megatron-lm"), "bf16") == GradientPath(4, 4, "reduce_scatter", 0.0)


def _step(monkeypatch: pytest.MonkeyPatch, accumulation: float, plan: Plan) -> float:
    """Step time of `plan` (GPT-3 175B on A100s) under the deepspeed profile with its bf16 accumulation
    bytes replaced by `accumulation`."""
    fw = framework("deepspeed")
    path = dataclasses.replace(fw.gradient_override("bf16"), accumulation_bytes=accumulation)
    patched = dataclasses.replace(fw, gradients=(("bf16", path),))
    with monkeypatch.context() as m:
        m.setattr(terms_module, "framework", lambda name: patched if name == "deepspeed" else framework(name))
        pred = estimate(model_preset("gpt3-175b"), cluster_preset("dgx-a100-80gb").with_gpus(64), plan)
    return float(pred["step_time_s"])


@pytest.mark.parametrize("pp", [1, 4])
def test_accumulation_costs_every_micro_batch_at_zero_1_and_nothing_under_zero_2(
        monkeypatch: pytest.MonkeyPatch, pp: int) -> None:
    """The accumulation is a per-micro-batch cost of every stage: a 1F1B step's critical path runs m + p - 1
    stage slots, so halving the micro-batch (m 16 -> 32) scales it by (32 + p - 1) / (16 + p - 1); ZeRO-2
    (which reduce-scatters every micro-batch's gradient) has none."""
    def plan(mb: int, zero: int) -> Plan:
        return Plan(tp=8, pp=pp, dp=64 // (8 * pp), micro_batch=mb, global_batch=64, recompute="full",
                    zero_stage=zero, dtype="bf16", framework="deepspeed")

    def step(accumulation: float, p: Plan) -> float:
        return _step(monkeypatch, accumulation, p)

    extra = {mb: step(18.0, plan(mb, 1)) - step(0.0, plan(mb, 1)) for mb in (1, 2)}
    assert extra[2] > 0
    assert extra[1] / extra[2] == pytest.approx((32 + pp - 1) / (16 + pp - 1), rel=0.01)
    assert step(18.0, plan(1, 2)) == pytest.approx(step(0.0, plan(1, 2)))


def test_a_profile_naming_a_bad_gradient_path_is_refused() -> None:
    with pytest.raises(SpecError, match="reduce_op"):
        GradientPath(2, 2, "broadcast").check("framework[x].gradients.fp16")
    with pytest.raises(SpecError, match="fp16 or bf16"):
        dataclasses.replace(framework("deepspeed"), gradients=(("fp32", GradientPath(4, 4)),))


def test_bf16_accumulation_copies_the_largest_gradient_beside_the_activations(monkeypatch: pytest.MonkeyPatch) -> None:
    """DeepSpeed's BF16_Optimizer adds each bf16 gradient into its fp32 buffer through a converted copy
    (`hp_grad.data.add_(lp.grad.data.to(hp_grad.dtype))`), one tensor at a time, after every micro-batch's
    backward while the other micro-batches' activations are held: the first stage's peak grows by 4 bytes
    per element of its largest gradient, the vocabulary-parallel embedding (V·h / t, here larger than any
    layer matrix: 128000 > 4·h)."""
    gpt = ModelSpec(name="gpt-rope", num_layers=32, hidden=8192, num_heads=64, ffn_hidden=32768, vocab_size=128000,
                    seq_len=2048, position="rope")
    plan = Plan(tp=8, pp=4, dp=2, micro_batch=1, global_batch=16, dtype="bf16", framework="deepspeed")
    cluster = cluster_preset("dgx-a100-80gb").with_gpus(64)
    fw = framework("deepspeed")

    def peak(copy_bytes: float) -> float:
        path = dataclasses.replace(fw.gradient_override("bf16"), accumulation_copy_bytes=copy_bytes)
        patched = dataclasses.replace(fw, gradients=(("bf16", path),))
        with monkeypatch.context() as m:
            m.setattr(terms_module, "framework", lambda name: patched if name == "deepspeed" else framework(name))
            return float(estimate(gpt, cluster, plan, headroom=0.0)["memory_gib_per_gpu"]) * 2**30

    assert fw.gradient_override("bf16").accumulation_copy_bytes == 4
    assert peak(4.0) - peak(0.0) == pytest.approx(4 * 128000 * 8192 / 8, rel=1e-9)
