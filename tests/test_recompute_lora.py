"""Activation-checkpointing policies beyond Megatron-LM's (torchtitan's per-op selective, the JAX
policies MaxText and PaxML run, full on 1 of every k layers) and LoRA fine-tuning, against hand
computations."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cost import batch_from_plans, cost_terms, estimate
from planner.cost.memory import policy_saved_bytes
from planner.graph import build_graph
from planner.plan import Plan
from planner.specs.catalog import cluster_preset, model_preset

GIB = 2**30
H100 = cluster_preset("dgx-h100")


def test_per_op_selective_saves_what_torchtitans_policy_saves() -> None:
    """torchtitan's per-op SAC on a Llama layer runs wq, wk, wv, wo, w1, w3, w2 and saves every other
    matmul's output (wq, wv, w1, w2) plus the SDPA output and its fp32 log-sum-exp, and the checkpoint's
    input. Llama 3 8B, tp 1, bf16, per token: 2 x (4096 input + 4096 q + 1024 v + 4096 attention out +
    14336 w1 + 4096 w2) + 4 x 32 heads = 63,616 bytes."""
    m = model_preset("llama3-8b")
    lg = build_graph(m)
    one, tokens = np.array([1.0]), np.array([1000.0])
    saved = policy_saved_bytes("op-selective", lg.layer_ops, m, "bf16", tokens, one, np.array([False]))
    assert saved[0] == pytest.approx(1000 * 63_616)


@pytest.mark.parametrize(("policy", "per_token"), [
    # 2 x (8192 input + 8192 q + 1024 k + 1024 v + 8192 out + 28672 gate and up + 8192 down)
    ("save-matmuls", 2 * (8192 + 8192 + 1024 + 1024 + 8192 + 2 * 28672 + 8192)),
    # the same but for the gate and up projections: 69,632 bytes (docs/cost-model.md's worked example)
    ("save-matmuls-but-mlp-up", 69_632),
    # 2 x (8192 input + 8192 q + 1024 k + 1024 v + 8192 out)
    ("save-attn-proj", 2 * (8192 + 8192 + 1024 + 1024 + 8192)),
])
def test_jax_policies_keep_the_named_matmul_outputs(policy: str, per_token: int) -> None:
    """MaxText's save_dot_except_mlpwi keeps the q / k / v / out projections and the MLP's output
    projection (`mlpwo`), save_dot_except_mlp the attention projections alone, checkpoint_dots every
    matmul; none keeps the fused attention kernel's output (it is not a dot): Llama 3 70B, tp 1, bf16."""
    m = model_preset("llama3-70b")
    lg = build_graph(m)
    tokens = np.array([1000.0])
    saved = policy_saved_bytes(policy, lg.layer_ops, m, "bf16", tokens, np.array([1.0]), np.array([False]))
    assert saved[0] == pytest.approx(1000 * per_token)


def test_jax_policies_recompute_the_attention_kernel_and_what_they_drop() -> None:
    """Every JAX policy reruns the attention core's forward in backward (selective recompute's work) and
    the memory-bound ops; save-attn-proj also the whole MLP, save-matmuls-but-mlp-up its input
    projections: the hardware FLOPs grow in that order and stay below full recompute's."""
    m = model_preset("llama3-70b")
    c = H100.with_gpus(64)
    preds = {rc: estimate(m, c, Plan(dp=64, micro_batch=1, global_batch=64, zero_stage=3, recompute=rc))
             for rc in ("none", "selective", "save-matmuls", "save-matmuls-but-mlp-up", "save-attn-proj", "full")}
    flops = {rc: p["hw_tflops_per_gpu"] * p["step_time_s"] for rc, p in preds.items()}
    assert flops["save-matmuls"] == pytest.approx(flops["selective"], rel=1e-9)  # the attention core only
    assert flops["none"] < flops["save-matmuls"] < flops["save-matmuls-but-mlp-up"] < flops["save-attn-proj"] \
        < flops["full"]
    # Llama 3 70B's gate and up projections: two 8192 x 28672 matrices at 2 FLOPs per multiply-add per
    # token per layer, 80 layers, 64 x 8192 tokens per step
    gate_up = 2 * 2 * 8192 * 28672 * 80 * 64 * 8192
    assert (flops["save-matmuls-but-mlp-up"] - flops["save-matmuls"]) * 64 * 1e12 == pytest.approx(gate_up, rel=1e-6)


def test_per_op_selective_sits_between_none_and_full() -> None:
    """Same plan under each policy: per-op SAC keeps less than no recompute (and Megatron's selective,
    which with flash attention keeps nearly everything) and more than full recompute; it recomputes
    more than selective and less than full."""
    m = model_preset("llama3-8b")
    c = H100.with_gpus(8)
    preds = {rc: estimate(m, c, Plan(dp=8, micro_batch=1, global_batch=8, zero_stage=3, recompute=rc))
             for rc in ("none", "selective", "op-selective", "full")}
    act = {rc: p["memory"]["activations"] for rc, p in preds.items()}
    hw = {rc: p["hw_tflops_per_gpu"] * p["step_time_s"] for rc, p in preds.items()}
    assert act["full"] < act["op-selective"] < act["selective"] <= act["none"]
    assert hw["none"] < hw["selective"] < hw["op-selective"] < hw["full"]


def test_full_recompute_of_every_other_layer_by_hand() -> None:
    """Full recompute of 1 in 2 layers keeps, per layer on average, half a layer input and half a full
    layer's activations (Korthikanti et al. 2022's 2sbh and sbh(34 + 5as/h) for GPT-3 with dropout)."""
    m = model_preset("gpt3-175b")
    s, h, a = m.seq_len, m.hidden, m.num_heads
    c = cluster_preset("dgx-a100-80gb").with_gpus(8)
    plan = Plan(tp=8, micro_batch=1, global_batch=1, recompute="full", recompute_every=2, flash_attention=False)
    terms = cost_terms(m, c, batch_from_plans([plan]))
    full_layer = s * h * (10 + 24 / 8 + 5 * a * s / (h * 8))
    assert terms.layer_act[0, 0] == pytest.approx((2 * s * h + full_layer) / 2, rel=1e-12)
    # and it repeats half of a layer's forward in backward
    every = cost_terms(m, c, batch_from_plans([Plan(tp=8, micro_batch=1, global_batch=1, recompute="full",
                                                    flash_attention=False)]))
    none = cost_terms(m, c, batch_from_plans([Plan(tp=8, micro_batch=1, global_batch=1, flash_attention=False)]))
    extra_all = float(every.layer_bwd[0, 0] - none.layer_bwd[0, 0])
    assert float(terms.layer_bwd[0, 0] - none.layer_bwd[0, 0]) == pytest.approx(extra_all / 2, rel=1e-12)


def _adapters(m, rank: int) -> int:
    """LoRA parameters per layer, by hand: r (in + out) for each of the fused QKV (h -> h + 2 kv), the
    out-projection (h -> h), the fused gate + up (h -> 2 f) and the down projection (f -> h)."""
    h, kv, f = m.hidden, m.kv_hidden, m.ffn_hidden
    return rank * ((h + h + 2 * kv) + (h + h) + (h + 2 * f) + (f + h))


def test_lora_model_states_by_hand() -> None:
    """LoRA rank 16 on Llama 3 8B, one GPU: every weight (8.03 B base + the adapters) is kept in bf16
    (2 B), gradients (4 B) and Adam state (12 B) only for the adapters (Hu et al. 2021)."""
    m = model_preset("llama3-8b")
    adapters = m.num_layers * _adapters(m, 16)
    assert adapters == 35_651_584
    psi = build_graph(m).total_params
    mem = estimate(m, H100.with_gpus(1), Plan(global_batch=1, finetune="lora", lora_rank=16))["memory"]
    assert mem["weights"] * GIB == pytest.approx(2 * (psi + adapters), rel=1e-12)
    assert mem["grads"] * GIB == pytest.approx(4 * adapters, rel=1e-12)
    assert mem["optimizer"] * GIB == pytest.approx(12 * adapters, rel=1e-12)


def test_lora_skips_the_frozen_weight_gradients() -> None:
    """Model FLOPs of a LoRA step: forward + input gradients of every GEMM (2x forward), the weight
    gradients only of the adapters, attention 3x: 3 F - F_frozen_GEMMs per token; and, since nothing
    before the first adapter is trained, layer 0's QKV and its adapter A compute no input gradient."""
    m = model_preset("llama3-8b")
    s = m.seq_len
    full = estimate(m, H100.with_gpus(8), Plan(dp=8, global_batch=8))
    lora = estimate(m, H100.with_gpus(8), Plan(dp=8, global_batch=8, finetune="lora", lora_rank=8,
                                                 lora_targets=("qkv",)))
    lg = build_graph(m)
    frozen_gemm = (m.num_layers * sum(op.flops for op in lg.layer_ops if op.kind == "gemm")
                   + sum(op.flops for op in lg.post_ops if op.kind == "gemm"))
    adapters = m.num_layers * 2 * 8 * (m.hidden + m.hidden + 2 * m.kv_hidden)  # 2 r (in + out) per token
    tokens = 8 * s
    qkv = next(op for op in lg.layer_ops if op.name == "attn.qkv").flops
    first_inputs = qkv + 2 * 8 * m.hidden  # layer 0's QKV and A: no input gradient
    expected = full["tflops_per_gpu"] * full["step_time_s"] * 8 * 1e12 - frozen_gemm * tokens \
        + 3 * adapters * tokens - first_inputs * tokens
    assert lora["tflops_per_gpu"] * lora["step_time_s"] * 8 * 1e12 == pytest.approx(expected, rel=1e-9)
    assert lora["step_time_s"] < full["step_time_s"]
    assert lora["time"]["dp_comm"] < full["time"]["dp_comm"] / 100  # only the adapters' gradients


def test_lora_graph_matches_the_executors_adapters_and_flops() -> None:
    """The executor's LoRA model (executor/lora.py) has exactly the graph's adapter parameters, and a
    forward + backward pass counts the graph's training FLOPs under FlopCounterMode (frozen layers
    compute no weight gradient; the first layer's input gradient is computed as the graph assumes)."""
    import dataclasses

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from executor.lora import apply_lora
    from executor.model import Transformer, init_weights
    from executor.trainer import loss_fn

    spec = dataclasses.replace(model_preset("tiny"), name="tiny-llama", activation="swiglu", norm="rmsnorm",
                               position="rope", bias=False, qkv_bias=False, num_kv_heads=2, num_layers=2,
                               seq_len=64, max_position=0)
    lora = (4, ("qkv", "proj", "up", "down"))
    lg = build_graph(spec, "fp32", False, lora)
    with torch.device("meta"):
        model = Transformer(spec, False)
    adapters = apply_lora(model, *lora)
    graph_adapters = sum(op.params for _, op, _ in lg.nodes() if not op.frozen and op.params)
    assert sum(p.numel() for p in adapters) == graph_adapters
    model.to_empty(device="cpu")
    init_weights(model, spec, 0)
    x = torch.randint(0, spec.vocab_size, (2, spec.seq_len + 1))
    counter = FlopCounterMode(display=False)
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH), counter:
        loss_fn(model(x[:, :-1]), x[:, 1:]).backward()
    assert counter.get_total_flops() == pytest.approx(lg.train_flops(2, spec.seq_len), rel=0.01)
