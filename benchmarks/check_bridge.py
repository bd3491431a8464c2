"""Check one Megatron-Bridge export with Megatron-Bridge's own code (run by benchmarks/check_exports.sh).

Runs inside a Python >= 3.12 environment with megatron-bridge and megatron-core installed (not the
project's venv), so it imports nothing from the planner. For one export folder it:
1. reads the environment the launch script exports (`export NAME=VALUE` lines of bridge.launch.sh);
2. imports the exported bridge_pretrain.py and builds its ConfigContainer (`plan_config()`) with
   WORLD_SIZE = the plan's GPUs, passes it through Bridge's override processing as the job's main does
   (with one override, train.train_iters=7, which must arrive), then runs Bridge's own
   `ConfigContainer.validate()`: every config's
   finalize / __post_init__ (Megatron-Core's TransformerConfig checks of the parallel sizes, pipeline
   split, recompute and precision settings; DDP, optimizer, scheduler, dataset), the data-parallel
   size, the distributed-optimizer and mixed-precision consistency checks;
3. initialises a fake process group of that world size and calls
   megatron.core.parallel_state.initialize_model_parallel with the config's sizes and rank order;
4. compares the data-parallel size, the virtual pipeline size and the batch sizes with the plan's, and
   the micro-batches per step Megatron-Core's own calculator derives.

Transformer Engine installs only with CUDA. Megatron-Core is imported first, without it (its
HAVE_TE = False paths, as on a machine without TE); Bridge's LoRA modules import it unconditionally
at import time, so a stand-in module is present while `megatron.bridge` is imported and removed
after: no Transformer Engine code runs in the checks above. A plan whose precision recipe needs
Transformer Engine (FP8, MXFP8, NVFP4) is checked with the recipe's fields only up to that need.

Prints one line: `passed: ...` or `failed: <reason>`; exit status 0 / 1.
Usage: python check_bridge.py EXPORT_DIR [STEM]
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from unittest import mock

from framework_check import launch_env, run_check

_TE_MODULES = ("transformer_engine", "transformer_engine.pytorch", "transformer_engine_torch")


def _import_bridge() -> None:
    import megatron.core
    import megatron.core.datasets.gpt_dataset
    import megatron.core.distributed
    import megatron.core.models.gpt.gpt_layer_specs
    import megatron.core.optimizer

    for name in _TE_MODULES:
        sys.modules[name] = mock.MagicMock(name=name)
    try:
        import megatron.bridge
        import megatron.bridge.peft.lora
        import megatron.bridge.training.config  # noqa: F401
    finally:
        for name in _TE_MODULES:
            sys.modules.pop(name, None)


def check(folder: Path, stem: str) -> str:
    plan = json.loads((folder / "plan.json").read_text())
    world = plan["num_gpus"]
    env = launch_env((folder / f"{stem}.launch.sh").read_text())
    os.environ.update(env)
    os.environ.update({"WORLD_SIZE": str(world), "RANK": "0", "LOCAL_RANK": "0", "TRAIN_STEPS": "100"})
    for name in ("DATA_PREFIX", "TOKENIZER"):
        os.environ.pop(name, None)  # the mock-data branch: no files needed
    os.environ["PRETRAINED_CHECKPOINT"] = str(folder / "base-checkpoint")  # a LoRA job's base model (a path)

    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    _import_bridge()
    spec = importlib.util.spec_from_file_location(f"{stem}_pretrain", folder / f"{stem}_pretrain.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from megatron.bridge.training.utils.omegaconf_utils import process_config_with_overrides

    # as the job's main does, with one override of the kind the launch script's extra arguments pass
    cfg = process_config_with_overrides(module.plan_config(), cli_overrides=["train.train_iters=7"])
    if cfg.train.train_iters != 7:
        raise AssertionError("Bridge's override train.train_iters=7 did not reach the config")
    cfg.validate()
    # Bridge's PEFT path: LoRA adapters of the plan's rank (16 where the plan file leaves the schema's
    # default out) on a base checkpoint
    lora_rank = plan.get("lora_rank", 16) if plan.get("finetune") == "lora" else None
    if lora_rank is not None and (cfg.peft is None or cfg.peft.dim != lora_rank
                                  or not cfg.checkpoint.pretrained_checkpoint):
        raise AssertionError("the LoRA plan's job carries no LoRA of its rank, or no base checkpoint")

    from megatron.core import parallel_state as mpu

    m = cfg.model
    dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    mpu.initialize_model_parallel(
        m.tensor_model_parallel_size, m.pipeline_model_parallel_size, m.virtual_pipeline_model_parallel_size,
        context_parallel_size=m.context_parallel_size, expert_model_parallel_size=m.expert_model_parallel_size,
        expert_tensor_parallel_size=m.expert_tensor_parallel_size,
        order="tp-cp-ep-dp-pp" if not cfg.dist.use_tp_pp_dp_mapping else "tp-cp-ep-pp-dp",
        create_gloo_process_groups=False)
    dp = mpu.get_data_parallel_world_size()
    vpp = m.virtual_pipeline_model_parallel_size or 1
    if dp != plan["dp"] or vpp != plan["vpp"] or cfg.data_parallel_size != plan["dp"]:
        raise AssertionError(f"Bridge derived data parallel {dp} / virtual stages {vpp}; the plan has "
                             f"dp {plan['dp']} / vpp {plan['vpp']}")
    if cfg.train.global_batch_size != plan["global_batch"] or cfg.train.micro_batch_size != plan["micro_batch"]:
        raise AssertionError("batch sizes differ from the plan's")
    from megatron.core.num_microbatches_calculator import get_num_microbatches, init_num_microbatches_calculator

    # Megatron-Core's own batch arithmetic (it refuses a global batch that micro-batch x dp does not divide)
    init_num_microbatches_calculator(0, None, cfg.train.global_batch_size, cfg.train.micro_batch_size, dp)
    if get_num_microbatches() != plan["grad_accum"]:
        raise AssertionError(f"Megatron-Core runs {get_num_microbatches()} micro-batches per step; the plan "
                             f"{plan['grad_accum']}")
    env_text = " ".join(f"{k}={v}" for k, v in env.items()) or "no environment variables"
    lora = f"LoRA rank {cfg.peft.dim} on {', '.join(cfg.peft.target_modules)}; " if cfg.peft is not None else ""
    return (f"passed: ConfigContainer.validate() + initialize_model_parallel at world size {world} ({env_text}); "
            f"{lora}"
            f"tp {mpu.get_tensor_model_parallel_world_size()} pp {mpu.get_pipeline_model_parallel_world_size()} "
            f"cp {mpu.get_context_parallel_world_size()} dp {dp} vpp {vpp}, {get_num_microbatches()} micro-batches, "
            "as planned")


def main() -> int:
    return run_check(check, "bridge")


if __name__ == "__main__":
    sys.exit(main())
