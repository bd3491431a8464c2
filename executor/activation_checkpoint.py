"""Activation recomputation for the plan's `recompute` setting (Korthikanti et al. 2022).

- full: checkpoint every Transformer block; only the block input is kept, the rest is recomputed in
  backward (4x forward FLOPs in total instead of 3x).
- selective: checkpoint only the attention core, whose s² tensors dominate activation memory and
  are cheap to recompute.

Uses the composable `checkpoint` API, which works through module hooks and so leaves parameter names
(and the planner's op names) unchanged. Modules it applies to are tagged so that the memory
measurement can count the inputs they keep.
"""

from __future__ import annotations

from torch import nn
from torch.distributed._composable import checkpoint

from executor.model import Transformer

RECOMPUTE_TAG = "_executor_recompute"


def apply_ac(model: Transformer, mode: str) -> list[nn.Module]:
    """Apply recompute `mode` (none | selective | full) to the blocks of `model`; returns the modules."""
    if mode == "none":
        return []
    if mode not in ("selective", "full"):
        raise ValueError(f"unknown recompute mode {mode!r}")
    targets: list[nn.Module] = []
    for block in model.layers.values():
        target = block if mode == "full" else block.attn.core
        checkpoint(target)
        setattr(target, RECOMPUTE_TAG, True)
        targets.append(target)
    return targets
