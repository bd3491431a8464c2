"""Tiny instances of the 2025 model families (fp32, CPU-sized), shared by the executor-model, FLOP and
multi-rank tests. Each keeps the family's structure (layer kinds, attention variant, experts) at a
size a CPU core trains in seconds; sizes divide by tp = 2 and ep = 2."""

from __future__ import annotations

import dataclasses

from planner.specs.model import ModelSpec

_BASE = ModelSpec(name="base", num_layers=4, hidden=64, num_heads=4, num_kv_heads=2, ffn_hidden=128, vocab_size=96,
                  seq_len=16, activation="swiglu", norm="rmsnorm", position="rope", tied_embeddings=False,
                  bias=False, dtype="fp32")

FAMILIES: dict[str, ModelSpec] = {
    # DeepSeek-V3 / Kimi K2: MLA, a dense first layer, routed + shared experts, one MTP module.
    "deepseek-v3": dataclasses.replace(
        _BASE, name="tiny-deepseek-v3", num_kv_heads=4, q_lora_rank=32, kv_lora_rank=16,
        qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, num_experts=4, top_k=2, moe_ffn_hidden=32,
        shared_ffn_hidden=32, dense_layers=(0,), mtp_layers=1),
    # DeepSeek-V2-Lite's variant: no query latent.
    "mla-no-q-latent": dataclasses.replace(
        _BASE, name="tiny-mla", num_layers=2, num_kv_heads=4, kv_lora_rank=16, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=16),
    # Qwen3: 4 heads of 32 (128 wide) on a 64-wide model, q/k RMSNorm.
    "qwen3": dataclasses.replace(_BASE, name="tiny-qwen3", head_width=32, qk_norm="rmsnorm"),
    # Qwen3-MoE with a dense layer (mlp_only_layers) and Qwen2-MoE's gated shared expert.
    "qwen3-moe": dataclasses.replace(_BASE, name="tiny-qwen3-moe", head_width=32, qk_norm="rmsnorm", num_experts=4,
                                     top_k=2, moe_ffn_hidden=32, dense_layers=(1,)),
    "qwen2-moe-shared": dataclasses.replace(_BASE, name="tiny-qwen2-moe", qkv_bias=True, num_experts=4, top_k=2,
                                            moe_ffn_hidden=32, shared_ffn_hidden=64, shared_expert_gate=True),
    # gpt-oss: alternating sliding-window (4 of 16 keys) / full layers, sinks, biases everywhere.
    "gpt-oss": dataclasses.replace(_BASE, name="tiny-gpt-oss", hidden=48, head_width=16, bias=True, qkv_bias=True,
                                   sliding_window=4, window_layers=(0, 2), attention_sinks=True, num_experts=4,
                                   top_k=2, ffn_hidden=48, router_bias=True),
    # Llama 4: dense / MoE layers interleaved, a shared expert, chunked (8 of 16) RoPE layers with a
    # weightless q/k norm, a RoPE-free full-attention layer.
    "llama4": dataclasses.replace(_BASE, name="tiny-llama4", head_width=16, num_experts=4, top_k=1, moe_ffn_hidden=32,
                                  shared_ffn_hidden=32, dense_layers=(0, 2), nope_layers=(3,), attention_chunk=8,
                                  window_layers=(0, 1, 2), qk_norm="rmsnorm-noweight"),
}

# The executor runs multi-token prediction without pipeline parallelism only; pipelined runs use this.
FAMILIES_PIPELINED = {"deepseek-v3-no-mtp": dataclasses.replace(FAMILIES["deepseek-v3"], mtp_layers=0)}
