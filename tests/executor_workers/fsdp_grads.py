"""torchrun worker: what FSDP2 holds for gradients between micro-batches, and whether torch's pipelining
reduces them between micro-batches.

Usage: torchrun --standalone --nproc-per-node 2 tests/executor_workers/fsdp_grads.py --out r.json
Rank 0 writes JSON:
- held_synced / held_unsynced: bytes per parameter that stay allocated after two micro-batches'
  backward beyond the sharded fp32 parameters, with FSDP2's gradient reduction on (reduce-scatter each
  micro-batch) and off (set_requires_gradient_sync(False): accumulate unsharded), bf16 parameters
  reduced in fp32 as torchtitan runs them (torch's MemTracker, "current" snapshot);
- pipeline_sync_calls: (micro-batches whose backward finished, value) of each set_requires_gradient_sync call a
  GPipe schedule of `MICROBATCHES` makes on an FSDP2 stage (torch.distributed.pipelining);
- microbatches, world_size.
"""

from __future__ import annotations

import argparse
import gc
import json
import traceback

import torch
import torch.distributed as dist
from torch.distributed._tools.mem_tracker import MemTracker
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from executor.rank_exit import exit_rank

HIDDEN, LAYERS, MICROBATCHES = 256, 4, 4


def _model(mesh: object) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(HIDDEN, HIDDEN, bias=False) for _ in range(LAYERS)])
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for layer in model:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def held_per_param(mesh: object, sync: bool) -> float:
    """Bytes per parameter allocated after two micro-batches' backward, beyond the sharded parameters."""
    model = _model(mesh)
    params = sum(p.numel() for p in model.parameters())  # DTensor numel: the unsharded count
    tracker = MemTracker()
    tracker.track_external(model)
    with tracker:
        model.set_requires_gradient_sync(sync)
        for _ in range(2):
            tracker.reset_mod_stats()
            model(torch.randn(64, HIDDEN)).float().sum().backward()
        gc.collect()  # tensors only a reference cycle still holds are not held memory
        snap = tracker.get_tracker_snapshot("current")
    kinds = {str(k).rsplit(".", 1)[-1]: v for by in snap.values() for k, v in by.items()}
    return (kinds["Total"] - kinds.get("PARAM", 0)) / params  # all but the sharded fp32 parameters


def pipeline_sync_calls(mesh: object) -> list[tuple[int, bool]]:
    """(micro-batches whose backward has finished, value) of each set_requires_gradient_sync call."""
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    model = _model(mesh)
    done = [0]
    calls: list[tuple[int, bool]] = []
    set_sync, backward_one_chunk = FSDPModule.set_requires_gradient_sync, PipelineStage.backward_one_chunk

    def record(self: FSDPModule, requires: bool, *args: object, **kwargs: object) -> None:
        calls.append((done[0], bool(requires)))
        set_sync(self, requires, *args, **kwargs)

    def count(self: PipelineStage, *args: object, **kwargs: object) -> object:
        out = backward_one_chunk(self, *args, **kwargs)
        done[0] += 1
        return out

    FSDPModule.set_requires_gradient_sync = record  # type: ignore[method-assign]
    PipelineStage.backward_one_chunk = count  # type: ignore[method-assign]
    try:
        rank = dist.get_rank()
        groups = [dist.new_group([r]) for r in range(dist.get_world_size())]  # a one-stage pipeline per rank
        stage = PipelineStage(model, 0, 1, torch.device("cpu"), group=groups[rank])
        schedule = ScheduleGPipe(stage, n_microbatches=MICROBATCHES, loss_fn=lambda out, _: out.float().sum())
        schedule.step(torch.randn(MICROBATCHES * 8, HIDDEN), target=torch.zeros(MICROBATCHES * 8))
    finally:
        FSDPModule.set_requires_gradient_sync = set_sync  # type: ignore[method-assign]
        PipelineStage.backward_one_chunk = backward_one_chunk  # type: ignore[method-assign]
    return calls


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    try:
        result = {"held_synced": held_per_param(mesh, True), "held_unsynced": held_per_param(mesh, False),
                  "pipeline_sync_calls": pipeline_sync_calls(mesh), "microbatches": MICROBATCHES,
                  "world_size": dist.get_world_size()}
    except Exception:  # reported to the test, which fails on it
        result = {"error": traceback.format_exc()}
    if dist.get_rank() == 0:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_rank(0)
