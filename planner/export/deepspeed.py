"""DeepSpeed export: `ds_config.json`, the Megatron-DeepSpeed arguments that set the parallel layout, launch scripts.

A ds_config describes batch, precision and ZeRO only. DeepSpeed checks
`train_batch_size = micro x accumulation x data-parallel size` with the data-parallel size its
caller passes: plain DeepSpeed (no mpu) counts every rank as data parallel, so any plan with
tp x pp > 1 is rejected there; Megatron-DeepSpeed passes its parallel state (mpu), whose
data-parallel size is the plan's dp. The files therefore work through Megatron-DeepSpeed, as
each of them says.

The mapping from plan fields is two tables: `DEEPSPEED_CONFIG` (ds_config keys) and
`MEGATRON_DEEPSPEED_FLAGS` (flags of Megatron-DeepSpeed's megatron/arguments.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from planner.cost.memory import gradient_path
from planner.export.common import Build, ExportError, args_text, comment, finetune_deviation, header, placement_order
from planner.export.launch import EnvVar, Launch, launch_script, sbatch_script
from planner.export.megatron import batch_flags, model_flags, recompute_flags
from planner.export.training import optimizer_settings
from planner.framework import DEFAULT_FRAMEWORK, framework
from planner.plan import Plan, PlanDocument
from planner.specs.model import ModelSpec

Items = list[tuple[str, Any]]

PARALLEL_STATE_NOTE = ("this ds_config is valid only through Megatron-DeepSpeed's parallel state: DeepSpeed "
                       "checks train_batch_size = micro batch x accumulation x data-parallel size, and plain "
                       "DeepSpeed (deepspeed.initialize without mpu) counts all ranks as data parallel, so it "
                       "rejects every plan with tp x pp > 1")

_REPLAN = ("`planner plan ... --cp 1 --vpp 1` and either --pp 1 or --zero 0 1 (DeepSpeed's pipeline engine "
           "takes ZeRO-0/1 only)")


def zero_stage(p: Plan, b: Build) -> int:
    if p.pp > 1 and p.zero_stage >= 2:
        b.deviate("zero", f"DeepSpeed's pipeline engine refuses ZeRO-2/3 (deepspeed/runtime/pipe/engine.py); "
                  f"ZeRO-1 is used with pp {p.pp}", zero_stage=1)
        return 1
    return p.zero_stage


def _batch(p: Plan, m: ModelSpec, b: Build) -> dict[str, Any]:
    return {"train_batch_size": p.global_batch, "train_micro_batch_size_per_gpu": p.micro_batch,
            "gradient_accumulation_steps": p.grad_accum}


def _low_precision(p: Plan, b: Build) -> str:
    """The 16/32-bit format DeepSpeed runs: Megatron-DeepSpeed has no FP8 / FP4 training."""
    if p.dtype in ("bf16", "fp16", "fp32"):
        return p.dtype
    b.deviate("dtype", f"Megatron-DeepSpeed has no {p.dtype} training; bf16 is exported", dtype="bf16")
    return "bf16"


def _precision(p: Plan, m: ModelSpec, b: Build) -> dict[str, Any]:
    dtype = _low_precision(p, b)
    out: dict[str, Any] = {dtype: {"enabled": True}} if dtype in ("bf16", "fp16") else {}
    # The gradient reduction's dtype the cost model priced: fp32 (Megatron-LM main_grad, FSDP2 reduce_dtype),
    # or the plan's framework profile's own (the deepspeed profile's fp16 ZeRO-1 reduces in fp16).
    fw = framework(p.framework or DEFAULT_FRAMEWORK)
    out["communication_data_type"] = "fp32" if gradient_path(fw, dtype).reduce_bytes >= 4 else dtype
    return out


def _zero(p: Plan, m: ModelSpec, b: Build) -> dict[str, Any]:
    if p.hybrid:
        b.deviate("shard_group", "DeepSpeed's ZeRO shards over the whole data-parallel group (ZeRO++'s hpZ keeps "
                  "only a secondary copy of the weights per node)", shard_group=None)
    return {"zero_optimization": {"stage": zero_stage(p, b), "overlap_comm": True, "contiguous_gradients": True,
                                  "reduce_scatter": True}}


def _clipping(p: Plan, m: ModelSpec, b: Build) -> dict[str, Any]:
    return {"gradient_clipping": optimizer_settings(m).clip_grad, "steps_per_print": 1,
            "wall_clock_breakdown": False}


# Plan field -> ds_config keys. Add precision recipes here.
DEEPSPEED_CONFIG: dict[str, Callable[[Plan, ModelSpec, Build], dict[str, Any]]] = {
    "micro_batch/global_batch": _batch,
    "dtype": _precision,
    "zero_stage": _zero,
    "gradient clipping": _clipping,
}


def _ds_flags(p: Plan, m: ModelSpec, b: Build) -> Items:
    return [("#", "DeepSpeed"), ("--deepspeed", None), ("--deepspeed_config", "ds_config.json"),
            ("--zero-stage", zero_stage(p, Build(b.doc, b.framework)))]


def _parallel(p: Plan, m: ModelSpec, b: Build) -> Items:
    items: Items = [("#", "parallelism (data parallel = world size / (tp x pp x sequence parallel))"),
                    ("--tensor-model-parallel-size", p.tp)]
    if p.pp > 1:
        items.append(("--pipeline-model-parallel-size", p.pp))
        if p.uneven:
            b.deviate("first_stage_layers", "Megatron-DeepSpeed's GPTModelPipe splits the pipeline itself (DeepSpeed "
                      "PipelineModule, partition_method 'type:transformer': transformer layers balanced over the "
                      "stages, embedding and head not counted); the plan's uneven split is not exported")
    else:
        items += [("--pipeline-model-parallel-size", 1), ("--no-pipeline-parallel", None)]
    return items


def _context(p: Plan, m: ModelSpec, b: Build) -> Items:
    if p.cp == 1:
        return [("--sequence-parallel", None)] if p.sequence_parallel else []
    # DeepSpeed-Ulysses is DeepSpeed's only sequence sharding; Megatron-DeepSpeed asserts it runs
    # without tensor or pipeline parallelism (megatron/core/parallel_state.py).
    if p.tp > 1 or p.pp > 1:
        raise ExportError(f"context parallelism (cp {p.cp}) has no DeepSpeed equivalent with tp {p.tp} / pp {p.pp}: "
                          f"Megatron-DeepSpeed's only sequence sharding, DeepSpeed-Ulysses "
                          f"(--ds-sequence-parallel-size), runs without tensor and pipeline parallelism; re-plan "
                          f"for DeepSpeed with {_REPLAN}")
    if m.num_heads % p.cp or m.num_kv_heads % p.cp:
        raise ExportError(f"context parallelism (cp {p.cp}) has no DeepSpeed equivalent for {m.name}: "
                          f"DeepSpeed-Ulysses splits its {m.num_heads} query / {m.num_kv_heads} key-value heads "
                          f"over {p.cp} ranks, which does not divide; re-plan with {_REPLAN}")
    b.note(f"context parallelism cp {p.cp} runs as DeepSpeed-Ulysses sequence parallelism (all-to-all over heads "
           "instead of the plan's ring exchange of keys and values)")
    return [("--ds-sequence-parallel-size", p.cp)]


def _schedule(p: Plan, m: ModelSpec, b: Build) -> Items:
    if p.vpp > 1:
        b.deviate("vpp", "DeepSpeed's pipeline engine has no interleaved schedule; it runs 1F1B with one chunk "
                  "per stage", vpp=1, schedule="1f1b")
    elif p.pp > 1 and p.schedule == "gpipe":
        b.deviate("schedule", "DeepSpeed's pipeline engine runs 1F1B, not GPipe", schedule="1f1b")
    return []


def _experts(p: Plan, m: ModelSpec, b: Build) -> Items:
    if not m.is_moe:
        return []
    if p.folded:
        raise ExportError(f"expert tensor parallelism narrower than tp (etp {p.expert_tp} < tp {p.tp}) has no "
                          "Megatron-DeepSpeed equivalent: its experts use the layer's tp; plan with etp = tp")
    return [("--num-experts", m.num_experts), ("--moe-expert-parallel-size", p.ep), ("--topk", m.top_k),
            ("--moe-train-capacity-factor", m.capacity_factor)]


def _placement(p: Plan, m: ModelSpec, b: Build) -> Items:
    if placement_order(p) != placement_order(p, ("tp", "cp", "dp", "pp")):
        b.deviate("placement", f"DeepSpeed's topology orders ranks tp (innermost), sequence parallel, dp, pp, not "
                  f"{','.join(p.placement)}", placement=("tp", "cp", "dp", "pp"))
    return []


def _precision_flags(p: Plan, m: ModelSpec, b: Build) -> Items:
    items: Items = [("#", "precision and attention kernel")]
    dtype = _low_precision(p, Build(b.doc, b.framework))  # (the config's mapping records the deviation)
    if dtype in ("bf16", "fp16"):
        items.append((f"--{dtype}", None))
    if p.flash_attention:
        items.append(("--use-flash-attn-v2", None))
    return items


# Plan field -> Megatron-DeepSpeed flags (megatron/arguments.py of microsoft/Megatron-DeepSpeed).
MEGATRON_DEEPSPEED_FLAGS: dict[str, Callable[[Plan, ModelSpec, Build], Items]] = {
    "zero_stage": _ds_flags,
    "tp/pp": _parallel,
    "cp/sequence_parallel": _context,
    "vpp/schedule": _schedule,
    "ep": _experts,
    "placement": _placement,
    "recompute": recompute_flags,
    "micro_batch/global_batch": batch_flags,
    "dtype/flash_attention": _precision_flags,
    "finetune": finetune_deviation,
}


def _training_flags(doc: PlanDocument) -> Items:
    o = optimizer_settings(doc.model)
    return [("#", f"optimizer and schedule ({o.source})"), ("--optimizer", "adam"), ("--lr", o.lr),
            ("--min-lr", o.min_lr), ("--lr-decay-style", "cosine"), ("--lr-warmup-iters", o.warmup_steps),
            ("--adam-beta1", o.betas[0]), ("--adam-beta2", o.betas[1]), ("--adam-eps", o.eps),
            ("--weight-decay", o.weight_decay), ("--clip-grad", o.clip_grad),
            ("#", "logging (the run length is yours to set: TRAIN_STEPS in the launch script)"),
            ("--log-interval", 1), ("--eval-iters", 0)]


def deepspeed_build(doc: PlanDocument, b: Build) -> tuple[dict[str, Any], Items]:
    """ds_config dict and Megatron-DeepSpeed flags, sharing one list of deviations."""
    p, m = doc.plan, doc.model
    config: dict[str, Any] = {}
    for rule in DEEPSPEED_CONFIG.values():
        config.update(rule(p, m, b))
    items: Items = []
    for flag_rule in MEGATRON_DEEPSPEED_FLAGS.values():
        items += flag_rule(p, m, b)
    items += model_flags(m, b, megatron_deepspeed=True) + _training_flags(doc)
    b.note(PARALLEL_STATE_NOTE)
    return config, items


NEEDS = ["MEGATRON_DEEPSPEED: a microsoft/Megatron-DeepSpeed checkout (its pretrain_gpt.py)",
         "data: DATA_PREFIX (a Megatron .bin/.idx prefix) and TOKENIZER (a Hugging Face tokenizer name or path); "
         "Megatron-DeepSpeed has no mock-data option",
         "CKPT_DIR (checkpoints are saved there and resumed from), TRAIN_STEPS (run length)"]


def deepspeed_config(doc: PlanDocument, strict: bool = False) -> dict[str, Any]:
    b = Build(doc, "DeepSpeed")
    config, _ = deepspeed_build(doc, b)
    b.warnings(strict)
    return config


def deepspeed_files(doc: PlanDocument, strict: bool, name: str = "ds_config") -> dict[str, str]:
    """ds_config.json, ds_config.megatron-deepspeed.args, ds_config.launch.sh, ds_config.sbatch."""
    b = Build(doc, "DeepSpeed")
    config, items = deepspeed_build(doc, b)
    items = [(f, f"{name}.json" if f == "--deepspeed_config" else v) for f, v in items]
    warnings = b.warnings(strict)
    head = header(doc, "megatron-deepspeed", NEEDS)
    args_name = f"{name}.megatron-deepspeed.args"
    p, c = doc.plan, doc.cluster
    env = []
    if p.sequence_parallel or p.tp > 1:
        env.append(EnvVar("CUDA_DEVICE_MAX_CONNECTIONS", "1", "Megatron-DeepSpeed refuses sequence parallelism "
                          "without it (megatron/arguments.py)"))
    launch = Launch(
        name=name, program=['"$MEGATRON_DEEPSPEED/pretrain_gpt.py"'], env=env,
        setup=['MEGATRON_DEEPSPEED=${MEGATRON_DEEPSPEED:?set MEGATRON_DEEPSPEED to your Megatron-DeepSpeed checkout}',
               'DATA_PREFIX=${DATA_PREFIX:?set DATA_PREFIX to your Megatron .bin/.idx data prefix}',
               'TOKENIZER=${TOKENIZER:?set TOKENIZER to your Hugging Face tokenizer name or path}',
               f'CKPT_DIR=${{CKPT_DIR:-$HERE/checkpoints/{doc.hash}}}',
               'TRAIN_STEPS=${TRAIN_STEPS:?set TRAIN_STEPS, the number of optimizer steps to run}',
               f"read -r -d '' -a PLAN_ARGS < <(grep -v '^[[:space:]]*#' \"$HERE/{args_name}\") || true",
               "# DeepSpeed's own launcher works too: deepspeed --hostfile HOSTFILE (lines 'host slots=8') "
               "--master_addr $MASTER_ADDR pretrain_gpt.py <the same arguments>"],
        args=['"${PLAN_ARGS[@]}"', f'--deepspeed_config "$HERE/{name}.json"',
              '--data-path "$DATA_PREFIX" --split 99,1,0 --tokenizer-type HFTokenizer --tokenizer-model "$TOKENIZER"',
              '--train-iters "$TRAIN_STEPS"', '--save "$CKPT_DIR" --load "$CKPT_DIR" --save-interval 1000'],
        loss_rank=c.num_gpus - 1)
    # JSON has no comments: DeepSpeed ignores unknown top-level keys, so the header travels as one.
    documented = {"_comment": [*header(doc, "deepspeed", []), PARALLEL_STATE_NOTE,
                               f"parallel layout and launch: {args_name}, {name}.launch.sh"], **config}
    return {f"{name}.json": json.dumps(documented, indent=2) + "\n",
            args_name: comment(head + warnings + b.notes) + args_text(items),
            f"{name}.launch.sh": launch_script(doc, launch, head + warnings + [PARALLEL_STATE_NOTE]),
            f"{name}.sbatch": sbatch_script(doc, launch, head + warnings)}
