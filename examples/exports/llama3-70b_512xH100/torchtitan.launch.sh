#!/usr/bin/env bash
# plan 8ce0296674144363: tp2 pp4 dp8 cp8 v2 mb1 sp z1 (schedule interleaved-1f1b, recompute none, zero 1, bf16, ranks innermost first: tp,cp,dp,pp)
# model llama3-70b on 512 x H100-SXM5-80GB (64 node(s) x 8), global batch 1024 x seq 8192, 128 micro-batches of 1 per replica
# checked with: torchtitan 0.3.0 with torch 2.13.0 (ConfigManager.parse_args on this module, then the Trainer built on the fake communication backend at the plan's world size)
# predicted: 16.42 s/step, 48.6% MFU, 73.5 GiB/GPU
# you supply: HF_ASSETS_PATH: a folder with the model's Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json); torchtitan has no mock-data option
# you supply: DATASET (default c4, streamed from the Hugging Face hub; or a dataset torchtitan registers) and optionally DATASET_PATH (a local copy)
# you supply: DUMP_FOLDER (logs, checkpoints under DUMP_FOLDER/checkpoint, resumed from), TRAIN_STEPS (run length)
#
# Run once on each of the 64 node(s), with the same MASTER_ADDR (node 0's address) and NODE_RANK = 0 .. 63:
#   NODE_RANK=0 MASTER_ADDR=<node-0-host> ./torchtitan.launch.sh [extra arguments]
# or on SLURM: sbatch torchtitan.sbatch [extra arguments]. Extra arguments are appended to the command line, so they override the ones below.
# The training loss is printed by global rank 384: node 48, local rank 0 (node k holds ranks k*8 .. k*8+7).
set -euo pipefail
set -f  # no globbing of the argument words
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NNODES=${NNODES:-64}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
NODE_RANK=${NODE_RANK:?set NODE_RANK to this node's index, 0 .. 63}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to node 0's hostname or address}
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-planner-8ce0296674144363}
RDZV_BACKEND=${RDZV_BACKEND:-static}  # static: NODE_RANK fixes which ranks each node holds
HF_ASSETS_PATH=${HF_ASSETS_PATH:?set HF_ASSETS_PATH to a folder with the tokenizer files}
DATASET=${DATASET:-c4}
DATA_ARGS=(--dataloader.dataset "$DATASET")
if [ -n "${DATASET_PATH:-}" ]; then DATA_ARGS+=(--dataloader.dataset-path "$DATASET_PATH"); fi
DUMP_FOLDER=${DUMP_FOLDER:-$HERE/outputs/8ce0296674144363}
TRAIN_STEPS=${TRAIN_STEPS:?set TRAIN_STEPS, the number of optimizer steps to run}
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"  # so that --module torchtitan_job imports
# only the ranks that log print to the console (all ranks still write their logs)
LOG_RANKS=''
if [ "$NODE_RANK" = 0 ]; then LOG_RANKS=0; fi
if [ "$NODE_RANK" = 48 ]; then LOG_RANKS="${LOG_RANKS:+$LOG_RANKS,}0"; fi
FILTER=()
if [ -n "$LOG_RANKS" ]; then FILTER=(--local-ranks-filter "$LOG_RANKS" --role rank --tee 3); fi
exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE" \
  --rdzv-backend "$RDZV_BACKEND" --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$RDZV_ID" \
  ${FILTER[@]+"${FILTER[@]}"} \
  -m torchtitan.train \
  --module torchtitan_job --config planner_job \
  --hf-assets-path "$HF_ASSETS_PATH" "${DATA_ARGS[@]}" --dump-folder "$DUMP_FOLDER" \
  --training.steps "$TRAIN_STEPS" \
  "$@"
