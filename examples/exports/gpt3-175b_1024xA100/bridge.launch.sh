#!/usr/bin/env bash
# plan c5d7a234e80d6a3f: tp4 pp8 dp16 cp2 v6 mb3 sp z1 (schedule interleaved-1f1b, recompute none, zero 1, bf16, ranks innermost first: tp,cp,dp,pp)
# model gpt3-175b on 1024 x A100-SXM4-80GB (128 node(s) x 8), global batch 1536 x seq 2048, 32 micro-batches of 3 per replica
# checked with: Megatron-Bridge 0.3.1 with Megatron-Core 0.16.1 (PyPI; the job's ConfigContainer.validate() at the plan's world size, then parallel_state.initialize_model_parallel on a fake process group)
# predicted: 16.84 s/step, 62.9% MFU, 68.1 GiB/GPU
# you supply: Megatron-Bridge 0.3 with its CUDA stack (pip install megatron-bridge: Megatron-Core, Transformer Engine); for a LoRA plan PRETRAINED_CHECKPOINT, the base model's Megatron checkpoint
# you supply: data: DATA_PREFIX (a Megatron .bin/.idx prefix) and TOKENIZER (a Hugging Face tokenizer name or path); without them the job trains on Megatron's mock data with NullTokenizer
# you supply: CKPT_DIR (checkpoints are saved there and resumed from), TRAIN_STEPS (run length)
# extra arguments to the launch script are Megatron-Bridge overrides, section.field=value (train.train_iters=500, model.recompute_granularity=full, ...)
#
# Run once on each of the 128 node(s), with the same MASTER_ADDR (node 0's address) and NODE_RANK = 0 .. 127:
#   NODE_RANK=0 MASTER_ADDR=<node-0-host> ./bridge.launch.sh [extra arguments]
# or on SLURM: sbatch bridge.sbatch [extra arguments]. Extra arguments are appended to the command line, so they override the ones below.
# The training loss is printed by global rank 1023: node 127, local rank 7 (node k holds ranks k*8 .. k*8+7).
set -euo pipefail
set -f  # no globbing of the argument words
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NNODES=${NNODES:-128}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
NODE_RANK=${NODE_RANK:?set NODE_RANK to this node's index, 0 .. 127}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to node 0's hostname or address}
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-planner-c5d7a234e80d6a3f}
RDZV_BACKEND=${RDZV_BACKEND:-static}  # static: NODE_RANK fixes which ranks each node holds
# environment the framework requires
export CUDA_DEVICE_MAX_CONNECTIONS=1  # Megatron-LM asserts it for tensor / context parallelism before Blackwell: communication kernels must be scheduled before compute
export CKPT_DIR=${CKPT_DIR:-$HERE/checkpoints/c5d7a234e80d6a3f}
export TRAIN_STEPS=${TRAIN_STEPS:?set TRAIN_STEPS, the number of optimizer steps to run}
# data and tokenizer: Megatron's mock data unless DATA_PREFIX is set
if [ -n "${DATA_PREFIX:-}" ]; then
  export DATA_PREFIX TOKENIZER="${TOKENIZER:?set TOKENIZER to your tokenizer (Hugging Face name or path)}"
fi
exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE" \
  --rdzv-backend "$RDZV_BACKEND" --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$RDZV_ID" \
  "$HERE/bridge_pretrain.py" \
  "$@"
