"""The layer graph: structure, parameter counts, FLOPs and saved-activation bytes derived by hand.

Notation as in Megatron-LM: L layers, hidden h, heads a, kv width k (= h for MHA), ffn f, vocab V,
sequence s, micro-batch b.
"""

from __future__ import annotations

import dataclasses

import pytest

from planner.graph import DTYPE_BYTES, build_graph
from planner.specs.catalog import model_preset
from planner.specs.model import ModelSpec

TP_KINDS = {"column", "row", "heads", "replicated", "vocab"}


def gpt(**kw: object) -> ModelSpec:
    """A small GPT-2-style model (learned positions, LayerNorm, GELU MLP, biases, tied embeddings)."""
    base: dict = {"name": "g", "num_layers": 3, "hidden": 64, "num_heads": 4, "ffn_hidden": 256,
                  "vocab_size": 1000, "seq_len": 128}
    return ModelSpec(**{**base, **kw})


def llama(**kw: object) -> ModelSpec:
    base: dict = {"name": "l", "num_layers": 2, "hidden": 128, "num_heads": 8, "num_kv_heads": 2,
                  "ffn_hidden": 352, "vocab_size": 2000, "seq_len": 256, "activation": "swiglu",
                  "norm": "rmsnorm", "position": "rope", "tied_embeddings": False, "bias": False}
    return ModelSpec(**{**base, **kw})


# ---- structure ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "llama3-8b", "mixtral-8x7b", "bert-base"])
def test_nodes_visit_every_op_in_execution_order(name: str) -> None:
    """`nodes()` lists the embedding, then every layer's ops in order, then the head and loss, each
    under the executor's module path (`layers.<i>.<op>`)."""
    m = model_preset(name)
    lg = build_graph(m)
    nodes = list(lg.nodes())
    assert len(nodes) == len(lg.pre_ops) + m.num_layers * len(lg.layer_ops) + len(lg.post_ops)
    assert nodes[0][0] == "embed" and nodes[-1][0] == "loss"
    layer_nodes = [(path, op, i) for path, op, i in nodes if i is not None]
    assert [i for _, _, i in layer_nodes] == [i for i in range(m.num_layers) for _ in lg.layer_ops]
    for path, op, i in layer_nodes:
        assert path == f"layers.{i}.{op.name}"
    assert [op.name for _, op, i in layer_nodes[:len(lg.layer_ops)]] == [op.name for op in lg.layer_ops]
    assert sum(op.params for _, op, _ in nodes) == lg.total_params


def test_megatron_tp_sharding_of_each_op() -> None:
    """Column-parallel QKV / MLP-up, row-parallel out-proj / MLP-down, head-split attention,
    vocabulary-parallel embedding / LM head / loss, replicated norms and residuals."""
    lg = build_graph(llama())
    kinds = {op.name: op.tp for op in lg.layer_ops + lg.pre_ops + lg.post_ops}
    assert kinds == {
        "embed": "vocab", "attn.norm": "replicated", "attn.qkv": "column", "attn.rope": "heads",
        "attn.core": "heads", "attn.proj": "row", "attn.residual": "replicated",
        "mlp.norm": "replicated", "mlp.up": "column", "mlp.act": "column", "mlp.down": "row",
        "mlp.residual": "replicated", "final_norm": "replicated", "lm_head": "vocab", "loss": "vocab",
    }
    moe = build_graph(model_preset("mixtral-8x7b"))
    for op in moe.layer_ops:
        assert op.tp in TP_KINDS
        assert op.routed == op.name.startswith("moe.experts."), op.name


def test_ops_are_well_formed() -> None:
    for m in (gpt(), llama(), model_preset("mixtral-8x7b"), model_preset("bert-base")):
        lg = build_graph(m)
        for op in lg.pre_ops + lg.layer_ops + lg.post_ops:
            assert op.tp in TP_KINDS
            assert min(op.params, op.flops, op.flops_s, op.saved, op.saved_s, op.io, op.io_s) >= 0
            if op.kind == "gemm":
                fin, fout, copies = op.gemm
                assert op.flops == 2.0 * fin * fout * copies, op.name


def test_build_graph_is_cached_and_dtype_aware() -> None:
    m = gpt()
    assert build_graph(m) is build_graph(m)
    assert build_graph(m, "fp32").dtype == "fp32"
    assert build_graph(m).dtype == m.dtype


# ---- parameters -----------------------------------------------------------------------------


def test_gpt2_params_by_hand() -> None:
    """Per layer: QKV 3h^2+3h, out-proj h^2+h, MLP 4h^2+4h and 4h^2+h, two LayerNorms 4h:
    12h^2 + 13h. Plus token and position embeddings (tied with the LM head) and the final norm."""
    m = model_preset("gpt2")
    h, L, V, P = m.hidden, m.num_layers, m.vocab_size, m.max_position
    lg = build_graph(m)
    assert lg.layer_params == 12 * h * h + 13 * h
    assert lg.total_params == L * (12 * h * h + 13 * h) + V * h + P * h + 2 * h == 124_439_808


def test_llama_params_by_hand() -> None:
    """No biases, RMSNorm (weight only), GQA (K and V of width kv_heads x head_dim), SwiGLU (three
    h x f matrices), untied LM head."""
    m = llama()
    h, k, f, L, V = m.hidden, m.kv_hidden, m.ffn_hidden, m.num_layers, m.vocab_size
    assert k == 32
    lg = build_graph(m)
    layer = h * (h + 2 * k) + h * h + 3 * h * f + 2 * h
    assert lg.layer_params == layer
    assert lg.total_params == L * layer + 2 * V * h + h == lg.active_params


def test_qkv_bias_only() -> None:
    m = llama(qkv_bias=True)
    assert build_graph(m).layer_params == build_graph(llama()).layer_params + m.hidden + 2 * m.kv_hidden


def test_moe_params_and_active_params() -> None:
    m = llama(num_experts=4, top_k=2)
    h, k, f, L, V, E = m.hidden, m.kv_hidden, m.ffn_hidden, m.num_layers, m.vocab_size, 4
    lg = build_graph(m)
    attn = h * (h + 2 * k) + h * h
    expert = 3 * h * f
    assert lg.layer_params == attn + h * E + E * expert + 2 * h  # router h x E
    assert lg.total_params == L * lg.layer_params + 2 * V * h + h
    assert lg.active_params == lg.total_params - L * (E - 2) * expert


# ---- FLOPs ----------------------------------------------------------------------------------


def test_forward_flops_gpt_by_hand() -> None:
    """Narayanan et al. 2021: per layer 24bsh^2 + 4bs^2h (with f = 4h), LM head 2bshV; biases,
    norms and element-wise ops are not counted."""
    m = gpt()
    h, L, V, s = m.hidden, m.num_layers, m.vocab_size, m.seq_len
    b = 3
    expected = b * s * (L * (24 * h * h + 4 * s * h) + 2 * h * V)
    assert build_graph(m).forward_flops(b, s) == pytest.approx(expected, rel=1e-12)
    # identical without biases: a bias add is not a FLOP here
    assert build_graph(dataclasses.replace(m, bias=False)).forward_flops(b, s) == pytest.approx(
        expected, rel=1e-12)


def test_forward_flops_gqa_swiglu_and_moe() -> None:
    m = llama()
    h, k, f, L, V, s = m.hidden, m.kv_hidden, m.ffn_hidden, m.num_layers, m.vocab_size, m.seq_len
    layer = 2 * (h * (h + 2 * k) + h * h + 3 * h * f) + 4 * s * h
    assert build_graph(m).forward_flops(1, s) == pytest.approx(s * (L * layer + 2 * h * V), rel=1e-12)
    moe = llama(num_experts=8, top_k=2, capacity_factor=1.25)
    router = 2 * h * 8
    moe_layer = 2 * (h * (h + 2 * k) + h * h) + router + 2.5 * 2 * 3 * h * f + 4 * s * h
    assert build_graph(moe).forward_flops(1, s) == pytest.approx(s * (L * moe_layer + 2 * h * V),
                                                                 rel=1e-12)


def test_forward_flops_scale_with_batch_and_quadratically_in_attention() -> None:
    lg = build_graph(gpt())
    assert lg.forward_flops(4, 64) == pytest.approx(4 * lg.forward_flops(1, 64), rel=1e-12)
    # doubling s doubles the linear part and quadruples the attention part
    m = lg.model
    lin = lambda s: s * (m.num_layers * 24 * m.hidden**2 + 2 * m.hidden * m.vocab_size)  # noqa: E731
    att = lambda s: m.num_layers * 4 * s * s * m.hidden  # noqa: E731
    assert lg.forward_flops(1, 128) - lin(128) == pytest.approx(att(128), rel=1e-12)
    assert lg.forward_flops(1, 64) - lin(64) == pytest.approx(att(64), rel=1e-12)


# ---- saved activations --------------------------------------------------------------------


def test_korthikanti_saved_bytes_unfused_attention_with_dropout() -> None:
    """Korthikanti et al. 2022 Sec. 4.1: 34sbh + 5as^2b bytes per layer (16-bit, dropout, unfused
    attention). Breakdown: attention 11sbh + 5as^2b, MLP 19sbh, two LayerNorms 4sbh."""
    m = model_preset("gpt3-175b")
    s, h, a = m.seq_len, m.hidden, m.num_heads
    lg = build_graph(m, "bf16", flash_attention=False)
    for b in (1, 2):
        assert lg.layer_saved_bytes(b, s) == s * b * h * (34 + 5 * a * s / h)


def test_saved_bytes_without_dropout() -> None:
    """No dropout: the two 1-byte residual masks, the attention mask (as^2b) and the dropout output
    (2as^2b) disappear: sbh(32 + 2as/h)."""
    m = gpt(dropout=0.0)
    s, h, a = m.seq_len, m.hidden, m.num_heads
    assert build_graph(m, "bf16", False).layer_saved_bytes(2, s) == 2 * s * h * (32 + 2 * a * s / h)
    # all of it is in the activation dtype: fp32 doubles it exactly
    assert build_graph(m, "fp32", False).layer_saved_bytes(2, s) == 2 * build_graph(
        m, "bf16", False).layer_saved_bytes(2, s)


def test_flash_attention_saves_no_s_squared_tensors() -> None:
    """The fused kernel keeps Q, K, V and an fp32 log-sum-exp per head and token instead of the
    a x s x s probabilities, so the bytes are linear in s: per token, norms 4h, QKV input 2h,
    Q/K/V 6h, LSE 4a, out-proj input 2h, two residual dropout masks 2h, MLP inputs 2h + 8h + 8h
    (= 34h + 4a)."""
    m = gpt(dropout=0.1)
    h, a = m.hidden, m.num_heads
    lg = build_graph(m, "bf16", flash_attention=True)
    assert all(op.saved_s == 0 for op in lg.layer_ops)
    per_token = 4 * h + 2 * h + 6 * h + 4 * a + 2 * h + 2 * h + 18 * h
    assert lg.layer_saved_bytes(3, 100) == 3 * 100 * per_token
    assert lg.layer_saved_bytes(1, 200) == 2 * lg.layer_saved_bytes(1, 100)
    unfused = build_graph(m, "bf16", flash_attention=False)
    assert unfused.layer_saved_bytes(1, 128) > lg.layer_saved_bytes(1, 128)


def test_dtype_bytes_table() -> None:
    assert DTYPE_BYTES == {"bf16": 2, "fp16": 2, "fp32": 4}
