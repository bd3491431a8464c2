#!/usr/bin/env bash
# plan 8ce0296674144363: tp2 pp4 dp8 cp8 v2 mb1 sp z1 (schedule interleaved-1f1b, recompute none, zero 1, bf16, ranks innermost first: tp,cp,dp,pp)
# model llama3-70b on 512 x H100-SXM5-80GB (64 node(s) x 8), global batch 1024 x seq 8192, 128 micro-batches of 1 per replica
# checked with: Megatron-Core 0.19.2 (PyPI megatron-core; megatron/training/arguments.py parse_args + validate_args, then parallel_state.initialize_model_parallel on a fake process group)
# predicted: 16.42 s/step, 48.6% MFU, 73.5 GiB/GPU
# you supply: MEGATRON_LM: a Megatron-LM checkout (its pretrain_gpt.py; Megatron-Core 0.19)
# you supply: data: DATA_PREFIX (a Megatron .bin/.idx prefix) and TOKENIZER (a Hugging Face tokenizer name or path); without them the launch uses Megatron's --mock-data and NullTokenizer
# you supply: CKPT_DIR (checkpoints are saved there and resumed from), TRAIN_STEPS (run length)
#
# Run once on each of the 64 node(s), with the same MASTER_ADDR (node 0's address) and NODE_RANK = 0 .. 63:
#   NODE_RANK=0 MASTER_ADDR=<node-0-host> ./megatron.launch.sh [extra arguments]
# or on SLURM: sbatch megatron.sbatch [extra arguments]. Extra arguments are appended to the command line, so they override the ones below.
# The training loss is printed by global rank 511: node 63, local rank 7 (node k holds ranks k*8 .. k*8+7).
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
# environment the framework requires
export CUDA_DEVICE_MAX_CONNECTIONS=1  # Megatron-LM asserts it for tensor / context parallelism before Blackwell: communication kernels must be scheduled before compute
MEGATRON_LM=${MEGATRON_LM:?set MEGATRON_LM to your Megatron-LM checkout}
CKPT_DIR=${CKPT_DIR:-$HERE/checkpoints/8ce0296674144363}
TRAIN_STEPS=${TRAIN_STEPS:?set TRAIN_STEPS, the number of optimizer steps to run}
# data and tokenizer: Megatron's mock data unless DATA_PREFIX is set
if [ -n "${DATA_PREFIX:-}" ]; then
  DATA_ARGS=(--data-path "$DATA_PREFIX" --split 99,1,0 --tokenizer-type HuggingFaceTokenizer --tokenizer-model "${TOKENIZER:?set TOKENIZER to your tokenizer (Hugging Face name or path)}")
else
  DATA_ARGS=(--mock-data --tokenizer-type NullTokenizer --vocab-size 128256)
fi
read -r -d '' -a PLAN_ARGS < <(grep -v '^[[:space:]]*#' "$HERE/megatron.args") || true
exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE" \
  --rdzv-backend "$RDZV_BACKEND" --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$RDZV_ID" \
  "$MEGATRON_LM/pretrain_gpt.py" \
  "${PLAN_ARGS[@]}" \
  "${DATA_ARGS[@]}" \
  --train-iters "$TRAIN_STEPS" \
  --save "$CKPT_DIR" --load "$CKPT_DIR" --save-interval 1000 \
  "$@"
