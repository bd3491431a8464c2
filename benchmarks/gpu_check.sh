#!/usr/bin/env bash
# The prepared single-GPU check (issue 14, item 6): calibrate this GPU, then predict and measure a set
# of single-GPU plans spanning micro-batch, recompute (none / selective / full), sequence length
# 512-16k and model size, and write a report (markdown + JSON) under examples/profiles/<date>-<device>/.
#
#   bash benchmarks/gpu_check.sh              # on a machine with an NVIDIA GPU; under 8 minutes
#   bash benchmarks/gpu_check.sh --cpu-dry    # the same sequence on CPU with tiny sizes (a rehearsal)
#
# Options: --cpu-dry (or GPU_CHECK_CPU_DRY=1); --out-root DIR (default examples/profiles; or
# GPU_CHECK_OUT_ROOT); --budget SECONDS for the whole check (default 450; or GPU_CHECK_BUDGET_S).
# Every step has a time limit and the plans share what is left of the budget; a plan that would start
# with too little time left is recorded as skipped. An existing report folder is never overwritten:
# a new one gets a -2, -3, ... suffix. fp8: the executor refuses FP8 recipes today, so every plan
# runs in bf16 and the report says fp8 was not run and why.
# Run from the project's environment (`. .venv/bin/activate`), or point PYTHON at its interpreter.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python}
NVIDIA_SMI=${GPU_CHECK_NVIDIA_SMI:-nvidia-smi}
DRY=${GPU_CHECK_CPU_DRY:-0}
OUT_ROOT=${GPU_CHECK_OUT_ROOT:-$ROOT/examples/profiles}
BUDGET=${GPU_CHECK_BUDGET_S:-450}
REPORT_RESERVE=20  # seconds kept for writing the report

die() { echo "gpu_check.sh: $*" >&2; exit 2; }

while (($#)); do
  case $1 in
    --cpu-dry) DRY=1 ;;
    --out-root) (($# >= 2)) || die "--out-root needs a folder"; OUT_ROOT=$2; shift ;;
    --budget) (($# >= 2)) || die "--budget needs a number of seconds"; BUDGET=$2; shift ;;
    -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$1' (options: --cpu-dry, --out-root DIR, --budget SECONDS)" ;;
  esac
  shift
done
[[ $BUDGET =~ ^[0-9]+$ ]] && ((BUDGET >= 60)) || die "--budget must be a whole number of seconds >= 60, got '$BUDGET'"
[[ $DRY == 0 || $DRY == 1 ]] || die "GPU_CHECK_CPU_DRY must be 0 or 1, got '$DRY'"

# ---- step 0: the device ---------------------------------------------------------------------------
if ((DRY)); then
  DEVICE=cpu; DEVICE_NAME="cpu-dry"
else
  DEVICE=cuda
  DEVICE_NAME=$("$NVIDIA_SMI" --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1) || DEVICE_NAME=""
  [[ -n $DEVICE_NAME ]] || die "no NVIDIA GPU found ('$NVIDIA_SMI' lists none); run it on a GPU machine, or pass --cpu-dry to rehearse on CPU"
fi
command -v timeout >/dev/null || die "needs coreutils' timeout"
"$PY" -c "import planner, executor, torch" 2>/dev/null \
  || die "'$PY' cannot import planner, executor and torch; activate the project's environment (. .venv/bin/activate)"

SLUG=$(printf '%s' "$DEVICE_NAME" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-*//; s/-*$//')
DIR="$OUT_ROOT/$(date -u +%Y-%m-%d)-$SLUG"
mkdir -p "$OUT_ROOT"
BASE_DIR=$DIR; n=2
until mkdir "$DIR" 2>/dev/null; do DIR="$BASE_DIR-$n"; n=$((n + 1)); done  # never overwrite a report
mkdir -p "$DIR/plans" "$DIR/measured" "$DIR/logs" "$DIR/models"
STEPS_TSV="$DIR/steps.tsv"
printf 'step\tstatus\tseconds\tnote\n' > "$STEPS_TSV"
cd "$ROOT"

progress() { printf '[gpu_check %4ds / %ds] %s\n' "$SECONDS" "$BUDGET" "$*" >&2; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$STEPS_TSV"; }
left() { echo $((BUDGET - REPORT_RESERVE - SECONDS)); }
planner() { "$PY" -m planner.cli "$@"; }

progress "writing to $DIR ($DEVICE_NAME)"

# ---- step 1: setup check (versions, device, fp8 support, commit) ----------------------------------
t0=$SECONDS
if ! timeout -k 5 60 "$PY" benchmarks/gpu_check_report.py env "$DIR/env.json" --device "$DEVICE" \
      --nvidia-smi "$NVIDIA_SMI" > "$DIR/logs/setup.log" 2>&1; then
  record setup failed $((SECONDS - t0)) "see logs/setup.log"
  die "setup check failed: $(tail -n 1 "$DIR/logs/setup.log")"
fi
record setup ok $((SECONDS - t0)) ""
progress "setup: $(cat "$DIR/logs/setup.log")"

# ---- step 2: calibrate this device (one rank) -----------------------------------------------------
if ((DRY)); then CAL_LIMIT=120; CAL_ARGS=(--quick); else CAL_LIMIT=120; CAL_ARGS=(); fi
t0=$SECONDS
progress "calibrate: planner calibrate --nproc-per-node 1 --device $DEVICE ${CAL_ARGS[*]} (limit ${CAL_LIMIT} s)"
if timeout -k 10 "$CAL_LIMIT" "$PY" -m planner.cli calibrate --nproc-per-node 1 --device "$DEVICE" "${CAL_ARGS[@]}" \
     --name "$SLUG-calibrated" --out "$DIR/cluster-profile.json" > "$DIR/logs/calibrate.log" 2>&1; then
  CLUSTER="$DIR/cluster-profile.json"
  record calibrate ok $((SECONDS - t0)) "cluster-profile.json"
else
  rc=$?
  CLUSTER=$("$PY" benchmarks/gpu_check_report.py preset "$DIR/env.json" 2>/dev/null) \
    || die "calibration failed (exit status $rc, see $DIR/logs/calibrate.log) and no catalog preset matches $DEVICE_NAME"
  why=$([[ $rc == 124 || $rc == 137 ]] && echo "timed out after ${CAL_LIMIT} s" || echo "exit status $rc")
  record calibrate failed $((SECONDS - t0)) "$why; predicted with the catalog preset $CLUSTER"
  progress "calibrate FAILED ($why, see logs/calibrate.log): predicting with the catalog preset $CLUSTER"
fi
progress "calibrate: done ($((SECONDS - t0)) s)"

# ---- step 3: the plans: id | axis | model | seq | micro-batch | global batch | recompute -----------
# One plan per line; the axes share a base point so that each varies one thing. Global batches keep
# the tokens per step about constant along the sequence-length axis.
if ((DRY)); then
  DTYPE=fp32; STEPS=2; WARMUP=1; PLAN_LIMIT=90; MIN_RUN=15
  "$PY" -c "import dataclasses, json, sys; from planner.specs.catalog import load_model
m = dataclasses.replace(load_model('tiny'), name='tiny-2layer', num_layers=2)
json.dump(m.to_dict(), open(sys.argv[1], 'w'), indent=1)" "$DIR/models/tiny-2layer.json"
  PLANS="01|base|tiny|128|2|4|none
02|micro-batch|tiny|128|1|4|none
03|recompute|tiny|128|2|4|selective
04|recompute|tiny|128|2|4|full
05|sequence|tiny|256|1|2|none
06|model size|$DIR/models/tiny-2layer.json|128|2|4|none"
else
  DTYPE=bf16; STEPS=6; WARMUP=3; PLAN_LIMIT=90; MIN_RUN=30
  PLANS="01|base|gpt2-medium|2048|4|8|none
02|micro-batch|gpt2-medium|2048|1|8|none
03|micro-batch|gpt2-medium|2048|2|8|none
04|micro-batch|gpt2-medium|2048|8|8|none
05|recompute|gpt2-medium|2048|4|8|selective
06|recompute|gpt2-medium|2048|4|8|full
07|sequence|gpt2-medium|512|8|32|none
08|sequence|gpt2-medium|4096|2|4|none
09|sequence|gpt2-medium|8192|1|2|none
10|sequence|gpt2-medium|16384|1|1|none
11|model size|gpt2|2048|4|8|none
12|model size|megatron-1.7b|2048|4|8|none"
fi
printf 'id\taxis\tmodel\tseq_len\tmicro_batch\tglobal_batch\trecompute\n' > "$DIR/plans.tsv"
printf '%s\n' "$PLANS" | tr '|' '\t' >> "$DIR/plans.tsv"

t0=$SECONDS
while IFS='|' read -r id axis model seq mb gb rc_mode; do
  if ! timeout -k 5 60 "$PY" -m planner.cli estimate --model "$model" --cluster "$CLUSTER" --gpus 1 \
       --global-batch "$gb" --seq-len "$seq" --micro-batch "$mb" --recompute "$rc_mode" --dtype "$DTYPE" \
       --framework this --tp 1 --pp 1 --dp 1 --out "$DIR/plans/$id.json" > "$DIR/logs/estimate-$id.log" 2>&1; then
    record "estimate $id" failed $((SECONDS - t0)) "$(tail -n 1 "$DIR/logs/estimate-$id.log")"
    progress "plan $id ($axis): estimate FAILED: $(tail -n 1 "$DIR/logs/estimate-$id.log")"
  fi
done <<< "$PLANS"
record estimate ok $((SECONDS - t0)) "$(ls "$DIR/plans" | wc -l) plans predicted"
progress "predicted $(ls "$DIR/plans" | wc -l) plans ($((SECONDS - t0)) s)"

# ---- step 4: measure each plan (planner run: one torchrun launch, one rank) -----------------------
total=$(printf '%s\n' "$PLANS" | wc -l)
while IFS='|' read -r id axis model seq mb gb rc_mode; do
  what="plan $id/$total ($axis: $(basename "$model" .json) seq $seq mb $mb gb $gb recompute $rc_mode)"
  [[ -f $DIR/plans/$id.json ]] || { record "run $id" skipped 0 "no plan (estimate failed)"; continue; }
  budget_left=$(left)
  if ((budget_left < MIN_RUN)); then
    record "run $id" skipped 0 "budget: ${budget_left} s left"
    progress "$what: SKIPPED (${budget_left} s of the budget left)"
    continue
  fi
  limit=$((budget_left < PLAN_LIMIT ? budget_left : PLAN_LIMIT))
  t0=$SECONDS
  if timeout -k 10 "$limit" "$PY" -m planner.cli run "$DIR/plans/$id.json" --steps "$STEPS" --warmup "$WARMUP" \
       --device "$DEVICE" --out "$DIR/measured/$id.json" > "$DIR/logs/run-$id.log" 2>&1; then
    record "run $id" ok $((SECONDS - t0)) ""
    progress "$what: $(grep -m 1 '^step time' "$DIR/logs/run-$id.log" | tr -s ' ' || true) ($((SECONDS - t0)) s)"
  else
    rc=$?
    if [[ $rc == 124 || $rc == 137 ]]; then note="timed out after ${limit} s"; else
      note="exit status $rc: $(grep -v '^\s*$' "$DIR/logs/run-$id.log" | tail -n 1 | cut -c 1-200)"; fi
    record "run $id" failed $((SECONDS - t0)) "$note"
    progress "$what: FAILED ($note)"
  fi
done <<< "$PLANS"

# ---- step 5: the report ---------------------------------------------------------------------------
t0=$SECONDS
timeout -k 5 120 "$PY" benchmarks/gpu_check_report.py report "$DIR" --cluster "$CLUSTER" --dtype "$DTYPE" \
  --steps "$STEPS" --warmup "$WARMUP" --budget "$BUDGET" --elapsed "$SECONDS"
progress "report written: $DIR/report.md and $DIR/report.json ($((SECONDS - t0)) s; ${SECONDS} s in all)"
