"""Exports to Megatron-LM, torchtitan and DeepSpeed: run through the frameworks' own code where they install
(torchtitan's ConfigManager + Trainer on the fake backend, DeepSpeed's DeepSpeedConfig), the model's exact
architecture from the published configs, the multi-node launch lines exercised with two local launchers,
and the committed examples reproducible. Megatron-Core's own parser runs in benchmarks/check_exports.sh
(it needs Python >= 3.12); its output is recorded in examples/exports/README.md."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import pytest

from planner.cli import main
from planner.cost import estimate
from planner.errors import PlannerError
from planner.export import FORMATS, ExportError, deepspeed_config, export_files, export_plan, export_warnings
from planner.export.architecture import architecture
from planner.export.common import parse_args_file
from planner.export.torchtitan import FAMILY_FLAVORS, LLAMA3_FLAVORS, model_flavor, pipeline_loss_rank
from planner.plan import Plan, PlanDocument, load_plan, save_plan
from planner.specs.catalog import load_cluster, load_model, model_preset
from planner.specs.model import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((ROOT / "tests/fixtures/framework_names.json").read_text())
EXAMPLES = ROOT / "examples/exports"
HAS_TORCHTITAN = find_spec("torchtitan") is not None and find_spec("triton") is not None
HAS_DEEPSPEED = find_spec("deepspeed") is not None
HAS_TORCHAO = find_spec("torchao") is not None
needs_torchtitan = pytest.mark.skipif(not HAS_TORCHTITAN, reason="torchtitan 0.3.0 (+ triton) not installed: "
                                      "scripts/test.sh installs them; the export's own framework check is skipped")
needs_torchao = pytest.mark.skipif(not (HAS_TORCHTITAN and HAS_TORCHAO), reason="torchtitan 0.3.0 and torchao "
                                   "0.18.0 not installed: scripts/test.sh installs them; the converter check skips")
needs_deepspeed = pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed 0.19.8 not installed: scripts/test.sh "
                                     "installs it; the export's own framework check is skipped")


def make_doc(model: object, cluster: str, gpus: int, **plan: object) -> PlanDocument:
    m = model_preset(model) if isinstance(model, str) else model
    c = load_cluster(cluster, gpus=gpus)
    p = Plan(**plan)  # type: ignore[arg-type]
    return PlanDocument(plan=p, model=m, cluster=c, prediction=estimate(m, c, p))


# torchtitan's "debugmodel" llama3 flavor (6 layers, dim 256): the same code paths as the 70B at a size the
# fake-backend dry run builds in seconds.
DEBUG_LLAMA = dataclasses.replace(model_preset("llama3-8b"), name="llama3-debugmodel", num_layers=6, hidden=256,
                                  num_heads=16, num_kv_heads=16, ffn_hidden=768, vocab_size=2048, seq_len=2048)


def VARIANTS() -> list[PlanDocument]:
    """Plans that exercise every branch of the exporters."""
    qwen_like = dataclasses.replace(model_preset("llama2-7b"), name="qkv-bias-7b", qkv_bias=True,
                                    tied_embeddings=True)
    moe_cf = dataclasses.replace(model_preset("mixtral-8x7b"), capacity_factor=1.25)
    return [
        make_doc("llama3-70b", "dgx-h100", 64, tp=8, pp=4, dp=2, vpp=5, schedule="interleaved-1f1b",
                 micro_batch=1, global_batch=64, sequence_parallel=True, zero_stage=1, recompute="selective"),
        make_doc("gpt3-175b", "dgx-a100-80gb", 64, tp=8, pp=8, dp=1, schedule="gpipe", micro_batch=1,
                 global_batch=16, recompute="full"),
        make_doc("mixtral-8x7b", "dgx-h100", 32, tp=2, dp=16, ep=8, micro_batch=1, global_batch=64,
                 sequence_parallel=True, zero_stage=3),
        make_doc(moe_cf, "dgx-h100", 16, tp=1, dp=16, ep=4, micro_batch=1, global_batch=32, zero_stage=2),
        make_doc("llama3-8b", "dgx-h100", 16, dp=8, cp=2, micro_batch=1, global_batch=16),
        make_doc("gpt2", "dgx-a100-80gb", 8, dp=8, micro_batch=4, global_batch=64, dtype="fp32"),
        make_doc("llama2-7b", "dgx-h100", 16, tp=2, pp=2, dp=4, micro_batch=2, global_batch=64, dtype="fp16",
                 zero_stage=2, placement=("tp", "cp", "pp", "dp")),
        make_doc(qwen_like, "dgx-h100", 8, tp=2, dp=4, micro_batch=1, global_batch=8, zero_stage=3,
                 flash_attention=False, placement=("dp", "tp", "cp", "pp")),
        make_doc("bert-large", "dgx-a100-80gb", 8, tp=2, dp=4, micro_batch=8, global_batch=64),
        make_doc("llama3-405b", "dgx-b200", 56, tp=8, pp=7, micro_batch=1, global_batch=16, recompute="full",
                 sequence_parallel=True, zero_stage=1),
        make_doc(DEBUG_LLAMA, "dgx-h100", 8, tp=2, pp=2, dp=2, vpp=3, schedule="interleaved-1f1b", micro_batch=1,
                 global_batch=16, sequence_parallel=True, zero_stage=1, recompute="selective"),
        # expert tensor parallelism narrower than tp (MoE parallel folding)
        make_doc("mixtral-8x7b", "dgx-h100", 32, tp=4, etp=1, ep=8, dp=8, micro_batch=1, global_batch=64,
                 sequence_parallel=True, zero_stage=1),
        # NeMo's FP8 recipe: FP8 primary weights gathered by the distributed optimizer
        make_doc("llama3-8b", "dgx-h100", 16, tp=2, dp=8, micro_batch=1, global_batch=32, sequence_parallel=True,
                 zero_stage=1, dtype="fp8", framework="nemo"),
        # Blackwell's block-scaled formats
        make_doc("llama3-8b", "dgx-b200", 8, dp=8, micro_batch=1, global_batch=16, zero_stage=1, dtype="mxfp8"),
        make_doc("llama3-8b", "dgx-b200", 8, tp=2, dp=4, micro_batch=1, global_batch=16, sequence_parallel=True,
                 zero_stage=1, dtype="nvfp4"),
        # hybrid sharding: the distributed optimizer sharded within groups of 8, replicated twice
        make_doc("llama3-8b", "dgx-h100", 16, dp=16, micro_batch=1, global_batch=32, zero_stage=1, shard_group=8),
        # an uneven pipeline: 6 layers over 4 stages, one on the first and the last
        make_doc(DEBUG_LLAMA, "dgx-h100", 8, pp=4, dp=2, micro_batch=1, global_batch=8, zero_stage=1,
                 first_stage_layers=1, last_stage_layers=1),
    ]


def _args(text: str) -> dict[str, str | None]:
    words = parse_args_file(text)
    out: dict[str, str | None] = {}
    for i, w in enumerate(words):
        if w.startswith("--"):
            nxt = words[i + 1] if i + 1 < len(words) else None
            out[w] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def _launch_env(script: str) -> dict[str, str]:
    return dict(re.findall(r"^export ([A-Z_]+)=(\S+)", script, flags=re.M))


# ---- the model's exact architecture ----------------------------------------------------------------


def test_rope_base_and_scaling_are_the_published_ones() -> None:
    """Hugging Face config.json: Meta-Llama-3-70B rope_theta 500000, no scaling; Llama-3.1-405B rope_scaling
    llama3 factor 8; Mixtral 1e6; Llama 2 10000; BERT layer_norm_eps 1e-12."""
    a70 = _args(megatron_text(VARIANTS()[0]))
    assert a70["--rotary-base"] == "500000" and "--use-rope-scaling" not in a70 and a70["--norm-epsilon"] == "1e-05"
    a405 = _args(megatron_text(VARIANTS()[9]))
    assert a405["--rotary-base"] == "500000" and "--use-rope-scaling" in a405 and a405["--rope-scaling-factor"] == "8.0"
    assert architecture(model_preset("mixtral-8x7b")).rope_theta == 1e6
    assert architecture(model_preset("llama2-7b")).rope_theta == 10000.0
    assert architecture(model_preset("bert-large")).norm_eps == 1e-12
    mds = _args(export_files(VARIANTS()[0], "deepspeed")["ds_config.megatron-deepspeed.args"])
    assert mds["--rotary-position-embeddings-theta"] == "500000" and mds["--layernorm-epsilon"] == "1e-05"
    tt = export_files(VARIANTS()[0], "torchtitan")["torchtitan_job.py"]
    assert "rope.theta = 500000.0" in tt and "rope.scaling = 'none'" in tt  # Llama 3, not 3.1
    tt405 = export_files(VARIANTS()[9], "torchtitan")["torchtitan_job.py"]
    assert "rope.scaling = 'llama'" in tt405 and "scaling_factor = 8.0" in tt405


def test_model_extra_fields_override_the_catalog() -> None:
    m = dataclasses.replace(model_preset("llama2-7b"), name="mine", extra={"rope_theta": 250000.0, "norm_eps": 1e-6})
    a = _args(megatron_text(make_doc(m, "dgx-h100", 8, tp=8, micro_batch=1, global_batch=8)))
    assert a["--rotary-base"] == "250000" and a["--norm-epsilon"] == "1e-06"


def megatron_text(doc: PlanDocument) -> str:
    return export_files(doc, "megatron")["megatron.args"]


# ---- Megatron-LM ---------------------------------------------------------------------------------------


def test_megatron_args_realise_the_plan() -> None:
    doc = VARIANTS()[0]  # llama3-70b tp8 pp4 dp2 v5 interleaved, sp, ZeRO-1, selective
    a = _args(megatron_text(doc))
    assert a["--tensor-model-parallel-size"] == "8" and a["--pipeline-model-parallel-size"] == "4"
    assert a["--num-layers-per-virtual-pipeline-stage"] == str(80 // (4 * 5))
    assert a["--context-parallel-size"] == "1" and "--sequence-parallel" in a
    assert "--use-distributed-optimizer" in a and a["--recompute-granularity"] == "selective"
    assert a["--micro-batch-size"] == "1" and a["--global-batch-size"] == "64" and a["--seq-length"] == "8192"
    assert a["--num-query-groups"] == "8" and "--group-query-attention" in a and "--swiglu" in a
    assert a["--normalization"] == "RMSNorm" and a["--position-embedding-type"] == "rope" and "--bf16" in a
    assert a["--lr"] == "0.00015" and a["--adam-beta2"] == "0.95" and a["--lr-decay-style"] == "cosine"
    assert not export_warnings(doc, "megatron")


UNEVEN = -1  # VARIANTS()[UNEVEN]: DEBUG_LLAMA's 6 layers over pp 4 as 1 + 2 + 2 + 1


def test_uneven_pipelines_export_their_split() -> None:
    """An uneven split reaches every framework in its own terms (Megatron-LM's
    --decoder-first/last-pipeline-num-layers and, with virtual stages, --num-virtual-stages-per-pipeline-rank,
    which validate_args requires there; torchtitan's module_fqns_per_model_part, its module names) instead of
    an even split the layer count may not allow."""
    doc = VARIANTS()[UNEVEN]
    a = _args(megatron_text(doc))
    assert a["--decoder-first-pipeline-num-layers"] == "1" and a["--decoder-last-pipeline-num-layers"] == "1"
    interleaved = make_doc("llama3-8b", "dgx-h100", 16, pp=4, vpp=2, dp=4, schedule="interleaved-1f1b",
                           micro_batch=1, global_batch=16, first_stage_layers=6, last_stage_layers=6)
    ai = _args(megatron_text(interleaved))
    assert ai["--num-virtual-stages-per-pipeline-rank"] == "2" and "--num-layers-per-virtual-pipeline-stage" not in ai
    tt = export_files(doc, "torchtitan")["torchtitan_job.py"]
    split = [["tok_embeddings", "layers.0"], ["layers.1", "layers.2"], ["layers.3", "layers.4"],
             ["layers.5", "norm", "lm_head"]]  # by hand: 1 + 2 + 2 + 1 layers
    assert f"config.parallelism.module_fqns_per_model_part = {split!r}" in tt
    assert "pipeline_parallel_layers_per_stage" not in tt
    for fmt in ("megatron", "torchtitan", "megatron-bridge"):
        assert not export_warnings(doc, fmt), fmt
    # Megatron-DeepSpeed's pipeline module balances the layers itself: said, not silently dropped
    assert any("splits the pipeline itself" in w for w in export_warnings(doc, "deepspeed"))


def test_recompute_one_layer_in_k() -> None:
    """Full recompute of 1 of every 2 layers: Megatron-LM's block method recomputing that many layers of each
    virtual stage (32 layers / (pp 2 x vpp 4) = 4 per stage, 2 recomputed), the same in Megatron-Bridge;
    torchtitan 0.3.0's FullAC recomputes every layer and says so."""
    doc = make_doc("llama3-8b", "dgx-h100", 8, pp=2, vpp=4, dp=4, schedule="interleaved-1f1b", micro_batch=1,
                   global_batch=64, recompute="full", recompute_every=2, zero_stage=1)
    a = _args(megatron_text(doc))
    assert a["--recompute-method"] == "block" and a["--recompute-num-layers"] == "2"
    model = _bridge_calls(doc)["GPTModelProvider"]
    assert model["recompute_method"] == "'block'" and model["recompute_num_layers"] == "2"
    assert any("not 1 of every 2" in w for w in export_warnings(doc, "torchtitan"))
    assert not export_warnings(doc, "megatron")


def test_lora_plans_say_the_export_trains_every_weight() -> None:
    """Megatron-LM, torchtitan and DeepSpeed exports write no LoRA adapters: the job trains every weight,
    which the plan never priced (here it no longer fits: each weight's gradient and optimizer state), so
    each says so with the planner's estimate of what it runs, and --strict refuses. Megatron-Bridge runs
    LoRA itself: its job fine-tunes adapters of the plan's rank on the planner's targets (Megatron-Core's
    module names) from a base checkpoint the launch script requires."""
    doc = make_doc("llama3-8b", "dgx-h100", 8, dp=8, micro_batch=1, global_batch=64, zero_stage=1,
                   finetune="lora", lora_rank=16)
    files = export_files(doc, "megatron-bridge")
    peft = _bridge_calls(doc)["LoRA"]
    assert peft["dim"] == "16" and peft["target_modules"] == "['linear_qkv', 'linear_proj', 'linear_fc1', 'linear_fc2']"
    assert "    finetune(process_config_with_overrides(" in files["bridge_pretrain.py"]
    assert "PRETRAINED_CHECKPOINT:?" in files["bridge.launch.sh"] and not export_warnings(doc, "megatron-bridge")
    for fmt in ("megatron", "torchtitan", "deepspeed"):
        warnings = export_warnings(doc, fmt)
        assert any("no LoRA adapters: the job trains every weight" in w for w in warnings), fmt
        assert any("instead of" in w and "lora16" in w for w in warnings), fmt  # the re-estimate
        with pytest.raises(ExportError, match="cannot run this plan exactly"):
            export_files(doc, fmt, strict=True)
    # the full fine-tuning Megatron-LM runs holds 16 B per weight more than the LoRA plan: out of memory here
    assert any("DOES NOT FIT" in w for w in export_warnings(doc, "megatron"))


def test_cuda_device_max_connections_where_megatron_asserts_it() -> None:
    """megatron/training/arguments.py: TP or CP before Blackwell (arch < 10) needs CUDA_DEVICE_MAX_CONNECTIONS=1;
    Megatron-FSDP needs it unset; Blackwell needs nothing."""
    launch = export_files(VARIANTS()[0], "megatron")["megatron.launch.sh"]  # H100, tp8
    assert _launch_env(launch).get("CUDA_DEVICE_MAX_CONNECTIONS") == "1"
    blackwell = export_files(VARIANTS()[9], "megatron")["megatron.launch.sh"]  # B200, tp8
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in _launch_env(blackwell)
    fsdp = make_doc("llama3-8b", "dgx-h100", 16, tp=2, dp=8, micro_batch=1, global_batch=16, zero_stage=3)
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in _launch_env(export_files(fsdp, "megatron")["megatron.launch.sh"])


@pytest.mark.parametrize(("zero", "expect"), [(0, set()), (1, {"--use-distributed-optimizer"}),
                                              (2, {"--use-megatron-fsdp", "optim_grads"}),
                                              (3, {"--use-megatron-fsdp", "optim_grads_params"})])
def test_megatron_zero_stages(zero: int, expect: set[str]) -> None:
    doc = make_doc("llama3-8b", "dgx-h100", 8, dp=8, micro_batch=1, global_batch=16, zero_stage=zero)
    words = set(parse_args_file(megatron_text(doc)))
    assert expect <= words
    if zero == 0:
        assert "--use-megatron-fsdp" not in words and "--use-distributed-optimizer" not in words


def test_megatron_gpipe_deviation_and_strict() -> None:
    doc = VARIANTS()[1]  # gpt3 tp8 pp8 gpipe full recompute
    a = _args(megatron_text(doc))
    assert a["--recompute-granularity"] == "full" and a["--position-embedding-type"] == "learned_absolute"
    warnings = export_warnings(doc, "megatron")
    assert any("GPipe" in w for w in warnings) and any("planner estimate" in w for w in warnings)
    with pytest.raises(ExportError, match="cannot run this plan exactly"):
        export_files(doc, "megatron", strict=True)
    z1 = make_doc("llama2-7b", "dgx-h100", 16, tp=2, pp=2, dp=4, micro_batch=2, global_batch=64, zero_stage=1,
                  placement=("tp", "cp", "pp", "dp"))
    assert "--use-tp-pp-dp-mapping" in _args(megatron_text(z1))
    # Megatron-FSDP (ZeRO-2/3) takes the default order only: Megatron-Bridge's validate refuses the mapping
    fsdp = VARIANTS()[6]
    assert "--use-tp-pp-dp-mapping" not in _args(megatron_text(fsdp))
    warned = export_warnings(fsdp, "megatron")
    assert any("Megatron-FSDP (ZeRO-2/3) runs with the default rank order" in w for w in warned)


# ---- Megatron-Bridge ---------------------------------------------------------------------------------------

# The mixed-precision recipes Megatron-Bridge 0.3.1 registers (megatron/bridge/training/mixed_precision.py).
BRIDGE_RECIPES = {"bf16_mixed", "fp16_mixed", "bf16_with_fp8_delayed_scaling_mixed",
                  "fp16_with_fp8_delayed_scaling_mixed", "bf16_with_mxfp8_mixed", "fp16_with_mxfp8_mixed",
                  "bf16_with_fp8_current_scaling_mixed", "bf16_with_fp8_subchannel_scaling_mixed",
                  "bf16_with_nvfp4_mixed"}


def _bridge_calls(doc: PlanDocument) -> dict[str, dict[str, str]]:
    """The keyword arguments of every config constructor the exported Bridge job calls, as source text."""
    tree = ast.parse(export_files(doc, "megatron-bridge")["bridge_pretrain.py"])
    calls: dict[str, dict[str, str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            calls.setdefault(node.func.id, {}).update({k.arg: ast.unparse(k.value) for k in node.keywords if k.arg})
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "get_mixed_precision_config":
            calls["recipe"] = {"name": ast.literal_eval(node.args[0])}
    return calls


@pytest.mark.parametrize("index", range(len(VARIANTS())))
def test_bridge_job_sets_what_the_megatron_flags_set(index: int) -> None:
    """Megatron-Bridge's config fields are the ones Megatron-LM derives its flags into: the same parallel
    sizes, batch, shape and RoPE as the Megatron-LM export of the same plan."""
    doc = VARIANTS()[index]
    try:
        a = _args(megatron_text(doc))
    except ExportError:
        with pytest.raises(ExportError):
            export_files(doc, "megatron-bridge")
        return
    if not doc.model.causal:
        return  # refused: test_bridge_refuses_encoders
    calls = _bridge_calls(doc)
    model, train = calls["GPTModelProvider"], calls["TrainingConfig"]
    for flag, name in (("--tensor-model-parallel-size", "tensor_model_parallel_size"),
                       ("--pipeline-model-parallel-size", "pipeline_model_parallel_size"),
                       ("--context-parallel-size", "context_parallel_size"), ("--num-layers", "num_layers"),
                       ("--hidden-size", "hidden_size"), ("--num-attention-heads", "num_attention_heads"),
                       ("--ffn-hidden-size", "ffn_hidden_size"), ("--seq-length", "seq_length"),
                       ("--num-query-groups", "num_query_groups"), ("--rotary-base", "rotary_base"),
                       ("--expert-model-parallel-size", "expert_model_parallel_size")):
        assert model.get(name) == a.get(flag), (flag, name)
    assert train["micro_batch_size"] == a["--micro-batch-size"]
    assert train["global_batch_size"] == a["--global-batch-size"]
    assert model.get("virtual_pipeline_model_parallel_size") == (str(doc.plan.vpp) if doc.plan.vpp > 1 else None)
    assert ("sequence_parallel" in model) == ("--sequence-parallel" in a)
    assert calls["DistributedDataParallelConfig"].get("use_distributed_optimizer") == \
        ("True" if "--use-distributed-optimizer" in a else None)
    recipe = calls.get("recipe", {}).get("name")
    assert recipe in BRIDGE_RECIPES if doc.plan.dtype != "fp32" else recipe is None


def test_bridge_job_is_the_model_exactly() -> None:
    """Llama 3.1 405B (Hugging Face config.json): rope_theta 500000 with llama3 scaling factor 8, SwiGLU,
    untied embeddings, vocabulary 128256, RMSNorm eps 1e-5; the pipeline carries a dtype (Megatron-Core
    requires one with pp > 1)."""
    model = _bridge_calls(VARIANTS()[9])["GPTModelProvider"]
    assert model["rotary_base"] == "500000" and model["rope_scaling"] == "True"
    assert model["rope_scaling_factor"] == "8.0"
    assert model["activation_func"] == "F.silu" and model["gated_linear_unit"] == "True"
    assert model["share_embeddings_and_output_weights"] == "False" and model["vocab_size"] == "128256"
    assert model["normalization"] == "'RMSNorm'" and model["layernorm_epsilon"] == "1e-05"
    assert model["pipeline_dtype"] == "torch.bfloat16" and model["add_bias_linear"] == "False"
    gpt2 = _bridge_calls(VARIANTS()[5])["GPTModelProvider"]  # GPT-2: GELU, tied, learned positions, biases
    assert gpt2["activation_func"] == "F.gelu" and gpt2["share_embeddings_and_output_weights"] == "True"
    assert gpt2["position_embedding_type"] == "'learned_absolute'" and gpt2["add_bias_linear"] == "True"
    uneven = _bridge_calls(VARIANTS()[UNEVEN])["GPTModelProvider"]
    assert uneven["num_layers_in_first_pipeline_stage"] == "1" and uneven["num_layers_in_last_pipeline_stage"] == "1"


def test_bridge_precision_recipes() -> None:
    """NeMo's FP8 profile prices FP8 primary weights: the recipe's fp8_param_gather is set; MXFP8 and NVFP4
    map to Bridge's block-scaled recipes."""
    fp8 = export_files(VARIANTS()[12], "megatron-bridge")["bridge_pretrain.py"]
    assert "get_mixed_precision_config('bf16_with_fp8_delayed_scaling_mixed')" in fp8
    assert "precision.fp8_param_gather = True" in fp8
    assert _bridge_calls(VARIANTS()[13])["recipe"]["name"] == "bf16_with_mxfp8_mixed"
    assert _bridge_calls(VARIANTS()[14])["recipe"]["name"] == "bf16_with_nvfp4_mixed"


def test_bridge_refuses_encoders() -> None:
    """GPTModelProvider is a decoder: BERT would silently train as a GPT."""
    with pytest.raises(ExportError, match="bert-large is an encoder"):
        export_files(VARIANTS()[8], "megatron-bridge")


def test_every_megatron_flag_has_a_bridge_translation() -> None:
    from planner.export.bridge import translate

    with pytest.raises(ExportError, match="--no-such-flag has no Megatron-Bridge translation"):
        translate([("--no-such-flag", 1)], VARIANTS()[0].plan)


# ---- launch scripts --------------------------------------------------------------------------------------


def test_launch_scripts_are_multi_node() -> None:
    doc = VARIANTS()[0]  # 64 GPUs = 8 nodes of 8
    for fmt in FORMATS:
        files = export_files(doc, fmt)
        launch = next(t for n, t in files.items() if n.endswith(".launch.sh"))
        sbatch = next(t for n, t in files.items() if n.endswith(".sbatch"))
        for script in (launch, sbatch):
            subprocess.run(["bash", "-n"], input=script, text=True, check=True)
        assert "NNODES=${NNODES:-8}" in launch and "--node-rank \"$NODE_RANK\"" in launch
        assert "--rdzv-endpoint \"$MASTER_ADDR:$MASTER_PORT\"" in launch and "--standalone" not in launch
        assert "#SBATCH --nodes=8" in sbatch and 'NODE_RANK="$SLURM_NODEID"' in sbatch
    # Megatron-LM prints the loss on the last rank (print_rank_last)
    assert "printed by global rank 63: node 7, local rank 7" in export_files(doc, "megatron")["megatron.launch.sh"]


# ---- torchtitan --------------------------------------------------------------------------------------------


def test_torchtitan_module_sets_every_registry_default_explicitly() -> None:
    text = export_files(VARIANTS()[0], "torchtitan")["torchtitan_job.py"]
    compile(text, "torchtitan_job.py", "exec")
    for setting in ("config.training.steps", "config.checkpoint.interval", "config.profiler.enable_profiling = False",
                    "config.compile.enable = False", "config.optimizer = default_adamw(lr=0.00015",
                    "config.parallelism.fsdp_reshard_after_forward = 'never'", "config.validator.enable = False"):
        assert setting in text
    assert "activation-checkpoint:" not in export_files(VARIANTS()[0], "torchtitan")["torchtitan.launch.sh"]


def test_recompute_policies_a_framework_lacks_deviate_to_one_it_has() -> None:
    """torchtitan's SelectiveAC is the per-op policy (op-selective); Megatron's attention-only selective
    and the JAX named-matmul policies are not torchtitan's and deviate to it (or to full where it does
    not fit); Megatron-LM has no per-op policy, so those deviate to full recompute (which keeps less)."""
    def doc(recompute: str, gpus: int = 8, batch: int = 8) -> PlanDocument:
        return make_doc("llama3-8b", "dgx-h100", gpus, dp=gpus, micro_batch=1, global_batch=batch, zero_stage=3,
                        recompute=recompute)

    assert "SelectiveAC.Config()" in export_files(doc("op-selective"), "torchtitan")["torchtitan_job.py"]
    assert not export_warnings(doc("op-selective"), "torchtitan")
    for policy in ("selective", "save-matmuls", "save-attn-proj"):
        assert any(f"torchtitan has no {policy} recompute" in w for w in export_warnings(doc(policy), "torchtitan"))
    for policy in ("op-selective", "save-matmuls-but-mlp-up"):
        warnings = export_warnings(doc(policy), "megatron")
        assert any(f"no per-op recompute policy like {policy}" in w for w in warnings)
        args = export_files(doc(policy), "megatron")["megatron.args"]
        flags = [line for line in args.splitlines() if not line.startswith("#")]
        assert "--recompute-granularity full" in flags and not any(policy in line for line in flags)


def test_torchtitan_zero_mapping_is_stated() -> None:
    # without pp, FSDP2 shards gradients: ZeRO-1 runs as ZeRO-2, and the export says so
    z1 = make_doc(DEBUG_LLAMA, "dgx-h100", 8, tp=2, dp=4, micro_batch=1, global_batch=8, zero_stage=1)
    assert any("ZeRO-1 runs as ZeRO-2" in w for w in export_warnings(z1, "torchtitan"))
    assert any("ZeRO-2 runs as ZeRO-1" in w for w in export_warnings(
        make_doc("llama3-8b", "dgx-h100", 16, tp=2, pp=2, dp=4, micro_batch=1, global_batch=16, zero_stage=2),
        "torchtitan"))
    per_op = make_doc("llama3-70b", "dgx-h100", 64, tp=8, pp=4, dp=2, vpp=5, schedule="interleaved-1f1b",
                      micro_batch=1, global_batch=64, sequence_parallel=True, zero_stage=1, recompute="op-selective")
    assert not export_warnings(per_op, "torchtitan")  # ZeRO-1 with pp: deferred gradient sync
    with pytest.raises(ExportError, match="ships no model"):
        export_files(VARIANTS()[1], "torchtitan")


@needs_torchtitan
def test_llama3_flavors_match_torchtitan() -> None:
    from torchtitan.models.llama3 import model_registry

    for flavor, expected in LLAMA3_FLAVORS.items():
        m = model_registry(flavor).model
        a = m.layers[0].attention
        shape = (len(m.layers), m.dim, a.n_heads, a.n_kv_heads or a.n_heads, m.layers[0].feed_forward.w1.out_features,
                 m.vocab_size, m.enable_weight_tying)
        assert shape == expected, flavor


@needs_torchtitan
@pytest.mark.parametrize("doc_index", [10, UNEVEN], ids=["debug-tp2-pp2-dp2-v3", "debug-pp4-uneven"])
def test_torchtitan_builds_the_trainer_on_the_fake_backend(doc_index: int, tmp_path: Path) -> None:
    """torchtitan's own ConfigManager and Trainer accept the export at the plan's world size; the last
    pipeline stage's first rank is the one torchtitan says logs the loss."""
    from planner.export.check import check_torchtitan

    doc = VARIANTS()[doc_index]
    files = export_files(doc, "torchtitan")
    last = pipeline_loss_rank(doc)
    first = check_torchtitan(doc, files, tmp_path / "r0", rank=0)
    assert first.passed, first.reason
    # torchtitan warns which rank to log from when rank 0 cannot see the pipeline loss
    assert f"add rank {last} to LOG_RANK" in re.sub(r"\x1b\[[0-9;]*m", "", first.log)
    assert check_torchtitan(doc, files, tmp_path / "rl", rank=last).passed


@needs_torchtitan
def test_torchtitan_context_parallel_and_zero3(tmp_path: Path) -> None:
    from planner.export.check import check_torchtitan

    doc = make_doc(DEBUG_LLAMA, "dgx-h100", 4, dp=2, cp=2, micro_batch=1, global_batch=4, zero_stage=3)
    result = check_torchtitan(doc, export_files(doc, "torchtitan"), tmp_path, rank=3)
    assert result.passed, result.reason


@needs_torchtitan
@pytest.mark.parametrize("framework,enable,async_tp", [("torchtitan-async-tp", True, True),
                                                       ("torchtitan-compile", True, False),
                                                       ("torchtitan-compile-2024", True, False),
                                                       ("torchtitan", False, False)])
def test_torchtitan_compiles_as_the_plans_profile_priced_it(framework: str, enable: bool, async_tp: bool,
                                                            tmp_path: Path) -> None:
    """The profile that priced the plan's elementwise ops (compiled, or eager) and its TP overlap is the one
    the export launches: torch.compile on for torchtitan-compile, and async TP (which needs it) for
    torchtitan-async-tp; a release that left the loss eager compiles the model alone (its loss was priced
    eager); torchtitan's own Trainer builds each on the fake backend."""
    from planner.export.check import check_torchtitan

    doc = make_doc(DEBUG_LLAMA, "dgx-h100", 4, tp=2, dp=2, micro_batch=1, global_batch=4, zero_stage=3,
                   sequence_parallel=True, framework=framework)
    files = export_files(doc, "torchtitan")
    text = files["torchtitan_job.py"]
    assert f"config.compile.enable = {enable}" in text
    assert f"config.compile.enable_async_tensor_parallel = {async_tp}" in text
    assert ("config.compile.components = ['model']" in text) == framework.endswith("-2024")
    result = check_torchtitan(doc, files, tmp_path, rank=0)
    assert result.passed, result.reason


@needs_torchtitan
def test_torchtitan_refuses_a_wrong_world(tmp_path: Path) -> None:
    """The check can fail: the same module on a world that does not match its degrees is torchtitan's error."""
    from planner.export.check import check_torchtitan

    doc = VARIANTS()[10]
    wrong = dataclasses.replace(doc, plan=dataclasses.replace(doc.plan, dp=1, global_batch=8))
    result = check_torchtitan(wrong, export_files(doc, "torchtitan"), tmp_path)
    assert not result.passed and "Invalid parallel dims" in result.reason


# torchtitan 0.3.0's debug flavors of the 2025 families (torchtitan/models/<package>/__init__.py
# "debugmodel"), written as the planner's ModelSpecs: the same code paths as the published sizes at a size
# the fake-backend dry run builds in seconds.
_DEBUG_BASE = ModelSpec(name="debug", num_layers=8, hidden=256, num_heads=16, num_kv_heads=8, ffn_hidden=3072,
                        vocab_size=2048, seq_len=2048, activation="swiglu", norm="rmsnorm", position="rope",
                        tied_embeddings=False, bias=False)
TORCHTITAN_DEBUG_FAMILIES: dict[str, ModelSpec] = {
    "qwen3": dataclasses.replace(_DEBUG_BASE, name="qwen3-debugmodel", head_width=128, qk_norm="rmsnorm",
                                 tied_embeddings=True),
    "qwen3-moe": dataclasses.replace(_DEBUG_BASE, name="qwen3-debugmodel-moe", head_width=128, qk_norm="rmsnorm",
                                     num_experts=64, top_k=8, moe_ffn_hidden=256),
    "deepseek-v3": dataclasses.replace(
        _DEBUG_BASE, name="deepseek-v3-debugmodel", num_layers=6, num_kv_heads=16, ffn_hidden=1024, kv_lora_rank=512,
        qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, num_experts=8, top_k=3, moe_ffn_hidden=256,
        shared_ffn_hidden=256, dense_layers=(0,), mtp_layers=1),
    "gpt-oss": dataclasses.replace(
        _DEBUG_BASE, name="gpt-oss-debugmodel", num_layers=4, num_heads=64, head_width=64, ffn_hidden=256, bias=True,
        qkv_bias=True, sliding_window=128, window_layers=(0, 2), attention_sinks=True, num_experts=8, top_k=4,
        router_bias=True),
}


@needs_torchtitan
def test_family_flavors_match_torchtitan() -> None:
    """The flavor table is torchtitan's own registry: layers, width, heads, vocabulary, tying, experts, top-k."""
    import importlib

    for (package, flavor), expected in FAMILY_FLAVORS.items():
        m = importlib.import_module(f"torchtitan.models.{package}").model_registry(flavor).model
        moe = [layer.moe for layer in m.layers if layer.moe is not None]
        shape = (len(m.layers), m.dim, m.layers[0].attention.n_heads, m.vocab_size, m.enable_weight_tying,
                 max((x.num_experts for x in moe), default=0), moe[0].router.top_k if moe else 0)
        assert shape == expected, (package, flavor)


def test_family_presets_export_to_the_torchtitan_model_of_the_same_name() -> None:
    """The planner's presets (from the published config.json files) land on torchtitan's flavor of the same
    published model; a family torchtitan does not ship, or a size it has no flavor for, is refused by name."""
    expected = {"qwen3-8b": ("qwen3", "8B"), "qwen3-32b": ("qwen3", "32B"), "qwen3-30b-a3b": ("qwen3", "30B-A3B"),
                "qwen3-235b-a22b": ("qwen3", "235B-A22B"), "deepseek-v3": ("deepseek_v3", "671B"),
                "gpt-oss-20b": ("gpt_oss", "20b"), "gpt-oss-120b": ("gpt_oss", "120b")}
    for preset, flavor in expected.items():
        assert model_flavor(model_preset(preset)) == flavor, preset
        # and the published config.json of the same model, as a user imports it
        assert model_flavor(load_model(str(ROOT / f"tests/fixtures/hf/{preset}.json"))) == flavor, preset
    for preset in ("kimi-k2", "llama4-scout", "mixtral-8x7b"):
        with pytest.raises(ExportError, match="ships no model"):
            model_flavor(model_preset(preset))
    with pytest.raises(ExportError, match="ships no model"):  # a Qwen3 shape torchtitan has no flavor of
        model_flavor(dataclasses.replace(model_preset("qwen3-8b"), num_layers=30))


@needs_torchtitan
@pytest.mark.parametrize("family, plan", [
    ("qwen3", dict(tp=2, dp=2)),
    ("qwen3-moe", dict(tp=2, dp=2, ep=2)),
    ("qwen3-moe", dict(pp=2, dp=2, global_batch=8, zero_stage=1)),
    ("deepseek-v3", dict(tp=2, dp=2, ep=2)),
    ("gpt-oss", dict(tp=2, dp=2, ep=2)),
], ids=["qwen3-tp2", "qwen3-moe-tp2-ep2", "qwen3-moe-pp2", "deepseek-v3-mtp-tp2-ep2", "gpt-oss-tp2-ep2"])
def test_torchtitan_builds_the_family_trainers(family: str, plan: dict, tmp_path: Path) -> None:
    """Each family's export is accepted by torchtitan's ConfigManager and Trainer (its model, MoE
    dispatch, MTP loss, TP / EP / FSDP / PP) at the plan's world size."""
    from planner.export.check import check_torchtitan

    fields = dict(micro_batch=1, global_batch=4, zero_stage=3) | plan
    doc = make_doc(TORCHTITAN_DEBUG_FAMILIES[family], "dgx-h100", 4, **fields)
    result = check_torchtitan(doc, export_files(doc, "torchtitan"), tmp_path)
    assert result.passed, result.reason


@needs_torchao
@pytest.mark.parametrize("dtype, cluster", [("fp8", "dgx-h100"), ("mxfp8", "dgx-b200"), ("nvfp4", "dgx-b200")])
def test_torchtitan_converts_moe_experts_and_leaves_the_router(dtype: str, cluster: str, tmp_path: Path) -> None:
    """On MoE models the routed experts' grouped GEMMs get torchtitan's grouped converter where it has one
    (fp8, mxfp8; nvfp4 has none: said), and the router gate stays bf16 (NVFP4 refuses its 8 outputs)."""
    from planner.export.check import check_torchtitan

    doc = make_doc(TORCHTITAN_DEBUG_FAMILIES["gpt-oss"], cluster, 4, tp=2, dp=2, ep=2, micro_batch=1,
                   global_batch=4, zero_stage=3, dtype=dtype)
    files = export_files(doc, "torchtitan")
    job = next(v for k, v in files.items() if k.endswith("_job.py"))
    assert ("GroupedExpertsConverter" in job) == (dtype != "nvfp4")
    assert ("no nvfp4 converter for the routed experts" in job) == (dtype == "nvfp4")
    assert check_torchtitan(doc, files, tmp_path).passed


def test_torchtitan_refuses_what_it_cannot_pipeline() -> None:
    """torchtitan 0.3.0 raises at start-up on pipelined tied embeddings and on pipelined MTP: the export
    refuses them up front, naming the limit."""
    tied = make_doc(TORCHTITAN_DEBUG_FAMILIES["qwen3"], "dgx-h100", 4, pp=2, dp=2, micro_batch=1, global_batch=8,
                    zero_stage=1)
    with pytest.raises(ExportError, match="tied embeddings"):
        export_files(tied, "torchtitan")
    mtp = make_doc(TORCHTITAN_DEBUG_FAMILIES["deepseek-v3"], "dgx-h100", 4, pp=2, dp=2, micro_batch=1,
                   global_batch=8, zero_stage=1)
    with pytest.raises(ExportError, match="multi-token prediction"):
        export_files(mtp, "torchtitan")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_torchtitan
@pytest.mark.slow
def test_two_local_launchers_form_one_world(tmp_path: Path) -> None:
    """The multi-node line for real: two launcher processes on localhost with node ranks 0 and 1 run the
    exported torchtitan.launch.sh (static rendezvous, one rank each, gloo); both ranks build the trainer
    of a dp-2 plan (a world of 2: each alone would fail torchtitan's parallel-dims check) and stop at the
    tokenizer placeholder."""
    from planner.export.check import TOKENIZER_PLACEHOLDER

    doc = make_doc(DEBUG_LLAMA, "dgx-h100", 2, dp=2, micro_batch=1, global_batch=2, zero_stage=3)
    out = tmp_path / "job"
    out.mkdir()
    for name, text in export_files(doc, "torchtitan").items():
        (out / name).write_text(text)
        (out / name).chmod(0o755)
    # the CPU adaptations of planner/export/check.py, applied in every worker at interpreter start-up
    shim = tmp_path / "shim"
    shim.mkdir()
    from planner.export import check

    runner = check._TORCHTITAN_CPU_RUNNER.split("sys.argv")[0]
    (shim / "sitecustomize.py").write_text(runner)
    port = _free_port()
    env = {**os.environ, "NNODES": "2", "NPROC_PER_NODE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "HF_ASSETS_PATH": TOKENIZER_PLACEHOLDER, "TRAIN_STEPS": "1", "DUMP_FOLDER": str(tmp_path / "dump"),
           "PYTHONPATH": f"{shim}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    procs = [subprocess.Popen(["bash", str(out / "torchtitan.launch.sh"), "--parallelism.spmd_backend",
                               "partial_dtensor"], env={**env, "NODE_RANK": str(k)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for k in (0, 1)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for k, log in enumerate(logs):
        assert f"Tokenizer path '{TOKENIZER_PLACEHOLDER}' does not exist" in log, f"launcher {k}:\n{log[-3000:]}"
        assert "Invalid parallel dims" not in log


# ---- DeepSpeed ------------------------------------------------------------------------------------------


def test_deepspeed_config_realises_the_plan() -> None:
    doc = VARIANTS()[0]
    cfg = json.loads(export_plan(doc, "deepspeed"))
    assert cfg["train_batch_size"] == 64 and cfg["bf16"] == {"enabled": True} and cfg["zero_optimization"]["stage"] == 1
    files = export_files(doc, "deepspeed")
    a = _args(files["ds_config.megatron-deepspeed.args"])
    assert a["--tensor-model-parallel-size"] == "8" and a["--pipeline-model-parallel-size"] == "4"
    assert a["--num-key-value-heads"] == "8" and "--sequence-parallel" in a
    assert any("interleaved" in w for w in export_warnings(doc, "deepspeed"))
    assert "only through Megatron-DeepSpeed's parallel state" in files["ds_config.megatron-deepspeed.args"]
    assert "only through Megatron-DeepSpeed's parallel state" in files["ds_config.launch.sh"]


def test_deepspeed_refusals() -> None:
    with pytest.raises(ExportError, match="no DeepSpeed equivalent"):
        export_plan(make_doc("llama3-70b", "dgx-h100", 64, tp=2, pp=4, dp=2, cp=4, micro_batch=1, global_batch=16,
                             sequence_parallel=True, zero_stage=1), "deepspeed")
    z = VARIANTS()[6]  # pp2 with ZeRO-2: DeepSpeed's pipeline engine takes ZeRO <= 1
    assert deepspeed_config(z)["zero_optimization"]["stage"] == 1
    with pytest.raises(ExportError):
        deepspeed_config(z, strict=True)
    assert isinstance(ExportError("x"), PlannerError)


@needs_deepspeed
@pytest.mark.parametrize("index", range(len(VARIANTS())))
def test_deepspeed_validates_every_exportable_variant(index: int) -> None:
    """DeepSpeedConfig accepts the ds_config with Megatron-DeepSpeed's data-parallel size, and plain DeepSpeed
    (every rank data parallel) refuses it exactly when tp x pp x sp > 1 (the parallel-state note)."""
    from planner.export.check import check_deepspeed

    doc = VARIANTS()[index]
    try:
        config = deepspeed_config(doc)
    except ExportError:
        pytest.skip("DeepSpeed cannot run this plan (refused by the exporter)")
    p = doc.plan
    assert check_deepspeed(config, p.dp, p.world_size).passed
    assert check_deepspeed(config, None, p.world_size).passed == (p.world_size == p.dp)


def test_megatron_deepspeed_names_are_real() -> None:
    section = FIXTURE["megatron_deepspeed"]
    for doc in VARIANTS():
        try:
            text = export_files(doc, "deepspeed")["ds_config.megatron-deepspeed.args"]
        except ExportError:
            continue
        for flag in {w for w in parse_args_file(text) if w.startswith("--")}:
            assert flag in section["names"], f"{flag} is not a Megatron-DeepSpeed f4157be flag"


# ---- CLI and committed examples ---------------------------------------------------------------------------


def test_cli_writes_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = save_plan(tmp_path / "plan.json", VARIANTS()[0])
    assert main(["export", str(plan), "--format", "deepspeed", "--out", str(tmp_path / "ds.json")]) == 0
    assert json.loads((tmp_path / "ds.json").read_text())["train_batch_size"] == 64
    assert "--deepspeed_config ds.json" in (tmp_path / "ds.megatron-deepspeed.args").read_text()
    assert os.access(tmp_path / "ds.launch.sh", os.X_OK)
    assert "warning" in capsys.readouterr().err
    assert main(["export", str(plan), "--format", "megatron"]) == 0
    assert "--tensor-model-parallel-size 8" in capsys.readouterr().out
    assert main(["export", str(plan), "--format", "torchtitan", "--out", str(tmp_path / "tt_job.py")]) == 0
    assert (tmp_path / "tt.launch.sh").exists() and "--module tt_job" in (tmp_path / "tt.launch.sh").read_text()
    assert not list(tmp_path.glob(".*.tmp"))


def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = save_plan(tmp_path / "plan.json", make_doc("llama3-70b", "dgx-h100", 64, tp=2, pp=4, dp=2, cp=4,
                                                      micro_batch=1, global_batch=16, zero_stage=1))
    assert main(["export", str(plan), "--format", "deepspeed"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no DeepSpeed equivalent" in err[0]


EXAMPLE_DIRS = sorted(p.parent for p in EXAMPLES.glob("*/manifest.json"))


def _stable(text: str) -> str:
    """Drop the cost model's live re-estimates (they move when the model is recalibrated)."""
    return re.sub(r"planner estimate: [^\n]*", "planner estimate: ...", text)


@pytest.mark.parametrize("folder", EXAMPLE_DIRS, ids=[p.name for p in EXAMPLE_DIRS])
def test_committed_exports_match_the_committed_plan(folder: Path) -> None:
    """Re-export each committed plan: every committed artefact must be reproduced (examples/make_exports.py)."""
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    assert {"plan.json", "megatron.args", "megatron.launch.sh", "bridge_pretrain.py", "ds_config.json"} <= set(manifest)
    for name, entry in manifest.items():
        if entry["format"] not in FORMATS:
            continue
        doc = load_plan(folder / entry["plan"])
        primary = next(n for n, e in manifest.items() if e == entry and n in ("megatron.args", "bridge_pretrain.py",
                                                                               "torchtitan_job.py", "ds_config.json"))
        files = export_files(doc, entry["format"], primary_name=primary)
        assert _stable(files[name]) == _stable((folder / name).read_text()), \
            f"{folder.name}/{name} is stale: rerun examples/make_exports.py"


def test_bash_is_available_for_launch_checks() -> None:
    assert shutil.which("bash")


# Builds the exported job's model config with torchtitan's own converters (the GPU-capability gate stubbed:
# no GPU here) and prints each linear layer's config class by its fully qualified name.
_CONVERTED = """
import importlib, json, sys
for name in ("float8", "mx", "nvfp4"):
    importlib.import_module("torchtitan.components.quantization." + name).has_cuda_capability = lambda *a: True
from torchtitan.models.common.linear import Linear
job = importlib.import_module(sys.argv[1])
model = job.planner_job().model_spec.model
print(json.dumps({fqn: type(cfg).__qualname__ for fqn, cfg, _, _ in model.traverse(Linear.Config)}))
"""


@needs_torchao
@pytest.mark.parametrize(("dtype", "cluster", "kind"), [("fp8-rowwise", "dgx-h100", "Float8Linear"),
                                                        ("fp8", "dgx-h100", "Float8Linear"),
                                                        ("mxfp8", "dgx-b200", "MXFP8Linear"),
                                                        ("nvfp4", "dgx-b200", "NVFP4Linear")])
def test_torchtitan_converts_the_layers_linear_gemms_not_the_lm_head(dtype: str, cluster: str, kind: str,
                                                                     tmp_path: Path) -> None:
    """The export used to train every low-precision plan in bf16. torchtitan's own converters, run on the
    exported registry call, now turn exactly the layers' 5 linear layers (fused qkv, o, w1, w2, w3) into the
    recipe's kind and leave the LM head ("lm_head") in bf16, as the planner prices the recipe; per-tensor fp8
    runs as torchtitan's row-wise recipe and the export says so."""
    doc = make_doc(DEBUG_LLAMA, cluster, 4, dp=2, tp=2, micro_batch=1, global_batch=4, zero_stage=3, dtype=dtype)
    files = export_files(doc, "torchtitan")
    (tmp_path / "torchtitan_job.py").write_text(files["torchtitan_job.py"])
    proc = subprocess.run([sys.executable, "-c", _CONVERTED, "torchtitan_job"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    classes = json.loads(proc.stdout.strip().splitlines()[-1])
    layers = {fqn: c for fqn, c in classes.items() if fqn.startswith("layers.")}
    assert len(layers) == 5 * DEBUG_LLAMA.num_layers  # wqkv (q, k, v fused), wo, w1, w2, w3
    assert all(c.startswith(kind) for c in layers.values()), layers
    assert classes["lm_head"] == "Linear.Config"
    assert any("row-wise" in w for w in export_warnings(doc, "torchtitan")) == (dtype == "fp8")

