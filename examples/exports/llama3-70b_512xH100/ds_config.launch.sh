#!/usr/bin/env bash
# plan 26e50c51fa3ebead: tp8 pp2 dp32 mb1 sp z1 (schedule 1f1b, recompute none, zero 1, bf16, ranks innermost first: tp,dp,pp,cp)
# model llama3-70b on 512 x H100-SXM5-80GB (64 node(s) x 8), global batch 1024 x seq 8192, 32 micro-batches of 1 per replica
# checked with: Megatron-DeepSpeed main @ f4157be (megatron/arguments.py parse_args + validate_args, parallel_state.initialize_model_parallel on a fake process group, then DeepSpeedConfig with that parallel state) and DeepSpeed 0.19.8
# predicted: 18 s/step, 44.3% MFU, 56.0 GiB/GPU
# you supply: MEGATRON_DEEPSPEED: a microsoft/Megatron-DeepSpeed checkout (its pretrain_gpt.py)
# you supply: data: DATA_PREFIX (a Megatron .bin/.idx prefix) and TOKENIZER (a Hugging Face tokenizer name or path); Megatron-DeepSpeed has no mock-data option
# you supply: CKPT_DIR (checkpoints are saved there and resumed from), TRAIN_STEPS (run length)
# this ds_config is valid only through Megatron-DeepSpeed's parallel state: DeepSpeed checks train_batch_size = micro batch x accumulation x data-parallel size, and plain DeepSpeed (deepspeed.initialize without mpu) counts all ranks as data parallel, so it rejects every plan with tp x pp > 1
#
# Run once on each of the 64 node(s), with the same MASTER_ADDR (node 0's address) and NODE_RANK = 0 .. 63:
#   NODE_RANK=0 MASTER_ADDR=<node-0-host> ./ds_config.launch.sh [extra arguments]
# or on SLURM: sbatch ds_config.sbatch [extra arguments]. Extra arguments are appended to the command line, so they override the ones below.
# The training loss is printed by global rank 511: node 63, local rank 7 (node k holds ranks k*8 .. k*8+7).
set -euo pipefail
set -f  # no globbing of the argument words
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NNODES=${NNODES:-64}
NPROC_PER_NODE=${NPROC_PER_NODE:-8}
NODE_RANK=${NODE_RANK:?set NODE_RANK to this node's index, 0 .. 63}
MASTER_ADDR=${MASTER_ADDR:?set MASTER_ADDR to node 0's hostname or address}
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-planner-26e50c51fa3ebead}
RDZV_BACKEND=${RDZV_BACKEND:-static}  # static: NODE_RANK fixes which ranks each node holds
# environment the framework requires
export CUDA_DEVICE_MAX_CONNECTIONS=1  # Megatron-DeepSpeed refuses sequence parallelism without it (megatron/arguments.py)
MEGATRON_DEEPSPEED=${MEGATRON_DEEPSPEED:?set MEGATRON_DEEPSPEED to your Megatron-DeepSpeed checkout}
DATA_PREFIX=${DATA_PREFIX:?set DATA_PREFIX to your Megatron .bin/.idx data prefix}
TOKENIZER=${TOKENIZER:?set TOKENIZER to your Hugging Face tokenizer name or path}
CKPT_DIR=${CKPT_DIR:-$HERE/checkpoints/26e50c51fa3ebead}
TRAIN_STEPS=${TRAIN_STEPS:?set TRAIN_STEPS, the number of optimizer steps to run}
read -r -d '' -a PLAN_ARGS < <(grep -v '^[[:space:]]*#' "$HERE/ds_config.megatron-deepspeed.args") || true
# DeepSpeed's own launcher works too: deepspeed --hostfile HOSTFILE (lines 'host slots=8') --master_addr $MASTER_ADDR pretrain_gpt.py <the same arguments>
exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE" \
  --rdzv-backend "$RDZV_BACKEND" --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$RDZV_ID" \
  "$MEGATRON_DEEPSPEED/pretrain_gpt.py" \
  "${PLAN_ARGS[@]}" \
  --deepspeed_config "$HERE/ds_config.json" \
  --data-path "$DATA_PREFIX" --split 99,1,0 --tokenizer-type HFTokenizer --tokenizer-model "$TOKENIZER" \
  --train-iters "$TRAIN_STEPS" \
  --save "$CKPT_DIR" --load "$CKPT_DIR" --save-interval 1000 \
  "$@"
