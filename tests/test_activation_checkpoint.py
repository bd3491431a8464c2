"""The executor's activation checkpointing policies: numerics unchanged, and the per-op policies keep
exactly the matmul outputs the cost model counts (planner/cost/memory.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.utils import checkpoint as ckpt

from executor.activation_checkpoint import apply_ac
from executor.model import build_model
from executor.trainer import loss_fn
from planner.cost.memory import matmul_outputs, policy_recomputed
from planner.graph import build_graph
from planner.specs.catalog import model_preset

GPT = dataclasses.replace(model_preset("tiny"), num_layers=2, seq_len=64, max_position=64)
LLAMA = dataclasses.replace(GPT, name="tiny-llama", activation="swiglu", norm="rmsnorm", position="rope",
                            bias=False, qkv_bias=False, num_kv_heads=2, tied_embeddings=False, max_position=0)


def _grads(spec, mode: str, every: int = 1) -> tuple[float, list[torch.Tensor]]:
    torch.manual_seed(0)
    x = torch.randint(0, spec.vocab_size, (2, spec.seq_len + 1))
    model = build_model(spec, True, seed=0)
    apply_ac(model, mode, every)
    loss = loss_fn(model(x[:, :-1]), x[:, 1:])
    loss.backward()
    return loss.item(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("spec", [GPT, LLAMA], ids=["gpt", "llama"])
@pytest.mark.parametrize(("mode", "every"), [("op-selective", 1), ("full", 2), ("selective", 1), ("save-matmuls", 1),
                                             ("save-matmuls-but-mlp-up", 1), ("save-attn-proj", 1)])
def test_recompute_leaves_the_gradients_unchanged(spec, mode: str, every: int) -> None:
    base_loss, base = _grads(spec, "none")
    loss, grads = _grads(spec, mode, every)
    assert loss == base_loss
    for a, b in zip(grads, base, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# Which matmuls each policy keeps, by hand, in the order a block runs them: GPT q k v out up down;
# Llama q k v out gate up down.
KEEPS = {
    ("op-selective", "gpt"): [1, 0, 1, 0, 1, 0], ("op-selective", "llama"): [1, 0, 1, 0, 1, 0, 1],
    ("save-matmuls", "gpt"): [1, 1, 1, 1, 1, 1], ("save-matmuls", "llama"): [1, 1, 1, 1, 1, 1, 1],
    ("save-matmuls-but-mlp-up", "gpt"): [1, 1, 1, 1, 0, 1], ("save-matmuls-but-mlp-up", "llama"): [1, 1, 1, 1, 0, 0, 1],
    ("save-attn-proj", "gpt"): [1, 1, 1, 1, 0, 0], ("save-attn-proj", "llama"): [1, 1, 1, 1, 0, 0, 0],
}


@pytest.mark.parametrize("spec", [GPT, LLAMA], ids=["gpt", "llama"])
@pytest.mark.parametrize("policy", ["op-selective", "save-matmuls", "save-matmuls-but-mlp-up", "save-attn-proj"])
def test_matmul_policies_save_the_matmuls_the_cost_model_counts(spec, policy: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Record the policy's decision for every matmul and attention kernel in one block's forward: it
    keeps the matmuls listed by hand above (one executor matmul per modelled matmul, same order, same
    widths), keeps the attention kernel only under torchtitan's policy, and recomputes the matmul work
    planner.cost.memory assigns to recomputation."""
    decisions: list[tuple[int, bool]] = []
    attention: list[bool] = []
    original = ckpt.create_selective_checkpoint_contexts

    def recording(policy_fn):
        def wrapped(ctx, func, *args, **kwargs):
            decision = policy_fn(ctx, func, *args, **kwargs)
            if not ctx.is_recompute and func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                b = args[-1] if func == torch.ops.aten.addmm.default else args[1]
                decisions.append((b.shape[-1], decision == ckpt.CheckpointPolicy.MUST_SAVE))
            elif not ctx.is_recompute and "scaled_dot_product" in str(func):
                attention.append(decision == ckpt.CheckpointPolicy.MUST_SAVE)
            return decision
        return original(wrapped)

    monkeypatch.setattr("executor.activation_checkpoint.create_selective_checkpoint_contexts", recording)
    model = build_model(dataclasses.replace(spec, num_layers=1), True, seed=0)
    apply_ac(model, policy)
    x = torch.randint(0, spec.vocab_size, (1, spec.seq_len))
    model(x).sum().backward()
    lg = build_graph(spec, "fp32")
    widths = [w for op in lg.layer_ops if op.kind == "gemm" for w in matmul_outputs(op, spec)]
    assert [w for w, _ in decisions] == widths  # one executor matmul per modelled matmul, same order
    keeps = KEEPS[policy, "gpt" if spec is GPT else "llama"]
    assert [keep for _, keep in decisions] == [bool(k) for k in keeps]
    assert attention == [policy == "op-selective"]
    frac = policy_recomputed(policy, lg.layer_ops, spec)
    recomputed = sum(frac[op.name] * sum(matmul_outputs(op, spec)) for op in lg.layer_ops if op.kind == "gemm")
    assert sum(w for w, keep in decisions if not keep) == pytest.approx(recomputed)
    assert all(frac.get(op.name, 0.0) == (0.0 if policy == "op-selective" else 1.0) for op in lg.layer_ops
               if op.kind == "attention")


@pytest.mark.parametrize("policy", ["save-matmuls", "save-matmuls-but-mlp-up", "save-attn-proj"])
def test_named_matmul_policies_are_refused_where_blocks_run_other_matmuls(policy: str) -> None:
    """The executor picks a named policy's matmuls by their order in a dense block; a mixture-of-experts
    block runs a routing-dependent number, so such a plan is refused before launch (op-selective, which
    keeps every other call, runs)."""
    from executor.errors import UnsupportedPlan
    from executor.plans import local_plan
    from executor.run import check_executable

    moe = dataclasses.replace(LLAMA, name="tiny-moe", num_experts=4, top_k=2)
    with pytest.raises(UnsupportedPlan, match="dense models"):
        check_executable(local_plan(moe, micro_batch=1, global_batch=1, recompute=policy))
    check_executable(local_plan(moe, micro_batch=1, global_batch=1, recompute="op-selective"))
    check_executable(local_plan(LLAMA, micro_batch=1, global_batch=1, recompute=policy))
