"""Building one plan from chosen sizes, and varying it one knob at a time (what-if).

`planner estimate` builds its plan from flags with `build_plan`; the dashboard's what-if view varies
a searched plan with `vary` and offers, for each knob, only the values `legal_values` returns (those
that keep the plan legal for the model and cluster, the others held). dp always follows from the GPU
count: tp x cp x dp x pp = GPUs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from planner.errors import PlanError, PlannerError
from planner.plan import DEFAULT_PLACEMENT, RECOMPUTE, SCHEDULES, Plan, check_plan
from planner.search import divisors
from planner.specs.catalog import load_cluster
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

INT_KNOBS = ("tp", "pp", "cp", "ep", "vpp", "micro_batch")
KNOBS = (*INT_KNOBS, "schedule", "recompute", "sequence_parallel", "zero_stage")
MAX_GPU_CHOICES = 40  # GPU counts offered around the current one


def derived_dp(n_gpus: int, tp: int, pp: int, cp: int) -> int:
    """dp = GPUs / (tp x pp x cp); PlanError when that is not a whole number."""
    if n_gpus % (tp * pp * cp):
        raise PlanError(f"tp*pp*cp = {tp}*{pp}*{cp} = {tp * pp * cp} does not divide the {n_gpus} GPUs", field="dp")
    return n_gpus // (tp * pp * cp)


def build_plan(n_gpus: int, global_batch: int, *, tp: int = 1, pp: int = 1, cp: int = 1, dp: int | None = None,
               ep: int = 1, vpp: int = 1, micro_batch: int = 1, schedule: str | None = None,
               recompute: str = "none", sequence_parallel: bool = False, zero_stage: int = 0, dtype: str = "bf16",
               placement: tuple[str, ...] = DEFAULT_PLACEMENT, flash_attention: bool = True) -> Plan:
    """A plan from chosen sizes: dp from the GPU count when not given, the schedule from vpp when not
    given (interleaved 1F1B for vpp > 1, else 1F1B). Legality against a model: `check_plan`."""
    return Plan(tp=tp, pp=pp, dp=derived_dp(n_gpus, tp, pp, cp) if dp is None else dp, cp=cp, ep=ep, vpp=vpp,
                micro_batch=micro_batch, global_batch=global_batch,
                schedule=schedule or ("interleaved-1f1b" if vpp > 1 else "1f1b"), recompute=recompute,
                sequence_parallel=sequence_parallel, zero_stage=zero_stage, dtype=dtype, placement=placement,
                flash_attention=flash_attention)


def vary(base: Plan, n_gpus: int, **changes: Any) -> Plan:
    """`base` with some knobs changed (names in KNOBS) on `n_gpus` GPUs; dp re-derived.

    The schedule follows vpp unless it is changed too: vpp > 1 needs interleaved 1F1B, and going back
    to vpp 1 from interleaved gives 1F1B (GPipe stays GPipe)."""
    unknown = set(changes) - set(KNOBS)
    if unknown:
        raise PlanError(f"cannot vary {', '.join(sorted(unknown))} (one of {', '.join(KNOBS)})", field="whatif")
    values = {k: getattr(base, k) for k in KNOBS} | changes
    if "schedule" not in changes and "vpp" in changes:
        if values["vpp"] > 1:
            values["schedule"] = "interleaved-1f1b"
        elif base.schedule == "interleaved-1f1b":
            values["schedule"] = "1f1b"
    dp = derived_dp(n_gpus, values["tp"], values["pp"], values["cp"])
    return dataclasses.replace(base, dp=dp, **values)


def changes(base: Plan, plan: Plan) -> dict[str, Any]:
    """The knobs (and the GPU count, as "gpus") in which `plan` differs from `base`: what `vary`
    needs to turn `base` into `plan` (dp follows from the GPU count)."""
    out: dict[str, Any] = {k: getattr(plan, k) for k in KNOBS if getattr(plan, k) != getattr(base, k)}
    if plan.world_size != base.world_size:
        out["gpus"] = plan.world_size
    return out


def is_legal(model: ModelSpec, cluster: ClusterSpec, plan: Plan) -> bool:
    try:
        check_plan(model, cluster, plan)
    except PlannerError:
        return False
    return True


def _candidates(model: ModelSpec, plan: Plan, n_gpus: int, knob: str) -> list[Any]:
    if knob in ("tp", "pp", "cp"):
        return divisors(n_gpus)
    if knob == "ep":
        return divisors(model.num_experts) if model.is_moe else [1]
    if knob == "vpp":
        return divisors(max(1, model.num_layers // plan.pp))
    if knob == "micro_batch":
        return divisors(plan.global_batch)
    if knob == "schedule":
        return list(SCHEDULES)
    if knob == "recompute":
        return list(RECOMPUTE)
    if knob == "sequence_parallel":
        return [False, True]
    if knob == "zero_stage":
        return [0, 1, 2, 3]
    raise PlanError(f"unknown knob {knob!r} (one of {', '.join(KNOBS)})", field="whatif")


def legal_values(model: ModelSpec, cluster: ClusterSpec, plan: Plan, knob: str) -> list[Any]:
    """The values of one knob that give a legal plan with every other knob as in `plan` (dp follows
    the GPU count). The plan's own value is included when the plan is legal."""
    out = []
    for v in _candidates(model, plan, cluster.num_gpus, knob):
        try:
            candidate = vary(plan, cluster.num_gpus, **{knob: v})
        except PlannerError:
            continue
        if is_legal(model, cluster, candidate):
            out.append(v)
    return out


def legal_gpu_counts(model: ModelSpec, cluster: ClusterSpec, plan: Plan) -> list[int]:
    """GPU counts on which `plan`'s tp, pp, cp and the rest stay legal, dp changing (whole nodes only,
    as the cluster allows); at most MAX_GPU_CHOICES counts nearest the current one, ascending."""
    fixed = plan.tp * plan.pp * plan.cp
    counts = []
    for dp in divisors(plan.global_batch // plan.micro_batch):
        n = fixed * dp
        try:
            sized = load_cluster(cluster, gpus=n)
            if is_legal(model, sized, vary(plan, n)):
                counts.append(n)
        except PlannerError:
            continue
    here = cluster.num_gpus
    nearest = sorted(counts, key=lambda n: (abs(n - here), n))[:MAX_GPU_CHOICES]
    return sorted(nearest)


def nearest(values: list[Any], wanted: Any) -> Any:
    """The value in `values` closest to `wanted` (numbers), or `wanted` itself when present."""
    if wanted in values or not values:
        return wanted
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
        return min(values, key=lambda v: (abs(v - wanted), v))
    return values[0]
