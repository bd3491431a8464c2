"""Check one DeepSpeed export with Megatron-DeepSpeed's own code (run by benchmarks/check_exports.sh).

Runs in an environment with deepspeed and transformers installed and a microsoft/Megatron-DeepSpeed
source tree first on PYTHONPATH (it has no wheel); imports nothing from the planner. For one export folder:
1. the environment the launch script exports (ds_config.launch.sh) and the command line it builds;
2. megatron/arguments.py parse_args + validate_args with WORLD_SIZE = the plan's GPUs, DeepSpeed's
   accelerator reported as CUDA (so the CUDA_DEVICE_MAX_CONNECTIONS check runs as on a GPU node);
3. megatron.core.parallel_state.initialize_model_parallel on a fake process group, as
   megatron/initialize.py calls it, then DeepSpeedConfig(ds_config.json, mpu=parallel_state): the
   path on which the ds_config's batch identity is checked against Megatron-DeepSpeed's data-parallel size.
Prints `passed: ...` or `failed: <reason>`; exit status 0 / 1.
Usage: python check_megatron_deepspeed.py EXPORT_DIR [STEM]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from framework_check import args_words, launch_env, run_check


def check(folder: Path, stem: str) -> str:
    manifest = json.loads((folder / "manifest.json").read_text())["files"] if (folder / "manifest.json").exists() \
        else {}
    plan_file = manifest.get(f"{stem}.json", {}).get("plan", "plan.json")
    plan = json.loads((folder / plan_file).read_text())
    world = plan["num_gpus"]
    env = launch_env((folder / f"{stem}.launch.sh").read_text())
    os.environ.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    os.environ.update(env)
    os.environ.update({"WORLD_SIZE": str(world), "RANK": "0", "LOCAL_RANK": "0"})
    tmp = tempfile.mkdtemp(prefix="mds-check-")
    words = args_words((folder / f"{stem}.megatron-deepspeed.args").read_text())
    sys.argv = ["pretrain_gpt.py", *words, "--deepspeed_config", str(folder / f"{stem}.json"),
                "--data-path", f"{tmp}/data", "--split", "99,1,0", "--tokenizer-type", "HFTokenizer",
                "--tokenizer-model", f"{tmp}/tokenizer", "--train-iters", "100", "--save", tmp, "--load", tmp,
                "--save-interval", "1000"]

    import deepspeed
    import torch.distributed as dist
    from megatron.arguments import parse_args, validate_args
    from torch.testing._internal.distributed.fake_pg import FakeStore

    # validate_args' GPU-only checks run as on a GPU node (after the imports: on "cuda" they load apex)
    deepspeed.accelerator.get_accelerator().device_name = lambda *a, **k: "cuda"
    args = parse_args()
    validate_args(args)

    from megatron.core import parallel_state as mpu

    dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    mpu.initialize_model_parallel(args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
                                  args.ds_sequence_parallel_size, args.virtual_pipeline_model_parallel_size,
                                  args.pipeline_model_parallel_split_rank,
                                  use_distributed_optimizer=args.use_distributed_optimizer)
    import deepspeed.comm as ds_dist
    from deepspeed.runtime.config import DeepSpeedConfig

    ds_dist.get_rank = lambda *a, **k: 0
    ds_dist.get_world_size = lambda *a, **k: world
    cfg = DeepSpeedConfig(str(folder / f"{stem}.json"), mpu=mpu)
    dp = mpu.get_data_parallel_world_size()
    if dp != plan["dp"]:
        raise AssertionError(f"Megatron-DeepSpeed derived data parallel {dp}; the plan has {plan['dp']}")
    env_text = " ".join(f"{k}={v}" for k, v in env.items()) or "no environment variables"
    return (f"passed: parse_args + validate_args + initialize_model_parallel at world size {world} ({env_text}); "
            f"tp {mpu.get_tensor_model_parallel_world_size()} pp {mpu.get_pipeline_model_parallel_world_size()} "
            f"dp {dp}; DeepSpeedConfig with this parallel state: train_batch_size {cfg.train_batch_size} = "
            f"{cfg.train_micro_batch_size_per_gpu} x {cfg.gradient_accumulation_steps} x {dp}")


def _parser_exit(exc: SystemExit, log: str) -> str:
    return f"failed: Megatron-DeepSpeed's argument parser exited ({exc.code}): {log[-300:]!r}"


def main() -> int:
    return run_check(check, "ds_config", _parser_exit)


if __name__ == "__main__":
    sys.exit(main())
