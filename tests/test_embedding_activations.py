"""What the embedding keeps for the backward on the first pipeline stage: Megatron's embedding dropout mask and,
where the model has one, the embedding norm's input (BLOOM: bigscience-workshop's Megatron-DeepSpeed applies
`--embed-layernorm` to the embedding output before the dropout).

Worked example (Korthikanti et al. 2022, Sec. 4.3): "the dropout in the embedding layer" adds s·b·h·p bytes
of masks to the first stage, p micro-batches in flight under 1F1B, divided by t under sequence parallelism;
Megatron checkpoints the transformer layers only, so the mask stays under full recompute. A norm adds its
16-bit input, 2 bytes per element, as Korthikanti's Table 2 counts a LayerNorm (its per-token statistics are
not counted, here as in the layers).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from executor.model import Transformer
from planner.cost import batch_from_plans, estimate, evaluate
from planner.errors import PlanError
from planner.export import FORMATS, ExportError, export_plan
from planner.graph import build_graph
from planner.plan import Plan, PlanDocument
from planner.specs.catalog import load_cluster
from planner.specs.model import ModelSpec

# a small vocabulary: the first stage, not the last with its logits, holds the most activations
GPT = ModelSpec(name="gpt-drop", num_layers=8, hidden=1024, num_heads=16, ffn_hidden=4096, vocab_size=1024,
                seq_len=1024, dropout=0.1)
CLUSTER = load_cluster("dgx-a100-80gb")


def embedding_share(model: ModelSpec, plan: Plan) -> float:
    """Bytes of the first stage's activations that are not its transformer layers'."""
    s = evaluate(model, CLUSTER, batch_from_plans([plan]))
    return float(s.mem_activations[0] - s.mem_layer_activations[0])


@pytest.mark.parametrize("recompute", ["none", "full"])
@pytest.mark.parametrize("sp", [False, True])
def test_the_embedding_dropout_mask_is_sbhp_over_t(recompute: str, sp: bool) -> None:
    t, p, b = 4, 2, 2
    plan = Plan(tp=t, pp=p, micro_batch=b, global_batch=8, recompute=recompute, sequence_parallel=sp,
                dtype="bf16")
    s, h = GPT.seq_len, GPT.hidden
    assert embedding_share(GPT, plan) == pytest.approx(s * b * h * p / (t if sp else 1))


def test_no_dropout_no_mask() -> None:
    plan = Plan(tp=4, pp=2, micro_batch=2, global_batch=8, dtype="bf16")
    assert embedding_share(dataclasses.replace(GPT, dropout=0.0), plan) == 0.0


def test_an_embedding_norm_saves_its_input() -> None:
    plan = Plan(tp=4, pp=2, micro_batch=2, global_batch=8, recompute="full", dtype="bf16")
    s, h, b, p = GPT.seq_len, GPT.hidden, 2, 2
    normed = dataclasses.replace(GPT, embedding_norm=True)
    extra = embedding_share(normed, plan) - embedding_share(GPT, plan)
    assert extra == pytest.approx(s * b * p * 2 * h)
    params = build_graph(normed, "bf16").total_params - build_graph(GPT, "bf16").total_params
    assert params == 2 * h  # LayerNorm weight and bias


def test_the_executor_embedding_saves_what_the_graph_prices() -> None:
    """The executor's first stage (embedding, norm, dropout) with the layers removed saves, per token, h
    elements twice: the norm's 16-bit input and the dropout mask (bool under CUDA's fused dropout, the input
    dtype under the CPU fallback); the graph's pre ops price 2·h + 1·h bytes for them."""
    spec = dataclasses.replace(GPT, hidden=64, num_heads=4, num_kv_heads=4, ffn_hidden=256, vocab_size=128,
                               seq_len=32, num_layers=1, embedding_norm=True)
    model = Transformer(spec).to(torch.bfloat16)
    model.layers = torch.nn.ModuleDict()
    model.final_norm = model.lm_head = None
    model.train()
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        model(torch.randint(0, 128, (2, 32)))
    full = [t for t in saved if t.numel() == 2 * 32 * 64]
    assert len(full) == 2
    assert sorted(t.requires_grad for t in full) == [False, True]  # the mask; the norm's input
    assert sum(op.saved for op in build_graph(spec, "bf16").pre_ops) == 3 * 64


def test_megatron_exports_refuse_an_embedding_norm(tmp_path) -> None:
    model = dataclasses.replace(GPT, embedding_norm=True)
    plan = Plan(tp=8, global_batch=8, dtype="bf16")
    doc = PlanDocument(plan=plan, model=model, cluster=CLUSTER, prediction=estimate(model, CLUSTER, plan))
    for fmt in ("megatron", "megatron-bridge", "deepspeed"):
        assert fmt in FORMATS
        with pytest.raises(ExportError, match="embed-layernorm"):
            export_plan(doc, fmt, tmp_path / fmt)


def test_embedding_norm_must_be_a_boolean() -> None:
    with pytest.raises((PlanError, ValueError), match="embedding_norm"):
        dataclasses.replace(GPT, embedding_norm="yes")
