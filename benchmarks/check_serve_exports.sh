#!/usr/bin/env bash
# Run the serving exports (planner export --format vllm|sglang) through vLLM's and SGLang's own parsers on
# this CPU-only machine: both are installed with --no-deps into a cache folder, with the few pure-Python
# packages their argument modules import (their GPU kernels are never loaded), then
# tests/test_serve_export.py runs with them importable (vllm's `vllm serve` parser; SGLang's ServerArgs
# with its own validation). TensorRT-LLM needs CUDA to install: its names are checked against its source
# (tests/fixtures/serving_flags.json, rebuilt by tests/fixtures/build_serving_flags.py).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${CACHE:-$HOME/.cache/planner-check-serve-exports}"
VLLM_VERSION="${VLLM_VERSION:-0.34.0}"
SGLANG_VERSION="${SGLANG_VERSION:-0.5.23}"
PY="${PYTHON:-.venv/bin/python}"
if [ ! -f "$CACHE/.done-$VLLM_VERSION-$SGLANG_VERSION" ]; then
  mkdir -p "$CACHE"
  "$PY" -m pip install -q --no-deps --target "$CACHE" "vllm==$VLLM_VERSION" "sglang==$SGLANG_VERSION" \
    orjson pybase64 msgspec pyzmq ipython traitlets regex "transformers" "huggingface-hub>=2.4,<3" httpx2 \
    httpcore2 truststore cachetools cbor2 cloudpickle uvloop prometheus_client llguidance xgrammar \
    apache-tvm-ffi fastapi annotated_doc openai openai_harmony partial_json_parser
  touch "$CACHE/.done-$VLLM_VERSION-$SGLANG_VERSION"
fi
VLLM_TARGET_DEVICE=cpu PYTHONPATH="$CACHE${PYTHONPATH:+:$PYTHONPATH}" "$PY" -m pytest -q tests/test_serve_export.py -rs
