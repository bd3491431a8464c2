"""Check one Megatron-LM export with Megatron-Core's own code (run by benchmarks/check_exports.sh).

Runs inside a Python >= 3.12 environment with megatron-core installed (not the project's venv),
so it imports nothing from the planner. For one export folder it:
1. reads the environment the launch script exports (`export NAME=VALUE` lines of megatron.launch.sh),
   so a variable the script forgets (CUDA_DEVICE_MAX_CONNECTIONS) fails the check as it fails a launch;
2. builds the command line the launch script builds on one node (the args file, mock data, the run
   length and checkpoint flags) and runs megatron/training/arguments.py parse_args + validate_args
   with WORLD_SIZE = the plan's GPUs; the GPU architecture the checks query is the plan's GPU's (and,
   for NVFP4, the Transformer Engine release the export requires: it installs only with CUDA);
3. initialises a fake process group of that world size and calls
   megatron.core.parallel_state.initialize_model_parallel exactly as megatron/training/initialize.py does;
4. compares the data-parallel size and virtual pipeline size Megatron derived with the plan's.

Prints one line: `passed: ...` or `failed: <reason>`; exit status 0 / 1.
Usage: python check_megatron.py EXPORT_DIR [ARGS_FILE_STEM]
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

from framework_check import args_words, launch_env, run_check

# Compute capability by GPU family (NVIDIA's CUDA GPUs table), as planner/export/common.py.
_CC = (("A100", (8, 0)), ("H100", (9, 0)), ("H200", (9, 0)), ("B200", (10, 0)), ("GB200", (10, 0)),
       ("B300", (10, 3)))


def check(folder: Path, stem: str) -> str:
    plan = json.loads((folder / "plan.json").read_text())
    world = plan["num_gpus"]
    gpu = plan["cluster"]["gpu"]["name"]
    cc = next((v for k, v in _CC if gpu.upper().startswith(k)), (9, 0))
    words = args_words((folder / f"{stem}.args").read_text())
    env = launch_env((folder / f"{stem}.launch.sh").read_text())
    os.environ.pop("CUDA_DEVICE_MAX_CONNECTIONS", None)
    os.environ.update(env)
    os.environ.update({"WORLD_SIZE": str(world), "RANK": "0", "LOCAL_RANK": "0"})
    tmp = tempfile.mkdtemp(prefix="megatron-check-")
    vocab = plan["model"]["vocab_size"]
    sys.argv = ["pretrain_gpt.py", *words, "--mock-data", "--tokenizer-type", "NullTokenizer", "--vocab-size",
                str(vocab), "--train-iters", "100", "--save", tmp, "--load", tmp, "--save-interval", "1000"]

    import torch
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    torch.cuda.get_device_capability = lambda *a, **k: cc
    import megatron.training.arguments as arguments
    import megatron.training.utils as training_utils

    arguments.get_device_arch_version = lambda: cc[0]
    training_utils.get_device_arch_version = lambda: cc[0]
    te_text = ""
    if "--fp4-format" in words:
        # NVFP4 needs Transformer Engine >= 2.7, which the export names and which installs only with CUDA:
        # the version checks see that release, as the GPU checks see the plan's GPU
        from packaging.version import Version

        arguments.is_te_min_version = lambda version, check_equality=True: Version(version) <= Version("2.7.0")
        te_text = ", Transformer Engine 2.7 as the export requires"
    args = arguments.parse_args()
    arguments.validate_args(args)

    from megatron.core import parallel_state as mpu

    dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    mpu.initialize_model_parallel(
        args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
        args.virtual_pipeline_model_parallel_size,
        context_parallel_size=args.context_parallel_size,
        expert_model_parallel_size=args.expert_model_parallel_size,
        expert_tensor_parallel_size=args.expert_tensor_parallel_size,
        order="tp-cp-ep-dp-pp" if not args.use_tp_pp_dp_mapping else "tp-cp-ep-pp-dp",
        create_gloo_process_groups=False)
    dp = mpu.get_data_parallel_world_size()
    vpp = args.virtual_pipeline_model_parallel_size or 1
    if dp != plan["dp"] or vpp != plan["vpp"] or args.data_parallel_size != plan["dp"]:
        raise AssertionError(f"Megatron derived data parallel {dp} / virtual stages {vpp}; the plan has "
                             f"dp {plan['dp']} / vpp {plan['vpp']}")
    env_text = " ".join(f"{k}={v}" for k, v in env.items()) or "no environment variables"
    return (f"passed: parse_args + validate_args + initialize_model_parallel at world size {world} "
            f"(GPU arch {cc[0]}.{cc[1]}, {env_text}{te_text}); tp {mpu.get_tensor_model_parallel_world_size()} "
            f"pp {mpu.get_pipeline_model_parallel_world_size()} cp {mpu.get_context_parallel_world_size()} "
            f"dp {dp} vpp {vpp}, as planned")


def _parser_exit(exc: SystemExit, log: str) -> str:
    return f"failed: Megatron's argument parser exited ({exc.code}): see the message above"


def main() -> int:
    return run_check(check, "megatron", _parser_exit)


if __name__ == "__main__":
    sys.exit(main())
