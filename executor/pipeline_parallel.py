"""Pipeline parallelism with `torch.distributed.pipelining` (GPipe, 1F1B, interleaved 1F1B).

The model is cut into pp·vpp stages of equal layer counts (or the plan's uneven first / last stage
counts, each rank's layers split evenly over its chunks); the first stage also holds the embedding
and the last the final norm and LM head (the uneven stages the planner's simulation models). With
virtual stages, pipeline rank r holds stages r, r+pp, r+2pp, ... (Narayanan et al. 2021, Sec. 2.2).
Each stage is a copy of the (meta-device) model with the other parts removed, so parameter names are
unchanged.

Tied embeddings across stages: the first stage's embedding and the last stage's LM head are two
copies of one matrix that start equal; their gradients are summed over the pair of ranks holding
them before every optimizer step (as Megatron-LM's embedding group does), so they stay equal.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B

from executor.model import Transformer
from planner.cost.stages import virtual_stage_ranges
from planner.plan import Plan


def stage_indices(pp_rank: int, pp: int, vpp: int) -> list[int]:
    """Stages held by pipeline rank `pp_rank` (round-robin over virtual stages)."""
    return [pp_rank + v * pp for v in range(vpp)]


def stage_layers(num_layers: int, num_stages: int, stage: int, ranges: list[range] | None = None) -> range:
    """Layers of virtual stage `stage`: `ranges[stage]` when the plan splits unevenly, else an equal share."""
    if ranges is not None:
        return ranges[stage]
    per = num_layers // num_stages
    return range(stage * per, (stage + 1) * per)


def plan_stage_ranges(plan: Plan, num_layers: int) -> list[range]:
    """Layer range of every virtual stage g = chunk·pp + rank under `plan` (even or uneven split), the
    same split the cost model prices (planner.cost.stages)."""
    return virtual_stage_ranges(num_layers, plan.pp, plan.vpp, plan.first_stage_layers, plan.last_stage_layers,
                                plan.account)


def split_stage(model: Transformer, stage: int, num_stages: int, ranges: list[range] | None = None) -> Transformer:
    """A copy of `model` (normally on the meta device) holding only `stage`'s parts.

    Only the parts the stage keeps are copied (one `deepcopy` with a shared memo, so a tied
    embedding / LM head pair stays tied): copying the whole model per stage made building the
    63 chunks of an interleaved 126-layer model take 20 s.
    """
    keep = [str(i) for i in stage_layers(model.spec.num_layers, num_stages, stage, ranges)]
    dropped = {"layers": model.layers, "embed": model.embed, "final_norm": model.final_norm,
               "lm_head": model.lm_head}
    shell_memo: dict[int, object] = {id(m): None for m in dropped.values() if m is not None}
    shell_memo[id(model.layers)] = nn.ModuleDict()
    part = copy.deepcopy(model, shell_memo)  # the shell: spec, flags and hooks, no submodules
    memo: dict[int, object] = {}
    part.layers = nn.ModuleDict({name: copy.deepcopy(model.layers[name], memo) for name in keep})
    part.embed = copy.deepcopy(model.embed, memo) if stage == 0 else None
    last = stage == num_stages - 1
    part.final_norm = copy.deepcopy(model.final_norm, memo) if last else None
    part.lm_head = copy.deepcopy(model.lm_head, memo) if last else None
    return part


def build_schedule(stage_modules: list[nn.Module], stage_ids: list[int], num_stages: int, schedule: str,
                   n_microbatches: int, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   device: torch.device, group: dist.ProcessGroup
                   ) -> tuple[object, list[PipelineStage]]:
    """The pipelining schedule object for this rank's stages."""
    stages = [PipelineStage(m, s, num_stages, device, group=group)
              for m, s in zip(stage_modules, stage_ids, strict=True)]
    if schedule == "interleaved-1f1b":
        return ScheduleInterleaved1F1B(stages, n_microbatches, loss_fn=loss_fn), stages
    # With fewer micro-batches than stages, 1F1B's warm-up runs every forward before the first
    # backward: GPipe's order exactly (torch's Schedule1F1B refuses m < stages, ScheduleGPipe does not).
    gpipe = schedule == "gpipe" or n_microbatches < num_stages
    cls = ScheduleGPipe if gpipe else Schedule1F1B
    return cls(stages[0], n_microbatches, loss_fn=loss_fn), stages


class TiedEmbeddingSync:
    """Sums the gradients of the embedding (first stage) and LM head (last stage) copies."""

    def __init__(self, pp_groups: list[list[int]], rank: int) -> None:
        self.group: dist.ProcessGroup | None = None
        for ranks in pp_groups:  # every rank creates every pair group, in the same order
            pair = [ranks[0], ranks[-1]]
            g = dist.new_group(pair)
            if rank in pair:
                self.group = g

    def __call__(self, weights: list[nn.Parameter]) -> None:
        if self.group is None:
            return
        for w in weights:
            if w.grad is None:
                continue
            if hasattr(w, "placements") and w.grad.placements != w.placements:
                # DTensor's embedding backward returns a replicated gradient for the vocab-sharded
                # table; bring it to the parameter's layout so both copies' shards line up.
                w.grad = w.grad.redistribute(w.device_mesh, w.placements)
            grad = w.grad.to_local() if hasattr(w.grad, "to_local") else w.grad
            dist.all_reduce(grad, group=self.group)
