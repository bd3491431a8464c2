"""Run an export through the framework's own code: torchtitan's config parser and trainer, DeepSpeed's config.

Why: flag names alone do not make a launch work (the committed exports once parsed cleanly and
still failed at start-up). These checks use the installed frameworks, as a user's launch would;
tests/test_export.py and benchmarks/check_exports.sh call them. The frameworks are optional: a
missing one is reported, never imported at module load.

- torchtitan: a subprocess runs `torchtitan.train` on the exported config module with
  `--comm.mode fake_backend` at the plan's world size (NGPU = world, RANK = the rank checked): the
  config registry is parsed by ConfigManager and the whole Trainer is built (device mesh, pipeline
  split, TP / SP / CP, FSDP, activation checkpointing, schedule, optimizer). The build stops where
  the user's tokenizer is first read; reaching that point is the pass criterion. Two adaptations
  to a CPU machine, neither in the export: torchtitan's device is forced to the CPU (it assumes
  CUDA when no accelerator is present), and the SPMD backend is `partial_dtensor` (its default,
  spmd_types, needs an accelerator).
- DeepSpeed: `DeepSpeedConfig(config, mpu)` with the plan's data-parallel size from the mpu, as
  Megatron-DeepSpeed calls it (batch identity, precision, strict pydantic ZeRO section).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from planner.io import atomic_write_text
from planner.plan import PlanDocument

# Runs torchtitan.train on the CPU: torchtitan picks "cuda" when no accelerator is present, and its
# memory monitor asks the device module for names and statistics the CPU module lacks.
_TORCHTITAN_CPU_RUNNER = """
import runpy, sys, types, torch, torch._utils
torch._utils._get_available_device_type = lambda: "cpu"
c = torch.cpu
c.get_device_name = lambda *a, **k: "cpu"
c.get_device_properties = lambda *a, **k: types.SimpleNamespace(total_memory=1 << 40, name="cpu")
c.reset_peak_memory_stats = lambda *a, **k: None
c.empty_cache = lambda *a, **k: None
c.memory_stats = lambda *a, **k: {}
# The low-precision converters refuse to build without an SM89+ / SM100 GPU: this machine has none, and the
# check is of the configuration (which layers convert, the recipe), not of the kernels.
import importlib
for name in ("float8", "mx", "nvfp4"):
    try:
        importlib.import_module("torchtitan.components.quantization." + name).has_cuda_capability = lambda *a: True
    except ImportError:
        pass
sys.argv = ["torchtitan.train", *sys.argv[1:]]
runpy.run_module("torchtitan.train", run_name="__main__")
"""

TOKENIZER_PLACEHOLDER = "/nonexistent/planner-check-tokenizer"


@dataclass(frozen=True)
class CheckResult:
    passed: bool
    reason: str  # one line: what was checked, or why it failed
    log: str = ""


def torchtitan_runner_command(module_dir: Path, module: str, extra: list[str]) -> list[str]:
    """The command that runs torchtitan.train on the CPU with an exported config module."""
    return [sys.executable, "-c", _TORCHTITAN_CPU_RUNNER, "--module", module, "--config", "planner_job", *extra]


def _last_error(log: str) -> str:
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    for line in reversed(lines):
        text = line.split("]:", 1)[-1].strip() if line.startswith("[rank") else line
        if "Error" in text or "error" in text.lower():
            return text[:300]
    return lines[-1][:300] if lines else "no output"


def materialised_gib_per_rank(doc: PlanDocument) -> float:
    """fp32 parameters one rank materialises when torchtitan builds the trainer (model / (tp pp), FSDP-sharded)."""
    p = doc.plan
    shard = p.dp * p.cp if (p.zero_stage > 0 or p.tp > 1 or p.pp > 1 or p.cp > 1) else 1
    return doc.model.params / (p.tp * p.pp * shard) * 4 / 2**30


def _available_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


def check_torchtitan(doc: PlanDocument, files: dict[str, str], workdir: Path, rank: int = 0,
                     timeout_s: float = 900) -> CheckResult | None:
    """Parse the exported config module and build torchtitan's Trainer on the fake backend at the plan's world size.

    None when this machine cannot hold one rank's parameters (the dry run materialises them).
    """
    need, have = materialised_gib_per_rank(doc), _available_gib()
    if need > have / 2:
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    module_file = next(n for n in files if n.endswith("_job.py"))
    atomic_write_text(workdir / module_file, files[module_file])
    world = str(doc.plan.world_size)
    env = {**os.environ, "NGPU": world, "RANK": str(rank), "LOCAL_RANK": "0", "WORLD_SIZE": world,
           "PYTHONPATH": f"{workdir}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    extra = ["--comm.mode", "fake_backend", "--parallelism.spmd_backend", "partial_dtensor",
             "--training.steps", "1", "--hf-assets-path", TOKENIZER_PLACEHOLDER, "--dump-folder", str(workdir / "out")]
    try:
        proc = subprocess.run(torchtitan_runner_command(workdir, module_file[:-3], extra), cwd=workdir, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return CheckResult(False, f"torchtitan did not finish building the trainer in {timeout_s:.0f} s")
    log = proc.stdout + proc.stderr
    reached = f"Tokenizer path '{TOKENIZER_PLACEHOLDER}' does not exist" in log
    if reached and "Optimizer" in log:
        mesh = re.search(r"Building device mesh with parallelism: ([^\n]*)", log)
        schedule = re.search(r"Using pipeline schedule (\S+) with (\d+) microbatches and (\d+) stages", log)
        built = [f"mesh {mesh.group(1).strip()}" if mesh else "mesh ?"]
        if schedule:
            built.append(f"{schedule.group(1)}: {schedule.group(2)} micro-batches, {schedule.group(3)} stages")
        built += [s for s in ("FSDP", "Context Parallel", "activation checkpointing") if s in log]
        return CheckResult(True, f"ConfigManager parsed it; Trainer built on rank {rank} of {doc.plan.world_size} "
                           f"({'; '.join(built)}; optimizer), stopped at the tokenizer placeholder", log)
    return CheckResult(False, _last_error(log), log)


class _DataParallel(types.SimpleNamespace):
    """The one method of Megatron-DeepSpeed's parallel state (mpu) DeepSpeedConfig calls."""

    def get_data_parallel_world_size(self) -> int:
        return self.size


def check_deepspeed(config: dict[str, Any], data_parallel: int | None, world_size: int) -> CheckResult:
    """DeepSpeedConfig(config, mpu); `data_parallel` None is plain DeepSpeed (no mpu: all ranks data parallel)."""
    import deepspeed.comm as dist
    from deepspeed.runtime.config import DeepSpeedConfig

    saved = dist.get_rank, dist.get_world_size
    dist.get_rank = lambda *a, **k: 0  # the process group's identity: the config reads nothing else from it
    dist.get_world_size = lambda *a, **k: world_size
    try:
        mpu = _DataParallel(size=data_parallel) if data_parallel is not None else None
        cfg = DeepSpeedConfig(dict(config), mpu=mpu)
    except Exception as exc:  # the framework's own refusal, whatever its type
        return CheckResult(False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    finally:
        dist.get_rank, dist.get_world_size = saved
    return CheckResult(True, f"DeepSpeedConfig accepted it: train_batch_size {cfg.train_batch_size} = "
                       f"{cfg.train_micro_batch_size_per_gpu} x {cfg.gradient_accumulation_steps} x "
                       f"{data_parallel or world_size} data-parallel ranks, ZeRO stage {cfg.zero_optimization_stage}")


def framework_versions() -> dict[str, str]:
    """Installed versions of the frameworks these checks use ('absent' when not installed)."""
    from importlib import metadata

    out = {}
    for name in ("torch", "torchtitan", "deepspeed"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out
