#!/usr/bin/env bash
# Run every export in examples/exports/ (or the folders given) through the frameworks' own code:
#   torchtitan 0.3.0 (ConfigManager + Trainer built on the fake backend) and DeepSpeed 0.19.8
#   (DeepSpeedConfig) in the project's venv; Megatron-Core 0.19.2 (parse_args + validate_args +
#   initialize_model_parallel on a fake process group) in a Python 3.12 venv this script creates
#   outside the repository (megatron-core needs Python >= 3.12); Megatron-Bridge 0.3.1 (the job's
#   ConfigContainer.validate() + initialize_model_parallel, benchmarks/check_bridge.py) in a second one.
# --variants: the same for every exporter branch (tests/test_export.py's VARIANTS) instead of the examples.
# Prints one line per export: passed / failed / skipped with the reason; exit 1 if any failed.
# Megatron-DeepSpeed (no wheel): with MEGATRON_DEEPSPEED_SRC=<checkout>, parse_args + validate_args +
#   initialize_model_parallel, then DeepSpeedConfig with that parallel state, in the same venv.
# Env: CHECK_EXPORTS_HOME (default ~/.cache/planner-check-exports: the 3.12 venv, ~5 GB: torch's
# only cp312 2.13.0 wheel is the CUDA build, which runs on the CPU), PYTHON312 (a python3.12).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
HOME_DIR="${CHECK_EXPORTS_HOME:-$HOME/.cache/planner-check-exports}"
PROJECT_PY=python
if [ -x .venv/bin/python ]; then PROJECT_PY=.venv/bin/python; fi
if [ "${1:-}" = "--variants" ]; then  # every exporter branch (tests/test_export.py's VARIANTS), not only the examples
  VARIANTS_DIR="$(mktemp -d)"
  mapfile -t FOLDERS < <("$PROJECT_PY" benchmarks/write_export_variants.py "$VARIANTS_DIR")
elif [ "$#" -gt 0 ]; then FOLDERS=("$@"); else FOLDERS=(examples/exports/*/); fi

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
    if [ -z "${MEGATRON_DEEPSPEED_SRC:-}" ]; then
      echo "$(basename "$d") megatron-deepspeed: skipped: set MEGATRON_DEEPSPEED_SRC to a microsoft/Megatron-DeepSpeed checkout (it has no wheel)"
    else
      if ! "$VENV/bin/python" -c "import deepspeed, transformers, six" >/dev/null 2>&1; then
        "$VENV/bin/pip" install -q "deepspeed==0.19.8" "transformers<=5.12.1,>=5.8" six >>"$HOME_DIR/install.log" 2>&1
      fi
      line="$(PYTHONPATH="$MEGATRON_DEEPSPEED_SRC" "$VENV/bin/python" benchmarks/check_megatron_deepspeed.py "$d" ds_config \
        2>"$HOME_DIR/megatron-deepspeed-$(basename "$d").log")"
      rc=$?
      echo "$(basename "$d") megatron-deepspeed: ${line:-failed: no verdict (see $HOME_DIR/megatron-deepspeed-$(basename "$d").log)}"
      [ "$rc" -eq 0 ] || status=1
    fi
  fi
done
# Megatron-Bridge: its own venv (Bridge 0.3.1 pins megatron-core < 0.17; Transformer Engine installs only
# with CUDA, so Bridge goes in without its dependencies and the few it imports are added)
BVENV="$HOME_DIR/venv-bridge"
if [ ! -x "$BVENV/bin/python" ] || ! "$BVENV/bin/python" -c "import megatron.core, transformers, torch" >/dev/null 2>&1 \
    || ! "$BVENV/bin/pip" show megatron-bridge >/dev/null 2>&1; then
  if [ -n "$PY312" ]; then
    "$PY312" -m venv "$BVENV" && "$BVENV/bin/pip" install -q "torch==2.13.0" "megatron-core==0.16.1" \
      "transformers==4.57.6" "omegaconf==2.3.1" "hydra-core==1.3.2" "PyYAML==6.0.4" "rich==15.0.0" "regex" \
      "tqdm" "six==1.17.0" "einops==0.8.2" "datasets==3.6.0" "huggingface_hub==0.36.2" \
      >"$HOME_DIR/install-bridge.log" 2>&1 \
      && "$BVENV/bin/pip" install -q --no-deps "megatron-bridge==0.3.1" >>"$HOME_DIR/install-bridge.log" 2>&1 \
      || echo "megatron-bridge: skipped: could not install it (see $HOME_DIR/install-bridge.log)"
  fi
fi
if "$BVENV/bin/pip" show megatron-bridge >/dev/null 2>&1; then
  echo "versions (Megatron-Bridge check): $("$BVENV/bin/pip" list 2>/dev/null | awk '$1 ~ /^(megatron-bridge|megatron-core|torch)$/ {printf "%s %s ", $1, $2}')"
  for d in "${FOLDERS[@]}"; do
    d="${d%/}"
    if [ -f "$d/bridge_pretrain.py" ]; then
      line="$("$BVENV/bin/python" benchmarks/check_bridge.py "$d" bridge 2>"$HOME_DIR/bridge-$(basename "$d").log")"
      rc=$?
      echo "$(basename "$d") megatron-bridge: ${line:-failed: no verdict (see $HOME_DIR/bridge-$(basename "$d").log)}"
      [ "$rc" -eq 0 ] || status=1
    fi
  done
else
  for d in "${FOLDERS[@]}"; do echo "$(basename "$d") megatron-bridge: skipped: no Python 3.12 or no megatron-bridge"; done
fi
# control: the same check must fail when the launch script does not export what Megatron asserts
for d in "${FOLDERS[@]}"; do
  d="${d%/}"
  if grep -q '^export CUDA_DEVICE_MAX_CONNECTIONS' "$d/megatron.launch.sh" 2>/dev/null; then
    ctl="$(mktemp -d)"
    cp "$d/plan.json" "$d/megatron.args" "$ctl/"
    grep -v '^export CUDA_DEVICE_MAX_CONNECTIONS' "$d/megatron.launch.sh" >"$ctl/megatron.launch.sh"
    line="$("$VENV/bin/python" benchmarks/check_megatron.py "$ctl" megatron 2>/dev/null)"
    echo "control ($(basename "$d") megatron.launch.sh without CUDA_DEVICE_MAX_CONNECTIONS, must fail): $line"
    case "$line" in failed:*) ;; *) status=1 ;; esac
    rm -rf "$ctl"
    break
  fi
done
exit "$status"
