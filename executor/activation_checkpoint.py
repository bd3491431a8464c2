"""Activation recomputation for the plan's `recompute` setting.

- full: checkpoint every Transformer block (or, with `recompute_every` k, every k-th block: the first
  block of every k); only the block input is kept, the rest is recomputed in backward (Korthikanti et
  al. 2022).
- selective: checkpoint only the attention core, whose s² tensors dominate activation memory and
  are cheap to recompute (Megatron-LM's selective recompute).
- op-selective: checkpoint every block with a per-op policy, as torchtitan's per-op selective
  activation checkpointing decides: keep the outputs of the matmuls and of the fused attention kernel,
  except every second matmul; recompute everything else (norms, activations, rotary, residuals).

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

RECOMPUTE_TAG = "_executor_recompute"
_aten = torch.ops.aten
MATMULS = {_aten.mm.default, _aten.addmm.default}
# Fused attention kernels whose output (and log-sum-exp) the policy keeps.
ATTENTION = {getattr(_aten, name).default for name in (
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu") if hasattr(_aten, name)}


def op_selective_context() -> Callable[[], tuple[Any, Any]]:
    """A `context_fn` for checkpoint: the per-op policy (a fresh matmul count per forward and per
    recompute, so both passes decide the same ops)."""

    def context_fn() -> tuple[Any, Any]:
        counts = {"forward": 0, "recompute": 0}

        def policy(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
            if func in MATMULS:
                mode = "recompute" if ctx.is_recompute else "forward"
                counts[mode] += 1
                return CheckpointPolicy.MUST_SAVE if counts[mode] % 2 else CheckpointPolicy.PREFER_RECOMPUTE
            if func in ATTENTION:
                return CheckpointPolicy.MUST_SAVE
            return CheckpointPolicy.PREFER_RECOMPUTE

        return create_selective_checkpoint_contexts(policy)

    return context_fn


def apply_ac(model: Transformer, mode: str, every: int = 1) -> list[nn.Module]:
    """Apply recompute `mode` (none | selective | full | op-selective) to the blocks of `model`; with
    full recompute, to one block in every `every` (by global layer index). Returns the modules."""
    if mode == "none":
        return []
    if mode not in ("selective", "full", "op-selective"):
        raise ValueError(f"unknown recompute mode {mode!r}")
    targets: list[nn.Module] = []
    for name, block in model.layers.items():
        if mode == "full" and int(name) % every:
            continue
        if mode == "op-selective":
            checkpoint(block, context_fn=op_selective_context())
            target = block
        else:
            target = block if mode == "full" else block.attn.core
            checkpoint(target)
        setattr(target, RECOMPUTE_TAG, mode)
        targets.append(target)
    return targets
