"""Megatron-Bridge export: `bridge_pretrain.py`, a pre-training job built from Bridge's config classes.

Why: NVIDIA's current training stack for Megatron models is Megatron-Bridge (its recipes replaced
NeMo 2's LLM collection; NeMo 3.0 ships none). A Bridge job is a `ConfigContainer` of dataclasses
(the model provider is Megatron-Core's TransformerConfig; DDP, optimizer, scheduler, dataset,
tokenizer, checkpoint, logger) handed to `megatron.bridge.training.pretrain.pretrain`.

The plan's settings are the Megatron-LM export's (`megatron.megatron_items`: the same deviations,
notes and decisions), translated flag by flag into the config fields Megatron-LM derives them into
(`BRIDGE_FIELDS`); a flag without a translation is an error, so the two exports cannot drift apart.
The model is built from its exact architecture (no Hugging Face download, unlike Bridge's recipes).
Every export was run through Bridge's own `ConfigContainer.validate()` and Megatron-Core's
`initialize_model_parallel` on a fake process group (benchmarks/check_bridge.py, from
benchmarks/check_exports.sh).
"""

from __future__ import annotations

import ast
from typing import Any

from planner.export.common import Build, ExportError, comment, header
from planner.export.launch import Launch, launch_script, sbatch_script
from planner.export.megatron import megatron_items, required_env
from planner.plan import Plan, PlanDocument

Items = list[tuple[str, Any]]
Fields = dict[str, dict[str, str]]  # config section -> field -> Python expression

# Megatron-LM flag -> (config section, field, how the value becomes a Python expression):
# "value" (the flag's literal value), "str" (quoted), True / False (a switch), or a function of
# (value, plan). Sections: model (GPTModelProvider, a TransformerConfig), ddp, optimizer, scheduler,
# train, logger, checkpoint, dist, precision (the mixed-precision recipe's fields). A `None` section
# marks a flag whose setting is made elsewhere in the script, with the reason.
BRIDGE_FIELDS: dict[str, tuple[str | None, str, Any]] = {
    "--tensor-model-parallel-size": ("model", "tensor_model_parallel_size", "value"),
    "--pipeline-model-parallel-size": ("model", "pipeline_model_parallel_size", "value"),
    "--context-parallel-size": ("model", "context_parallel_size", "value"),
    "--expert-model-parallel-size": ("model", "expert_model_parallel_size", "value"),
    "--expert-tensor-parallel-size": ("model", "expert_tensor_parallel_size", "value"),
    # Megatron-LM turns both virtual-stage flags into virtual_pipeline_model_parallel_size
    "--num-layers-per-virtual-pipeline-stage": ("model", "virtual_pipeline_model_parallel_size",
                                                lambda v, p: str(p.vpp)),
    "--num-virtual-stages-per-pipeline-rank": ("model", "virtual_pipeline_model_parallel_size", "value"),
    "--decoder-first-pipeline-num-layers": ("model", "num_layers_in_first_pipeline_stage", "value"),
    "--decoder-last-pipeline-num-layers": ("model", "num_layers_in_last_pipeline_stage", "value"),
    "--account-for-embedding-in-pipeline-split": ("model", "account_for_embedding_in_pipeline_split", True),
    "--account-for-loss-in-pipeline-split": ("model", "account_for_loss_in_pipeline_split", True),
    "--sequence-parallel": ("model", "sequence_parallel", True),
    "--use-tp-pp-dp-mapping": ("dist", "use_tp_pp_dp_mapping", True),
    "--overlap-grad-reduce": ("ddp", "overlap_grad_reduce", True),
    "--overlap-param-gather": ("ddp", "overlap_param_gather", True),
    "--use-distributed-optimizer": ("ddp", "use_distributed_optimizer", True),
    "--num-distributed-optimizer-instances": ("ddp", "num_distributed_optimizer_instances", "value"),
    "--use-megatron-fsdp": ("ddp", "use_megatron_fsdp", True),
    "--data-parallel-sharding-strategy": ("ddp", "data_parallel_sharding_strategy", "str"),
    "--ckpt-format": ("checkpoint", "ckpt_format", "str"),
    "--recompute-granularity": ("model", "recompute_granularity", "str"),
    "--recompute-method": ("model", "recompute_method", "str"),
    "--recompute-num-layers": ("model", "recompute_num_layers", "value"),
    "--micro-batch-size": ("train", "micro_batch_size", "value"),
    "--global-batch-size": ("train", "global_batch_size", "value"),
    "--seq-length": ("model", "seq_length", "value"),
    "--bf16": (None, "mixed precision recipe", None),
    "--fp16": (None, "mixed precision recipe", None),
    "--fp8-format": (None, "mixed precision recipe", None),
    "--fp8-recipe": (None, "mixed precision recipe", None),
    "--fp4-format": (None, "mixed precision recipe", None),
    "--fp4-recipe": (None, "mixed precision recipe", None),
    "--fp8-param-gather": ("precision", "fp8_param_gather", True),
    "--attention-backend": ("model", "attention_backend", lambda v, p: f"AttnBackend.{v}"),
    "--num-layers": ("model", "num_layers", "value"),
    "--hidden-size": ("model", "hidden_size", "value"),
    "--ffn-hidden-size": ("model", "ffn_hidden_size", "value"),
    "--num-attention-heads": ("model", "num_attention_heads", "value"),
    "--group-query-attention": (None, "num_query_groups alone turns GQA on", None),
    "--num-query-groups": ("model", "num_query_groups", "value"),
    "--position-embedding-type": ("model", "position_embedding_type", "str"),
    "--max-position-embeddings": (None, "the provider sizes positions by seq_length", None),
    "--rotary-base": ("model", "rotary_base", "value"),
    "--use-rope-scaling": ("model", "rope_scaling", True),
    "--rope-scaling-factor": ("model", "rope_scaling_factor", "value"),
    "--normalization": ("model", "normalization", "str"),
    "--norm-epsilon": ("model", "layernorm_epsilon", "value"),
    "--swiglu": (None, "activation set from the model", None),
    "--untie-embeddings-and-output-weights": (None, "tied embeddings set from the model", None),
    "--disable-bias-linear": ("model", "add_bias_linear", False),
    "--add-qkv-bias": ("model", "add_qkv_bias", True),
    "--attention-dropout": ("model", "attention_dropout", "value"),
    "--hidden-dropout": ("model", "hidden_dropout", "value"),
    "--num-experts": ("model", "num_moe_experts", "value"),
    "--moe-router-topk": ("model", "moe_router_topk", "value"),
    "--moe-token-dispatcher-type": ("model", "moe_token_dispatcher_type", "str"),
    "--moe-expert-capacity-factor": ("model", "moe_expert_capacity_factor", "value"),
    "--optimizer": ("optimizer", "optimizer", "str"),
    "--lr": ("optimizer", "lr", "value"),
    "--min-lr": ("optimizer", "min_lr", "value"),
    "--lr-decay-style": ("scheduler", "lr_decay_style", "str"),
    "--lr-warmup-iters": ("scheduler", "lr_warmup_iters", "value"),
    "--adam-beta1": ("optimizer", "adam_beta1", "value"),
    "--adam-beta2": ("optimizer", "adam_beta2", "value"),
    "--adam-eps": ("optimizer", "adam_eps", "value"),
    "--weight-decay": ("optimizer", "weight_decay", "value"),
    "--clip-grad": ("optimizer", "clip_grad", "value"),
    "--log-interval": ("logger", "log_interval", "value"),
    "--log-throughput": ("logger", "log_throughput", True),
    "--eval-iters": ("train", "eval_iters", "value"),
}

# Bridge's mixed-precision recipes (megatron/bridge/training/mixed_precision.py) by the precision the
# Megatron-LM export runs: Transformer Engine's per-tensor delayed-scaling FP8, MXFP8, NVFP4, each on
# bf16 weights and activations.
PRECISION_RECIPES = {"bf16": "bf16_mixed", "fp16": "fp16_mixed", "fp8": "bf16_with_fp8_delayed_scaling_mixed",
                     "fp8-rowwise": "bf16_with_fp8_delayed_scaling_mixed", "mxfp8": "bf16_with_mxfp8_mixed",
                     "nvfp4": "bf16_with_nvfp4_mixed"}
PIPELINE_DTYPES = {"fp16": "torch.float16", "fp32": "torch.float32"}  # else bf16
# The planner's LoRA targets as Megatron-Core module names (Bridge's LoRA.target_modules): the fused QKV,
# the attention output, the first MLP linear (gate and up fused for gated MLPs: one adapter, as the
# executor adapts them) and the second.
LORA_MODULES = {"qkv": "linear_qkv", "proj": "linear_proj", "up": "linear_fc1", "down": "linear_fc2"}
LORA_ALPHA = 32  # Bridge's LoRA default scaling numerator (megatron/bridge/peft/lora.py); not priced


def _literal(value: Any) -> str:
    """A flag's value as a Python literal: numbers stay numbers."""
    try:
        return repr(ast.literal_eval(str(value)))
    except (ValueError, SyntaxError):
        return repr(str(value))


def translate(items: Items, plan: Plan) -> Fields:
    """The config fields that realise the Megatron-LM flags `items` (their order kept)."""
    fields: Fields = {}
    for flag, value in items:
        if flag == "#":
            continue
        if flag not in BRIDGE_FIELDS:
            raise ExportError(f"the Megatron-LM flag {flag} has no Megatron-Bridge translation "
                              "(planner/export/bridge.py BRIDGE_FIELDS)")
        section, name, how = BRIDGE_FIELDS[flag]
        if section is None:
            continue
        if how == "value":
            expr = _literal(value)
        elif how == "str":
            expr = repr(str(value))
        elif isinstance(how, bool):
            expr = repr(how)
        else:
            expr = how(value, plan)
        fields.setdefault(section, {})[name] = expr
    return fields


def bridge_fields(doc: PlanDocument, b: Build) -> Fields:
    """Every field the job sets beyond Bridge's defaults, by section."""
    p, m = doc.plan, doc.model
    if not m.causal or m.head != "lm":
        raise ExportError(f"Megatron-Bridge's GPTModelProvider builds decoder-only language models; {m.name} is an "
                          "encoder: export it with --format megatron (Megatron-LM's pretrain_bert.py)")
    fields = translate(megatron_items(doc, b, realised_elsewhere=("finetune",)), p)
    if p.finetune == "lora":  # Bridge runs LoRA itself (its PEFT path)
        fields["peft"] = {"target_modules": repr([LORA_MODULES[t] for t in p.lora_targets]),
                          "dim": repr(p.lora_rank), "alpha": repr(LORA_ALPHA)}
    model = fields.setdefault("model", {})
    # what Megatron-LM's flags leave implicit, set explicitly (the provider's defaults differ)
    swiglu = m.activation == "swiglu"
    model["gated_linear_unit"] = repr(swiglu)
    model["activation_func"] = "F.silu" if swiglu else "F.gelu"
    model["share_embeddings_and_output_weights"] = repr(m.tied_embeddings)
    model.setdefault("add_bias_linear", "True")
    model["vocab_size"] = repr(m.vocab_size)
    if p.pp > 1:  # Megatron-Core's TransformerConfig requires it with pipeline parallelism
        model["pipeline_dtype"] = PIPELINE_DTYPES.get(p.dtype, "torch.bfloat16")
    if p.vpp > 1 and "virtual_pipeline_model_parallel_size" not in model:
        model["virtual_pipeline_model_parallel_size"] = repr(p.vpp)
    fields.setdefault("optimizer", {})["use_distributed_optimizer"] = \
        fields.get("ddp", {}).get("use_distributed_optimizer", "False")
    if fields.get("ddp", {}).get("use_megatron_fsdp") == "True":
        fields.setdefault("dist", {})["use_megatron_fsdp"] = "True"
    return fields


def _precision_lines(doc: PlanDocument, fields: Fields) -> list[str]:
    dtype = doc.plan.dtype
    if dtype == "fp32":
        return ["    precision = None  # fp32: no mixed-precision recipe"]
    lines = [f"    precision = get_mixed_precision_config({PRECISION_RECIPES[dtype]!r})"]
    lines += [f"    precision.{k} = {v}" for k, v in fields.get("precision", {}).items()]
    return lines


def _call(cls: str, kwargs: dict[str, str], indent: str = "    ") -> list[str]:
    if not kwargs:
        return [f"{cls}()"]
    return [f"{cls}(", *[f"{indent}    {k}={v}," for k, v in kwargs.items()], f"{indent})"]


def _script(doc: PlanDocument, b: Build, fields: Fields, head: list[str]) -> str:
    p, m = doc.plan, doc.model
    run = "finetune" if "peft" in fields else "pretrain"  # Bridge's PEFT path loads the base checkpoint
    model_kwargs = fields["model"]
    opt = {"bf16": repr(p.dtype not in ("fp16", "fp32")), "fp16": repr(p.dtype == "fp16"), **fields["optimizer"]}
    ddp = {"grad_reduce_in_fp32": "True", "average_in_collective": "True", **fields.get("ddp", {})}
    lines = [comment(head + b.warnings(strict=False) + b.notes).rstrip("\n"),
             f'"""Megatron-Bridge {"LoRA fine-tuning" if run == "finetune" else "pre-training"} job for one plan: '
             'torchrun ... bridge_pretrain.py (bridge.launch.sh runs it on every node)."""',
             "",
             "import os",
             "",
             "import torch",
             "import torch.nn.functional as F",
             "from megatron.bridge.models import GPTModelProvider",
             *(["from megatron.bridge.peft.lora import LoRA"] if "peft" in fields else []),
             "from megatron.bridge.training.config import (",
             "    CheckpointConfig,",
             "    ConfigContainer,",
             "    DistributedDataParallelConfig,",
             "    DistributedInitConfig,",
             "    GPTDatasetConfig,",
             "    LoggerConfig,",
             "    OptimizerConfig,",
             "    RNGConfig,",
             "    SchedulerConfig,",
             "    TokenizerConfig,",
             "    TrainingConfig,",
             ")",
             "from megatron.bridge.training.mixed_precision import get_mixed_precision_config",
             "from megatron.core.transformer.enums import AttnBackend",
             "",
             "",
             "def plan_config() -> ConfigContainer:",
             f'    """{m.name}: {p.describe()} on {doc.cluster.num_gpus} GPUs (planner {doc.hash}).',
             "",
             "    Run length, data, tokenizer and checkpoints come from the environment the launch script sets:",
             "    TRAIN_STEPS; DATA_PREFIX (a Megatron .bin/.idx prefix) and TOKENIZER, else Megatron's mock data",
             '    and NullTokenizer; CKPT_DIR."""',
             "    seq_length = " + model_kwargs["seq_length"],
             "    data_prefix = os.environ.get('DATA_PREFIX')",
             "    if data_prefix:",
             "        tokenizer = TokenizerConfig(tokenizer_type='HuggingFaceTokenizer', "
             "tokenizer_model=os.environ['TOKENIZER'])",
             "    else:",
             f"        tokenizer = TokenizerConfig(tokenizer_type='NullTokenizer', vocab_size={m.vocab_size})",
             "    ckpt_dir = os.environ.get('CKPT_DIR', 'checkpoints')",
             *_precision_lines(doc, fields),
             "    # the model, exactly, and the plan's parallelism (planner.export.bridge.BRIDGE_FIELDS)",
             "    model = " + "\n".join(_call("GPTModelProvider", model_kwargs)),
             "    return ConfigContainer(",
             "        model=model,",
             "        train=" + "\n".join(_call("TrainingConfig", {
                 "train_iters": "int(os.environ.get('TRAIN_STEPS', '100'))", "eval_interval": "None",
                 **fields["train"]}, "        ")) + ",",
             "        optimizer=" + "\n".join(_call("OptimizerConfig", opt, "        ")) + ",",
             "        scheduler=" + "\n".join(_call("SchedulerConfig", {
                 "lr_decay_iters": "None", "lr_warmup_init": "0.0", **fields["scheduler"]}, "        ")) + ",",
             "        ddp=" + "\n".join(_call("DistributedDataParallelConfig", ddp, "        ")) + ",",
             "        # blend None: Megatron's mock data",
             "        dataset=" + "\n".join(_call("GPTDatasetConfig", {
                 "random_seed": "1234", "seq_length": "seq_length", "reset_attention_mask": "False",
                 "reset_position_ids": "False", "eod_mask_loss": "False",
                 "blend": "([data_prefix], None) if data_prefix else None",
                 "split": "'99,1,0'", "dataloader_type": "'single'", "num_workers": "2",
                 "num_dataset_builder_threads": "1", "data_sharding": "True"}, "        ")) + ",",
             "        logger=" + "\n".join(_call("LoggerConfig", fields["logger"], "        ")) + ",",
             "        tokenizer=tokenizer,",
             "        checkpoint=" + "\n".join(_call("CheckpointConfig", {
                 "save": "ckpt_dir", "load": "ckpt_dir", "save_interval": "1000", **fields.get("checkpoint", {}),
                 **({"pretrained_checkpoint": "os.environ['PRETRAINED_CHECKPOINT']"}
                    if "peft" in fields else {})},
                 "        ")) + ",",
             *(["        peft=" + "\n".join(_call("LoRA", fields["peft"], "        ")) + ","]
               if "peft" in fields else []),
             "        rng=RNGConfig(seed=1234),",
             "        dist=" + "\n".join(_call("DistributedInitConfig", fields.get("dist", {}), "        ")) + ",",
             "        mixed_precision=precision,",
             "    )",
             "",
             "",
             'if __name__ == "__main__":',
             "    import sys",
             "",
             "    from megatron.bridge.training.gpt_step import forward_step",
             f"    from megatron.bridge.training.{run} import {run}",
             "    from megatron.bridge.training.utils.omegaconf_utils import process_config_with_overrides",
             "",
             "    # extra arguments are Bridge's Hydra-style overrides, e.g. train.train_iters=500 "
             "checkpoint.save_interval=200",
             f"    {run}(process_config_with_overrides(plan_config(), cli_overrides=sys.argv[1:]), forward_step)"]
    return "\n".join(lines) + "\n"


NEEDS = ["Megatron-Bridge 0.3 with its CUDA stack (pip install megatron-bridge: Megatron-Core, Transformer Engine); "
         "for a LoRA plan PRETRAINED_CHECKPOINT, the base model's Megatron checkpoint",
         "data: DATA_PREFIX (a Megatron .bin/.idx prefix) and TOKENIZER (a Hugging Face tokenizer name or path); "
         "without them the job trains on Megatron's mock data with NullTokenizer",
         "CKPT_DIR (checkpoints are saved there and resumed from), TRAIN_STEPS (run length)"]


def bridge_files(doc: PlanDocument, strict: bool, name: str = "bridge") -> dict[str, str]:
    """bridge_pretrain.py, bridge.launch.sh, bridge.sbatch."""
    b = Build(doc, "Megatron-Bridge")
    fields = bridge_fields(doc, b)
    warnings = b.warnings(strict)
    head = header(doc, "megatron-bridge", NEEDS)
    c = doc.cluster
    launch = Launch(
        name=name, program=[f'"$HERE/{name}_pretrain.py"'], env=required_env(doc),
        setup=[f'export CKPT_DIR=${{CKPT_DIR:-$HERE/checkpoints/{doc.hash}}}',
               "export TRAIN_STEPS=${TRAIN_STEPS:?set TRAIN_STEPS, the number of optimizer steps to run}",
               *(["export PRETRAINED_CHECKPOINT=${PRETRAINED_CHECKPOINT:?set PRETRAINED_CHECKPOINT to the base "
                  "model's Megatron checkpoint: LoRA trains adapters on it}"] if "peft" in fields else []),
               "# data and tokenizer: Megatron's mock data unless DATA_PREFIX is set",
               'if [ -n "${DATA_PREFIX:-}" ]; then',
               '  export DATA_PREFIX TOKENIZER="${TOKENIZER:?set TOKENIZER to your tokenizer (Hugging Face name '
               'or path)}"',
               "fi"],
        loss_rank=c.num_gpus - 1)
    head = [*head, "extra arguments to the launch script are Megatron-Bridge overrides, section.field=value "
                   "(train.train_iters=500, model.recompute_granularity=full, ...)"]
    return {f"{name}_pretrain.py": _script(doc, b, fields, head),
            f"{name}.launch.sh": launch_script(doc, launch, head + warnings + b.notes),
            f"{name}.sbatch": sbatch_script(doc, launch, head + warnings)}


def bridge_warnings(doc: PlanDocument) -> list[str]:
    b = Build(doc, "Megatron-Bridge")
    bridge_fields(doc, b)
    return b.warnings(strict=False)


__all__: list[str] = ["BRIDGE_FIELDS", "PRECISION_RECIPES", "bridge_fields", "bridge_files", "bridge_warnings",
                      "translate"]
