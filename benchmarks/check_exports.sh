#!/usr/bin/env bash
# Run every export in examples/exports/ (or the folders given) through the frameworks' own code:
#   torchtitan 0.3.0 (ConfigManager + Trainer built on the fake backend) and DeepSpeed 0.19.8
#   (DeepSpeedConfig) in the project's venv; Megatron-Core 0.19.2 (parse_args + validate_args +
#   initialize_model_parallel on a fake process group) in a Python 3.12 venv this script creates
#   outside the repository (megatron-core needs Python >= 3.12).
# Prints one line per export: passed / failed / skipped with the reason; exit 1 if any failed.
# Env: CHECK_EXPORTS_HOME (default ~/.cache/planner-check-exports: the 3.12 venv, ~5 GB: torch's
# only cp312 2.13.0 wheel is the CUDA build, which runs on the CPU), PYTHON312 (a python3.12).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
HOME_DIR="${CHECK_EXPORTS_HOME:-$HOME/.cache/planner-check-exports}"
if [ "$#" -gt 0 ]; then FOLDERS=("$@"); else FOLDERS=(examples/exports/*/); fi
PROJECT_PY=python
if [ -x .venv/bin/python ]; then PROJECT_PY=.venv/bin/python; fi

# torchtitan and DeepSpeed (and the committed files against a fresh export)
"$PROJECT_PY" benchmarks/check_exports.py "${FOLDERS[@]}"
status=$?

# Megatron-LM
PY312="${PYTHON312:-}"
if [ -z "$PY312" ]; then
  for cand in python3.12 "$HOME/.pyenv/versions/3.12"*/bin/python3.12; do
    if command -v "$cand" >/dev/null 2>&1; then PY312="$(command -v "$cand")"; break; fi
  done
fi
VENV="$HOME_DIR/venv312"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import megatron.core, torch" >/dev/null 2>&1; then
  if [ -z "$PY312" ]; then
    for d in "${FOLDERS[@]}"; do echo "$(basename "$d") megatron: skipped: no Python 3.12 (set PYTHON312)"; done
    exit "$status"
  fi
  mkdir -p "$HOME_DIR"
  "$PY312" -m venv "$VENV" && "$VENV/bin/pip" install -q "torch==2.13.0" "megatron-core==0.19.2" \
    >"$HOME_DIR/install.log" 2>&1 || { echo "megatron: skipped: could not install megatron-core (see $HOME_DIR/install.log)"; exit "$status"; }
fi
echo "versions (Megatron check): $("$VENV/bin/python" -c 'import megatron.core, torch; print("megatron-core", megatron.core.__version__, "torch", torch.__version__)' 2>/dev/null)"
for d in "${FOLDERS[@]}"; do
  d="${d%/}"
  if [ -f "$d/megatron.args" ]; then
    line="$("$VENV/bin/python" benchmarks/check_megatron.py "$d" megatron 2>"$HOME_DIR/megatron-$(basename "$d").log")"
    rc=$?
    echo "$(basename "$d") megatron: ${line:-failed: no verdict (see $HOME_DIR/megatron-$(basename "$d").log)}"
    [ "$rc" -eq 0 ] || status=1
  fi
  if [ -f "$d/ds_config.megatron-deepspeed.args" ]; then
    echo "$(basename "$d") megatron-deepspeed: skipped: its parser is not run yet (argument names are checked against microsoft/Megatron-DeepSpeed f4157be in tests/test_export.py)"
  fi
done
exit "$status"
