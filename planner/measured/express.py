"""Turn a `PrintedRun` into planner objects (ModelSpec, ClusterSpec, Plan), or name why it cannot be.

Which planner features exist is read from the planner itself at run time (`planner_features`): a
precision is supported when `planner.precision` lists it, LoRA when `Plan` has `finetune`, uneven
pipelines when it has `first_stage_layers`, ... So as features land, rows turn expressible without a
change here, and `check_plan` has the last word on every plan.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from planner import plan as plan_module
from planner.errors import PlanError, SpecError
from planner.measured import models as measured_models
from planner.measured.printed import PrintedRun
from planner.measured.reasons import reason
from planner.measured.systems import SYSTEMS, cluster_for
from planner.plan import Plan, check_plan
from planner.precision import PRECISIONS
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec


@dataclass(frozen=True)
class MeasuredRun:
    """A published run the planner can express: its plan and what was measured."""

    run: PrintedRun
    model: ModelSpec
    cluster: ClusterSpec
    plan: Plan
    substitutions: tuple[str, ...] = ()  # opt-in approximations (see systems.SYSTEMS substitute)

    @property
    def source(self) -> str:
        return self.run.source

    @property
    def framework(self) -> str:
        return self.run.framework

    @property
    def step_time_s(self) -> float | None:
        return self.run.step_time_s

    @property
    def memory_gib(self) -> float | None:
        return self.run.memory_gib


@dataclass(frozen=True)
class NotExpressed:
    """A published run the planner cannot express yet, with every reason (planner.measured.reasons)."""

    run: PrintedRun
    reasons: tuple[str, ...]


def planner_features() -> frozenset[str]:
    """The optional planner features present in this checkout (probed, not assumed)."""
    fields = {f.name for f in dataclasses.fields(Plan)}
    feats = set(PRECISIONS)
    if "finetune" in fields and "lora" in getattr(plan_module, "FINETUNE", ()):
        feats.add("lora")
    if {"first_stage_layers", "last_stage_layers"} <= fields:
        feats.add("uneven")
    recompute = getattr(plan_module, "RECOMPUTE", ())
    feats.update(r for r in ("op-selective", *JAX_REMAT.values()) if r in recompute)
    if "recompute_every" in fields:
        feats.add("every-k")
    if "framework" in fields:
        feats.add("framework")
    if "shard_group" in fields:
        feats.add("hsdp")
    if "etp" in fields:
        feats.add("etp")
    return frozenset(feats)


# The framework profile each source's runs used, by the names issue 14 proposes for `--framework`
# (applied only when `Plan` has a `framework` field and accepts the name).
FRAMEWORK_PROFILES = {"nemo": "nemo", "torchtitan": "torchtitan", "megatron-deepspeed": "deepspeed",
                      "maxtext": "maxtext", "paxml": "paxml"}
# JAX checkpoint policies (MaxText `remat_policy`, praxis `AutodiffCheckpointType`) -> the planner's
# recompute policy that keeps the same tensors (planner.cost.memory says which).
JAX_REMAT = {"minimal": "save-matmuls", "SAVE_DOT_ONLY": "save-matmuls",
             "save_dot_except_mlpwi": "save-matmuls-but-mlp-up", "save_dot_except_mlp": "save-attn-proj",
             "SAVE_QKV_OUT_PROJ": "save-attn-proj"}


def planner_recompute(run: PrintedRun) -> str:
    """The planner's name of the run's recompute policy (a JAX policy translated where one matches)."""
    if run.recompute == "every-k":
        return "full"
    if run.recompute.startswith("remat:"):
        name = run.recompute.removeprefix("remat:")
        return JAX_REMAT.get(name, run.recompute)
    return run.recompute


def _blockers(run: PrintedRun, feats: frozenset[str], substitute: bool) -> tuple[list[str], ClusterSpec | None,
                                                                                   list[str]]:
    reasons = list(run.source_blockers)
    subs: list[str] = []
    if not measured_models.known(run.model):
        reasons.append(reason("model", name=run.model))
    system = SYSTEMS[run.system]
    base = None
    if not system.sku_printed:
        reasons.append(reason("sku"))
    else:
        base, note = cluster_for(run.system, substitute)
        if base is None:
            reasons.append(reason("system", name=system.description))
        elif note:
            subs.append(note)
    if run.precision not in feats:
        reasons.append(reason("precision", name=run.precision))
    if run.recompute.startswith("remat:") and planner_recompute(run) not in feats:
        reasons.append(reason("remat", name=run.recompute.removeprefix("remat:")))
    elif run.recompute in ("op-selective", "every-k") and run.recompute not in feats:
        reasons.append(reason("op_selective" if run.recompute == "op-selective" else "every_k"))
    if run.finetune == "lora" and "lora" not in feats:
        reasons.append(reason("lora"))
    if run.fsdp and run.fsdp < run.dp * run.cp and "hsdp" not in feats:
        reasons.append(reason("hsdp"))
    if run.etp is not None and run.etp != run.tp and "etp" not in feats:
        reasons.append(reason("etp"))
    if (run.first_stage_layers is not None or run.last_stage_layers is not None) and "uneven" not in feats:
        reasons.append(reason("uneven_virtual" if run.uneven_virtual else "uneven"))
    return reasons, base, subs


def plan_fields(run: PrintedRun) -> dict[str, Any]:
    """The Plan keyword arguments of a run (optional fields only when they differ from the default,
    so a planner without them still builds the plan)."""
    kw: dict[str, Any] = dict(
        tp=run.tp, pp=run.pp, dp=run.dp, cp=run.cp, ep=run.ep, vpp=run.vpp, micro_batch=run.micro_batch,
        global_batch=run.global_batch, schedule=run.schedule if run.pp > 1 else "1f1b",
        recompute=planner_recompute(run),
        sequence_parallel=run.sequence_parallel and run.tp > 1, zero_stage=run.zero_stage,
        dtype=run.precision, flash_attention=run.flash_attention)
    if run.recompute == "every-k":
        kw["recompute_every"] = run.recompute_every
    if run.uneven_virtual and {"embedding_in_split", "loss_in_split"} <= {f.name for f in dataclasses.fields(Plan)}:
        # Megatron's --account-for-embedding/loss-in-pipeline-split: the same stages, also when interleaved
        kw.update(embedding_in_split=True, loss_in_split=True)
    else:
        if run.first_stage_layers is not None:
            kw["first_stage_layers"] = run.first_stage_layers
        if run.last_stage_layers is not None:
            kw["last_stage_layers"] = run.last_stage_layers
    if run.finetune == "lora":
        kw.update(finetune="lora", lora_rank=run.lora_rank, lora_targets=run.lora_targets)
    if run.fsdp and run.fsdp < run.dp * run.cp:
        kw["shard_group"] = run.fsdp
    if run.etp is not None and run.etp != run.tp:
        kw["etp"] = run.etp
    return kw


def express(run: PrintedRun, substitute: bool = False,
            features: frozenset[str] | None = None) -> MeasuredRun | NotExpressed:
    """The run as planner objects, or every reason it is not expressible (source reasons first)."""
    feats = planner_features() if features is None else features
    reasons, base, subs = _blockers(run, feats, substitute)
    if reasons or base is None:
        return NotExpressed(run, tuple(dict.fromkeys(reasons)))
    model = measured_models.model_spec(run.model, run.seq_len, run.num_layers)
    if run.packed_sample_tokens:
        model = model.with_packed_samples(run.packed_sample_tokens)
    try:
        cluster = base.with_gpus(run.num_gpus)
    except SpecError as exc:
        return NotExpressed(run, (reason("rejected", name=exc.field or "gpus"),))
    fields = plan_fields(run)
    profile = run.profile or FRAMEWORK_PROFILES.get(run.framework)
    if "framework" in feats and profile:
        try:
            Plan(**fields, framework=profile)
            fields["framework"] = profile
        except (PlanError, TypeError):
            subs.append(f"framework profile {profile} not accepted by the planner")
    try:
        plan = Plan(**fields)
        check_plan(model, cluster, plan)
    except PlanError as exc:
        if run.uneven_virtual and exc.field == "first_stage_layers":
            return NotExpressed(run, (reason("uneven_virtual"),))
        return NotExpressed(run, (reason("rejected", name=exc.field or "plan"),))
    return MeasuredRun(run, model, cluster, plan, tuple(subs))
