"""Data parallelism by ZeRO stage (Rajbhandari et al. 2020), with PyTorch's own wrappers.

| zero | tp == 1 and pp == 1                   | tp > 1 or pp > 1                            |
|------|---------------------------------------|---------------------------------------------|
| 0    | DDP (gradient all-reduce)             | composable `replicate` (FSDP2-based DDP)    |
| 1    | DDP + ZeroRedundancyOptimizer         | FSDP2, no reshard after forward (see below) |
| 2    | FSDP2 `fully_shard(reshard_after_forward=False)`: grads + optimizer state sharded  |
| 3    | FSDP2 `fully_shard(reshard_after_forward=True)`: parameters sharded too            |

DDP cannot take DTensor (tensor-parallel) parameters, and under a pipeline schedule in torch 2.13 it
fails after the first step (its bucket rebuild sees every micro-batch's backward) or, with
`static_graph=True`, gives wrong gradients; `replicate` is what torchtitan uses there.
ZeroRedundancyOptimizer broadcasts plain tensors, so ZeRO-1 in those layouts runs as ZeRO-2
(gradients sharded as well); `describe_dp` says so in measured.json.
FSDP2 is applied per Transformer block and then to the root, as torchtitan does. Hybrid sharding
(a plan's `shard_group` below dp x cp) runs FSDP2 on a 2-D (replicate, shard) mesh: parameters,
gradients and optimizer state sharded inside each shard group, gradients all-reduced across them
(ZeRO-1 there runs as ZeRO-2, as with tp or pp).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from executor.model import Transformer


def dp_kind(zero_stage: int, tp: int, pp: int, hybrid: bool = False) -> str:
    """Which wrapper runs this ZeRO stage: ddp | replicate | fsdp (hybrid sharding: always FSDP2, on a
    (replicate, shard) mesh)."""
    if hybrid and zero_stage >= 1:
        return "fsdp"
    plain = tp == 1 and pp == 1
    if zero_stage == 0:
        return "ddp" if plain else "replicate"
    if zero_stage == 1:
        return "ddp" if plain else "fsdp"
    return "fsdp"


def describe_dp(zero_stage: int, tp: int, pp: int, dp: int, shard_group: int | None = None) -> str:
    if dp == 1:
        return "none"
    hybrid = shard_group is not None
    kind = dp_kind(zero_stage, tp, pp, hybrid)
    if kind == "ddp":
        return "DDP + ZeroRedundancyOptimizer (ZeRO-1)" if zero_stage == 1 else "DDP (ZeRO-0)"
    if kind == "replicate":
        return "composable replicate (ZeRO-0)"
    reshard = zero_stage == 3
    why = "hybrid sharding" if hybrid else "tp > 1 or pp > 1"
    note = f" (ZeRO-1 requested; run as ZeRO-2 because of {why})" if zero_stage == 1 else ""
    mesh = f" on a (replicate {dp // shard_group}, shard {shard_group}) mesh" if hybrid else ""
    return f"FSDP2 fully_shard(reshard_after_forward={reshard}){mesh}{note}"


def apply_dp(model: Transformer, mesh: DeviceMesh, zero_stage: int, tp: int, pp: int, device: torch.device,
             param_dtype: torch.dtype | None = None, ignored: list[str] | None = None,
             hybrid: bool = False) -> nn.Module:
    """Wrap `model` (a whole model or a stage) for data parallelism over `mesh`; returns the module
    to call (a DDP wrapper, or `model` itself for the composable APIs). Parameters named in `ignored`
    (expert weights under expert parallelism) are left alone: their gradients are averaged elsewhere."""
    kind = dp_kind(zero_stage, tp, pp, hybrid)
    named = dict(model.named_parameters())
    skip = {named[n] for n in ignored or ()}
    if kind == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        if ignored:
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(ignored))
        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, process_group=mesh.get_group(), device_ids=ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else \
        MixedPrecisionPolicy()
    if kind == "replicate":
        from torch.distributed._composable.replicate_with_fsdp import replicate

        for block in model.layers.values():
            replicate(block, mesh=mesh, mp_policy=mp, ignored_params=skip)
        replicate(model, mesh=mesh, mp_policy=mp, ignored_params=skip)
        return model
    from torch.distributed.fsdp import fully_shard

    reshard = zero_stage == 3
    for block in model.layers.values():
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard, mp_policy=mp, ignored_params=skip)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard, mp_policy=mp, ignored_params=skip)
    return model


def set_grad_sync(module: nn.Module, enabled: bool) -> None:
    """Skip (or restore) the gradient all-reduce for accumulation micro-batches (ZeRO-0/1 only:
    ZeRO-2/3 reduce-scatter every micro-batch so that only sharded gradients are kept)."""
    if hasattr(module, "require_backward_grad_sync"):  # DDP
        module.require_backward_grad_sync = enabled
    elif hasattr(module, "set_requires_gradient_sync"):  # replicate / FSDP2
        module.set_requires_gradient_sync(enabled)
