"""Export a serving plan (`kind: "serve"`) as vLLM, SGLang or TensorRT-LLM (`trtllm-serve`) launch commands.

Why: a serving plan is only useful as the engine's own options. Each format maps the plan's pools to
the engine's flags (one table per engine, `VLLM_FLAGS`, `SGLANG_FLAGS`, `TRTLLM_FLAGS`) and writes a
launch script that starts every replica of every pool on its own GPUs and port; disaggregated plans
also get the engine's prefill / decode roles and KV-transfer settings (and TensorRT-LLM's
`trtllm-serve disaggregated` config). Names were checked against the engines' own argument parsers:
vLLM 0.34.0's `vllm serve` parser and SGLang 0.5.23's `ServerArgs.add_cli_args`, both imported on CPU,
and TensorRT-LLM's `trtllm-serve` click options and LLM-API fields read from its source
(tensorrt_llm/commands/serve.py, llmapi/llm_args.py, llmapi/disagg_utils.py), which does not install
without CUDA (tests/test_serve_export.py; tests/fixtures/serving_flags.json).

What an engine cannot run as planned is said in `# WARNING:` lines (`strict=True` refuses instead):
vLLM's expert parallelism spans all tensor x data-parallel ranks, so a plan with 1 < ep < tp x
attention_dp is exported with ep = tp x attention_dp.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from planner.export.common import ExportError
from planner.serve.kv import context_limit
from planner.serve.plan import ServeDocument, ServePool

SERVE_FORMATS = ("vllm", "sglang", "trtllm")
CHECKED_WITH = {"vllm": "vLLM 0.34.0 (vllm serve's parser)", "sglang": "SGLang 0.5.23 (ServerArgs.add_cli_args)",
                "trtllm": "TensorRT-LLM main@00209af (trtllm-serve click options, read from source)"}
FILE_NAMES = {"vllm": ("vllm_serve.sh",), "sglang": ("sglang_serve.sh",),
              "trtllm": ("trtllm_serve.sh", "trtllm_extra_llm_api_options.yaml", "trtllm_disagg.yaml")}

VLLM_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8": "bfloat16", "mxfp8": "bfloat16",
              "nvfp4": "bfloat16"}
QUANTIZATION = {"fp8": "fp8", "mxfp8": "mxfp8", "nvfp4": "modelopt_fp4"}
KV_DTYPE = {"vllm": {"fp8": "fp8"}, "sglang": {"fp8": "fp8_e4m3"}, "trtllm": {"fp8": "fp8"}}
BASE_PORT = 8000


def _kv(fmt: str, doc: ServeDocument) -> str:
    return KV_DTYPE[fmt].get(doc.plan.kv_dtype, "auto")


def _warnings(doc: ServeDocument, fmt: str) -> list[str]:
    out = []
    for p in doc.plan.pools:
        if fmt == "vllm" and 1 < p.ep < p.stage_gpus:
            out.append(f"WARNING: vLLM's expert parallelism spans all {p.stage_gpus} tensor x data-parallel ranks; "
                       f"the {p.role} pool's ep {p.ep} (expert TP {p.expert_tp}) runs as ep {p.stage_gpus}")
        if fmt == "trtllm" and p.attention_dp > 1 and p.tp > 1:
            out.append(f"WARNING: TensorRT-LLM's attention data parallelism uses every rank of the instance; the "
                       f"{p.role} pool's attention tp {p.tp} runs as attention_dp {p.stage_gpus}")
    if doc.plan.dtype in ("mxfp8", "nvfp4") and fmt != "trtllm":
        out.append(f"WARNING: {doc.plan.dtype} needs a checkpoint quantised to it (the flag only selects the kernels)")
    return out


def vllm_args(doc: ServeDocument, pool: ServePool) -> list[str]:
    """`vllm serve MODEL` arguments of one replica of `pool` (the model is the first argument)."""
    p, plan, w = pool, doc.plan, doc.workload
    args = ["--tensor-parallel-size", str(p.tp), "--pipeline-parallel-size", str(p.pp)]
    if p.attention_dp > 1:
        args += ["--data-parallel-size", str(p.attention_dp)]
    if p.ep > 1:
        args += ["--enable-expert-parallel"]
    args += ["--max-num-seqs", str(p.max_batch), "--max-num-batched-tokens", str(max(p.chunk_size, p.max_batch)),
             "--enable-chunked-prefill", "--gpu-memory-utilization", f"{plan.memory_utilization:g}",
             "--block-size", str(plan.block_size), "--kv-cache-dtype", _kv("vllm", doc),
             "--dtype", VLLM_DTYPE[plan.dtype], "--max-model-len", str(min(w.isl + w.osl, context_limit(doc.model)))]
    if plan.dtype in QUANTIZATION:
        args += ["--quantization", QUANTIZATION[plan.dtype]]
    if p.role != "both":
        role = "kv_producer" if p.role == "prefill" else "kv_consumer"
        args += ["--kv-transfer-config", json.dumps({"kv_connector": "NixlConnector", "kv_role": role},
                                                    separators=(",", ":"))]
    return args


def sglang_args(doc: ServeDocument, pool: ServePool) -> list[str]:
    """`python -m sglang.launch_server` arguments of one replica of `pool` (without --model-path)."""
    p, plan, w = pool, doc.plan, doc.workload
    args = ["--tp-size", str(p.stage_gpus), "--pp-size", str(p.pp)]
    if p.attention_dp > 1:
        args += ["--attn-dp-size", str(p.attention_dp)]  # data-parallel attention (replaces --enable-dp-attention)
    if p.ep > 1:
        args += ["--ep-size", str(p.ep)]
    args += ["--max-running-requests", str(p.max_batch * p.attention_dp * p.pp),
             "--chunked-prefill-size", str(max(p.chunk_size, p.max_batch)),
             "--mem-fraction-static", f"{plan.memory_utilization:g}", "--page-size", str(plan.block_size),
             "--kv-cache-dtype", _kv("sglang", doc), "--dtype", VLLM_DTYPE[plan.dtype],
             "--context-length", str(min(w.isl + w.osl, context_limit(doc.model)))]
    if plan.dtype in QUANTIZATION:
        args += ["--quantization", QUANTIZATION[plan.dtype]]
    if p.role != "both":
        args += ["--disaggregation-mode", p.role, "--disaggregation-transfer-backend", "nixl"]
    return args


def trtllm_args(doc: ServeDocument, pool: ServePool) -> list[str]:
    """`trtllm-serve MODEL` options of one replica of `pool` (the PyTorch backend)."""
    p, plan, w = pool, doc.plan, doc.workload
    args = ["--backend", "pytorch", "--tp_size", str(p.stage_gpus), "--pp_size", str(p.pp)]
    if p.ep > 1:
        args += ["--ep_size", str(p.ep)]
    args += ["--max_batch_size", str(p.max_batch), "--max_num_tokens",
             str(max(p.chunk_size, p.max_batch)), "--max_seq_len", str(min(w.isl + w.osl, context_limit(doc.model))),
             "--kv_cache_free_gpu_memory_fraction", f"{plan.memory_utilization:g}"]
    if p.role == "both":
        args += ["--enable_chunked_prefill"]
    return args


def trtllm_extra_options(doc: ServeDocument, pool: ServePool) -> dict[str, Any]:
    """The LLM-API fields `trtllm-serve --config` sets that have no flag (llmapi/llm_args.py)."""
    extra: dict[str, Any] = {"kv_cache_config": {"dtype": _kv("trtllm", doc),
                                                 "free_gpu_memory_fraction": doc.plan.memory_utilization},
                             "enable_chunked_prefill": pool.role == "both"}
    if pool.attention_dp > 1:
        extra["enable_attention_dp"] = True
    if pool.role != "both":
        extra["cache_transceiver_config"] = {"backend": "DEFAULT"}
    return extra


def _yaml(obj: Any, indent: int = 0) -> str:
    """A small YAML writer for nested dicts / lists of scalars (JSON scalars are valid YAML)."""
    pad = " " * indent
    lines = []
    for k, v in obj.items():
        if isinstance(v, dict):
            lines.append(f"{pad}{k}:")
            lines.append(_yaml(v, indent + 2))
        elif isinstance(v, list):
            lines.append(f"{pad}{k}: {json.dumps(v)}")
        else:
            lines.append(f"{pad}{k}: {json.dumps(v)}")
    return "\n".join(lines)


def _header(doc: ServeDocument, fmt: str, warnings: list[str]) -> list[str]:
    pred = doc.prediction or {}
    lines = ["#!/usr/bin/env bash",
             f"# {doc.model.name} on {doc.plan.num_gpus} x {doc.cluster.gpu.name}: {doc.plan.describe()}",
             f"# planned for {doc.workload.describe()}; {doc.slo.describe()}",
             f"# checked with {CHECKED_WITH[fmt]}; written by planner serve (planner.export.serving)"]
    if pred:
        lines.append(f"# predicted: TTFT p50 {pred['ttft_ms']['p50']:.0f} ms, TPOT p50 "
                     f"{pred['tpot_ms']['p50']:.1f} ms, {pred['tokens_per_s_per_gpu']:,.0f} output tokens/s per GPU")
    lines += [f"# {w}" for w in warnings]
    lines += ["set -euo pipefail",
              f'MODEL="${{MODEL:?set MODEL to the Hugging Face id or local path of {doc.model.name}}}"',
              'HOST="${HOST:-0.0.0.0}"', ""]
    return lines


def _replicas(doc: ServeDocument, command: Any) -> list[str]:
    """One background command per replica of every pool, each on its own GPUs and port. A replica
    larger than a node is started once per node it spans with the engine's multi-node options."""
    lines, gpu, port = [], 0, BASE_PORT
    per_node = doc.cluster.gpus_per_node
    for pool in doc.plan.pools:
        for _ in range(pool.replicas):
            node = gpu // per_node
            if pool.replica_gpus > per_node:
                last = node + pool.replica_gpus // per_node - 1
                lines.append(f"# {pool.role} replica on nodes {node}-{last} (all {per_node} GPUs of each), port "
                             f"{port}: run it on every node with the engine's multi-node options")
                devices = ",".join(str(g) for g in range(per_node))
            else:
                devices = ",".join(str(g % per_node) for g in range(gpu, gpu + pool.replica_gpus))
                lines.append(f"# {pool.role} replica on node {node}, GPUs {devices}, port {port}")
            lines.append(f"CUDA_VISIBLE_DEVICES={devices} {command(pool, port)} &")
            gpu += pool.replica_gpus
            port += 1
    return [*lines, "wait"]


def serve_export_files(doc: ServeDocument, fmt: str, strict: bool = False, stem: str | None = None) -> dict[str, str]:
    """Every artefact of `fmt` for a serving plan, {file name: text}, the launch script first."""
    if fmt not in SERVE_FORMATS:
        raise ExportError(f"unknown serving export format {fmt!r}; choose one of {', '.join(SERVE_FORMATS)}")
    warnings = _warnings(doc, fmt)
    if strict and warnings:
        raise ExportError(f"{fmt} cannot run the plan exactly: {warnings[0].removeprefix('WARNING: ')}")
    names = FILE_NAMES[fmt]
    if stem:
        names = tuple(n.replace(names[0].split(".")[0], stem, 1) for n in names)
    lines = _header(doc, fmt, warnings)
    files: dict[str, str] = {}
    if fmt == "vllm":
        lines += _replicas(doc, lambda p, port: "vllm serve \"$MODEL\" --host \"$HOST\" --port "
                           f"{port} " + shlex.join(vllm_args(doc, p)))
        if doc.plan.disaggregated:
            lines.insert(-1, "# then route requests through a prefill -> decode proxy, e.g. vLLM's "
                             "examples/online_serving/disaggregated_serving proxy")
    elif fmt == "sglang":
        lines += _replicas(doc, lambda p, port: "python -m sglang.launch_server --model-path \"$MODEL\" --host "
                           f"\"$HOST\" --port {port} " + shlex.join(sglang_args(doc, p)))
        if doc.plan.disaggregated:
            lines.insert(-1, "# then route requests with: python -m sglang_router.launch_router --pd-disaggregation "
                             "--prefill http://<host>:<port> ... --decode http://<host>:<port> ...")
    else:
        def extra_name(p: ServePool) -> str:
            return names[1] if p.role == "both" else names[1].replace(".yaml", f".{p.role}.yaml")

        if doc.plan.disaggregated:
            pre, dec = doc.plan.pools

            def servers(p: ServePool, first_port: int) -> dict[str, Any]:
                opts = {"tensor_parallel_size": p.stage_gpus, "pipeline_parallel_size": p.pp,
                        "max_batch_size": p.max_batch,
                        "max_num_tokens": max(p.chunk_size, p.max_batch),
                        "max_seq_len": min(doc.workload.isl + doc.workload.osl, context_limit(doc.model)),
                        **({"moe_expert_parallel_size": p.ep} if p.ep > 1 else {}),
                        **trtllm_extra_options(doc, p)}
                urls = [f"localhost:{first_port + i}" for i in range(p.replicas)]
                return {"num_instances": p.replicas, "urls": urls, **opts}

            config = {"hostname": "localhost", "port": BASE_PORT - 1, "backend": "pytorch",
                      "context_servers": servers(pre, BASE_PORT),
                      "generation_servers": servers(dec, BASE_PORT + pre.replicas)}
            files[names[2]] = _yaml(config) + "\n"
            lines += [f"# every instance: trtllm-serve \"$MODEL\" --host localhost --port <its port> "
                      f"--server_role CONTEXT|GENERATION with the options of its pool in {names[2]};",
                      f"# then the router: trtllm-serve disaggregated -c {names[2]}"]
        lines += _replicas(doc, lambda p, port: "trtllm-serve \"$MODEL\" --host \"$HOST\" --port "
                           f"{port} " + shlex.join(trtllm_args(doc, p)) + f" --config {extra_name(p)}"
                           + (f" --server_role {'CONTEXT' if p.role == 'prefill' else 'GENERATION'}"
                              if p.role != "both" else ""))
        for pool in doc.plan.pools:
            files[extra_name(pool)] = _yaml(trtllm_extra_options(doc, pool)) + "\n"
    return {names[0]: "\n".join(lines) + "\n", **files}


def serve_export_warnings(doc: ServeDocument, fmt: str) -> list[str]:
    return _warnings(doc, fmt)
