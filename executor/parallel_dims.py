"""Parallel degrees of a plan and the `DeviceMesh` they span (torchtitan's `ParallelDims` idea).

`placement` lists mesh dimensions innermost first: ("tp", "cp", "dp", "pp") means the tp ranks of a
group are consecutive (rank = ((pp·DP + dp)·CP + cp)·TP + tp), as Megatron-LM places them, so
tensor parallelism stays inside a node. The mesh is built with the dimensions outermost first,
which is what `init_device_mesh` lays out row-major.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.plan import DIMS, Plan


@dataclass(frozen=True)
class ParallelDims:
    """Validated degrees; `mesh_names` is the mesh dimension order (outermost first)."""

    tp: int
    pp: int
    dp: int
    cp: int
    ep: int
    vpp: int
    placement: tuple[str, ...]

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "dp", "cp", "ep", "vpp"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if sorted(self.placement) != sorted(DIMS):
            raise ValueError(f"placement must order {', '.join(DIMS)}, got {self.placement!r}")
        if self.dp % self.ep:
            raise ValueError(f"ep {self.ep} must divide dp {self.dp}")

    @classmethod
    def from_plan(cls, plan: Plan) -> ParallelDims:
        return cls(tp=plan.tp, pp=plan.pp, dp=plan.dp, cp=plan.cp, ep=plan.ep, vpp=plan.vpp,
                   placement=tuple(plan.placement))

    @property
    def world_size(self) -> int:
        return self.tp * self.cp * self.dp * self.pp

    @property
    def mesh_names(self) -> tuple[str, ...]:
        return tuple(reversed(self.placement))

    @property
    def mesh_shape(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in self.mesh_names)

    def rank_grid(self) -> np.ndarray:
        """Global rank at each mesh coordinate, axes in `mesh_names` order."""
        return np.arange(self.world_size).reshape(self.mesh_shape)

    def coords(self, rank: int) -> dict[str, int]:
        """This rank's index along every dimension."""
        where = np.argwhere(self.rank_grid() == rank)[0]
        return {name: int(i) for name, i in zip(self.mesh_names, where, strict=True)}

    def groups(self, dim: str) -> list[list[int]]:
        """All process groups of one dimension, as lists of global ranks."""
        grid = np.moveaxis(self.rank_grid(), self.mesh_names.index(dim), -1)
        return grid.reshape(-1, getattr(self, dim)).tolist()

    def group(self, names: tuple[str, ...], rank: int) -> list[int]:
        """The ranks that differ from `rank` only along the dimensions `names`, e.g. ("dp", "cp"): the
        replicas over which a replicated weight's gradient is averaged."""
        mine = self.coords(rank)
        index = tuple(slice(None) if n in names else mine[n] for n in self.mesh_names)
        return sorted(self.rank_grid()[index].reshape(-1).tolist())

    def check_supported(self) -> None:
        """Raise UnsupportedPlan for the degrees this executor cannot run: every combination of tp, pp,
        dp, cp and ep runs since context parallelism and expert x tensor parallelism landed; what a
        model or option excludes is checked by `executor.run.check_executable`."""

    def build_mesh(self, device_type: str):  # -> DeviceMesh (import kept local: torch.distributed)
        """The world mesh with named dimensions; slice it with mesh["tp"], mesh["dp"], ..."""
        from torch.distributed.device_mesh import init_device_mesh

        return init_device_mesh(device_type, self.mesh_shape, mesh_dim_names=self.mesh_names)
