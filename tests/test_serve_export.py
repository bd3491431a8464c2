"""Serving exports (vLLM, SGLang, TensorRT-LLM) checked by the engines' own parsers where they import
(vLLM and SGLang on CPU: benchmarks/check_serve_exports.sh installs them), else against their option names
in tests/fixtures/serving_flags.json (TensorRT-LLM's always: read from its source)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path

import pytest
import yaml

from planner.cli import main
from planner.export.serving import serve_export_files, sglang_args, trtllm_args, vllm_args
from planner.serve.plan import SLO, ServeDocument, ServePlan, ServePool, Workload, save_serve_plan
from planner.specs.catalog import load_cluster, model_preset

FLAGS = json.loads((Path(__file__).parent / "fixtures" / "serving_flags.json").read_text())


def _doc(model: str, pools: tuple[ServePool, ...], dtype: str = "bf16", kv: str = "bf16",
         gpus: int = 16) -> ServeDocument:
    return ServeDocument(plan=ServePlan(pools=pools, dtype=dtype, kv_dtype=kv), model=model_preset(model),
                         cluster=load_cluster("dgx-h100", gpus=gpus), workload=Workload(isl=1024, osl=256), slo=SLO())


DOCS = {
    "dense tp4 x2": _doc("llama3-70b", (ServePool(tp=4, replicas=4, max_batch=64, chunk_size=2048),)),
    "dense tp2 pp2 fp8": _doc("llama3-70b", (ServePool(tp=2, pp=2, replicas=4, max_batch=128, chunk_size=1024),),
                              dtype="fp8", kv="fp8"),
    "moe adp8 ep8": _doc("mixtral-8x7b", (ServePool(tp=1, attention_dp=8, ep=8, replicas=2, max_batch=256,
                                                    chunk_size=4096),)),
    "disaggregated": _doc("llama3-70b", (ServePool(role="prefill", tp=4, replicas=2, max_batch=16, chunk_size=8192),
                                         ServePool(role="decode", tp=8, replicas=1, max_batch=128, chunk_size=128))),
}
BUILDERS = {"vllm": vllm_args, "sglang": sglang_args, "trtllm": trtllm_args}


def _check_names(fmt: str, args: list[str]) -> None:
    known = FLAGS[fmt]["options"]
    for i, tok in enumerate(args):
        if tok.startswith("--"):
            assert tok in known, f"{fmt} {FLAGS[fmt]['version']} has no option {tok}"
            choices = known[tok]
            if choices is not None and i + 1 < len(args) and not args[i + 1].startswith("--"):
                assert args[i + 1] in choices, f"{fmt}: {tok} {args[i + 1]} not in {choices}"


@pytest.mark.parametrize("name", list(DOCS))
@pytest.mark.parametrize("fmt", list(BUILDERS))
def test_export_options_exist_in_the_engine(fmt: str, name: str) -> None:
    doc = DOCS[name]
    for pool in doc.plan.pools:
        _check_names(fmt, BUILDERS[fmt](doc, pool))
    script = next(iter(serve_export_files(doc, fmt).values()))
    commands = [ln for ln in script.splitlines() if ln.startswith("CUDA_VISIBLE_DEVICES=")]
    assert len(commands) == sum(p.replicas for p in doc.plan.pools)  # one per replica, distinct ports
    ports = [shlex.split(c)[shlex.split(c).index("--port") + 1] for c in commands]
    assert len(set(ports)) == len(ports)


def test_vllm_parser_accepts_the_export() -> None:
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    cli_args = pytest.importorskip("vllm.entrypoints.common.cli_args", reason="vLLM not importable (see "
                                   "benchmarks/check_serve_exports.sh)")
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = cli_args.make_arg_parser(FlexibleArgumentParser())
    for doc in DOCS.values():
        for pool in doc.plan.pools:
            ns = parser.parse_args(["--model", "m", *vllm_args(doc, pool)])
            assert ns.tensor_parallel_size == pool.tp and ns.max_num_seqs == pool.max_batch
            assert ns.pipeline_parallel_size == pool.pp
            assert ns.data_parallel_size == pool.attention_dp


def test_sglang_server_args_validate_the_export() -> None:
    server_args = pytest.importorskip("sglang.srt.server_args", reason="SGLang not importable (see "
                                      "benchmarks/check_serve_exports.sh)")
    parser = argparse.ArgumentParser()
    server_args.ServerArgs.add_cli_args(parser)
    for doc in DOCS.values():
        for pool in doc.plan.pools:
            ns = parser.parse_args(["--model-path", "/nonexistent", *sglang_args(doc, pool)])
            s = server_args.ServerArgs.from_cli_args(ns)  # runs SGLang's own checks (__post_init__)
            assert s.tp_size == pool.tp * pool.attention_dp and s.pp_size == pool.pp
            assert s.chunked_prefill_size == max(pool.chunk_size, pool.max_batch)


def test_trtllm_yaml_uses_llm_api_fields(tmp_path: Path) -> None:
    fields = set(FLAGS["trtllm"]["llm_api_fields"])
    for doc in DOCS.values():
        files = serve_export_files(doc, "trtllm")
        for name, text in files.items():
            if not name.endswith(".yaml"):
                continue
            data = yaml.safe_load(text)
            if "context_servers" in data:
                assert set(data) <= set(FLAGS["trtllm"]["disagg_keys"])
                for role in ("context_servers", "generation_servers"):
                    server = data[role]
                    assert len(server["urls"]) == server["num_instances"]
                    flat = {k for k in server if k not in ("num_instances", "urls")}
                    assert flat <= fields
                continue
            keys = {k for k in data} | {f"{k}.{sub}" for k, v in data.items() if isinstance(v, dict) for sub in v}
            assert keys <= fields, keys - fields


def test_planner_export_writes_serving_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "serve.json"
    save_serve_plan(path, DOCS["moe adp8 ep8"])
    assert main(["export", str(path), "--format", "vllm", "--out", str(tmp_path / "out" / "vllm_serve.sh")]) == 0
    text = (tmp_path / "out" / "vllm_serve.sh").read_text()
    assert "--data-parallel-size 8" in text and "--enable-expert-parallel" in text
    assert main(["export", str(path), "--format", "trtllm", "--out", str(tmp_path / "t" / "trtllm_serve.sh")]) == 0
    assert (tmp_path / "t" / "trtllm_extra_llm_api_options.yaml").exists()
    capsys.readouterr()


def test_strict_refuses_what_vllm_cannot_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc("mixtral-8x7b", (ServePool(tp=2, attention_dp=4, ep=2, replicas=2, max_batch=64, chunk_size=2048),))
    path = tmp_path / "serve.json"
    save_serve_plan(path, doc)
    assert main(["export", str(path), "--format", "vllm"]) == 0
    assert "expert parallelism spans all 8" in capsys.readouterr().err
    assert main(["export", str(path), "--format", "vllm", "--strict"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "vllm cannot run the plan exactly" in err
