"""Model-state memory of one pipeline rank: weights, gradients and optimizer state, in bytes and counts.

Built only from public pieces of planner/cost/memory.py: `stage_params` (the parameters one GPU of the
first or last stage holds, split by tensor and expert parallelism) and the bytes per parameter
`WEIGHT_BYTES`, `GRAD_BYTES`, `OPTIMIZER_BYTES`. ZeRO (Rajbhandari et al. 2020, Sec. 5): stage 1 shards
the optimizer state over the ranks that replicate a parameter, stage 2 also the gradients, stage 3 also
the weights. Dense parameters are replicated over the dp x cp ranks, expert parameters over
(dp / ep) x cp ranks (expert groups are ep consecutive dp ranks).

For the first (pp_rank 0) and the last pipeline rank this is what the cost model's
`prediction()["memory"]` reports (tests/test_model_state.py checks the equality on many plans); a
middle rank holds only its layers. The executor's dry run (executor/dry_run.py) compares it with
what each rank of a built job holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.cost.memory import GRAD_BYTES, OPTIMIZER_BYTES, WEIGHT_BYTES, stage_params
from planner.graph import build_graph
from planner.plan import Plan
from planner.specs.model import ModelSpec


@dataclass(frozen=True)
class ModelStateBytes:
    """Weights, gradients and optimizer state one GPU holds (bytes), and the parameters behind each
    (per GPU, after ZeRO sharding; fractional where a count does not divide evenly). `dense_params`
    and `expert_params` are the GPU's parameters before ZeRO sharding, by how they are replicated."""

    weights: float
    grads: float
    optimizer: float
    weight_params: float
    grad_params: float
    optimizer_params: float
    dense_params: float
    expert_params: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer


def model_state_bytes(model: ModelSpec, plan: Plan, pp_rank: int) -> ModelStateBytes:
    """Model-state memory of one GPU at pipeline rank `pp_rank` (0 .. pp-1) of `plan`."""
    if not 0 <= pp_rank < plan.pp:
        raise ValueError(f"pp_rank must be in 0..{plan.pp - 1}, got {pp_rank}")
    lg = build_graph(model, plan.dtype, plan.flash_attention)
    tp, ep = np.array([float(plan.tp)]), np.array([float(plan.ep)])

    def params(pp: float, first: bool) -> tuple[float, float]:
        s = stage_params(lg, tp, np.array([pp]), ep, first=first)
        return float(s.dense[0]), float(s.expert[0])

    p = float(plan.pp)
    if pp_rank == 0:
        dense, expert = params(p, first=True)
    elif pp_rank == plan.pp - 1:
        dense, expert = params(p, first=False)
    else:
        # A middle rank holds only layers: the part of the first stage's parameters that scales as
        # 1/pp (the embedding does not), i.e. twice the drop from pp to 2pp ranks.
        (dense_p, expert), (dense_2p, _) = params(p, first=True), params(2 * p, first=True)
        dense = 2.0 * (dense_p - dense_2p)
    dp_group = plan.dp * plan.cp
    edp_group = plan.dp // plan.ep * plan.cp

    def sharded(stage: int) -> float:
        """Parameters per GPU of a state that ZeRO shards from `stage` on."""
        z = plan.zero_stage >= stage
        return dense / (dp_group if z else 1) + expert / (edp_group if z else 1)

    w, g, o = sharded(3), sharded(2), sharded(1)
    dt = plan.dtype
    return ModelStateBytes(weights=w * WEIGHT_BYTES[dt], grads=g * GRAD_BYTES[dt], optimizer=o * OPTIMIZER_BYTES[dt],
                           weight_params=w, grad_params=g, optimizer_params=o, dense_params=dense,
                           expert_params=expert)
