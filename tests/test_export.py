"""Exports to Megatron-LM, torchtitan and DeepSpeed: real framework names only (checked against
tests/fixtures/framework_names.json, built from the frameworks' sources), parseable TOML / JSON,
values that realise the plan, deviations stated, and the committed examples reproducible."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from planner.cli import main
from planner.cost import estimate
from planner.errors import PlannerError
from planner.export import (
    FORMATS,
    ExportError,
    deepspeed_config,
    export_files,
    export_plan,
    export_warnings,
    megatron_args,
    megatron_deepspeed_args,
    torchtitan_overrides,
    torchtitan_toml,
)
from planner.plan import Plan, PlanDocument, load_plan
from planner.specs.catalog import load_cluster, model_preset

tomllib = pytest.importorskip("tomllib")  # stdlib from Python 3.11

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((ROOT / "tests/fixtures/framework_names.json").read_text())
EXAMPLES = ROOT / "examples/exports"


def make_doc(model: str, cluster: str, gpus: int, **plan: object) -> PlanDocument:
    m = model_preset(model) if isinstance(model, str) else model
    c = load_cluster(cluster, gpus=gpus)
    p = Plan(**plan)  # type: ignore[arg-type]
    return PlanDocument(plan=p, model=m, cluster=c, prediction=estimate(m, c, p))


def VARIANTS() -> list[PlanDocument]:
    """Plans that exercise every branch of the exporters (also read by fixtures/build_framework_names.py)."""
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
    ]


def _arg_flags(text: str) -> set[str]:
    return {line.split()[0] for line in text.splitlines() if line.strip() and not line.startswith("#")}


def _flatten(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flatten(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


def _override_words(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) == 1
    return lines[0].split()


def emitted_names(doc: PlanDocument) -> dict[str, set[str]]:
    """Every framework name each exporter writes for `doc`, by fixture section."""
    words = _override_words(torchtitan_overrides(doc))
    out = {"megatron": _arg_flags(megatron_args(doc)),
           "torchtitan_toml": _flatten({k: v for k, v in tomllib.loads(torchtitan_toml(doc)).items()}),
           "torchtitan_cli": {w for w in words if w.startswith("--") or ":" in w}}
    try:
        out["deepspeed"] = _flatten(deepspeed_config(doc))
        out["megatron_deepspeed"] = _arg_flags(megatron_deepspeed_args(doc))
    except ExportError:
        pass
    return out


# ---- framework names ----------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(VARIANTS())))
def test_every_emitted_name_is_a_real_framework_name(index: int) -> None:
    doc = VARIANTS()[index]
    for kind, names in emitted_names(doc).items():
        section = FIXTURE[kind]
        for name in names:
            assert name in section["names"], f"{kind}: {name} is not in tests/fixtures/framework_names.json"
            found = set(section["names"][name])
            assert set(section["required_in"]) <= found, f"{kind}: {name} only in {sorted(found)}"


def test_fixture_names_their_sources() -> None:
    for kind in ("megatron", "megatron_deepspeed", "torchtitan_toml", "torchtitan_cli", "deepspeed"):
        section = FIXTURE[kind]
        assert section["repo"] and section["file"] and section["versions"] and section["names"]
        assert set(section["required_in"]) <= set(section["versions"])


# ---- values ---------------------------------------------------------------------------------------


def _args(text: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            flag, *value = line.split(maxsplit=1)
            out[flag] = value[0] if value else None
    return out


def test_megatron_args_realise_the_plan() -> None:
    doc = VARIANTS()[0]  # llama3-70b tp8 pp4 dp2 v5 interleaved, sp, ZeRO-1, selective
    a = _args(megatron_args(doc))
    assert a["--tensor-model-parallel-size"] == "8" and a["--pipeline-model-parallel-size"] == "4"
    assert a["--num-layers-per-virtual-pipeline-stage"] == str(80 // (4 * 5))
    assert a["--context-parallel-size"] == "1" and "--sequence-parallel" in a
    assert "--use-distributed-optimizer" in a and a["--recompute-granularity"] == "selective"
    assert a["--micro-batch-size"] == "1" and a["--global-batch-size"] == "64" and a["--seq-length"] == "8192"
    assert a["--num-query-groups"] == "8" and "--group-query-attention" in a and "--swiglu" in a
    assert a["--normalization"] == "RMSNorm" and a["--position-embedding-type"] == "rope" and "--bf16" in a
    assert not export_warnings(doc, "megatron")


@pytest.mark.parametrize(("zero", "expect"), [(0, set()), (1, {"--use-distributed-optimizer"}),
                                              (2, {"--use-megatron-fsdp", "optim_grads"}),
                                              (3, {"--use-megatron-fsdp", "optim_grads_params"})])
def test_megatron_zero_stages(zero: int, expect: set[str]) -> None:
    doc = make_doc("llama3-8b", "dgx-h100", 8, dp=8, micro_batch=1, global_batch=16, zero_stage=zero)
    text = megatron_args(doc)
    words = {w for line in text.splitlines() if not line.startswith("#") for w in line.split()}
    assert expect <= words
    if zero == 0:
        assert "--use-megatron-fsdp" not in words and "--use-distributed-optimizer" not in words


def test_megatron_full_recompute_and_gpipe_deviation() -> None:
    doc = VARIANTS()[1]  # gpt3 tp8 pp8 gpipe full recompute
    a = _args(megatron_args(doc))
    assert a["--recompute-granularity"] == "full" and a["--recompute-method"] == "uniform"
    assert a["--recompute-num-layers"] == "1" and a["--position-embedding-type"] == "learned_absolute"
    warnings = export_warnings(doc, "megatron")
    assert any("GPipe" in w for w in warnings) and any("planner estimate" in w for w in warnings)
    with pytest.raises(ExportError, match="cannot run this plan exactly"):
        megatron_args(doc, strict=True)


def test_megatron_rank_order_flag() -> None:
    doc = VARIANTS()[6]  # placement tp,cp,pp,dp
    assert "--use-tp-pp-dp-mapping" in _args(megatron_args(doc))
    assert "--fp16" in _args(megatron_args(doc))


def test_torchtitan_toml_parses_and_realises_the_plan() -> None:
    doc = VARIANTS()[0]
    cfg = tomllib.loads(torchtitan_toml(doc))
    par, tr = cfg["parallelism"], cfg["training"]
    assert cfg["model"] == {"name": "llama3", "flavor": "70B"}
    assert par["tensor_parallel_degree"] == 8 and par["pipeline_parallel_degree"] == 4
    assert par["data_parallel_shard_degree"] == 2 and par["data_parallel_replicate_degree"] == 1
    assert par["pipeline_parallel_schedule"] == "Interleaved1F1B"
    # 80 layers in pp x vpp = 20 stages of 4: exactly vpp stages per rank, nothing taken off the ends
    assert par["pipeline_parallel_layers_per_stage"] == 4
    assert par["pipeline_parallel_first_stage_less_layers"] == 0 == par["pipeline_parallel_last_stage_less_layers"]
    assert par["pipeline_parallel_microbatch_size"] == 1
    # the pipeline splits the local batch into the plan's micro-batches: local = micro x m
    assert tr["local_batch_size"] == doc.plan.grad_accum and tr["global_batch_size"] == 64
    assert tr["seq_len"] == 8192 and tr["mixed_precision_param"] == "bfloat16"
    assert cfg["activation_checkpoint"] == {"mode": "selective", "selective_ac_option": "op"}


def test_torchtitan_data_parallel_modes() -> None:
    ddp = tomllib.loads(torchtitan_toml(VARIANTS()[5]))["parallelism"]  # gpt2 dp8 ZeRO-0 alone: DDP
    assert ddp["data_parallel_replicate_degree"] == 8 and ddp["data_parallel_shard_degree"] == 1
    assert tomllib.loads(torchtitan_toml(VARIANTS()[5]))["training"]["mixed_precision_param"] == "float32"
    z3 = tomllib.loads(torchtitan_toml(VARIANTS()[2]))["parallelism"]  # mixtral ZeRO-3, no pp
    assert z3["data_parallel_shard_degree"] == 16 and z3["fsdp_reshard_after_forward"] == "always"
    assert z3["expert_parallel_degree"] == 8
    # without pp, ZeRO-0 with cp has to shard (torchtitan's DDP is 1-D only): stated as a deviation
    assert any("ZeRO-0 runs as ZeRO-2" in w for w in export_warnings(VARIANTS()[4], "torchtitan"))
    # with pp, pipelining defers FSDP2's gradient sync: ZeRO-2 runs as ZeRO-1
    assert any("ZeRO-2 runs as ZeRO-1" in w for w in export_warnings(VARIANTS()[6], "torchtitan"))


def test_torchtitan_overrides_form() -> None:
    words = _override_words(torchtitan_overrides(VARIANTS()[0]))
    assert words[:4] == ["--module", "llama3", "--config", "llama3_70b"]
    assert words[-1] == "activation-checkpoint:selective"  # a tyro subcommand goes last
    assert words[words.index("--parallelism.tensor_parallel_degree") + 1] == "8"
    assert "--training.disable_cuda_graphs" in words  # v0.3.0 refuses CUDA graphs with pp
    words = _override_words(torchtitan_overrides(VARIANTS()[5]))
    assert words[:4] == ["--module", "<your_module>", "--config", "<your_config_function>"]


def test_torchtitan_unknown_model_and_fp16_are_stated() -> None:
    text = torchtitan_toml(VARIANTS()[1])
    assert "torchtitan ships no model for gpt3-175b" in text
    assert any("float16" in w for w in export_warnings(VARIANTS()[6], "torchtitan"))


def test_deepspeed_config_realises_the_plan() -> None:
    doc = VARIANTS()[0]
    cfg = json.loads(export_plan(doc, "deepspeed"))
    p = doc.plan
    assert cfg["train_batch_size"] == p.global_batch
    assert cfg["train_batch_size"] == cfg["train_micro_batch_size_per_gpu"] * cfg["gradient_accumulation_steps"] * p.dp
    assert cfg["bf16"] == {"enabled": True} and cfg["zero_optimization"]["stage"] == 1
    a = _args(megatron_deepspeed_args(doc))
    assert a["--deepspeed_config"] == "ds_config.json" and a["--zero-stage"] == "1"
    assert a["--tensor-model-parallel-size"] == "8" and a["--pipeline-model-parallel-size"] == "4"
    assert a["--num-key-value-heads"] == "8" and "--sequence-parallel" in a
    assert any("interleaved" in w for w in export_warnings(doc, "deepspeed"))


def test_deepspeed_ulysses_and_pipeline_zero() -> None:
    a = _args(megatron_deepspeed_args(VARIANTS()[4]))  # llama3-8b dp8 cp2, no tp / pp
    assert a["--ds-sequence-parallel-size"] == "2" and "--no-pipeline-parallel" in a
    z = VARIANTS()[6]  # pp2 with ZeRO-2: DeepSpeed's pipeline engine takes ZeRO <= 1
    assert deepspeed_config(z)["zero_optimization"]["stage"] == 1
    assert deepspeed_config(z)["fp16"] == {"enabled": True}
    with pytest.raises(ExportError):
        deepspeed_config(z, strict=True)


def test_deepspeed_refuses_cp_with_tensor_parallelism() -> None:
    doc = make_doc("llama3-70b", "dgx-h100", 64, tp=2, pp=4, dp=2, cp=4, micro_batch=1, global_batch=16,
                   sequence_parallel=True, zero_stage=1)
    with pytest.raises(ExportError, match="no DeepSpeed equivalent"):
        export_plan(doc, "deepspeed")
    assert isinstance(ExportError("x"), PlannerError)


def test_every_format_renders_every_variant() -> None:
    for doc in VARIANTS():
        for fmt in FORMATS:
            try:
                files = export_files(doc, fmt)
            except ExportError:
                assert fmt == "deepspeed"
                continue
            assert files and all(text.endswith("\n") for text in files.values())
            primary = next(iter(files.values()))
            assert doc.hash in primary or fmt == "deepspeed"
            if fmt == "torchtitan":
                tomllib.loads(primary)
            if fmt == "deepspeed":
                json.loads(primary)


# ---- CLI --------------------------------------------------------------------------------------------


def test_cli_writes_primary_and_companion_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from planner.plan import save_plan

    plan = save_plan(tmp_path / "plan.json", VARIANTS()[0])
    assert main(["export", str(plan), "--format", "deepspeed", "--out", str(tmp_path / "ds.json")]) == 0
    assert json.loads((tmp_path / "ds.json").read_text())["train_batch_size"] == 64
    args = (tmp_path / "ds.megatron-deepspeed.args").read_text()
    assert "--deepspeed_config ds.json" in args
    assert "warning" in capsys.readouterr().err
    assert main(["export", str(plan), "--format", "megatron"]) == 0
    assert "--tensor-model-parallel-size 8" in capsys.readouterr().out
    assert main(["export", str(plan), "--format", "torchtitan", "--out", str(tmp_path / "tt.toml")]) == 0
    assert (tmp_path / "tt.overrides.txt").exists()
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temp files


def test_cli_bad_input_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from planner.plan import save_plan

    plan = save_plan(tmp_path / "plan.json", make_doc("llama3-70b", "dgx-h100", 64, tp=2, pp=4, dp=2, cp=4,
                                                      micro_batch=1, global_batch=16, zero_stage=1))
    assert main(["export", str(plan), "--format", "deepspeed"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no DeepSpeed equivalent" in err[0]
    assert main(["export", str(tmp_path / "missing.json"), "--format", "megatron"]) == 2
    assert main(["export", str(plan), "--format", "megatron", "--strict"]) == 0  # megatron runs it exactly
    with pytest.raises(SystemExit) as exc:
        main(["export", str(plan), "--format", "nemo"])
    assert exc.value.code == 2


# ---- committed examples -------------------------------------------------------------------------------


EXAMPLE_DIRS = sorted(p.parent for p in EXAMPLES.glob("*/manifest.json"))


def _stable(text: str) -> str:
    """Drop the cost model's live re-estimates (they move when the model is recalibrated)."""
    return re.sub(r"planner estimate: [^\n]*", "planner estimate: ...", text)


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLE_DIRS} >= {"gpt3-175b_1024xA100", "llama3-70b_512xH100"}


@pytest.mark.parametrize("folder", EXAMPLE_DIRS, ids=[p.name for p in EXAMPLE_DIRS])
def test_committed_exports_match_the_committed_plan(folder: Path) -> None:
    """Re-export each committed plan: every committed artefact must be reproduced (examples/make_exports.py)."""
    from planner.trace import predicted_trace

    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    assert {"plan.json", "megatron.args", "torchtitan.toml", "ds_config.json", "predicted_trace.json"} <= set(manifest)
    for name, entry in manifest.items():
        doc = load_plan(folder / entry["plan"])
        committed = (folder / name).read_text()
        if entry["format"] == "plan":
            assert json.loads(committed)["kind"] == "plan"
        elif entry["format"] == "trace":
            # the schedule's layout (ops, sends, tracks), not timings that move with recalibration
            def layout(events: list[dict]) -> list[tuple]:
                return [(e["name"], e["ph"], e["pid"], e.get("tid")) for e in events
                        if e["ph"] == "M" or e["cat"] in ("forward", "backward", "p2p")]
            assert layout(json.loads(committed)["traceEvents"]) == layout(predicted_trace(doc)["traceEvents"]), \
                f"{folder.name}/{name} is stale: rerun examples/make_exports.py"
        else:
            primary = next(n for n, e in manifest.items() if e == entry and n.endswith((".args", ".toml", ".json")))
            files = export_files(doc, entry["format"], primary_name=primary)
            assert _stable(files[name]) == _stable(committed), \
                f"{folder.name}/{name} is stale: rerun examples/make_exports.py"
