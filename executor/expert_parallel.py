"""Expert parallelism: experts spread over `ep` data-parallel ranks, tokens exchanged by all-to-all.

Layout (as Megatron-LM and torchtitan): each data-parallel group of `dp` ranks splits into dp/ep
expert-parallel groups of `ep` consecutive dp ranks. Within an ep group every rank holds
num_experts/ep experts (a `Shard(0)` DTensor over the ep mesh); ranks at the same position of different
ep groups hold the same experts and form the expert-data-parallel ("edp") group.

Per MoE layer: routed tokens are sent to the rank owning their expert (all-to-all, with the token
counts exchanged first), computed there, and sent back (all-to-all); both exchanges are
differentiable. Expert weights are kept out of the DP wrapper: their gradients (already summed over
the ep group by the backward all-to-all) are summed over the edp group and divided by its replica
count, which gives the same average as data parallelism gives every other weight. With context
parallelism every cp rank routes its own tokens; the edp group then spans the cp ranks too (expert
weights are replicated over (dp / ep) x cp ranks, as the cost model counts them).

With tensor parallelism as well (expert tensor parallelism, as Megatron-Core runs ep x tp): each
expert's weights are also split over the tp ranks (column-split up / gate, row-split down, from
executor/tensor_parallel.py's `parallelize_experts`), a 2-D DTensor over the (ep, tp) mesh. The tp
ranks of a group hold the same tokens (the MoE input is replicated over tp, or gathered from the
sequence shards under SP) and route them alike, each all-to-all runs between the ranks of one tp
coordinate, and the partial expert outputs are all-reduced over tp on the received tokens before they
are sent back (the tensor-parallel hooks of `parallelize_experts`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Shard, distribute_tensor

from executor.model import GroupedExperts, Transformer
from executor.parallel_dims import ParallelDims

EXPERT_WEIGHTS = (("up", ("w_up", "w_gate", "b_up", "b_gate")), ("down", ("w_down",)))
_SHARDED = {f"moe.experts.{sub}.{name}" for sub, names in EXPERT_WEIGHTS for name in names}


def expert_rank_grid(dims: ParallelDims) -> np.ndarray:
    """Global ranks on the axes ("other", "edp", "ep", "tp"): "ep" rows are consecutive ranks of a dp
    group (same cp and tp coordinates); "edp" holds the replicas of one expert shard, dp / ep of them per
    cp rank; "tp" is the tensor-parallel group (size 1 without tp)."""
    names = dims.mesh_names
    order = [n for n in names if n not in ("cp", "dp", "tp")] + ["cp", "dp", "tp"]
    grid = np.transpose(dims.rank_grid(), [names.index(n) for n in order])
    return grid.reshape(-1, dims.cp * (dims.dp // dims.ep), dims.ep, dims.tp)


def expert_groups(dims: ParallelDims, rank: int) -> dict[str, list[int]]:
    """This rank's expert-parallel ("ep") and expert-data-parallel ("edp") groups, as global ranks."""
    grid = expert_rank_grid(dims)
    o, e, p, t = (int(i) for i in np.argwhere(grid == rank)[0])
    return {"ep": grid[o, e, :, t].tolist(), "edp": grid[o, :, p, t].tolist()}


def build_ep_mesh(dims: ParallelDims, device_type: str) -> DeviceMesh:
    """A world mesh ("other", "edp", "ep", "tp") laid out as `expert_rank_grid`."""
    grid = torch.from_numpy(expert_rank_grid(dims))
    return DeviceMesh(device_type, grid, mesh_dim_names=("other", "edp", "ep", "tp"))


def _a2a(x: torch.Tensor, out_splits: list[int], in_splits: list[int], group: dist.ProcessGroup
         ) -> torch.Tensor:
    y = funcol.all_to_all_single_autograd(x, out_splits, in_splits, group)
    return funcol.wait_tensor(y)


def _ep_placements(p: torch.Tensor, ep_mesh: DeviceMesh) -> tuple[torch.Tensor, DeviceMesh, list[Any]]:
    """(full tensor, mesh, placements) of an expert weight split over ep: over the "ep" mesh, or over
    ("ep", "tp") keeping the tensor-parallel split `parallelize_experts` gave it."""
    tp_placements = getattr(p, "placements", None)
    if tp_placements is None:
        return p, ep_mesh["ep"], [Shard(0)]
    full = torch.empty(p.shape, dtype=p.dtype, device=p.to_local().device)  # on the meta device: no values
    return full, ep_mesh["ep", "tp"], [Shard(0), *tp_placements]


def parallelize_experts_ep(experts: GroupedExperts, ep_mesh: DeviceMesh) -> None:
    """Shard the expert weights over the "ep" dimension of `ep_mesh` (build_ep_mesh) and route tokens
    by all-to-all over it."""
    mesh = ep_mesh["ep"]
    ep = mesh.size()
    group = mesh.get_group()
    for sub, names in EXPERT_WEIGHTS:
        module = getattr(experts, sub)
        for name in names:
            p = getattr(module, name)
            if p is not None:
                full, where, placements = _ep_placements(p, ep_mesh)
                module.register_parameter(name, nn.Parameter(distribute_tensor(full, where, placements)))

    def dispatch(mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x, counts = args[0], list(args[1])
        local_experts = len(counts) // ep
        send = torch.tensor(counts, dtype=torch.int64, device=x.device)
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=group)  # recv[s, j]: rank s's tokens for my expert j
        if x.is_meta:  # the dry run: no values were exchanged; balanced routing is the same on every rank
            me = dist.get_rank(group)
            received = [counts[me * local_experts + j] for _ in range(ep) for j in range(local_experts)]
        else:
            received = recv.tolist()
        in_splits = [sum(counts[s * local_experts:(s + 1) * local_experts]) for s in range(ep)]
        out_splits = [sum(received[s * local_experts:(s + 1) * local_experts]) for s in range(ep)]
        x_recv = _a2a(x, out_splits, in_splits, group)  # rows ordered by (source rank, expert)
        chunks = torch.arange(x_recv.shape[0], device=x.device).split(received)
        perm = torch.cat([chunks[s * local_experts + j] for j in range(local_experts) for s in range(ep)]) \
            if chunks else torch.zeros(0, dtype=torch.long, device=x.device)
        mod._ep_ctx = (perm, in_splits, out_splits)
        per_expert = [sum(received[s * local_experts + j] for s in range(ep)) for j in range(local_experts)]
        return (x_recv[perm], per_expert, *args[2:])

    def combine(mod: nn.Module, _args: tuple[Any, ...], y: torch.Tensor) -> torch.Tensor:
        perm, in_splits, out_splits = mod._ep_ctx
        mod._ep_ctx = None
        y_recv = y[torch.argsort(perm)]  # back to (source rank, expert) order
        return _a2a(y_recv, in_splits, out_splits, group)

    experts.register_forward_pre_hook(dispatch)
    experts.register_forward_hook(combine)


def apply_ep(model: Transformer, mesh: DeviceMesh) -> list[nn.Parameter]:
    """Expert parallelism for every MoE layer of `model` over `mesh` (build_ep_mesh), after tensor
    parallelism when tp > 1; returns the expert weights it sharded."""
    for layer in [*model.layers.values(), *(m.layer for m in model.mtp or ())]:  # MTP: DeepSeek-V3's MoE layer
        if layer.moe is not None:
            parallelize_experts_ep(layer.moe.experts, mesh)
    return expert_params(model)


def expert_param_names(model: nn.Module) -> list[str]:
    """Names of the expert-parallel weights (by name: `to_empty` replaces the parameter objects).
    Only meaningful after `apply_ep`; the down bias stays replicated and is averaged by DP."""
    return [n for n, _ in model.named_parameters() if any(n.endswith("." + w) for w in _SHARDED)]


def expert_params(model: nn.Module) -> list[nn.Parameter]:
    named = dict(model.named_parameters())
    return [named[n] for n in expert_param_names(model)]


class ExpertGradSync:
    """Averages expert-weight gradients like every other weight's: sum over edp, divide by the replicas
    of a dense weight (dp x cp: each replica's loss contributed its share through the all-to-all)."""

    def __init__(self, mesh: DeviceMesh, replicas: int) -> None:
        self.group = mesh["edp"].get_group() if mesh["edp"].size() > 1 else None
        self.dp = replicas

    def __call__(self, params: list[nn.Parameter]) -> None:
        for p in params:
            if p.grad is None:
                continue
            g = p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad
            if self.group is not None:
                dist.all_reduce(g, group=self.group)
            g.div_(self.dp)
