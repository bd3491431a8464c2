# plan 8ce0296674144363: tp2 pp4 dp8 cp8 v2 mb1 sp z1 (schedule interleaved-1f1b, recompute none, zero 1, bf16, ranks innermost first: tp,cp,dp,pp)
# model llama3-70b on 512 x H100-SXM5-80GB (64 node(s) x 8), global batch 1024 x seq 8192, 128 micro-batches of 1 per replica
# checked with: torchtitan 0.3.0 with torch 2.13.0 (ConfigManager.parse_args on this module, then the Trainer built on the fake communication backend at the plan's world size)
# predicted: 16.42 s/step, 48.6% MFU, 73.5 GiB/GPU
# you supply: HF_ASSETS_PATH: a folder with the model's Hugging Face tokenizer files (tokenizer.json, tokenizer_config.json); torchtitan has no mock-data option
# you supply: DATASET (default c4, streamed from the Hugging Face hub; or a dataset torchtitan registers) and optionally DATASET_PATH (a local copy)
# you supply: DUMP_FOLDER (logs, checkpoints under DUMP_FOLDER/checkpoint, resumed from), TRAIN_STEPS (run length)
"""torchtitan config registry for one plan: torchrun ... -m torchtitan.train --module <this module> --config planner_job."""

from torchtitan.components.checkpoint import CheckpointManager
from torchtitan.components.loss import ChunkedLossWrapper, CrossEntropyLoss
from torchtitan.components.metrics import MetricsProcessor
from torchtitan.components.optimizer import LRSchedulersContainer, default_adamw
from torchtitan.components.validate import Validator
from torchtitan.config import CompileConfig, ParallelismConfig, TrainingConfig
from torchtitan.distributed.activation_checkpoint import FullAC, SelectiveAC  # noqa: F401
from torchtitan.hf_datasets.text_datasets import HuggingFaceTextDataLoader
from torchtitan.models.common.config_utils import decoder_vocab_size
from torchtitan.models.llama3 import model_registry
from torchtitan.tools.profiler import Profiler
from torchtitan.trainer import Trainer


def planner_job() -> Trainer.Config:
    """llama3-70b: tp2 pp4 dp8 cp8 v2 mb1 sp z1 on 512 GPUs (planner 8ce0296674144363)."""
    model_spec = model_registry('70B')  # bf16
    model = model_spec.model
    # the plan's model, exactly: shape, GQA, tied embeddings, then RoPE and norm epsilon (Hugging Face meta-llama/Meta-Llama-3-70B config.json (no rope_scaling))
    shape = (len(model.layers), model.dim, model.layers[0].attention.n_heads,
             model.layers[0].attention.n_kv_heads or model.layers[0].attention.n_heads,
             model.layers[0].feed_forward.w1.out_features, model.vocab_size, model.enable_weight_tying)
    expected = (80, 8192, 64, 8, 28672, 128256, False)
    if shape != expected:
        raise ValueError(f'torchtitan llama3 70B is {shape}; llama3-70b is {expected}')
    for layer in model.layers:
        layer.attention.rope.theta = 500000.0
        layer.attention.rope.scaling = 'none'  # torchtitan's flavors are Llama 3.1
        layer.attention_norm.eps = 1e-05
        layer.ffn_norm.eps = 1e-05
    model.norm.eps = 1e-05
    config = Trainer.Config(
        model_spec=model_spec,
        loss=ChunkedLossWrapper.Config(loss_fn=CrossEntropyLoss.Config(global_vocab_size=decoder_vocab_size(model_spec))),
        training=TrainingConfig(),
        parallelism=ParallelismConfig(),
        dataloader=HuggingFaceTextDataLoader.Config(),
        optimizer=default_adamw(),
        lr_scheduler=LRSchedulersContainer.Config(),
        checkpoint=CheckpointManager.Config(),
        metrics=MetricsProcessor.Config(),
        profiler=Profiler.Config(),
        compile=CompileConfig(),
        validator=Validator.Config(),
    )
    # the plan (planner.export.torchtitan.TORCHTITAN_FIELDS)
    config.parallelism.data_parallel_replicate_degree = 1
    config.parallelism.data_parallel_shard_degree = 8
    config.parallelism.fsdp_reshard_after_forward = 'never'
    config.parallelism.tensor_parallel_degree = 2
    config.parallelism.enable_sequence_parallel = True
    config.parallelism.pipeline_parallel_degree = 4
    config.parallelism.pipeline_parallel_schedule = 'Interleaved1F1B'
    config.parallelism.pipeline_parallel_microbatch_size = 1
    config.parallelism.pipeline_parallel_layers_per_stage = 10
    config.parallelism.pipeline_parallel_first_stage_less_layers = 0
    config.parallelism.pipeline_parallel_last_stage_less_layers = 0
    config.parallelism.context_parallel_degree = 8
    config.training.local_batch_size = 128
    config.training.global_batch_size = 1024
    config.training.seq_len = 8192
    config.training.dtype = 'float32'
    config.training.mixed_precision_param = 'bfloat16'
    config.training.mixed_precision_reduce = 'float32'
    config.activation_checkpoint = None
    config.training.disable_cuda_graphs = True
    config.compile.enable = False
    config.compile.enable_async_tensor_parallel = False
    # the rest of the job, set explicitly
    config.training.steps = 10_000  # the launch script passes --training.steps $TRAIN_STEPS
    config.training.max_norm = 1.0
    config.optimizer = default_adamw(lr=0.00015, betas=(0.9, 0.95), eps=1e-08, weight_decay=0.1)
    config.lr_scheduler.warmup_steps = 2000
    config.lr_scheduler.decay_ratio = None  # decay over all steps after warm-up
    config.lr_scheduler.decay_type = 'cosine'
    config.lr_scheduler.min_lr_factor = 0.1
    config.checkpoint.enable = True
    config.checkpoint.folder = 'checkpoint'  # under --dump-folder
    config.checkpoint.interval = 1000
    config.checkpoint.async_mode = 'disabled'
    config.profiler.enable_profiling = False
    config.profiler.enable_memory_snapshot = False
    config.metrics.log_freq = 1
    config.metrics.enable_tensorboard = False
    config.validator.enable = False
    config.dataloader.dataset = 'c4'  # placeholder: the launch script passes --dataloader.dataset $DATASET
    config.hf_assets_path = '<HF_ASSETS_PATH>'  # placeholder: the launch script passes --hf-assets-path
    return config
