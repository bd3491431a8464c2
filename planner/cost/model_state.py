"""Model-state memory of one pipeline rank: weights, gradients and optimizer state, in bytes and counts.

Built from public pieces of the cost model: the layers each pipeline rank holds
(`planner.cost.stages.stage_layout`: even or uneven splits, virtual stages, the embedding / loss
counted as layers), the parameters one GPU keeps of each op (`memory.op_params_per_gpu`: split by
tensor and expert parallelism), and the bytes per parameter `WEIGHT_BYTES`, `GRAD_BYTES`,
`OPTIMIZER_BYTES`. The first rank also holds the embedding, the last the final norm and LM head (and,
with pipelining, its own copy of a tied embedding). Gradients and optimizer state exist only for
trained parameters (LoRA freezes the base weights). A low-precision recipe keeps copies of the linear
weights (`precision.recipe`) beside them, except under ZeRO-3 (where the cost model counts the two
gathered layers' copies as a transient buffer).

ZeRO (Rajbhandari et al. 2020, Sec. 5): stage 1 shards the optimizer state over the ranks that
replicate a parameter, stage 2 also the gradients, stage 3 also the weights; gradients stay unsharded
under pipelining where the framework accumulates them so (Framework.pipeline_unsharded_grads: the
stage's peak, before the step's one reduction). Dense parameters are replicated over the dp x cp ranks,
expert parameters over (dp / ep) x cp ranks (expert groups are ep consecutive dp ranks).

The cost model's `prediction()["memory"]` reports the rank class with the most memory; for that
class this is the same (tests/test_model_state.py checks it on many plans). The executor's dry run
(executor/dry_run.py) compares it with what each rank of a built job holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.cost.compute import low_precision
from planner.cost.memory import OPTIMIZER_BYTES, WEIGHT_BYTES, gradient_path, op_params_per_gpu
from planner.cost.stages import stage_layout
from planner.framework import DEFAULT_FRAMEWORK, framework
from planner.graph import Op, build_graph
from planner.plan import Plan
from planner.precision import extra_weight_bytes, recipe
from planner.specs.model import ModelSpec


@dataclass(frozen=True)
class ModelStateBytes:
    """Weights, gradients and optimizer state one GPU holds (bytes), and the parameters behind each
    (per GPU, after ZeRO sharding; fractional where a count does not divide evenly). `dense_params`
    and `expert_params` are the GPU's parameters before ZeRO sharding, by how they are replicated, and
    `trained_dense_params` / `trained_expert_params` those of them trained (all but LoRA's frozen base);
    `lowp_bytes` the low-precision weight copies included in `weights`."""

    weights: float
    grads: float
    optimizer: float
    weight_params: float
    grad_params: float
    optimizer_params: float
    dense_params: float
    expert_params: float
    lowp_bytes: float = 0.0
    trained_dense_params: float = 0.0
    trained_expert_params: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer


def model_state_bytes(model: ModelSpec, plan: Plan, pp_rank: int) -> ModelStateBytes:
    """Model-state memory of one GPU at pipeline rank `pp_rank` (0 .. pp-1) of `plan`."""
    if not 0 <= pp_rank < plan.pp:
        raise ValueError(f"pp_rank must be in 0..{plan.pp - 1}, got {pp_rank}")
    lora = (plan.lora_rank, tuple(plan.lora_targets)) if plan.finetune == "lora" else None
    lg = build_graph(model, plan.dtype, plan.flash_attention, lora)
    account = getattr(plan, "account", 0)  # the embedding / loss counted as layers in the split
    layout = stage_layout(lg.pattern, len(lg.kinds), plan.pp, plan.vpp, plan.first_stage_layers,
                          plan.last_stage_layers, *((account,) if account else ()))
    layers = layout.rank_layers[pp_rank]
    cls = layout.rank_class[pp_rank]
    has_pre, has_post = layout.class_has_pre[cls], layout.class_has_post[cls]
    tp, ep = np.array([float(plan.tp)]), np.array([float(plan.ep)])
    etp = np.array([float(plan.expert_tp)])

    def params(ops: tuple[Op, ...] | list[Op], routed: bool, trained_only: bool = False) -> float:
        return sum(float(op_params_per_gpu(op, etp if routed else tp, ep)[0]) for op in ops
                   if op.routed == routed and not (trained_only and op.frozen))

    def held(routed: bool, trained_only: bool = False) -> float:
        total = sum(float(n) * params(kind.ops, routed, trained_only) for n, kind in zip(layers, lg.kinds,
                                                                                       strict=True))
        if routed:
            return total
        if has_pre:
            total += params(lg.pre_ops, False, trained_only)
        if has_post:
            total += params(lg.post_ops, False, trained_only)
            tied_trained = not (trained_only and any(op.frozen for op in lg.post_ops))
            if plan.pp > 1 and model.tied_embeddings and tied_trained:
                total += model.vocab_size * model.hidden / plan.tp  # the last stage's copy of the embedding
        return total

    dense, expert = held(False), held(True)
    t_dense, t_expert = held(False, True), held(True, True)
    dp_group = plan.dp * plan.cp
    # experts are replicated over dp / ep x cp ranks, or folded over tp x cp x dp / (etp x ep)
    edp_group = plan.dp // plan.ep * plan.cp
    if plan.folded:
        edp_group = plan.tp * plan.cp * plan.dp // (plan.expert_tp * plan.ep)
    shard = plan.shard_group if plan.hybrid else dp_group  # hybrid sharding: ZeRO shards over part of it

    def sharded(stage: int, d: float, x: float) -> float:
        """Parameters per GPU of a state that ZeRO shards from `stage` on."""
        z = plan.zero_stage >= stage
        return d / (shard if z else 1) + x / (edp_group if z else 1)

    rec = recipe(plan.dtype)
    # the plan's framework, or the cluster default's switches (fp32 gradients, 16-bit weights: Megatron-LM's
    # and this executor's alike)
    fw = framework(plan.framework or DEFAULT_FRAMEWORK)
    lowp = 0.0
    if rec.low_precision and not (plan.zero_stage == 3 and dp_group > 1):
        per_layer = [sum(float(op_params_per_gpu(op, etp if op.routed else tp, ep)[0]) for op in kind.ops
                         if low_precision(op, plan.dtype))
                     for kind in lg.kinds]
        lowp = sum(float(n) * p for n, p in zip(layers, per_layer, strict=True)) \
            * extra_weight_bytes(plan.dtype, fw.fp8_param_gather)
    w, g, o = sharded(3, dense, expert), sharded(2, t_dense, t_expert), sharded(1, t_dense, t_expert)
    if fw.pipeline_unsharded_grads and plan.pp > 1:  # gradients accumulate unsharded until the step's end
        g = t_dense + t_expert
    dt = plan.dtype
    return ModelStateBytes(weights=w * WEIGHT_BYTES[dt] + lowp, grads=g * gradient_path(fw, dt).buffer_bytes,
                           optimizer=o * OPTIMIZER_BYTES[dt], weight_params=w, grad_params=g, optimizer_params=o,
                           dense_params=dense, expert_params=expert, lowp_bytes=lowp, trained_dense_params=t_dense,
                           trained_expert_params=t_expert)
