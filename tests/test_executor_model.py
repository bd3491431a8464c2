"""The executor's model against the planner's layer graph, in one process (no torch.distributed)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
import torch

from executor.activation_checkpoint import apply_ac
from executor.measure import ActivationMeter
from executor.model import ModelNotSupported, Transformer, build_model, init_weights
from executor.pipeline_parallel import split_stage
from executor.trainer import loss_fn
from planner.graph import build_graph
from planner.specs.catalog import model_preset
from planner.specs.model import ModelSpec

sys.path.insert(0, str(Path(__file__).resolve().parent / "executor_workers"))

from families import FAMILIES

torch.set_num_threads(1)

BASE = ModelSpec(name="gpt", num_layers=2, hidden=64, num_heads=4, ffn_hidden=256, vocab_size=96, seq_len=16,
                 dtype="fp32")
SPECS = {
    "gpt": BASE,
    "gpt-untied-nobias": dataclasses.replace(BASE, tied_embeddings=False, bias=False),
    "llama-gqa": dataclasses.replace(BASE, norm="rmsnorm", position="rope", activation="swiglu", bias=False,
                                     num_kv_heads=2, tied_embeddings=False),
    "qwen-qkv-bias-mqa": dataclasses.replace(BASE, norm="rmsnorm", position="rope", activation="swiglu",
                                             bias=False, qkv_bias=True, num_kv_heads=1),
    "mixtral-moe": dataclasses.replace(BASE, norm="rmsnorm", position="rope", activation="swiglu", bias=False,
                                       num_experts=4, top_k=2, tied_embeddings=False),
    "moe-gelu-bias": dataclasses.replace(BASE, num_experts=3, top_k=1),
    "token-types-noncausal-dropout": dataclasses.replace(BASE, type_vocab_size=2, causal=False, dropout=0.1,
                                                         max_position=32),
    **FAMILIES,
}


def _unique_param_counts(model: torch.nn.Module) -> dict[str, int]:
    """Parameter name -> numel, each shared parameter counted once (under its first name)."""
    return {name: p.numel() for name, p in model.named_parameters()}


@pytest.mark.parametrize("key", sorted(SPECS))
def test_every_graph_op_matches_its_module(key: str) -> None:
    spec = SPECS[key]
    model = build_model(spec)
    counts = _unique_param_counts(model)
    graph = build_graph(spec)
    modules = dict(model.named_modules())
    matched = 0
    for node, op, _ in graph.nodes():
        mine = sum(n for name, n in counts.items() if name.startswith(node + "."))
        assert mine == op.params, f"{node}: graph {op.params} params, module {mine}"
        if op.params > 0:
            assert node in modules, f"graph op {node} has parameters but no module of that name"
            matched += mine
    assert sum(counts.values()) == graph.total_params == matched


def test_tiny_preset_total_params() -> None:
    spec = model_preset("tiny")
    with torch.device("meta"):
        model = Transformer(spec)
    assert sum(p.numel() for p in model.parameters()) == build_graph(spec).total_params


def test_mlm_head_is_refused() -> None:
    with pytest.raises(ModelNotSupported, match="decoder"):
        Transformer(dataclasses.replace(BASE, head="mlm", causal=False))


@pytest.mark.parametrize("key", ["gpt", "llama-gqa", "mixtral-moe"])
def test_math_attention_equals_sdpa(key: str) -> None:
    spec = SPECS[key]
    flash = build_model(spec, flash_attention=True, seed=3)
    math = build_model(spec, flash_attention=False, seed=3)
    x = torch.randint(0, spec.vocab_size, (2, spec.seq_len))
    torch.testing.assert_close(flash(x), math(x), rtol=1e-5, atol=1e-5)


def test_causal_model_does_not_look_ahead() -> None:
    model = build_model(SPECS["llama-gqa"], seed=1)
    x = torch.randint(0, BASE.vocab_size, (1, BASE.seq_len))
    y = x.clone()
    y[0, -1] = (y[0, -1] + 1) % BASE.vocab_size
    a, b = model(x), model(y)
    torch.testing.assert_close(a[0, :-1], b[0, :-1])
    assert not torch.allclose(a[0, -1], b[0, -1])


def test_tied_embedding_is_one_parameter() -> None:
    model = build_model(BASE)
    assert model.lm_head.weight is model.embed.tok.weight
    untied = build_model(SPECS["gpt-untied-nobias"])
    assert untied.lm_head.weight is not untied.embed.tok.weight


def test_init_is_the_same_for_any_pipeline_split() -> None:
    """Stages built on the meta device and initialised alone equal the slices of the whole model."""
    spec = dataclasses.replace(BASE, num_layers=4)
    full = build_model(spec, seed=7)
    ref = dict(full.named_parameters())
    with torch.device("meta"):
        meta = Transformer(spec)
    for stage in range(4):
        part = split_stage(meta, stage, 4)
        part.to_empty(device="cpu")
        part.tie_weights()
        init_weights(part, spec, seed=7)
        names = [n for n, _ in part.named_parameters()]
        assert names, stage
        for name, p in part.named_parameters():
            key = "embed.tok.weight" if name == "lm_head.weight" else name
            assert torch.equal(p, ref[key]), (stage, name)
    assert not torch.equal(build_model(spec, seed=8).embed.tok.weight, ref["embed.tok.weight"])


def test_split_stage_keeps_names_and_parts() -> None:
    spec = dataclasses.replace(BASE, num_layers=4)
    with torch.device("meta"):
        meta = Transformer(spec)
    first, last = split_stage(meta, 0, 2), split_stage(meta, 1, 2)
    assert list(first.layers.keys()) == ["0", "1"] and list(last.layers.keys()) == ["2", "3"]
    assert first.embed is not None and first.lm_head is None and first.final_norm is None
    assert last.embed is None and last.lm_head is not None


def test_moe_routes_every_token_to_top_k_experts() -> None:
    spec = SPECS["mixtral-moe"]
    model = build_model(spec, seed=0)
    moe = model.layers["0"].moe
    seen: list[list[int]] = []
    moe.experts.register_forward_pre_hook(lambda _m, args: seen.append(list(args[1])))
    x = torch.randn(2, spec.seq_len, spec.hidden)
    out = moe(x)
    assert out.shape == x.shape
    assert sum(seen[0]) == 2 * spec.seq_len * spec.top_k
    # Every expert's weights receive gradient through the routed tokens.
    out.square().sum().backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    assert moe.experts.up.w_up.grad is not None


def _saved_bytes(spec: ModelSpec, flash: bool, recompute: str) -> int:
    model = build_model(spec, flash, seed=0)
    apply_ac(model, recompute)  # hooks only: the same model as the trainer's recompute-then-materialise
    meter = ActivationMeter([model], model.parameters())
    x = torch.randint(0, spec.vocab_size, (2, spec.seq_len + 1))
    meter.arm()
    loss_fn(model(x[:, :-1]), x[:, 1:]).backward()
    meter.disarm()
    assert meter.max_in_flight == 1
    return meter.activations_bytes


def test_saved_activation_bytes_follow_recompute_and_attention_kernel() -> None:
    spec = dataclasses.replace(BASE, seq_len=64, max_position=64)
    math_none = _saved_bytes(spec, False, "none")
    math_sel = _saved_bytes(spec, False, "selective")
    math_full = _saved_bytes(spec, False, "full")
    flash_none = _saved_bytes(spec, True, "none")
    # Selective recompute drops the s² softmax output (no dropout here, so the only s² tensor; Korthikanti
    # et al. 2022); full recompute keeps little more than the block inputs; the fused kernel never
    # materialises s² tensors.
    b, s, a = 2, spec.seq_len, spec.num_heads
    s2_bytes = 4 * a * s * s * b  # one fp32 (b, a, s, s) tensor
    assert math_none - math_sel >= s2_bytes * spec.num_layers
    assert math_full < math_sel < math_none
    assert flash_none < math_none
    # The measurement agrees with the planner's graph to within the loss/logits bookkeeping.
    graph = build_graph(spec, dtype="fp32", flash_attention=False)
    predicted_layers = spec.num_layers * graph.layer_saved_bytes(b, s)
    assert 0.7 * predicted_layers < math_none < 1.6 * predicted_layers
