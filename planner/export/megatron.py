"""Megatron-LM / Megatron-Core export: `megatron.args` for pretrain_gpt.py and its multi-node launch scripts.

The mapping from plan fields to Megatron-LM flags is the table `MEGATRON_FLAGS` (one function per
plan field); precision recipes and recompute policies are added there. Flag names are those of
`megatron/training/arguments.py` (Megatron-Core 0.19.2; many flags are generated from its config
dataclasses), and every export was run through that file's parse_args + validate_args and
parallel_state.initialize_model_parallel (benchmarks/check_exports.sh).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from planner.export.architecture import architecture
from planner.export.common import (
    Build,
    ExportError,
    args_text,
    comment,
    compute_capability,
    finetune_deviation,
    header,
    placement_order,
)
from planner.export.launch import EnvVar, Launch, launch_script, sbatch_script
from planner.export.training import optimizer_settings
from planner.framework import framework as framework_profile
from planner.plan import Plan, PlanDocument
from planner.specs.model import ModelSpec

Items = list[tuple[str, Any]]

# Rank orders (innermost first) Megatron-Core builds (parallel_state.initialize_model_parallel's `order`).
_ORDERS = {("tp", "cp", "dp", "pp"): None, ("tp", "cp", "pp", "dp"): "--use-tp-pp-dp-mapping"}


def _parallel(p: Plan, m: ModelSpec, b: Build) -> Items:
    items: Items = [("#", "parallelism (data parallel = world size / (tp x pp x cp))"),
                    ("--tensor-model-parallel-size", p.tp), ("--pipeline-model-parallel-size", p.pp),
                    ("--context-parallel-size", p.cp)]
    if m.is_moe:
        items.append(("--expert-model-parallel-size", p.ep))
        if p.folded:  # MoE parallel folding: the experts' own tensor-parallel size (default: tp)
            items.append(("--expert-tensor-parallel-size", p.expert_tp))
    return items


def _pipeline_split(p: Plan, m: ModelSpec, b: Build) -> Items:
    """Virtual stages and uneven splits. Megatron-LM takes the virtual stage count per rank with an
    uneven split (validate_args refuses --num-layers-per-virtual-pipeline-stage beside
    --decoder-first/last-pipeline-num-layers), else the layers per virtual stage."""
    items: Items = []
    if p.vpp > 1:
        items.append(("--num-virtual-stages-per-pipeline-rank", p.vpp) if p.uneven else
                     ("--num-layers-per-virtual-pipeline-stage", m.num_layers // (p.pp * p.vpp)))
    if p.pp > 1 and p.uneven:
        items.insert(0, ("#", "uneven pipeline split (layers of the first / last pipeline rank, or the embedding "
                              "and loss counted as layers)"))
        if p.first_stage_layers is not None:
            items.append(("--decoder-first-pipeline-num-layers", p.first_stage_layers))
        if p.last_stage_layers is not None:
            items.append(("--decoder-last-pipeline-num-layers", p.last_stage_layers))
        if p.embedding_in_split:
            items.append(("--account-for-embedding-in-pipeline-split", None))
        if p.loss_in_split:
            items.append(("--account-for-loss-in-pipeline-split", None))
    return items


def _schedule(p: Plan, m: ModelSpec, b: Build) -> Items:
    if p.pp > 1 and p.schedule == "gpipe":
        b.deviate("schedule", "Megatron-LM has no GPipe schedule; it runs 1F1B (same bubble, fewer "
                  "micro-batches in flight)", schedule="1f1b")
    return []


def _sequence_parallel(p: Plan, m: ModelSpec, b: Build) -> Items:
    return [("--sequence-parallel", None)] if p.sequence_parallel else []


def _placement(p: Plan, m: ModelSpec, b: Build) -> Items:
    orders = {placement_order(p, order): flag for order, flag in reversed(_ORDERS.items())}
    if placement_order(p) in orders:
        flag = orders[placement_order(p)]
        if flag and p.zero_stage >= 2 and p.dp > 1:
            b.deviate("placement", "Megatron-FSDP (ZeRO-2/3) runs with the default rank order tp,cp,dp,pp only "
                      "(Megatron-Bridge's ConfigContainer.validate: 'use_tp_pp_dp_mapping is not supported with "
                      "Megatron FSDP')", placement=("tp", "cp", "dp", "pp"))
            return []
        return [(flag, None)] if flag else []
    b.deviate("placement", f"Megatron-LM orders ranks tp,cp,dp,pp (or tp,cp,pp,dp with --use-tp-pp-dp-mapping), "
              f"not {','.join(p.placement)}: groups span other links", placement=("tp", "cp", "dp", "pp"))
    return []


def _zero(p: Plan, m: ModelSpec, b: Build) -> Items:
    items: Items = [("#", f"data parallel: ZeRO-{p.zero_stage}")]
    if p.zero_stage == 0:
        return [*items, ("--overlap-grad-reduce", None)]
    if p.zero_stage == 1:
        instances = [("--num-distributed-optimizer-instances", p.dp * p.cp // p.shard_group)] if p.hybrid else []
        return [*items, ("--use-distributed-optimizer", None), *instances, ("--overlap-grad-reduce", None),
                ("--overlap-param-gather", None)]
    if p.hybrid:
        b.deviate("shard_group", "Megatron-FSDP shards over the whole data-parallel group (hybrid sharding is the "
                  "distributed optimizer's --num-distributed-optimizer-instances, ZeRO-1 only)", shard_group=None)
    strategy = "optim_grads" if p.zero_stage == 2 else "optim_grads_params"
    b.note(f"ZeRO-{p.zero_stage} is Megatron-FSDP (--data-parallel-sharding-strategy {strategy}); it needs "
           "CUDA_DEVICE_MAX_CONNECTIONS unset or > 1 and the fsdp_dtensor checkpoint format")
    return [*items, ("--use-megatron-fsdp", None), ("--data-parallel-sharding-strategy", strategy),
            ("--use-distributed-optimizer", None), ("--ckpt-format", "fsdp_dtensor"),
            ("--overlap-grad-reduce", None), ("--overlap-param-gather", None)]


def recompute_flags(p: Plan, m: ModelSpec, b: Build) -> Items:
    """Megatron-LM and Megatron-DeepSpeed spell recompute alike. They have no per-op policy (torchtitan's,
    or the JAX ones that keep chosen matmul outputs): full recompute is the closest that still fits
    (it keeps less), so the plan deviates to it."""
    if p.recompute == "none":
        return []
    recompute = p.recompute
    if recompute not in ("selective", "full"):
        b.deviate("recompute", f"{b.framework} has no per-op recompute policy like {recompute}; full recompute "
                  "(keeps less memory, recomputes more) is exported", recompute="full")
        recompute = "full"
    items: Items = [("#", f"activation recompute: {recompute}"), ("--recompute-granularity", recompute)]
    if recompute == "full" and p.recompute_every > 1:
        # 1 of every k layers: Megatron's block method recomputes the first N layers of each (virtual)
        # stage and keeps the others' activations: the same count, so the same memory and time
        per_stage = -(-m.num_layers // (p.pp * p.vpp))
        items += [("--recompute-method", "block"), ("--recompute-num-layers", max(1, per_stage // p.recompute_every))]
    elif recompute == "full":
        items += [("--recompute-method", "uniform"), ("--recompute-num-layers", 1)]
    return items


def batch_flags(p: Plan, m: ModelSpec, b: Build) -> Items:
    return [("#", "batch"), ("--micro-batch-size", p.micro_batch), ("--global-batch-size", p.global_batch),
            ("--seq-length", m.seq_len)]


# Low-precision recipes as Transformer Engine runs them under Megatron-LM (--fp8-format hybrid: E4M3
# forward, E5M2 gradients; the per-tensor recipe with delayed scaling; MXFP8 block scaling in E4M3;
# NVFP4), each on bf16 weights and activations.
LOW_PRECISION_FLAGS: dict[str, Items] = {
    "fp8": [("--fp8-format", "hybrid"), ("--fp8-recipe", "delayed")],
    "mxfp8": [("--fp8-format", "e4m3"), ("--fp8-recipe", "mxfp8")],
    "nvfp4": [("--fp4-format", "e2m1"), ("--fp4-recipe", "nvfp4")],
}


def _precision(p: Plan, m: ModelSpec, b: Build) -> Items:
    items: Items = [("#", "precision and attention kernel")]
    dtype = p.dtype
    if dtype == "fp8-rowwise":
        b.deviate("dtype", "Transformer Engine has no row-wise FP8 recipe (its blockwise one scales 1 x 128 blocks); "
                  "the per-tensor FP8 recipe is exported", dtype="fp8")
        dtype = "fp8"
    if dtype in ("bf16", "fp16"):
        items.append((f"--{dtype}", None))
    elif dtype in LOW_PRECISION_FLAGS:
        items += [("--bf16", None), *LOW_PRECISION_FLAGS[dtype]]
        if dtype == "nvfp4":
            b.note("NVFP4 needs Transformer Engine >= 2.7 (Megatron-LM's validate_args refuses --fp4-format "
                   "below it)")
        if dtype == "fp8" and p.framework and framework_profile(p.framework).fp8_param_gather:
            if p.zero_stage >= 1:  # FP8 primary weights, all-gathered in FP8, as the plan was priced
                items.append(("--fp8-param-gather", None))
            else:
                b.note(f"the {p.framework} profile prices FP8 primary weights (fp8_param_gather), which "
                       "Megatron-LM allows only with the distributed optimizer (ZeRO-1 or more): exported "
                       "without it, so each linear weight also keeps its bf16 copy (2 B per parameter more)")
    items.append(("--attention-backend", "flash" if p.flash_attention else "unfused"))
    return items


# Plan field -> the Megatron-LM flags that realise it. Add precision recipes / recompute policies here.
MEGATRON_FLAGS: dict[str, Callable[[Plan, ModelSpec, Build], Items]] = {
    "tp/pp/cp/ep": _parallel,
    "vpp/first_stage_layers/last_stage_layers": _pipeline_split,
    "schedule": _schedule,
    "sequence_parallel": _sequence_parallel,
    "placement": _placement,
    "zero_stage": _zero,
    "recompute": recompute_flags,
    "micro_batch/global_batch": batch_flags,
    "dtype/flash_attention": _precision,
    "finetune": finetune_deviation,
}


def model_flags(m: ModelSpec, b: Build, megatron_deepspeed: bool = False) -> Items:
    """The model's exact architecture: shape, GQA, positions (RoPE base and scaling), norm and epsilon."""
    arch = architecture(m)
    if arch.assumed:
        b.note(f"architecture details of {m.name}: {arch.source}")
    items: Items = [("#", f"model: {m.name} ({arch.source})"), ("--num-layers", m.num_layers),
                    ("--hidden-size", m.hidden), ("--ffn-hidden-size", m.ffn_hidden),
                    ("--num-attention-heads", m.num_heads)]
    if m.position == "alibi":
        target = "Megatron-DeepSpeed main" if megatron_deepspeed else "Megatron-LM"
        raise ExportError(f"{m.name} uses ALiBi positions, which {target} does not implement (BigScience's "
                          "2022 fork of Megatron-DeepSpeed did: --position-embedding-type alibi)")
    if m.embedding_norm:
        target = "Megatron-DeepSpeed main" if megatron_deepspeed else "Megatron-LM"
        raise ExportError(f"{m.name} normalises its embedding output, which {target} does not implement "
                          "(BigScience's 2022 fork of Megatron-DeepSpeed did: --embed-layernorm)")
    if m.num_kv_heads != m.num_heads:
        items += ([("--num-key-value-heads", m.num_kv_heads)] if megatron_deepspeed else
                  [("--group-query-attention", None), ("--num-query-groups", m.num_kv_heads)])
    if m.position == "rope":
        items += ([("--use-rotary-position-embeddings", None), ("--no-position-embedding", None)] if megatron_deepspeed
                  else [("--position-embedding-type", "rope")])
        items += [("--max-position-embeddings", m.seq_len)]
        theta = arch.rope_theta or 10000.0
        if megatron_deepspeed:
            items.append(("--rotary-position-embeddings-theta", int(theta)))
        else:
            items.append(("--rotary-base", int(theta)))
        if arch.rope_scaling is not None:
            s = arch.rope_scaling
            if megatron_deepspeed:
                b.deviate("rope_scaling", "Megatron-DeepSpeed has no Llama 3.1 RoPE scaling: the model trains "
                          "with unscaled RoPE frequencies")
            else:
                items += [("--use-rope-scaling", None), ("--rope-scaling-factor", s.factor)]
                if (s.low_freq_factor, s.high_freq_factor, s.original_max_position) != (1.0, 4.0, 8192):
                    b.deviate("rope_scaling", "Megatron-LM fixes Llama 3.1 scaling's low/high frequency factors "
                              "(1, 4) and original context (8192); this model's differ")
    else:
        items.append(("--max-position-embeddings", m.max_position))
        if not megatron_deepspeed:
            items.append(("--position-embedding-type", "learned_absolute"))
    if megatron_deepspeed:
        items.append(("--normalization", m.norm))
    else:
        items.append(("--normalization", "RMSNorm" if m.norm == "rmsnorm" else "LayerNorm"))
    items.append(("--norm-epsilon" if not megatron_deepspeed else "--layernorm-epsilon", arch.norm_eps))
    if m.activation == "swiglu":
        items.append(("--swiglu", None))
    if not m.tied_embeddings:
        items.append(("--untie-embeddings-and-output-weights", None))
    if not m.bias:
        items.append(("--disable-bias-linear", None))
        if m.qkv_bias and not megatron_deepspeed:
            items.append(("--add-qkv-bias", None))
    items += [("--attention-dropout", m.dropout), ("--hidden-dropout", m.dropout)]
    if m.is_moe and not megatron_deepspeed:
        items += [("--num-experts", m.num_experts), ("--moe-router-topk", m.top_k),
                  ("--moe-token-dispatcher-type", "alltoall")]
        if m.capacity_factor != 1.0:
            items.append(("--moe-expert-capacity-factor", m.capacity_factor))
    if not m.causal or m.head != "lm":
        b.note(f"{m.name} is an encoder model: launch pretrain_bert.py (the flags above still apply)")
    if m.family_features:
        # Not translated yet (MLA, expert widths, shared experts, dense layers, MTP, local attention,
        # q/k norms, ...): the job would train another model, so say which fields it drops.
        b.deviate("model", f"{', '.join(m.family_features)} not translated to "
                  f"{'Megatron-DeepSpeed' if megatron_deepspeed else 'Megatron-LM'} flags yet: the exported job "
                  "trains the model without them")
    return items


def training_flags(doc: PlanDocument) -> Items:
    """Optimizer, learning-rate schedule, logging: set explicitly so no default is inherited silently."""
    o = optimizer_settings(doc.model)
    return [("#", f"optimizer and schedule ({o.source})"), ("--optimizer", "adam"), ("--lr", o.lr),
            ("--min-lr", o.min_lr), ("--lr-decay-style", "cosine"), ("--lr-warmup-iters", o.warmup_steps),
            ("--adam-beta1", o.betas[0]), ("--adam-beta2", o.betas[1]), ("--adam-eps", o.eps),
            ("--weight-decay", o.weight_decay), ("--clip-grad", o.clip_grad),
            ("#", "run length and logging (the run length is yours to set: TRAIN_STEPS in the launch script)"),
            ("--log-interval", 1), ("--log-throughput", None), ("--eval-iters", 0)]


def megatron_items(doc: PlanDocument, b: Build, realised_elsewhere: tuple[str, ...] = ()) -> Items:
    """The Megatron-LM flags of the plan; `realised_elsewhere`: MEGATRON_FLAGS rules a caller realises
    itself (Megatron-Bridge's own LoRA for "finetune"), not applied here."""
    p, m = doc.plan, doc.model
    items: Items = []
    for field, rule in MEGATRON_FLAGS.items():
        if field not in realised_elsewhere:
            items += rule(p, m, b)
    return items + model_flags(m, b) + training_flags(doc)


def required_env(doc: PlanDocument) -> list[EnvVar]:
    """Environment validate_args insists on: TP or CP before Blackwell needs one CUDA connection."""
    p = doc.plan
    cc = compute_capability(doc.cluster.gpu.name)
    if (p.tp > 1 or p.cp > 1) and p.zero_stage < 2 and (cc is None or cc[0] < 10):
        return [EnvVar("CUDA_DEVICE_MAX_CONNECTIONS", "1", "Megatron-LM asserts it for tensor / context "
                       "parallelism before Blackwell: communication kernels must be scheduled before compute")]
    return []


NEEDS = ["MEGATRON_LM: a Megatron-LM checkout (its pretrain_gpt.py; Megatron-Core 0.19)",
         "data: DATA_PREFIX (a Megatron .bin/.idx prefix) and TOKENIZER (a Hugging Face tokenizer name or "
         "path); without them the launch uses Megatron's --mock-data and NullTokenizer",
         "CKPT_DIR (checkpoints are saved there and resumed from), TRAIN_STEPS (run length)"]


def megatron_files(doc: PlanDocument, strict: bool, name: str = "megatron") -> dict[str, str]:
    """megatron.args, megatron.launch.sh, megatron.sbatch."""
    b = Build(doc, "Megatron-LM")
    items = megatron_items(doc, b)
    warnings = b.warnings(strict)
    head = header(doc, "megatron", NEEDS)
    args = comment(head + warnings + b.notes) + args_text(items)
    m, c = doc.model, doc.cluster
    launch = Launch(
        name=name, program=['"$MEGATRON_LM/pretrain_gpt.py"'], env=required_env(doc),
        setup=['MEGATRON_LM=${MEGATRON_LM:?set MEGATRON_LM to your Megatron-LM checkout}',
               f'CKPT_DIR=${{CKPT_DIR:-$HERE/checkpoints/{doc.hash}}}',
               "TRAIN_STEPS=${TRAIN_STEPS:?set TRAIN_STEPS, the number of optimizer steps to run}",
               "# data and tokenizer: Megatron's mock data unless DATA_PREFIX is set",
               'if [ -n "${DATA_PREFIX:-}" ]; then',
               '  DATA_ARGS=(--data-path "$DATA_PREFIX" --split 99,1,0 --tokenizer-type HuggingFaceTokenizer '
               '--tokenizer-model "${TOKENIZER:?set TOKENIZER to your tokenizer (Hugging Face name or path)}")',
               "else",
               f"  DATA_ARGS=(--mock-data --tokenizer-type NullTokenizer --vocab-size {m.vocab_size})",
               "fi",
               f"read -r -d '' -a PLAN_ARGS < <(grep -v '^[[:space:]]*#' \"$HERE/{name}.args\") || true"],
        args=['"${PLAN_ARGS[@]}"', '"${DATA_ARGS[@]}"', '--train-iters "$TRAIN_STEPS"',
              '--save "$CKPT_DIR" --load "$CKPT_DIR" --save-interval 1000'],
        loss_rank=c.num_gpus - 1)
    head_launch = header(doc, "megatron", NEEDS) + warnings
    return {f"{name}.args": args,
            f"{name}.launch.sh": launch_script(doc, launch, head_launch),
            f"{name}.sbatch": sbatch_script(doc, launch, head_launch)}
