"""Activation recomputation for the plan's `recompute` setting.

- full: checkpoint every Transformer block (or, with `recompute_every` k, every k-th block: the first
  block of every k); only the block input is kept, the rest is recomputed in backward (Korthikanti et
  al. 2022).
- selective: checkpoint only the attention core, whose s² tensors dominate activation memory and
  are cheap to recompute (Megatron-LM's selective recompute).
- op-selective: checkpoint every block with a per-op policy, as torchtitan's per-op selective
  activation checkpointing decides: keep the outputs of the matmuls and of the fused attention kernel,
  except every second matmul; recompute everything else (norms, activations, rotary, residuals).
- save-matmuls, save-matmuls-but-mlp-up, save-attn-proj: the JAX checkpoint policies of MaxText and
  PaxML, per op as well: keep the outputs of the matmuls the policy names
  (`planner.cost.memory.saved_matmul_flags`, in the order the block runs them) and recompute the
  rest, the attention kernel included.

Uses the composable `checkpoint` API, which works through module hooks and so leaves parameter names
(and the planner's op names) unchanged. Modules it applies to are tagged so that the memory
measurement can count the inputs they keep.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.distributed._composable import checkpoint
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from executor.model import Transformer
from planner.cost.memory import MATMUL_POLICIES, kept_by_layer_order, saved_matmul_flags, saves_attention
from planner.graph import build_graph

RECOMPUTE_TAG = "_executor_recompute"
_aten = torch.ops.aten
MATMULS = {_aten.mm.default, _aten.addmm.default}
# Fused attention kernels whose output (and log-sum-exp) the policy keeps.
ATTENTION = {getattr(_aten, name).default for name in (
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu") if hasattr(_aten, name)}


def matmul_policy_context(saved: list[bool] | None, keep_attention: bool) -> Callable[[], tuple[Any, Any]]:
    """A `context_fn` for checkpoint: keep the k-th matmul of the block iff `saved[k]` (None: every
    second one, the 1st, 3rd, ..., however many the block runs, as torchtitan's policy counts), and the
    fused attention kernel iff `keep_attention` (a fresh matmul count per forward and per recompute, so
    both passes decide the same ops)."""

    def context_fn() -> tuple[Any, Any]:
        counts = {"forward": 0, "recompute": 0}

        def policy(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
            if func in MATMULS:
                mode = "recompute" if ctx.is_recompute else "forward"
                k = counts[mode]
                counts[mode] += 1
                keep = k % 2 == 0 if saved is None else k < len(saved) and saved[k]
                return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE
            if func in ATTENTION and keep_attention:
                return CheckpointPolicy.MUST_SAVE
            return CheckpointPolicy.PREFER_RECOMPUTE

        return create_selective_checkpoint_contexts(policy)

    return context_fn


def apply_ac(model: Transformer, mode: str, every: int = 1) -> list[nn.Module]:
    """Apply recompute `mode` (none | selective | full | a matmul policy) to the blocks of `model`; with
    full recompute, to one block in every `every` (by global layer index). Returns the modules."""
    if mode == "none":
        return []
    if mode not in ("selective", "full", *MATMUL_POLICIES):
        raise ValueError(f"unknown recompute mode {mode!r}")
    graph = build_graph(model.spec) if kept_by_layer_order(mode) else None
    targets: list[nn.Module] = []
    for name, block in model.layers.items():
        if mode == "full" and int(name) % every:
            continue
        if mode in MATMUL_POLICIES:
            saved = None if graph is None else \
                saved_matmul_flags(mode, graph.kinds[graph.pattern[int(name)]].ops, model.spec)
            checkpoint(block, context_fn=matmul_policy_context(saved, saves_attention(mode)))
            target = block
        else:
            target = block if mode == "full" else block.attn.core
            checkpoint(target)
        setattr(target, RECOMPUTE_TAG, mode)
        targets.append(target)
    return targets
