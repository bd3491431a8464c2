"""torchtitan 0.3.0 export: a Python config-registry module, and launch scripts that name it with --module / --config.

Why a module and not command-line overrides alone: torchtitan 0.3.0 reads no TOML, its CLI cannot
reach the model's architecture (RoPE base and scaling, norm epsilon are fields of the model config,
which the CLI suppresses), and its activation-checkpointing choice is a tyro subcommand after which
nothing can be appended. The generated module builds the whole `Trainer.Config` explicitly (no
registry default is inherited: steps, checkpointing, profiling, optimizer, schedule, data), checks
the model shape against the plan, and leaves the command line free for the user's overrides
(`--hf-assets-path`, `--dataloader.dataset`, ...), which take precedence over the module.

The mapping from plan fields to `Trainer.Config` attributes is the table `TORCHTITAN_FIELDS`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from planner.cost import estimate
from planner.cost.stages import virtual_stage_ranges
from planner.export.architecture import architecture
from planner.export.common import Build, ExportError, comment, finetune_deviation, header, placement_order
from planner.export.launch import Launch, launch_script, sbatch_script
from planner.export.training import optimizer_settings
from planner.framework import framework as framework_profile
from planner.plan import Plan, PlanDocument
from planner.specs.model import ModelSpec

CONFIG_FUNCTION = "planner_job"

# torchtitan's llama3 flavors (torchtitan/models/llama3/__init__.py, 0.3.0): flavor -> (layers, dim,
# heads, kv heads, ffn hidden, vocabulary, tied embeddings). tests/test_export.py checks this table
# against torchtitan's own model_registry.
LLAMA3_FLAVORS: dict[str, tuple[int, int, int, int, int, int, bool]] = {
    "debugmodel": (6, 256, 16, 16, 768, 2048, False),
    "1B": (16, 2048, 32, 8, 8192, 128256, True),
    "3B": (28, 3072, 24, 8, 8192, 128256, True),
    "8B": (32, 4096, 32, 8, 14336, 128256, False),
    "70B": (80, 8192, 64, 8, 28672, 128256, False),
    "405B": (126, 16384, 128, 8, 53248, 128256, False),
}

# torchtitan 0.3.0's other decoder families (torchtitan/models/<package>/__init__.py): (package, flavor) ->
# (layers, dim, heads, vocabulary, tied embeddings, routed experts, experts per token; 0 for dense).
# Each flavor is the published model (its RoPE, norms, window and expert sizes as its model card gives
# them). tests/test_export.py checks this table against torchtitan's own model_registry.
FAMILY_FLAVORS: dict[tuple[str, str], tuple[int, int, int, int, bool, int, int]] = {
    ("qwen3", "debugmodel"): (8, 256, 16, 2048, True, 0, 0),
    ("qwen3", "0.6B"): (28, 1024, 16, 151936, True, 0, 0),
    ("qwen3", "1.7B"): (28, 2048, 16, 151936, True, 0, 0),
    ("qwen3", "4B"): (36, 2560, 32, 151936, True, 0, 0),
    ("qwen3", "8B"): (36, 4096, 32, 151936, False, 0, 0),
    ("qwen3", "14B"): (40, 5120, 40, 151936, False, 0, 0),
    ("qwen3", "32B"): (64, 5120, 64, 151936, False, 0, 0),
    ("qwen3", "debugmodel_moe"): (8, 256, 16, 2048, False, 64, 8),
    ("qwen3", "30B-A3B"): (48, 2048, 32, 151936, False, 128, 8),
    ("qwen3", "235B-A22B"): (94, 4096, 64, 151936, False, 128, 8),
    ("deepseek_v3", "debugmodel"): (6, 256, 16, 2048, False, 8, 3),
    ("deepseek_v3", "16B"): (27, 2048, 16, 102400, False, 64, 6),
    ("deepseek_v3", "236B"): (60, 5120, 128, 102400, False, 160, 6),
    ("deepseek_v3", "671B"): (61, 7168, 128, 129280, False, 256, 8),
    ("gpt_oss", "debugmodel"): (4, 256, 64, 2048, False, 8, 4),
    ("gpt_oss", "20b"): (24, 2880, 64, 201088, False, 32, 4),
    ("gpt_oss", "120b"): (36, 2880, 64, 201088, False, 128, 4),
}

_ORDER = ("tp", "cp", "dp", "pp")  # torchtitan's device mesh (pp, dp_replicate, dp_shard, cp, tp), innermost first

Assignments = list[tuple[str, str]]  # (attribute path under `config`, Python expression)


def _family_package(m: ModelSpec) -> str | None:
    """The torchtitan model package whose architecture `m` has (MLA: deepseek_v3; attention sinks and
    sliding windows: gpt_oss; q/k RMSNorm: qwen3), None for another architecture."""
    if m.kv_lora_rank:
        return "deepseek_v3"
    if m.attention_sinks:
        return "gpt_oss"
    if m.qk_norm == "rmsnorm":
        return "qwen3"
    return None


def model_flavor(m: ModelSpec) -> tuple[str, str]:
    """(torchtitan model package, flavor) with exactly this model's shape (ExportError if none)."""
    shape = (m.num_layers, m.hidden, m.num_heads, m.num_kv_heads, m.ffn_hidden, m.vocab_size, m.tied_embeddings)
    llama_like = (m.position == "rope" and m.norm == "rmsnorm" and m.activation == "swiglu" and not m.bias
                  and not m.qkv_bias and not m.is_moe and m.causal and m.head == "lm" and not m.family_features)
    for flavor, known in LLAMA3_FLAVORS.items():
        if llama_like and shape == known:
            return "llama3", flavor
    package = _family_package(m)
    family_shape = (m.num_layers, m.hidden, m.num_heads, m.vocab_size, m.tied_embeddings, m.num_experts,
                    m.top_k if m.num_experts else 0)
    for (pkg, flavor), known_family in FAMILY_FLAVORS.items():
        if pkg == package and family_shape == known_family:
            return pkg, flavor
    offered = "; ".join(f"{pkg}: {', '.join(f for p, f in FAMILY_FLAVORS if p == pkg)}"
                        for pkg in dict.fromkeys(p for p, _ in FAMILY_FLAVORS))
    raise ExportError(f"torchtitan 0.3.0 ships no model with {m.name}'s architecture and shape (its flavors: "
                      f"llama3: {', '.join(LLAMA3_FLAVORS)}; {offered}; each with its published shape); "
                      f"register a model in torchtitan, or export to Megatron-LM")


def _data_parallel(p: Plan, m: ModelSpec, b: Build) -> Assignments:
    # DDP (replicate) only alone: torchtitan refuses DDP with other parallelisms. Otherwise FSDP2
    # (shard; torchtitan folds cp into the FSDP mesh). FSDP2 has no optimizer-only sharding: without
    # pp it reduce-scatters gradients every micro-batch (ZeRO-2; ZeRO-3 when it also reshards
    # parameters after forward); with pp, torch.distributed.pipelining defers the gradient sync to
    # the last micro-batch and keeps parameters unsharded meanwhile (ZeRO-1).
    if p.zero_stage == 0 and p.tp == 1 and p.pp == 1 and p.cp == 1:
        return [("parallelism.data_parallel_replicate_degree", str(p.dp)),
                ("parallelism.data_parallel_shard_degree", "1")]
    runs = 1 if p.pp > 1 else max(p.zero_stage, 2)
    if runs != p.zero_stage:
        why = ("with pp > 1, torch.distributed.pipelining holds FSDP2's gradients and parameters unsharded until "
               "the last micro-batch" if p.pp > 1 else
               "torchtitan's DDP does not combine with tp / cp, and FSDP2 has no optimizer-only sharding: with "
               "reshard_after_forward=never it still reduce-scatters (shards) gradients every micro-batch")
        b.deviate("zero", f"{why}, so ZeRO-{p.zero_stage} runs as ZeRO-{runs}", zero_stage=runs)
    reshard = "always" if p.zero_stage == 3 and p.pp == 1 else "never"
    replicate, shard = 1, p.dp
    if p.hybrid:  # HSDP: FSDP2 shards over dp_shard x cp and replicates over dp_replicate (outermost)
        if p.shard_group % p.cp:
            b.deviate("shard_group", f"torchtitan's shard group is dp_shard x cp, a multiple of cp {p.cp}; "
                      f"{p.shard_group} is not, so ZeRO shards over all {p.dp * p.cp} ranks", shard_group=None)
        else:
            shard = p.shard_group // p.cp
            replicate = p.dp // shard
    return [("parallelism.data_parallel_replicate_degree", str(replicate)),
            ("parallelism.data_parallel_shard_degree", str(shard)),
            ("parallelism.fsdp_reshard_after_forward", repr(reshard))]


def _tensor(p: Plan, m: ModelSpec, b: Build) -> Assignments:
    return [("parallelism.tensor_parallel_degree", str(p.tp)),
            ("parallelism.enable_sequence_parallel", str(p.sequence_parallel and p.tp > 1))]


def stage_modules(p: Plan, m: ModelSpec) -> list[list[str]]:
    """The module names of every virtual stage (in stage order) under the plan's split, as torchtitan's
    `module_fqns_per_model_part` takes them: the embedding on the first stage, the final norm and
    LM head on the last (the names torchtitan's own split generator uses)."""
    ranges = virtual_stage_ranges(m.num_layers, p.pp, p.vpp, p.first_stage_layers, p.last_stage_layers, p.account)
    out = [[f"layers.{i}" for i in layers] for layers in ranges]
    out[0].insert(0, "tok_embeddings")
    out[-1] += ["norm", "lm_head"]
    return out


def _pipeline(p: Plan, m: ModelSpec, b: Build) -> Assignments:
    if p.pp > 1 and m.tied_embeddings:
        raise ExportError(f"torchtitan 0.3.0 does not pipeline a model with tied embeddings ({m.name}: 'Weight "
                          "tying is not supported with Pipeline Parallel'); re-plan with --pp 1, or export to "
                          "Megatron-LM")
    if p.pp > 1 and m.mtp_layers:
        raise ExportError(f"torchtitan 0.3.0 does not pipeline multi-token prediction ({m.name}: 'MTP does not "
                          "support pipeline parallelism yet'); re-plan with --pp 1, or export to Megatron-LM")
    out = [("parallelism.pipeline_parallel_degree", str(p.pp))]
    if p.pp > 1:
        schedule = {"1f1b": "1F1B", "gpipe": "GPipe", "interleaved-1f1b": "Interleaved1F1B"}[p.schedule]
        out += [("parallelism.pipeline_parallel_schedule", repr(schedule)),
                ("parallelism.pipeline_parallel_microbatch_size", str(p.micro_batch))]
        if p.uneven:  # the plan's own split, stage by stage (torchtitan counts stages from this list)
            out.append(("parallelism.module_fqns_per_model_part", repr(stage_modules(p, m))))
        else:  # exactly pp x vpp stages of L / (pp vpp) layers: no layer taken off the first / last stage
            out += [("parallelism.pipeline_parallel_layers_per_stage", str(m.num_layers // (p.pp * p.vpp))),
                    ("parallelism.pipeline_parallel_first_stage_less_layers", "0"),
                    ("parallelism.pipeline_parallel_last_stage_less_layers", "0")]
    return out


def _context(p: Plan, m: ModelSpec, b: Build) -> Assignments:
    return [("parallelism.context_parallel_degree", str(p.cp))]


def _experts(p: Plan, m: ModelSpec, b: Build) -> Assignments:
    return [("parallelism.expert_parallel_degree", str(p.ep))] if m.is_moe else []


def _placement(p: Plan, m: ModelSpec, b: Build) -> Assignments:
    if placement_order(p) != placement_order(p, _ORDER):
        b.deviate("placement", f"torchtitan's device mesh orders ranks tp,cp,dp,pp, not {','.join(p.placement)}: "
                  "groups span other links", placement=_ORDER)
    return []


def _batch(p: Plan, m: ModelSpec, b: Build) -> Assignments:
    # With pp the schedule splits the local batch into micro-batches; without, torchtitan
    # accumulates gradients over global / (local x dp) steps.
    local = p.micro_batch * (p.grad_accum if p.pp > 1 else 1)
    return [("training.local_batch_size", str(local)), ("training.global_batch_size", str(p.global_batch)),
            ("training.seq_len", str(m.seq_len))]


# Low-precision recipes as torchtitan's model converters (torchtitan/components/quantization): the layers'
# linear GEMMs only, the LM head ("lm_head") left in bf16 as the planner prices it. torchtitan 0.3.0's float8
# converter offers only row-wise recipes ("rowwise", "rowwise_with_gw_hp"), so per-tensor fp8 deviates.
CONVERTERS: dict[str, tuple[str, str]] = {
    "fp8-rowwise": ("from torchtitan.components.quantization.float8 import Float8LinearConverter",
                    "Float8LinearConverter.Config(recipe_name='rowwise', filter_fqns=['lm_head'])"),
    "mxfp8": ("from torchtitan.components.quantization.mx import MXFP8LinearConverter",
              "MXFP8LinearConverter.Config(fqns=['layers.'])"),
    "nvfp4": ("from torchtitan.components.quantization.nvfp4 import NVFP4LinearConverter",
              "NVFP4LinearConverter.Config(fqns=['layers.'])"),
}


# On MoE models the router's gate stays in bf16 (its few outputs, one per expert, are below the 4-bit
# kernels' 128-wide minimum), as torchtitan's own MoE recipes select: attention, shared experts, dense FFNs.
MOE_LINEAR_CONVERTERS: dict[str, tuple[str, str]] = {
    "fp8-rowwise": (CONVERTERS["fp8-rowwise"][0],
                    "Float8LinearConverter.Config(recipe_name='rowwise', filter_fqns=['lm_head', 'router'])"),
    "mxfp8": (CONVERTERS["mxfp8"][0],
              "MXFP8LinearConverter.Config(fqns=['attention', 'shared_experts', 'feed_forward'])"),
    "nvfp4": (CONVERTERS["nvfp4"][0],
              "NVFP4LinearConverter.Config(fqns=['attention', 'shared_experts', 'feed_forward'])"),
}

# The routed experts' grouped GEMMs of MoE models (not nn.Linear: the linear converters leave them alone).
EXPERT_CONVERTERS: dict[str, tuple[str, str]] = {
    "fp8-rowwise": ("from torchtitan.components.quantization.float8 import Float8GroupedExpertsConverter",
                    "Float8GroupedExpertsConverter.Config()"),
    "mxfp8": ("from torchtitan.components.quantization.mx import MXFP8GroupedExpertsConverter",
              "MXFP8GroupedExpertsConverter.Config()"),
}


def _recipe(p: Plan) -> str:
    """The low-precision recipe torchtitan runs `p` in: its float8 converter is row-wise only."""
    return "fp8-rowwise" if p.dtype == "fp8" else p.dtype


def converters(p: Plan, m: ModelSpec) -> list[tuple[str, str]]:
    """Every converter `p` needs on `m`: the linear layers', then (MoE) the routed experts'."""
    recipe = _recipe(p)
    linear = (MOE_LINEAR_CONVERTERS if m.is_moe else CONVERTERS).get(recipe)
    experts = EXPERT_CONVERTERS.get(recipe) if m.is_moe else None
    return [c for c in (linear, experts) if c]


def _precision(p: Plan, m: ModelSpec, b: Build) -> Assignments:
    if p.dtype == "fp16":
        b.deviate("dtype", "torchtitan trains in bfloat16 or float32, not float16; bfloat16 is used", dtype="bf16")
    elif p.dtype == "fp8":
        b.deviate("dtype", "torchtitan's float8 converter has only row-wise scaling recipes, so the per-tensor "
                  "fp8 recipe runs as fp8-rowwise (Float8LinearConverter, recipe 'rowwise')", dtype="fp8-rowwise")
    recipe = _recipe(p)
    if m.is_moe and recipe in CONVERTERS and recipe not in EXPERT_CONVERTERS:
        b.deviate("dtype", f"torchtitan 0.3.0 has no {recipe} converter for the routed experts' grouped GEMMs: "
                  f"they run in bf16, the other linear layers in {recipe}")
    return [("training.dtype", "'float32'"),  # master weights and optimizer states
            ("training.mixed_precision_param", repr("float32" if p.dtype == "fp32" else "bfloat16")),
            ("training.mixed_precision_reduce", "'float32'")]


def _recompute(p: Plan, m: ModelSpec, b: Build) -> Assignments:
    """torchtitan's SelectiveAC (per-op: attention and every other matmul output kept) is op-selective;
    it has no attention-only (Megatron) or named-matmul (JAX) policy: those deviate to the per-op one."""
    if p.recompute == "full":
        if p.recompute_every > 1:
            b.deviate("recompute_every", f"torchtitan 0.3.0's FullAC recomputes every layer, not 1 of every "
                      f"{p.recompute_every}", recompute_every=1)
        return [("activation_checkpoint", "FullAC.Config()")]
    if p.recompute == "none":
        return [("activation_checkpoint", "None")]
    if p.recompute != "op-selective":
        per_op = dataclasses.replace(p, recompute="op-selective")
        if estimate(b.doc.model, b.doc.cluster, per_op)["fits"]:
            b.deviate("recompute", f"torchtitan has no {p.recompute} recompute; its per-op selective checkpointing "
                      "(attention and every other matmul output kept) is exported", recompute="op-selective")
        else:
            b.deviate("recompute", f"torchtitan has no {p.recompute} recompute and its per-op selective one does "
                      "not fit; full recompute is exported", recompute="full")
            return [("activation_checkpoint", "FullAC.Config()")]
    return [("activation_checkpoint", "SelectiveAC.Config()")]


def _cuda_graphs(p: Plan, m: ModelSpec, b: Build) -> Assignments:
    # torchtitan 0.3.0 refuses CUDA graphs with pp (and most EP backends); the plan assumes none.
    return [("training.disable_cuda_graphs", "True")]


def _compile(p: Plan, m: ModelSpec, b: Build) -> Assignments:
    """torch.compile and async TP as the plan's torchtitan profile priced them (planner frameworks): its
    `compiled` switch, and async TP where it overlaps all of TP's communication (which needs compile);
    the loss compiled with the model (torchtitan's default components) unless the profile's release left
    it eager (the `-2024` profiles, priced with the eager loss's memory); a plan priced under another
    framework is exported eager, torchtitan's default."""
    fw = framework_profile(p.framework) if (p.framework or "").startswith("torchtitan") else None
    compiled = bool(fw and fw.compiled)
    overlaps = bool(fw and fw.tp_overlap in ("all", "micro-pipeline"))
    if overlaps and p.tp == 1:
        b.note(f"{p.framework} on tp 1: no tensor-parallel collectives to overlap; compile only")
    out = [("compile.enable", str(compiled)), ("compile.enable_async_tensor_parallel", str(overlaps and p.tp > 1))]
    if compiled and fw is not None and fw.cross_entropy != "compiled":  # a release that left the loss eager
        out.append(("compile.components", "['model']"))
    return out


def _attention(p: Plan, m: ModelSpec, b: Build) -> Assignments:
    if not p.flash_attention:
        b.note("the plan assumes unfused attention; torchtitan uses FlexAttention (fused: less memory)")
    return []


# Plan field -> Trainer.Config attributes. Add precision recipes (converters) / AC policies here.
TORCHTITAN_FIELDS: dict[str, Callable[[Plan, ModelSpec, Build], Assignments]] = {
    "dp/zero_stage": _data_parallel,
    "tp/sequence_parallel": _tensor,
    "pp/vpp/schedule/micro_batch": _pipeline,
    "cp": _context,
    "ep": _experts,
    "placement": _placement,
    "micro_batch/global_batch": _batch,
    "dtype": _precision,
    "recompute": _recompute,
    "cuda graphs": _cuda_graphs,
    "framework": _compile,
    "flash_attention": _attention,
    "finetune": finetune_deviation,
}


def _job_settings(doc: PlanDocument) -> Assignments:
    """Everything else a launch needs, set so that no registry default is inherited silently."""
    o = optimizer_settings(doc.model)
    return [("training.steps", "10_000  # the launch script passes --training.steps $TRAIN_STEPS"),
            ("training.max_norm", repr(o.clip_grad)),
            ("optimizer", f"default_adamw(lr={o.lr!r}, betas={o.betas!r}, eps={o.eps!r}, "
                          f"weight_decay={o.weight_decay!r})"),
            ("lr_scheduler.warmup_steps", str(o.warmup_steps)),
            ("lr_scheduler.decay_ratio", "None  # decay over all steps after warm-up"),
            ("lr_scheduler.decay_type", "'cosine'"),
            ("lr_scheduler.min_lr_factor", repr(round(o.min_lr / o.lr, 6))),
            ("checkpoint.enable", "True"),
            ("checkpoint.folder", "'checkpoint'  # under --dump-folder"),
            ("checkpoint.interval", "1000"),
            ("checkpoint.async_mode", "'disabled'"),
            ("profiler.enable_profiling", "False"),
            ("profiler.enable_memory_snapshot", "False"),
            ("metrics.log_freq", "1"),
            ("metrics.enable_tensorboard", "False"),
            ("validator.enable", "False"),
            ("dataloader.dataset", "'c4'  # placeholder: the launch script passes --dataloader.dataset $DATASET"),
            ("hf_assets_path", "'<HF_ASSETS_PATH>'  # placeholder: the launch script passes --hf-assets-path")]


def _llama3_model_lines(m: ModelSpec, flavor: str) -> list[str]:
    """Check the llama3 flavor's shape, then set the plan's RoPE and norm epsilon (torchtitan's llama3
    flavors are Llama 3.1's; the same shapes serve Llama 3.0 and others)."""
    arch = architecture(m)
    layers, dim, heads, kv, ffn, vocab, tied = LLAMA3_FLAVORS[flavor]
    rope_lines = [f"        layer.attention.rope.theta = {arch.rope_theta!r}"]
    if arch.rope_scaling is None:
        rope_lines.append("        layer.attention.rope.scaling = 'none'  # torchtitan's flavors are Llama 3.1")
    else:
        s = arch.rope_scaling
        rope_lines += ["        layer.attention.rope.scaling = 'llama'",
                       f"        layer.attention.rope.scaling_factor = {s.factor!r}",
                       f"        layer.attention.rope.low_freq_factor = {s.low_freq_factor!r}",
                       f"        layer.attention.rope.high_freq_factor = {s.high_freq_factor!r}",
                       f"        layer.attention.rope.original_max_position_embeddings = {s.original_max_position}"]
    return ["    # the plan's model, exactly: shape, GQA, tied embeddings, then RoPE and norm epsilon "
            f"({arch.source})",
            "    shape = (len(model.layers), model.dim, model.layers[0].attention.n_heads,",
            "             model.layers[0].attention.n_kv_heads or model.layers[0].attention.n_heads,",
            "             model.layers[0].feed_forward.w1.out_features, model.vocab_size, model.enable_weight_tying)",
            f"    expected = {(layers, dim, heads, kv, ffn, vocab, tied)!r}",
            "    if shape != expected:",
            f"        raise ValueError(f'torchtitan llama3 {flavor} is {{shape}}; {m.name} is {{expected}}')",
            "    for layer in model.layers:",
            *rope_lines,
            f"        layer.attention_norm.eps = {arch.norm_eps!r}",
            f"        layer.ffn_norm.eps = {arch.norm_eps!r}",
            f"    model.norm.eps = {arch.norm_eps!r}"]


def _family_model_lines(m: ModelSpec, package: str, flavor: str) -> list[str]:
    """Check a published-model flavor's shape (its RoPE, norms, window and expert sizes are the model
    card's, as the planner's preset of the same model)."""
    expected = FAMILY_FLAVORS[(package, flavor)] + ((m.mtp_layers,) if package == "deepseek_v3" else ())
    mtp = ", len(model.mtp_layers or [])" if package == "deepseek_v3" else ""
    return [f"    # the plan's model, exactly: torchtitan's {package} {flavor} is the published model (shape checked)",
            "    moe = [layer.moe for layer in model.layers if layer.moe is not None]",
            "    shape = (len(model.layers), model.dim, model.layers[0].attention.n_heads, model.vocab_size,",
            "             model.enable_weight_tying, max((x.num_experts for x in moe), default=0),",
            f"             moe[0].router.top_k if moe else 0{mtp})",
            f"    expected = {expected!r}",
            "    if shape != expected:",
            f"        raise ValueError(f'torchtitan {package} {flavor} is {{shape}}; {m.name} is {{expected}}')"]


def _module_text(doc: PlanDocument, b: Build, head: list[str], package: str, flavor: str) -> str:
    m = doc.model
    convs = converters(doc.plan, m)
    mtp = package == "deepseek_v3" and m.mtp_layers > 0
    registry_args = [repr(flavor)] + ([f"num_mtp_layers={m.mtp_layers}"] if mtp else [])
    if convs:
        registry_args.append(f"converters=[{', '.join(c[1] for c in convs)}]")
    loss = ("MTPLoss.Config(global_vocab_size=decoder_vocab_size(model_spec))" if mtp else
            "ChunkedLossWrapper.Config(loss_fn=CrossEntropyLoss.Config("
            "global_vocab_size=decoder_vocab_size(model_spec)))")
    model_lines = (_llama3_model_lines(m, flavor) if package == "llama3"
                   else _family_model_lines(m, package, flavor))
    assignments: Assignments = []
    for rule in TORCHTITAN_FIELDS.values():
        assignments += rule(doc.plan, m, b)
    warnings = b.warnings(strict=False)
    lines = [comment(head + warnings + b.notes).rstrip("\n"),
             '"""torchtitan config registry for one plan: torchrun ... -m torchtitan.train --module '
             f'<this module> --config {CONFIG_FUNCTION}."""',
             "",
             "from torchtitan.components.checkpoint import CheckpointManager",
             "from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss",
             "from torchtitan.components.metrics import MetricsProcessor",
             "from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw",
             "from torchtitan.components.validate import Validator",
             "from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig",
             "from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC  # noqa: F401",
             "from torchtitan.hf_datasets.text_datasets import HuggingFaceTextDataLoader",
             "from torchtitan.models.common.config_utils import decoder_vocab_size",
             *(["from torchtitan.models.deepseek_v3.mtp import MTPLoss"] if mtp else []),
             f"from torchtitan.models.{package} import model_registry",
             "from torchtitan.tools.profiler import Profiler",
             "from torchtitan.trainer import Trainer",
             *[c[0] for c in convs],
             "",
             "",
             f"def {CONFIG_FUNCTION}() -> Trainer.Config:",
             f'    """{m.name}: {doc.plan.describe()} on {doc.cluster.num_gpus} GPUs (planner {doc.hash})."""',
             f"    model_spec = model_registry({', '.join(registry_args)})"
             + ("  # the layers' linear GEMMs in low precision, the LM head in bf16" if convs else "  # bf16"),
             "    model = model_spec.model",
             *model_lines,
             "    config = Trainer.Config(",
             "        model_spec=model_spec,",
             f"        loss={loss},",
             "        training=TrainingConfig(),",
             "        parallelism=ParallelismConfig(),",
             "        dataloader=HuggingFaceTextDataLoader.Config(),",
             "        optimizer=default_adamw(),",
             "        lr_scheduler=LRSchedulersContainer.Config(),",
             "        checkpoint=CheckpointManager.Config(),",
             "        metrics=MetricsProcessor.Config(),",
             "        profiler=Profiler.Config(),",
             "        compile=CompileConfig(),",
             "        validator=Validator.Config(),",
             "    )",
             "    # the plan (planner.export.torchtitan.TORCHTITAN_FIELDS)"]
    lines += [f"    config.{path} = {expr}" for path, expr in assignments]
    lines.append("    # the rest of the job, set explicitly")
    lines += [f"    config.{path} = {expr}" for path, expr in _job_settings(doc)]
    lines.append("    return config")
    return "\n".join(lines) + "\n"


NEEDS = ["HF_ASSETS_PATH: a folder with the model's Hugging Face tokenizer files (tokenizer.json, "
         "tokenizer_config.json); torchtitan has no mock-data option",
         "DATASET (default c4, streamed from the Hugging Face hub; or a dataset torchtitan registers) and "
         "optionally DATASET_PATH (a local copy)",
         "DUMP_FOLDER (logs, checkpoints under DUMP_FOLDER/checkpoint, resumed from), TRAIN_STEPS (run length)"]


def pipeline_loss_rank(doc: PlanDocument) -> int:
    """Global rank that logs the loss: rank 0 without pp, else the first rank of the last stage (pp outermost)."""
    p = doc.plan
    return 0 if p.pp == 1 else (p.pp - 1) * (p.world_size // p.pp)


def torchtitan_files(doc: PlanDocument, strict: bool, name: str = "torchtitan") -> dict[str, str]:
    """torchtitan_job.py (config registry), torchtitan.launch.sh, torchtitan.sbatch."""
    b = Build(doc, "torchtitan")
    package, flavor = model_flavor(doc.model)
    strict_check = Build(doc, "torchtitan")
    for rule in TORCHTITAN_FIELDS.values():
        rule(doc.plan, doc.model, strict_check)
    warnings = strict_check.warnings(strict)
    head = header(doc, "torchtitan", NEEDS)
    module = f"{name}_job"
    launch = Launch(
        name=name, program=["-m", "torchtitan.train"],
        setup=['HF_ASSETS_PATH=${HF_ASSETS_PATH:?set HF_ASSETS_PATH to a folder with the tokenizer files}',
               'DATASET=${DATASET:-c4}',
               'DATA_ARGS=(--dataloader.dataset "$DATASET")',
               'if [ -n "${DATASET_PATH:-}" ]; then DATA_ARGS+=(--dataloader.dataset-path "$DATASET_PATH"); fi',
               f'DUMP_FOLDER=${{DUMP_FOLDER:-$HERE/outputs/{doc.hash}}}',
               'TRAIN_STEPS=${TRAIN_STEPS:?set TRAIN_STEPS, the number of optimizer steps to run}',
               f'export PYTHONPATH="$HERE${{PYTHONPATH:+:$PYTHONPATH}}"  # so that --module {module} imports'],
        args=[f"--module {module} --config {CONFIG_FUNCTION}",
              '--hf-assets-path "$HF_ASSETS_PATH" "${DATA_ARGS[@]}" --dump-folder "$DUMP_FOLDER"',
              '--training.steps "$TRAIN_STEPS"'],
        loss_rank=pipeline_loss_rank(doc), log_filter=True)
    return {f"{module}.py": _module_text(doc, b, head, package, flavor),
            f"{name}.launch.sh": launch_script(doc, launch, head + warnings + b.notes),
            f"{name}.sbatch": sbatch_script(doc, launch, head + warnings)}


def torchtitan_warnings(doc: PlanDocument) -> list[str]:
    b = Build(doc, "torchtitan")
    model_flavor(doc.model)
    for rule in TORCHTITAN_FIELDS.values():
        rule(doc.plan, doc.model, b)
    return b.warnings(strict=False)
