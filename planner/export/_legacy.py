"""Export a plan as launch settings for Megatron-LM, torchtitan and DeepSpeed (Megatron-DeepSpeed).

Why: a plan is only useful if it can be run in the framework the user already has. Each exporter
writes the framework's own flag / key names (checked against the frameworks' argument parsers and
config classes; see `tests/fixtures/framework_names.json` for the file and release each name comes
from) so that the output can be pasted into a launch script unchanged.

Versions targeted (the `TARGETS` table below is printed in every export's header):

- megatron: Megatron-LM `pretrain_gpt.py` arguments of releases core_v0.15.3 (the last release whose
  `megatron/training/arguments.py` spells out every flag) through core_v0.19.0 (flags partly generated
  from config dataclasses); every emitted flag was parsed by both releases' `parse_args()`.
- torchtitan: a TOML job config for v0.2.0 - v0.2.2 (`torchtitan/config/job_config.py`, which rejects
  unknown keys); v0.1.0 (`torchtitan/config_manager.py`) reads the same file except the keys listed in
  the file's comments. The v0.3.0 release replaced TOML by Python config registries
  (`--module M --config F`); for it the export gives the equivalent `--section.key` overrides.
- deepspeed: a `ds_config.json` for DeepSpeed v0.16.4 - v0.19.8 (`deepspeed/runtime/config.py`,
  `deepspeed/runtime/zero/config.py`) plus the Megatron-DeepSpeed arguments (main at f4157be,
  `megatron/arguments.py`) for the parallel layout.

When a framework cannot run the plan exactly (a feature it lacks, a rank order it cannot express),
the export says so in a `# WARNING:` comment line, writes the closest configuration the framework can
run, and re-estimates that configuration with the planner's cost model (so the user sees whether it
still fits in memory and how fast it is predicted to be). `strict=True` (CLI `--strict`) refuses
instead: an `ExportError`, exit status 2. A plan the framework cannot approximate at all (e.g. context
parallelism on a model whose heads DeepSpeed-Ulysses cannot split) is always an `ExportError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.errors import PlannerError
from planner.plan import Plan, PlanDocument, load_plan
from planner.specs.model import ModelSpec

FORMATS = ("megatron", "torchtitan", "deepspeed")

TARGETS = {
    "megatron": "Megatron-LM core_v0.15.3 .. core_v0.19.0 (megatron/training/arguments.py, pretrain_gpt.py)",
    "torchtitan": "torchtitan v0.2.0 .. v0.2.2 TOML job config (torchtitan/config/job_config.py); "
                  "v0.1.0 with the changes noted below",
    "torchtitan-overrides": "torchtitan v0.3.0 (Python config registry: --module/--config plus "
                            "--section.key overrides; torchtitan/config/configs.py, trainer.py)",
    "deepspeed": "DeepSpeed v0.16.4 .. v0.19.8 ds_config.json (deepspeed/runtime/config.py, zero/config.py)",
    "megatron-deepspeed": "Megatron-DeepSpeed main @ f4157be (megatron/arguments.py) with DeepSpeed "
                          "v0.16.4 .. v0.19.8",
}

# Default file names of each format's artefacts (the first is the primary one).
FILE_NAMES = {
    "megatron": ("megatron.args",),
    "torchtitan": ("torchtitan.toml", "torchtitan.overrides.txt"),
    "deepspeed": ("ds_config.json", "ds_config.megatron-deepspeed.args"),
}

# torchtitan's llama3 flavors (torchtitan/models/llama3/__init__.py, v0.2.x; config_registry.py in
# v0.3.0): our preset name -> (flavor, layers, hidden), checked against the plan's model shape.
_TORCHTITAN_LLAMA3 = {
    "llama3-8b": ("8B", "llama3_8b", 32, 4096),
    "llama3-70b": ("70B", "llama3_70b", 80, 8192),
    "llama3-405b": ("405B", "llama3_405b", 126, 16384),
}

# Rank orders (innermost first) each framework builds.
_MEGATRON_ORDERS = {("tp", "cp", "dp", "pp"): None, ("tp", "cp", "pp", "dp"): "--use-tp-pp-dp-mapping"}
_TORCHTITAN_ORDER = ("tp", "cp", "dp", "pp")  # device mesh (pp, dp_replicate, dp_shard, cp, tp)


_DS_REPLAN = ("`planner plan ... --cp 1 --vpp 1` and either --pp 1 or --zero 0 1 (DeepSpeed's pipeline engine "
              "takes ZeRO-0/1 only)")


class ExportError(PlannerError, ValueError):
    """The plan cannot be expressed in the requested framework (CLI exit status 2)."""


@dataclass(frozen=True)
class Deviation:
    """One way the exported configuration differs from the plan, and the plan fields it changes."""

    feature: str
    message: str
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Build:
    """What an exporter collects: settings, comment lines and deviations from the plan."""

    doc: PlanDocument
    framework: str
    deviations: list[Deviation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def deviate(self, feature: str, message: str, **changes: Any) -> None:
        self.deviations.append(Deviation(feature, message, changes))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def finish(self, strict: bool) -> list[str]:
        """Comment lines for the deviations and the re-estimate; raise under `strict`."""
        if strict and self.deviations:
            what = "; ".join(f"{d.feature}: {d.message}" for d in self.deviations)
            raise ExportError(f"{self.framework} cannot run this plan exactly ({what}); "
                              f"drop --strict to export the closest configuration")
        lines = [f"WARNING: {d.feature}: {d.message}" for d in self.deviations]
        realised = realised_plan(self.doc.plan, self.deviations)
        if realised != self.doc.plan:
            lines.append(f"WARNING: this configuration runs {_describe(realised)} instead of "
                         f"{_describe(self.doc.plan)}; {_estimate_line(self.doc, realised)}")
        return lines


def _order(plan: Plan, placement: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The rank order of the dimensions that exist (size > 1): only those place any group."""
    return tuple(d for d in (placement or plan.placement) if getattr(plan, d) > 1)


def _describe(plan: Plan) -> str:
    return f"{plan.describe()} {plan.schedule} [{','.join(plan.placement)}]"


def realised_plan(plan: Plan, deviations: list[Deviation]) -> Plan:
    """The plan a framework actually runs after its deviations (for re-estimating it)."""
    changes: dict[str, Any] = {}
    for d in deviations:
        changes.update(d.changes)
    return dataclasses.replace(plan, **changes) if changes else plan


def _estimate_line(doc: PlanDocument, plan: Plan) -> str:
    """One sentence: the cost model's verdict on the configuration the framework will run."""
    from planner.cost import estimate

    try:
        pred = estimate(doc.model, doc.cluster, plan, check=False)
    except (PlannerError, ValueError, ZeroDivisionError) as exc:  # pragma: no cover - defensive
        return f"the planner cannot estimate it ({exc})"
    fits = "fits" if pred["fits"] else "DOES NOT FIT: expect out-of-memory"
    return (f"planner estimate: {pred['step_time_s']:.3g} s/step, {pred['mfu']:.1%} MFU, "
            f"{pred['memory_gib_per_gpu']:.1f} GiB/GPU of {pred['memory_limit_gib']:.1f} ({fits})")


def _header(doc: PlanDocument, target: str, use: str) -> list[str]:
    p, m, c = doc.plan, doc.model, doc.cluster
    lines = [f"plan {doc.hash}: {p.describe()} (schedule {p.schedule}, recompute {p.recompute}, "
             f"zero {p.zero_stage}, {p.dtype}, ranks innermost first: {','.join(p.placement)})",
             f"model {m.name} on {c.num_gpus} x {c.gpu.name} ({c.name}), global batch {p.global_batch} "
             f"x seq {m.seq_len}, {p.grad_accum} micro-batches of {p.micro_batch} per replica",
             f"targets: {TARGETS[target]}", use]
    pred = doc.prediction
    if pred:
        lines.append(f"predicted: {pred['step_time_s']:.4g} s/step, {pred['mfu']:.1%} MFU, "
                     f"{pred['memory_gib_per_gpu']:.1f} GiB/GPU")
    return lines


def _comment(lines: list[str], mark: str = "#") -> str:
    return "".join(f"{mark} {line}\n" if line else f"{mark}\n" for line in lines)


def _args_text(items: list[tuple[str, Any]]) -> str:
    """One `--flag [value]` per line; a `None` value is a switch, a `#` entry a section comment."""
    out = []
    for flag, value in items:
        if flag == "#":
            out.append(f"# {value}")
        elif value is None:
            out.append(flag)
        else:
            out.append(f"{flag} {value}")
    return "\n".join(out) + "\n"


# ---- Megatron-LM --------------------------------------------------------------------------------


def _recompute_batch_and_shape_args(p: Plan, m: ModelSpec) -> list[tuple[str, Any]]:
    """The flags Megatron-LM and Megatron-DeepSpeed spell alike (their `arguments.py` share these):
    recompute granularity / method, batch sizes and the model's basic shape."""
    items: list[tuple[str, Any]] = []
    if p.recompute != "none":
        items.append(("#", f"activation recompute: {p.recompute}"))
        items.append(("--recompute-granularity", p.recompute))
        if p.recompute == "full":
            items += [("--recompute-method", "uniform"), ("--recompute-num-layers", 1)]
    items.append(("#", "batch"))
    items += [("--micro-batch-size", p.micro_batch), ("--global-batch-size", p.global_batch),
              ("--seq-length", m.seq_len)]
    items.append(("#", f"model shape: {m.name}"))
    items += [("--num-layers", m.num_layers), ("--hidden-size", m.hidden), ("--ffn-hidden-size", m.ffn_hidden),
              ("--num-attention-heads", m.num_heads)]
    return items


def _megatron_items(doc: PlanDocument, b: _Build) -> list[tuple[str, Any]]:
    """Megatron-LM flags for the plan (names from megatron/training/arguments.py)."""
    p, m = doc.plan, doc.model
    items: list[tuple[str, Any]] = [("#", "parallelism (data parallel = world size / (tp x pp x cp))")]
    items += [("--tensor-model-parallel-size", p.tp), ("--pipeline-model-parallel-size", p.pp),
              ("--context-parallel-size", p.cp)]
    if p.vpp > 1:
        items.append(("--num-layers-per-virtual-pipeline-stage", m.num_layers // (p.pp * p.vpp)))
    if m.is_moe:
        items.append(("--expert-model-parallel-size", p.ep))
    if p.sequence_parallel:
        items.append(("--sequence-parallel", None))
    orders = {_order(p, order): flag for order, flag in reversed(_MEGATRON_ORDERS.items())}
    if _order(p) in orders:
        flag = orders[_order(p)]
        if flag:
            items.append((flag, None))
    else:
        b.deviate("placement", f"Megatron-LM orders ranks tp,cp,dp,pp (or tp,cp,pp,dp with "
                  f"--use-tp-pp-dp-mapping), not {','.join(p.placement)}: groups span other links",
                  placement=("tp", "cp", "dp", "pp"))
    if p.pp > 1 and p.schedule == "gpipe":
        b.deviate("schedule", "Megatron-LM has no GPipe schedule; it runs 1F1B (same bubble, fewer "
                  "micro-batches in flight)", schedule="1f1b")

    items.append(("#", f"data parallel: ZeRO-{p.zero_stage}"))
    if p.zero_stage == 0:
        items.append(("--overlap-grad-reduce", None))
    elif p.zero_stage == 1:
        items += [("--use-distributed-optimizer", None), ("--overlap-grad-reduce", None),
                  ("--overlap-param-gather", None)]
    else:
        strategy = "optim_grads" if p.zero_stage == 2 else "optim_grads_params"
        items += [("--use-megatron-fsdp", None), ("--data-parallel-sharding-strategy", strategy),
                  ("--use-distributed-optimizer", None), ("--ckpt-format", "fsdp_dtensor"),
                  ("--overlap-grad-reduce", None), ("--overlap-param-gather", None)]
        b.note(f"ZeRO-{p.zero_stage} is Megatron-FSDP (--data-parallel-sharding-strategy {strategy}); "
               "it needs CUDA_DEVICE_MAX_CONNECTIONS unset or > 1 and the fsdp_dtensor checkpoint format")

    items += _recompute_batch_and_shape_args(p, m)
    if m.num_kv_heads != m.num_heads:
        items += [("--group-query-attention", None), ("--num-query-groups", m.num_kv_heads)]
    if m.position == "rope":
        items += [("--position-embedding-type", "rope"), ("--max-position-embeddings", m.seq_len)]
    else:
        items += [("--position-embedding-type", "learned_absolute"),
                  ("--max-position-embeddings", m.max_position)]
    items.append(("--normalization", "RMSNorm" if m.norm == "rmsnorm" else "LayerNorm"))
    if m.activation == "swiglu":
        items.append(("--swiglu", None))
    if not m.tied_embeddings:
        items.append(("--untie-embeddings-and-output-weights", None))
    if not m.bias:
        items.append(("--disable-bias-linear", None))
        if m.qkv_bias:
            items.append(("--add-qkv-bias", None))
    items += [("--attention-dropout", m.dropout), ("--hidden-dropout", m.dropout)]
    if m.is_moe:
        items += [("--num-experts", m.num_experts), ("--moe-router-topk", m.top_k),
                  ("--moe-token-dispatcher-type", "alltoall")]
        if m.capacity_factor != 1.0:
            items.append(("--moe-expert-capacity-factor", m.capacity_factor))
    if not m.causal or m.head != "lm":
        b.note(f"{m.name} is an encoder model: launch pretrain_bert.py (the flags above still apply)")

    items.append(("#", "precision and attention kernel"))
    if p.dtype == "bf16":
        items.append(("--bf16", None))
    elif p.dtype == "fp16":
        items.append(("--fp16", None))
    items.append(("--attention-backend", "flash" if p.flash_attention else "unfused"))
    b.note(f"vocabulary: {m.vocab_size} tokens from your tokenizer flags; for a synthetic benchmark add "
           f"--mock-data --tokenizer-type NullTokenizer --vocab-size {m.vocab_size}")
    return items


def megatron_args(doc: PlanDocument, strict: bool = False) -> str:
    """Megatron-LM launch arguments, one per line, with `#` comment lines (why: paste into a script)."""
    b = _Build(doc, "Megatron-LM")
    items = _megatron_items(doc, b)
    c = doc.cluster
    use = (f"use: torchrun --nnodes {c.num_nodes} --nproc-per-node {c.gpus_per_node} pretrain_gpt.py "
           f"$(grep -v '^#' megatron.args) <data, tokenizer, optimizer and checkpoint flags>")
    warnings = b.finish(strict)
    return _comment(_header(doc, "megatron", use) + warnings + b.notes) + _args_text(items)


# ---- torchtitan ---------------------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string has JSON's escapes
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {type(v).__name__}")


def _torchtitan_settings(doc: PlanDocument, b: _Build, release: str) -> dict[str, dict[str, Any]]:
    """torchtitan config sections for the plan; `release` is "0.2" (TOML) or "0.3" (overrides)."""
    p, m = doc.plan, doc.model
    par: dict[str, Any] = {}
    tr: dict[str, Any] = {}
    # Data parallel: DDP = replicate (only alone: torchtitan refuses DDP with other parallelisms),
    # else FSDP2 = shard (torchtitan folds cp into the FSDP mesh). Without pp, FSDP2 reduce-scatters
    # every micro-batch (ZeRO-2/3); with pp, torch.distributed.pipelining defers the gradient sync to
    # the last micro-batch and keeps parameters unsharded meanwhile (ZeRO-1).
    if p.zero_stage == 0 and p.tp == 1 and p.pp == 1 and p.cp == 1:
        par["data_parallel_replicate_degree"] = p.dp
        par["data_parallel_shard_degree"] = 1
    else:
        par["data_parallel_replicate_degree"] = 1
        par["data_parallel_shard_degree"] = p.dp
        par["fsdp_reshard_after_forward"] = "always" if p.zero_stage == 3 and p.pp == 1 else "never"
        runs = 1 if p.pp > 1 else max(p.zero_stage, 2)
        if runs != p.zero_stage:
            why = ("with pp > 1 torch.distributed.pipelining holds FSDP2 gradients and parameters unsharded "
                   "until the last micro-batch" if p.pp > 1 else
                   "torchtitan's DDP does not combine with tp/cp and it has no optimizer-only sharding; FSDP2 "
                   "reduce-scatters gradients every micro-batch")
            b.deviate("zero", f"{why}, so ZeRO-{p.zero_stage} runs as ZeRO-{runs}", zero_stage=runs)
    par["tensor_parallel_degree"] = p.tp
    if release == "0.3" and p.tp > 1:
        par["enable_sequence_parallel"] = p.sequence_parallel
    elif p.tp > 1 and not p.sequence_parallel:
        b.deviate("sequence_parallel", "torchtitan v0.2 always uses sequence parallelism with tp > 1",
                  sequence_parallel=True)
    par["pipeline_parallel_degree"] = p.pp
    if p.pp > 1:
        par["pipeline_parallel_schedule"] = {"1f1b": "1F1B", "gpipe": "GPipe",
                                             "interleaved-1f1b": "Interleaved1F1B"}[p.schedule]
        par["pipeline_parallel_microbatch_size"] = p.micro_batch
        # Exactly pp x vpp stages of L/(pp vpp) layers: no layer taken off the first / last stage.
        par["pipeline_parallel_layers_per_stage"] = m.num_layers // (p.pp * p.vpp)
        par["pipeline_parallel_first_stage_less_layers"] = 0
        par["pipeline_parallel_last_stage_less_layers"] = 0
    par["context_parallel_degree"] = p.cp
    if m.is_moe:
        par["expert_parallel_degree"] = p.ep
    if _order(p) != _order(p, _TORCHTITAN_ORDER):
        b.deviate("placement", f"torchtitan's device mesh orders ranks tp,cp,dp,pp, not "
                  f"{','.join(p.placement)}: groups span other links", placement=_TORCHTITAN_ORDER)

    # Batch: with pp the schedule splits the local batch into micro-batches; without, torchtitan
    # accumulates gradients over global / (local x dp) steps.
    tr["local_batch_size"] = p.micro_batch * (p.grad_accum if p.pp > 1 else 1)
    tr["global_batch_size"] = p.global_batch
    tr["seq_len"] = m.seq_len
    if release == "0.3" and (p.pp > 1 or p.ep > 1):
        tr["disable_cuda_graphs"] = True  # v0.3.0 refuses CUDA graphs with pp (and most EP backends)
    if p.dtype == "fp16":
        b.deviate("dtype", "torchtitan trains in bfloat16 or float32, not float16; bfloat16 is used",
                  dtype="bf16")
    tr["mixed_precision_param"] = "float32" if p.dtype == "fp32" else "bfloat16"

    ac: dict[str, Any] = {"mode": p.recompute}
    if p.recompute == "selective":
        ac["selective_ac_option"] = "op"
        b.note("selective recompute is torchtitan's per-op SAC, which saves attention and every other "
               "matmul output (Megatron-style selective recomputes only the attention core)")
    sections = {"parallelism": par, "training": tr, "activation_checkpoint": ac}
    if not p.flash_attention:
        b.note("the plan assumes unfused attention; torchtitan uses fused SDPA / flex attention (less memory)")
    return sections


def _torchtitan_model(doc: PlanDocument, b: _Build) -> tuple[str, str, str | None]:
    """(model name, flavor, v0.3.0 config function) for the plan's model."""
    m = doc.model
    known = _TORCHTITAN_LLAMA3.get(m.name)
    if known and (m.num_layers, m.hidden) == known[2:]:
        return "llama3", known[0], known[1]
    b.note(f"torchtitan ships no model for {m.name}: register one (a model name and flavor) and set "
           f"[model] below; until then torchtitan stops with an unknown-model error")
    return m.name, m.name, None


def torchtitan_toml(doc: PlanDocument, strict: bool = False) -> str:
    """A torchtitan v0.2.x TOML job config (why: `--job.config_file` of the TOML releases)."""
    b = _Build(doc, "torchtitan")
    name, flavor, _ = _torchtitan_model(doc, b)
    sections = {"job": {"description": f"{doc.model.name} {doc.plan.describe()} (planner {doc.hash})"},
                "model": {"name": name, "flavor": flavor}}
    sections.update(_torchtitan_settings(doc, b, "0.2"))
    c = doc.cluster
    use = (f"use: NGPU={c.gpus_per_node} CONFIG_FILE=torchtitan.toml ./run_train.sh on each of "
           f"{c.num_nodes} node(s) (torchrun ... -m torchtitan.train --job.config_file torchtitan.toml)")
    lines = _header(doc, "torchtitan", use) + b.finish(strict) + b.notes
    if doc.plan.pp > 1 or doc.model.is_moe:
        lines.append("v0.1.0 (torchtitan/config_manager.py) ignores pipeline_parallel_first/last_stage_less_layers "
                     "and expert_parallel_degree (it has no expert parallelism); there, replace the "
                     "pipeline_parallel_layers_per_stage line by "
                     f"pipeline_parallel_split_points = {_toml_value(_split_points(doc))}")
    else:
        lines.append("v0.1.0 (torchtitan/config_manager.py) reads this file as it is")
    text = _comment(lines)
    for section, values in sections.items():
        text += f"\n[{section}]\n"
        for k, v in values.items():
            text += f"{k} = {_toml_value(v)}\n"
    text += "\n" + _comment([f"for {TARGETS['torchtitan-overrides']}:",
                             torchtitan_overrides(doc, strict=False, header=False).strip()])
    return text


def _split_points(doc: PlanDocument) -> list[str]:
    """Module names starting each virtual stage after the first (torchtitan v0.1.0's split points)."""
    p, m = doc.plan, doc.model
    per = m.num_layers // (p.pp * p.vpp)
    return [f"layers.{k * per}" for k in range(1, p.pp * p.vpp)]


def torchtitan_overrides(doc: PlanDocument, strict: bool = False, header: bool = True) -> str:
    """torchtitan v0.3.0 command-line overrides (why: the release that replaced TOML by Python configs)."""
    b = _Build(doc, "torchtitan")
    _, _, function = _torchtitan_model(doc, b)
    sections = _torchtitan_settings(doc, b, "0.3")
    ac = sections.pop("activation_checkpoint")
    words = ["--module", "llama3", "--config", function] if function else \
        ["--module", "<your_module>", "--config", "<your_config_function>"]
    for section, values in sections.items():
        for k, v in values.items():
            if isinstance(v, bool):
                words.append(f"--{section}.{k}" if v else f"--{section}.no_{k}")
            else:
                words += [f"--{section}.{k}", str(v)]
    words.append(f"activation-checkpoint:{ac['mode']}")  # a tyro subcommand: it must come last
    text = " ".join(words) + "\n"
    if not header:
        return text
    c = doc.cluster
    use = (f"use: NGPU={c.gpus_per_node} ./run_train.sh $(grep -v '^#' torchtitan.overrides.txt) on each of "
           f"{c.num_nodes} node(s)")
    return _comment(_header(doc, "torchtitan-overrides", use) + b.finish(strict) + b.notes) + text


# ---- DeepSpeed / Megatron-DeepSpeed ---------------------------------------------------------------


def _deepspeed_build(doc: PlanDocument, b: _Build) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """ds_config dict and Megatron-DeepSpeed flags, sharing one list of deviations."""
    p, m = doc.plan, doc.model
    zero = p.zero_stage
    if p.pp > 1 and zero >= 2:
        b.deviate("zero", f"DeepSpeed's pipeline engine refuses ZeRO-2/3 (deepspeed/runtime/pipe/engine.py); "
                  f"ZeRO-1 is used with pp {p.pp}", zero_stage=1)
        zero = 1
    config: dict[str, Any] = {
        "train_batch_size": p.global_batch,
        "train_micro_batch_size_per_gpu": p.micro_batch,
        "gradient_accumulation_steps": p.grad_accum,
    }
    if p.dtype == "bf16":
        config["bf16"] = {"enabled": True}
    elif p.dtype == "fp16":
        config["fp16"] = {"enabled": True}
    # fp32 gradient reduction, as the cost model assumes (Megatron-LM main_grad, FSDP2 reduce_dtype).
    config["communication_data_type"] = "fp32"
    config["zero_optimization"] = {"stage": zero, "overlap_comm": True, "contiguous_gradients": True,
                                   "reduce_scatter": True}
    config["gradient_clipping"] = 1.0
    config["steps_per_print"] = 10
    config["wall_clock_breakdown"] = False

    items: list[tuple[str, Any]] = [("#", "DeepSpeed")]
    items += [("--deepspeed", None), ("--deepspeed_config", "ds_config.json"), ("--zero-stage", zero)]
    items.append(("#", "parallelism (data parallel = world size / (tp x pp x sequence parallel))"))
    items.append(("--tensor-model-parallel-size", p.tp))
    if p.pp > 1:
        items.append(("--pipeline-model-parallel-size", p.pp))
    else:
        items += [("--pipeline-model-parallel-size", 1), ("--no-pipeline-parallel", None)]
    if p.cp > 1:
        # DeepSpeed-Ulysses is DeepSpeed's only sequence sharding; Megatron-DeepSpeed asserts it runs
        # without tensor or pipeline parallelism (megatron/core/parallel_state.py).
        if p.tp > 1 or p.pp > 1:
            raise ExportError(f"context parallelism (cp {p.cp}) has no DeepSpeed equivalent with tp {p.tp} / "
                              f"pp {p.pp}: Megatron-DeepSpeed's only sequence sharding, DeepSpeed-Ulysses "
                              f"(--ds-sequence-parallel-size), runs without tensor and pipeline parallelism; "
                              f"re-plan for DeepSpeed with {_DS_REPLAN}")
        if m.num_heads % p.cp or m.num_kv_heads % p.cp:
            raise ExportError(f"context parallelism (cp {p.cp}) has no DeepSpeed equivalent for {m.name}: "
                              f"DeepSpeed-Ulysses splits its {m.num_heads} query / {m.num_kv_heads} key-value "
                              f"heads over {p.cp} ranks, which does not divide; re-plan with {_DS_REPLAN}")
        items.append(("--ds-sequence-parallel-size", p.cp))
        b.note(f"context parallelism cp {p.cp} runs as DeepSpeed-Ulysses sequence parallelism (all-to-all over "
               f"heads instead of the plan's ring exchange of keys and values)")
    elif p.sequence_parallel:
        items.append(("--sequence-parallel", None))
    if p.vpp > 1:
        b.deviate("vpp", "DeepSpeed's pipeline engine has no interleaved schedule; it runs 1F1B with one "
                  "chunk per stage", vpp=1, schedule="1f1b")
    elif p.pp > 1 and p.schedule == "gpipe":
        b.deviate("schedule", "DeepSpeed's pipeline engine runs 1F1B, not GPipe", schedule="1f1b")
    if m.is_moe:
        items += [("--num-experts", m.num_experts), ("--moe-expert-parallel-size", p.ep), ("--topk", m.top_k),
                  ("--moe-train-capacity-factor", m.capacity_factor)]
    if _order(p) != _order(p, ("tp", "cp", "dp", "pp")):
        b.deviate("placement", f"DeepSpeed's topology orders ranks tp (innermost), sequence parallel, dp, pp, not "
                  f"{','.join(p.placement)}", placement=("tp", "cp", "dp", "pp"))

    items += _recompute_batch_and_shape_args(p, m)
    if m.num_kv_heads != m.num_heads:
        items.append(("--num-key-value-heads", m.num_kv_heads))
    if m.position == "rope":
        items += [("--use-rotary-position-embeddings", None), ("--no-position-embedding", None),
                  ("--max-position-embeddings", m.seq_len)]
    else:
        items.append(("--max-position-embeddings", m.max_position))
    items.append(("--normalization", m.norm))
    if m.activation == "swiglu":
        items.append(("--swiglu", None))
    if not m.tied_embeddings:
        items.append(("--untie-embeddings-and-output-weights", None))
    if not m.bias:
        items.append(("--disable-bias-linear", None))
    items += [("--attention-dropout", m.dropout), ("--hidden-dropout", m.dropout)]
    items.append(("#", "precision and attention kernel"))
    if p.dtype == "bf16":
        items.append(("--bf16", None))
    elif p.dtype == "fp16":
        items.append(("--fp16", None))
    if p.flash_attention:
        items.append(("--use-flash-attn-v2", None))
    return config, items


def deepspeed_config(doc: PlanDocument, strict: bool = False) -> dict[str, Any]:
    """The ds_config dictionary (why: DeepSpeed reads batch, precision and ZeRO settings from it)."""
    b = _Build(doc, "DeepSpeed")
    config, _ = _deepspeed_build(doc, b)
    b.finish(strict)
    return config


def megatron_deepspeed_args(doc: PlanDocument, strict: bool = False, config_path: str = "ds_config.json") -> str:
    """Megatron-DeepSpeed arguments for the parallel layout (DeepSpeed's JSON cannot express it)."""
    b = _Build(doc, "DeepSpeed")
    _, items = _deepspeed_build(doc, b)
    items = [(f, config_path if f == "--deepspeed_config" else v) for f, v in items]
    c = doc.cluster
    use = (f"use: deepspeed --num_nodes {c.num_nodes} --num_gpus {c.gpus_per_node} pretrain_gpt.py "
           f"$(grep -v '^#' {Path(config_path).stem}.megatron-deepspeed.args) <data, tokenizer, optimizer flags>")
    return _comment(_header(doc, "megatron-deepspeed", use) + b.finish(strict) + b.notes) + _args_text(items)


def export_warnings(doc: PlanDocument, fmt: str) -> list[str]:
    """The WARNING lines of an export (why: a JSON file cannot carry them, so the CLI prints them)."""
    b = _Build(doc, fmt)
    if fmt == "megatron":
        _megatron_items(doc, b)
    elif fmt == "torchtitan":
        _torchtitan_model(doc, b)
        _torchtitan_settings(doc, b, "0.2")
    else:
        _deepspeed_build(doc, b)
    return b.finish(strict=False)


# ---- entry points -------------------------------------------------------------------------------


def export_files(doc: PlanDocument, fmt: str, strict: bool = False,
                 primary_name: str | None = None) -> dict[str, str]:
    """Every artefact of `fmt` as {file name: text}, the primary one first.

    `primary_name` renames the primary file; companions are named after it (`<stem>.<suffix>`).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    names = FILE_NAMES[fmt]
    primary = primary_name or names[0]
    stem = Path(primary).stem
    if fmt == "megatron":
        return {primary: megatron_args(doc, strict)}
    if fmt == "torchtitan":
        return {primary: torchtitan_toml(doc, strict),
                f"{stem}.overrides.txt": torchtitan_overrides(doc, strict)}
    config = json.dumps(deepspeed_config(doc, strict), indent=2) + "\n"
    return {primary: config,
            f"{stem}.megatron-deepspeed.args": megatron_deepspeed_args(doc, strict, config_path=Path(primary).name)}


def export_plan(doc: PlanDocument, fmt: str, strict: bool = False) -> str:
    """The primary export text of `fmt` (the dashboard's download): args, TOML or ds_config JSON."""
    return next(iter(export_files(doc, fmt, strict).values()))


def cmd_export(args: argparse.Namespace) -> int:
    """`planner export`: print the primary artefact, or write all artefacts next to --out."""
    from planner.io import atomic_write_text

    doc = load_plan(args.plan)
    files = export_files(doc, args.format, args.strict, Path(args.out).name if args.out else None)
    for line in export_warnings(doc, args.format):
        print(f"planner: {line.replace('WARNING: ', 'warning: ', 1)}", file=sys.stderr)
    if not args.out:
        sys.stdout.write(next(iter(files.values())))
        if len(files) > 1:
            print(f"planner: note: use --out to also write {', '.join(list(files)[1:])}", file=sys.stderr)
        return 0
    out = Path(args.out)
    for name, text in files.items():
        path = out if name == out.name else out.with_name(name)
        atomic_write_text(path, text)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    """Add `planner export` to the CLI's subcommands."""
    p = sub.add_parser("export", help="write a plan as Megatron-LM / torchtitan / DeepSpeed launch settings")
    p.add_argument("plan", help="plan JSON (from planner plan --out or planner estimate --out)")
    p.add_argument("--format", required=True, choices=FORMATS, help="target framework")
    p.add_argument("--out", help="file to write (default: print the primary artefact); companion files "
                   "(torchtitan overrides, Megatron-DeepSpeed arguments) are written next to it")
    p.add_argument("--strict", action="store_true",
                   help="exit 2 instead of exporting the closest configuration when the framework "
                   "cannot run the plan exactly")
    p.set_defaults(func=cmd_export)
