# plan 8ce0296674144363: tp2 pp4 dp8 cp8 v2 mb1 sp z1 (schedule interleaved-1f1b, recompute none, zero 1, bf16, ranks innermost first: tp,cp,dp,pp)
# model llama3-70b on 512 x H100-SXM5-80GB (64 node(s) x 8), global batch 1024 x seq 8192, 128 micro-batches of 1 per replica
# checked with: Megatron-Bridge 0.3.1 with Megatron-Core 0.16.1 (PyPI; the job's ConfigContainer.validate() at the plan's world size, then parallel_state.initialize_model_parallel on a fake process group)
# predicted: 16.42 s/step, 48.6% MFU, 73.5 GiB/GPU
# you supply: Megatron-Bridge 0.3 with its CUDA stack (pip install megatron-bridge: Megatron-Core, Transformer Engine); for a LoRA plan PRETRAINED_CHECKPOINT, the base model's Megatron checkpoint
# you supply: data: DATA_PREFIX (a Megatron .bin/.idx prefix) and TOKENIZER (a Hugging Face tokenizer name or path); without them the job trains on Megatron's mock data with NullTokenizer
# you supply: CKPT_DIR (checkpoints are saved there and resumed from), TRAIN_STEPS (run length)
# extra arguments to the launch script are Megatron-Bridge overrides, section.field=value (train.train_iters=500, model.recompute_granularity=full, ...)
"""Megatron-Bridge pre-training job for one plan: torchrun ... bridge_pretrain.py (bridge.launch.sh runs it on every node)."""

import os

import torch
import torch.nn.functional as F
from megatron.bridge.models import GPTModelProvider
from megatron.bridge.training.config import (
    CheckpointConfig,
    ConfigContainer,
    DistributedDataParallelConfig,
    DistributedInitConfig,
    GPTDatasetConfig,
    LoggerConfig,
    OptimizerConfig,
    RNGConfig,
    SchedulerConfig,
    TokenizerConfig,
    TrainingConfig,
)
from megatron.bridge.training.mixed_precision import get_mixed_precision_config
from megatron.core.transformer.enums import AttnBackend


def plan_config() -> ConfigContainer:
    """llama3-70b: tp2 pp4 dp8 cp8 v2 mb1 sp z1 on 512 GPUs (planner 8ce0296674144363).

    Run length, data, tokenizer and checkpoints come from the environment the launch script sets:
    TRAIN_STEPS; DATA_PREFIX (a Megatron .bin/.idx prefix) and TOKENIZER, else Megatron's mock data
    and NullTokenizer; CKPT_DIR."""
    seq_length = 8192
    data_prefix = os.environ.get('DATA_PREFIX')
    if data_prefix:
        tokenizer = TokenizerConfig(tokenizer_type='HuggingFaceTokenizer', tokenizer_model=os.environ['TOKENIZER'])
    else:
        tokenizer = TokenizerConfig(tokenizer_type='NullTokenizer', vocab_size=128256)
    ckpt_dir = os.environ.get('CKPT_DIR', 'checkpoints')
    precision = get_mixed_precision_config('bf16_mixed')
    # the model, exactly, and the plan's parallelism (planner.export.bridge.BRIDGE_FIELDS)
    model = GPTModelProvider(
        tensor_model_parallel_size=2,
        pipeline_model_parallel_size=4,
        context_parallel_size=8,
        virtual_pipeline_model_parallel_size=2,
        sequence_parallel=True,
        seq_length=8192,
        attention_backend=AttnBackend.flash,
        num_layers=80,
        hidden_size=8192,
        ffn_hidden_size=28672,
        num_attention_heads=64,
        num_query_groups=8,
        position_embedding_type='rope',
        rotary_base=500000,
        normalization='RMSNorm',
        layernorm_epsilon=1e-05,
        add_bias_linear=False,
        attention_dropout=0.0,
        hidden_dropout=0.0,
        gated_linear_unit=True,
        activation_func=F.silu,
        share_embeddings_and_output_weights=False,
        vocab_size=128256,
        pipeline_dtype=torch.bfloat16,
    )
    return ConfigContainer(
        model=model,
        train=TrainingConfig(
            train_iters=int(os.environ.get('TRAIN_STEPS', '100')),
            eval_interval=None,
            micro_batch_size=1,
            global_batch_size=1024,
            eval_iters=0,
        ),
        optimizer=OptimizerConfig(
            bf16=True,
            fp16=False,
            optimizer='adam',
            lr=0.00015,
            min_lr=1.5e-05,
            adam_beta1=0.9,
            adam_beta2=0.95,
            adam_eps=1e-08,
            weight_decay=0.1,
            clip_grad=1.0,
            use_distributed_optimizer=True,
        ),
        scheduler=SchedulerConfig(
            lr_decay_iters=None,
            lr_warmup_init=0.0,
            lr_decay_style='cosine',
            lr_warmup_iters=2000,
        ),
        ddp=DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            average_in_collective=True,
            use_distributed_optimizer=True,
            overlap_grad_reduce=True,
            overlap_param_gather=True,
        ),
        # blend None: Megatron's mock data
        dataset=GPTDatasetConfig(
            random_seed=1234,
            seq_length=seq_length,
            reset_attention_mask=False,
            reset_position_ids=False,
            eod_mask_loss=False,
            blend=([data_prefix], None) if data_prefix else None,
            split='99,1,0',
            dataloader_type='single',
            num_workers=2,
            num_dataset_builder_threads=1,
            data_sharding=True,
        ),
        logger=LoggerConfig(
            log_interval=1,
            log_throughput=True,
        ),
        tokenizer=tokenizer,
        checkpoint=CheckpointConfig(
            save=ckpt_dir,
            load=ckpt_dir,
            save_interval=1000,
        ),
        rng=RNGConfig(seed=1234),
        dist=DistributedInitConfig(),
        mixed_precision=precision,
    )


if __name__ == "__main__":
    import sys

    from megatron.bridge.training.gpt_step import forward_step
    from megatron.bridge.training.pretrain import pretrain
    from megatron.bridge.training.utils.omegaconf_utils import process_config_with_overrides

    # extra arguments are Bridge's Hydra-style overrides, e.g. train.train_iters=500 checkpoint.save_interval=200
    pretrain(process_config_with_overrides(plan_config(), cli_overrides=sys.argv[1:]), forward_step)
