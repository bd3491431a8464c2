#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its dev tools. Sourced by demo.sh / test.sh.
# On a machine without an NVIDIA GPU, torch 2.13.0 is installed first so that pip picks the CPU
# build (a plain `pip install torch` can pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
    pip install -q "torch>=2.6"
  else
    pip install -q "torch==2.13.0"
  fi
fi
pip install -q -e ".[dev]"
