"""The 2025 model families in the layer graph and the cost model: layer kinds, local attention, MLA,
shared experts and multi-token prediction, each against a hand count or a brute-force sum.

Published parameter totals are checked in tests/test_catalog.py; FLOPs against the executor's model
(FlopCounterMode) in tests/test_model_families_executor.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from planner.cost.compute import attention_times
from planner.cost.memory import saved_bytes
from planner.errors import SpecError
from planner.graph import Op, build_graph, causal_fraction, key_positions
from planner.specs.catalog import cluster_preset, model_preset
from planner.specs.model import ModelSpec

LLAMA = ModelSpec(name="l", num_layers=4, hidden=256, num_heads=8, num_kv_heads=2, ffn_hidden=512, vocab_size=1000,
                  seq_len=4096, activation="swiglu", norm="rmsnorm", position="rope", tied_embeddings=False, bias=False)


def core(model: ModelSpec, layer: int = 0, flash: bool = True) -> Op:
    lg = build_graph(model, flash_attention=flash)
    return next(op for op in lg.kinds[lg.pattern[layer]].ops if op.kind == "attention")


# ---- local attention ---------------------------------------------------------------------------


def test_key_positions_by_hand() -> None:
    windowed = dataclasses.replace(LLAMA, sliding_window=128, window_layers=(0, 2))
    chunked = dataclasses.replace(LLAMA, attention_chunk=8, window_layers=(1,))
    assert key_positions(core(windowed, 0), 4096) == 128  # the window binds
    assert key_positions(core(windowed, 0), 64) == 64  # a short sequence: all keys
    assert key_positions(core(windowed, 1), 4096) == 4096  # a full-attention layer
    # 20 tokens in chunks of 8, 8, 4: (64 + 64 + 16) / 20 keys per query.
    assert key_positions(core(chunked, 1), 20) == pytest.approx(144 / 20)
    assert key_positions(core(chunked, 1), 16) == 8
    np.testing.assert_allclose(key_positions(core(windowed, 0), np.array([64, 4096])), [64, 128])


@pytest.mark.parametrize(("window", "seq"), [(128, 4096), (128, 129), (1000, 64), (1, 50)])
def test_causal_fraction_is_the_brute_force_count(window: int, seq: int) -> None:
    """A causal sliding-window kernel computes sum_i min(w, i) query-key products (i = 1..s)."""
    op = core(dataclasses.replace(LLAMA, sliding_window=window, window_layers=(0,)))
    brute = sum(min(window, i) for i in range(1, seq + 1))
    counted = seq * key_positions(op, seq)
    if window >= seq:  # no window in effect: the full-attention convention (half of s^2)
        assert causal_fraction(op, seq) == 0.5
    else:
        assert counted * causal_fraction(op, seq) == pytest.approx(brute, rel=1e-12)


def test_attention_times_honour_the_window() -> None:
    """On a compute-bound core (a fixed fused-attention efficiency, no GEMM-size curve), the windowed
    layer's time over the full layer's is the ratio of the products a causal kernel computes, by brute
    force (sum_i min(w, i) against sum_i i)."""
    gpu = dataclasses.replace(cluster_preset("dgx-h100").gpu, attention_efficiency=0.5)
    m = dataclasses.replace(LLAMA, hidden=8192, num_heads=64, num_kv_heads=8, sliding_window=512,
                            window_layers=(0,))
    seq = 8192
    tokens, s, tp = (np.array([float(x)]) for x in (seq * 4, seq, 1))
    times = [attention_times(core(m, i), gpu, "bf16", True, True, tokens, s, tp, 64, 1024, 8192).fwd[0]
             for i in (0, 1)]
    brute = sum(min(512, i) for i in range(1, seq + 1)) / (seq * (seq + 1) / 2)
    assert times[0] / times[1] == pytest.approx(brute, rel=2e-4)


def test_saved_bytes_honour_the_window() -> None:
    """The unfused core keeps its a x s x keys tensors for the keys a query sees (hand count: fp16
    softmax output, no dropout, a = 8 heads, 128 keys; plus Q, K, V and the GQA expansion)."""
    m = dataclasses.replace(LLAMA, sliding_window=128, window_layers=(0,))
    op, full = core(m, 0, flash=False), core(m, 1, flash=False)
    tokens, seq, tp = np.array([4096.0]), np.array([4096.0]), np.array([1.0])
    b, a, q, kv = 2, 8, 256, 64
    qkv, expanded = b * (q + 2 * kv), b * 2 * (q - kv)
    assert saved_bytes([op], tokens, seq, tp, np.array([False]))[0] == 4096 * (qkv + expanded + b * a * 128)
    assert saved_bytes([full], tokens, seq, tp, np.array([False]))[0] == 4096 * (qkv + expanded + b * a * 4096)
    assert saved_bytes([op], tokens, seq, tp, np.array([False]), drop_s2=True)[0] == 4096 * qkv


def test_gpt_oss_alternates_two_layer_kinds() -> None:
    lg = build_graph(model_preset("gpt-oss-20b"))
    assert [k.name for k in lg.kinds] == ["moe.window128", "moe"]
    assert lg.pattern == (0, 1) * 12
    sliding, full = (next(op for op in k.ops if op.name == "attn.core") for k in lg.kinds)
    assert (sliding.window, full.window, sliding.params, sliding.heads) == (128, 0, 64, 64)  # 64 sink logits


def test_llama4_kinds() -> None:
    lg = build_graph(model_preset("llama4-maverick"))
    names = [k.name for k in lg.kinds]
    assert names == ["dense.chunk8192", "moe.chunk8192", "moe.nope"]
    assert lg.pattern[:8] == (0, 1, 0, 2, 0, 1, 0, 2)
    nope = lg.kinds[2]
    assert not any(op.name in ("attn.rope", "attn.qk_norm") for op in nope.ops)
    assert next(op for op in nope.ops if op.kind == "attention").chunk == 0  # full attention
    scout = build_graph(model_preset("llama4-scout"))
    qk = next(op for op in scout.kinds[0].ops if op.name == "attn.qk_norm")
    assert qk.params == 0  # Llama 4's L2Norm has no weight


# ---- MLA, shared experts, MTP ---------------------------------------------------------------------


def test_mla_layer_by_hand() -> None:
    """DeepSeek-V3's attention per layer (hand count from the config): q_down 7168x1536, its norm,
    q_up 1536 x 128(128+64), kv_down 7168 x (512+64), its norm, kv_up 512 x 128(128+128), out 128·128 x 7168;
    core FLOPs per token per key 2·128·(192 + 128)."""
    lg = build_graph(model_preset("deepseek-v3"))
    ops = {op.name: op for op in lg.kinds[0].ops}
    assert ops["attn.q_down"].params == 7168 * 1536 and ops["attn.q_norm"].params == 1536
    assert ops["attn.q_up"].params == 1536 * 128 * 192
    assert ops["attn.kv_down"].params == 7168 * 576 and ops["attn.kv_norm"].params == 512
    assert ops["attn.kv_up"].params == 512 * 128 * 256 and ops["attn.proj"].params == 128 * 128 * 7168
    assert ops["attn.core"].flops_s == 2 * 128 * (192 + 128)
    assert (ops["attn.q_down"].tp, ops["attn.q_up"].tp, ops["attn.kv_up"].tp) == ("replicated", "column", "column")
    attention = sum(op.params for name, op in ops.items() if name.startswith("attn."))
    assert attention == 187_107_328 + 7168  # + the pre-attention norm


def test_deepseek_layers_and_mtp() -> None:
    m = model_preset("deepseek-v3")
    lg = build_graph(m)
    assert [k.name for k in lg.kinds] == ["dense", "moe"] and lg.pattern == (0,) * 3 + (1,) * 58
    moe = {op.name: op for op in lg.kinds[1].ops}
    assert moe["moe.experts.up"].params == 256 * 7168 * 2 * 2048
    assert moe["moe.shared.up"].params == 7168 * 2 * 2048 and not moe["moe.shared.up"].routed
    dense = {op.name: op for op in lg.kinds[0].ops}
    assert dense["mlp.up"].params == 7168 * 2 * 18432
    mtp = [op for op in lg.post_ops if op.name.startswith("mtp.0.")]
    # eh_proj 2h x h, the MoE layer, enorm / hnorm / final norm; the embedding and head are shared.
    layer_params = sum(op.params for op in lg.kinds[1].ops)
    assert lg.mtp_params == 2 * 7168 * 7168 + layer_params + 3 * 7168
    assert next(op for op in mtp if op.name == "mtp.0.lm_head").params == 0
    assert lg.total_params == build_graph(dataclasses.replace(m, mtp_layers=0)).total_params + lg.mtp_params


def test_active_params_count_the_mtp_experts_as_routed() -> None:
    m = model_preset("deepseek-v3")
    full, main = build_graph(m), build_graph(dataclasses.replace(m, mtp_layers=0))
    mtp_experts = 256 * 3 * 7168 * 2048
    assert full.active_params - main.active_params == full.mtp_params - mtp_experts * (256 - 8) // 256


# ---- the spec refuses what it cannot model ---------------------------------------------------------


@pytest.mark.parametrize(("fields", "field"), [
    ({"kv_lora_rank": 512}, "qk_nope_head_dim"),
    ({"q_lora_rank": 64}, "q_lora_rank"),
    ({"sliding_window": 128}, "window_layers"),
    ({"window_layers": (1,)}, "window_layers"),
    ({"sliding_window": 8, "attention_chunk": 8, "window_layers": (0,)}, "attention_chunk"),
    ({"window_layers": (2, 1), "sliding_window": 8}, "window_layers"),
    ({"window_layers": (4,), "sliding_window": 8}, "window_layers"),
    ({"dense_layers": (0,)}, "dense_layers"),
    ({"shared_ffn_hidden": 64}, "shared_ffn_hidden"),
    ({"qk_norm": "layernorm"}, "qk_norm"),
    ({"num_experts": 4, "top_k": 1, "dense_layers": (0, 1, 2, 3)}, "dense_layers"),
    ({"num_experts": 4, "top_k": 1, "shared_expert_gate": True}, "shared_expert_gate"),
])
def test_bad_family_fields_are_refused(fields: dict, field: str) -> None:
    with pytest.raises(SpecError) as err:
        dataclasses.replace(LLAMA, **fields)
    assert err.value.field == field


def test_decoupled_head_dim() -> None:
    """Qwen3-32B: 64 heads of 128 (8192 wide) on a 5120 hidden state."""
    m = model_preset("qwen3-32b")
    assert (m.head_dim, m.q_width, m.kv_hidden, m.attn_width) == (128, 8192, 1024, 8192)
    ops = {op.name: op for op in build_graph(m).kinds[0].ops}
    assert ops["attn.qkv"].gemm == (5120, 8192 + 2 * 1024, 1.0)
    assert ops["attn.proj"].gemm == (8192, 5120, 1.0)
    assert ops["attn.qk_norm"].params == 2 * 128
    assert ops["attn.core"].flops_s == 4 * 8192


# ---- consumers that translate a spec field by field say what they drop --------------------------


def test_family_features() -> None:
    assert model_preset("llama3-8b").family_features == []
    assert model_preset("qwen3-32b").family_features == ["head_width", "qk_norm"]
    assert model_preset("qwen3-8b").family_features == ["qk_norm"]  # 32 x 128 = 4096: head_dim implied
    assert "mtp_layers" in model_preset("deepseek-v3").family_features
    assert model_preset("gpt-oss-20b").family_features[:1] == ["head_width"]


@pytest.mark.parametrize("fmt", ["megatron", "deepspeed"])
def test_exports_name_the_fields_they_do_not_translate(fmt: str) -> None:
    """A DeepSeek-V3 export would train a plain GQA MoE model: it warns naming the fields, and
    --strict refuses (exit status 2) instead of writing a silently different job."""
    from executor.plans import local_plan
    from planner.export import export_files, export_warnings
    from planner.export.common import ExportError

    doc = local_plan(model_preset("deepseek-v3"), micro_batch=1, global_batch=1, dtype="bf16")
    warnings = export_warnings(doc, fmt)
    assert any("kv_lora_rank" in w and "mtp_layers" in w for w in warnings), warnings
    with pytest.raises(ExportError, match="kv_lora_rank"):
        export_files(doc, fmt, True)
    assert not any("not translated" in w
                   for w in export_warnings(local_plan(model_preset("llama3-8b"), micro_batch=1, global_batch=1,
                                                       dtype="bf16"), fmt))


def test_torchtitan_refuses_a_llama3_shape_with_family_features() -> None:
    from planner.export.common import ExportError
    from planner.export.torchtitan import model_flavor

    llama = model_preset("llama3-8b")
    assert model_flavor(llama) == ("llama3", "8B")
    with pytest.raises(ExportError):
        model_flavor(dataclasses.replace(llama, qk_norm="rmsnorm"))
