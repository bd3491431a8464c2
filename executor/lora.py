"""LoRA fine-tuning (Hu et al. 2021): frozen base weights, trained low-rank adapters.

For each targeted linear layer W (in x out) of a block, adapters A (in x r) and B (r x out) are added
as modules `<op>.lora_a` and `<op>.lora_b` beside it (the layer graph's op names, planner/graph.py),
and the layer computes y = x W + (x A) B. A layer the executor splits into several linears (q, k, v
of `attn.qkv`; gate and up of a SwiGLU `mlp.up`) gets one adapter whose B output is split over them,
as the fused layer's would be. B starts at zero, so the adapted model starts as the base model. Every
other parameter is frozen (no gradient, no optimizer state).

The executor runs LoRA with tp = 1 (data and pipeline parallelism, ZeRO, recompute as for full
training); adapters on routed experts are not built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from executor.errors import UnsupportedPlan
from executor.model import GatedUp, Transformer


def _targets(block: nn.Module, target: str) -> list[tuple[nn.Module, list[nn.Linear]]]:
    """(module named as the graph op, the linears its adapter feeds) of `target` in one block."""
    attn, mlp = block.attn, block.mlp
    if target == "qkv" and hasattr(attn, "qkv"):
        q = attn.qkv
        return [(q, [q.q, q.k, q.v])]
    if target == "proj" and isinstance(getattr(attn, "proj", None), nn.Linear):
        return [(attn.proj, [attn.proj])]
    if getattr(block, "moe", None) is not None:
        return []  # routed experts: no adapters (see the module docstring)
    if target == "up":
        up = mlp.up
        return [(up, [up.gate, up.up])] if isinstance(up, GatedUp) else [(up, [up])]
    if target == "down":
        return [(mlp.down, [mlp.down])]
    return []


def check_lora(model: Transformer, targets: tuple[str, ...]) -> None:
    """UnsupportedPlan naming a target the model's blocks do not have as a plain linear layer."""
    for block in model.layers.values():
        for t in targets:
            if not _targets(block, t) and not (t in ("up", "down") and getattr(block, "moe", None) is not None):
                raise UnsupportedPlan(f"LoRA target {t!r}: this model's layers have no such linear layer "
                                      "for the executor to adapt", field="lora_targets")


def apply_lora(model: Transformer, rank: int, targets: tuple[str, ...]) -> list[nn.Parameter]:
    """Add the adapters to every block of `model` (meta or real), freeze the rest; returns the adapters'
    parameters."""
    for block in model.layers.values():
        for t in targets:
            for module, linears in _targets(block, t):
                device = linears[0].weight.device
                module.lora_a = nn.Linear(linears[0].in_features, rank, bias=False, device=device)
                module.lora_b = nn.Linear(rank, sum(lin.out_features for lin in linears), bias=False, device=device)
                _hook(module, linears)
    trained = []
    for name, p in model.named_parameters():
        adapter = ".lora_a." in name or ".lora_b." in name
        p.requires_grad_(adapter)
        if adapter:
            trained.append(p)
    return trained


def _hook(module: nn.Module, linears: list[nn.Linear]) -> None:
    """y_i += ((x A) B)[slice i] on each of `linears` (their outputs in order)."""
    state: dict[str, Any] = {}
    bounds = [0]
    for lin in linears:
        bounds.append(bounds[-1] + lin.out_features)

    def pre(_m: nn.Module, args: tuple[Any, ...]) -> None:
        state["out"] = module.lora_b(module.lora_a(args[0]))

    module.register_forward_pre_hook(pre, prepend=True)
    for i, lin in enumerate(linears):
        def post(_m: nn.Module, _args: tuple[Any, ...], out: torch.Tensor, i: int = i) -> torch.Tensor:
            extra = state["out"][..., bounds[i]:bounds[i + 1]]
            if i == len(linears) - 1:
                state.pop("out", None)
            return out + extra

        lin.register_forward_hook(post)
