"""Composes the model and the parallelisms of a plan into one training step (torchtitan's order).

meta-device model → pipeline split → tensor parallel → context parallel (ring attention) → expert
parallel → LoRA → activation checkpointing → materialise and initialise → data parallel over the dp x cp
ranks (DDP / ZeRO-1 / FSDP2) → optimizer. One `train_step` is one optimizer
step over the plan's global batch: `grad_accum` micro-batches per data-parallel replica, run by the
pipeline schedule when pp > 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from executor.activation_checkpoint import apply_ac
from executor.context_parallel import Ring, apply_cp, chunk_positions
from executor.data_parallel import apply_dp, describe_dp, dp_kind, set_grad_sync
from executor.expert_parallel import (
    ExpertGradSync,
    apply_ep,
    build_ep_mesh,
    expert_param_names,
    expert_params,
)
from executor.lora import apply_lora
from executor.model import Transformer, init_weights
from executor.options import OPTIMIZERS
from executor.parallel_dims import ParallelDims
from executor.pipeline_parallel import (
    TiedEmbeddingSync,
    build_schedule,
    plan_stage_ranges,
    split_stage,
    stage_indices,
)
from executor.tensor_parallel import apply_tp
from planner.plan import PlanDocument


@dataclass(frozen=True)
class TrainOptions:
    """Knobs that are not part of the plan."""

    optimizer: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.0
    seed: int = 0


# DeepSeek-V3 (Sec. 2.2 and 4.2): L = L_main + lambda / D x sum_d L_MTP,d with lambda = 0.3 for the first
# 10T training tokens (0.1 after). Only the loss value depends on it, not what a step computes.
MTP_LOSS_WEIGHT = 0.3


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over a micro-batch (fp32 logits, as the graph's `loss` op).

    With multi-token prediction the model returns the logits of its D prediction depths after its own
    along the sequence (D + 1 times the targets' length): depth d predicts the target d positions
    later, its last d positions have none (ignored), and its mean loss is added with MTP_LOSS_WEIGHT.
    """
    t = targets.shape[1]
    depths = logits.shape[1] // t - 1
    main = F.cross_entropy(logits[:, :t].flatten(0, 1).float(), targets.flatten(0, 1))
    if depths == 0:
        return main
    extra = []
    for d in range(1, depths + 1):
        shifted = torch.roll(targets, -d, dims=1).clone()
        shifted[:, -d:] = -100  # no target d tokens past the end
        extra.append(F.cross_entropy(logits[:, d * t:(d + 1) * t].flatten(0, 1).float(), shifted.flatten(0, 1),
                                     ignore_index=-100))
    return main + MTP_LOSS_WEIGHT * torch.stack(extra).mean()


def amp_dtype(device: torch.device, plan_dtype: str) -> torch.dtype | None:
    """bf16 autocast on CUDA for 16-bit plans (fp16 runs as bf16: no loss scaling); fp32 on CPU."""
    if device.type == "cuda" and plan_dtype in ("bf16", "fp16"):
        return torch.bfloat16
    return None


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def grad_mesh(dims: ParallelDims, mesh: object) -> object:
    """The mesh over which replicated weights' gradients are averaged: dp, cp, or both flattened (dp x cp,
    the cost model's gradient group; torchtitan flattens its dp_shard and cp dimensions the same way)."""
    if dims.cp == 1:
        return mesh["dp"]
    if dims.dp == 1:
        return mesh["cp"]
    names = tuple(n for n in dims.mesh_names if n in ("dp", "cp"))
    return mesh[names]._flatten("dp_cp")


def hybrid_mesh(dims: ParallelDims, shard: int, device_type: str) -> object:
    """The 2-D (replicate, shard) mesh FSDP2 runs hybrid sharding on: each dp x cp gradient group (its
    ranks in rank order, as `grad_mesh` flattens them) cut into groups of `shard` consecutive ranks, the
    planner's shard groups (planner.plan.Plan.shard_group)."""
    from torch.distributed.device_mesh import DeviceMesh

    names = dims.mesh_names
    inner = [names.index(n) for n in names if n in ("dp", "cp")]
    grid = np.moveaxis(dims.rank_grid(), inner, list(range(len(names) - len(inner), len(names))))
    group = dims.dp * dims.cp
    grid = grid.reshape(-1, group // shard, shard)
    mesh = DeviceMesh(device_type, torch.from_numpy(grid), mesh_dim_names=("rest", "replicate", "shard"))
    return mesh[("replicate", "shard")]


class Trainer:
    """Builds this rank's part of the model for `doc` and runs optimizer steps."""

    def __init__(self, doc: PlanDocument, dims: ParallelDims, mesh: object | None, device: torch.device,
                 options: TrainOptions, materialize: bool = True) -> None:
        """`materialize=False` keeps the parameters on the meta device, uninitialised (the dry run:
        executor/dry_run.py builds every rank of a large job this way on one CPU)."""
        if options.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        self.doc, self.dims, self.mesh, self.device, self.options = doc, dims, mesh, device, options
        plan, spec = doc.plan, doc.model
        self.spec, self.plan = spec, plan
        self.micro_batch, self.grad_accum = plan.micro_batch, plan.grad_accum
        self.amp = amp_dtype(device, plan.dtype)
        if dims.world_size > 1 and mesh is None:
            raise ValueError("a device mesh is needed for more than one rank")

        with torch.device("meta"):
            full = Transformer(spec, plan.flash_attention)
        self.num_stages = dims.pp * dims.vpp
        if dims.pp > 1:
            self.pp_rank = mesh["pp"].get_local_rank()
            self.stage_ids = stage_indices(self.pp_rank, dims.pp, dims.vpp)
            ranges = plan_stage_ranges(plan, spec.num_layers)
            self.parts = [split_stage(full, s, self.num_stages, ranges) for s in self.stage_ids]
        else:
            self.pp_rank, self.stage_ids, self.parts = 0, [0], [full]
        self.dp_rank = mesh["dp"].get_local_rank() if dims.dp > 1 else 0
        # Replicated weights are averaged over the data-parallel and context-parallel ranks (dp x cp).
        self.grad_replicas = dims.dp * dims.cp
        self.grad_mesh = grad_mesh(dims, mesh) if self.grad_replicas > 1 else None
        hybrid = plan.shard_group if plan.hybrid else None
        self.dp_kind = dp_kind(plan.zero_stage, dims.tp, dims.pp, hybrid is not None) if self.grad_replicas > 1 \
            else "none"
        self.dp_description = describe_dp(plan.zero_stage, dims.tp, dims.pp, self.grad_replicas, hybrid)
        # Hybrid sharding: FSDP2 on a (replicate, shard) mesh of the gradient group.
        shard_mesh = hybrid_mesh(dims, hybrid, mesh.device_type) if hybrid is not None else self.grad_mesh
        # Context parallelism: this rank's chunks of every sequence (global positions), and its ring.
        self.positions: torch.Tensor | None = None
        ring: Ring | None = None
        if dims.cp > 1:
            cp_group = mesh["cp"].get_group()
            self.positions = chunk_positions(spec.seq_len, dims.cp, mesh["cp"].get_local_rank(), device)
            ring = Ring(torch.distributed.get_process_group_ranks(cp_group), torch.distributed.get_rank(), cp_group)

        self.expert_params: list[nn.Parameter] = []
        self.expert_sync: ExpertGradSync | None = None
        if dims.ep > 1:
            ep_mesh = build_ep_mesh(dims, mesh.device_type)
            self.expert_sync = ExpertGradSync(ep_mesh, self.grad_replicas)
        self.modules: list[nn.Module] = []
        for part in self.parts:
            if dims.tp > 1:
                apply_tp(part, mesh["tp"], plan.sequence_parallel)
            if ring is not None:
                apply_cp(part, ring, self.positions)
            if dims.ep > 1:
                apply_ep(part, ep_mesh)
            if plan.finetune == "lora":
                apply_lora(part, plan.lora_rank, plan.lora_targets)
            apply_ac(part, plan.recompute, plan.recompute_every)
            if materialize:
                part.to_empty(device=device)
                part.tie_weights()
                init_weights(part, spec, options.seed)
            if self.grad_mesh is not None:
                ignored = expert_param_names(part) if dims.ep > 1 else []
                self.modules.append(apply_dp(part, shard_mesh, plan.zero_stage, dims.tp, dims.pp, device,
                                             self.amp, ignored=ignored, hybrid=hybrid is not None))
            else:
                self.modules.append(part)
        if dims.ep > 1:
            self.expert_params = [p for part in self.parts for p in expert_params(part)]

        self.is_first = 0 in self.stage_ids
        self.is_last = (self.num_stages - 1) in self.stage_ids
        self.schedule = None
        if dims.pp > 1:
            self.schedule, self.stages = build_schedule(
                self.modules, self.stage_ids, self.num_stages, plan.schedule, self.grad_accum, loss_fn,
                device, mesh["pp"].get_group())
        self.tied_sync: TiedEmbeddingSync | None = None
        self.tied_weights: list[nn.Parameter] = []
        if dims.pp > 1 and spec.tied_embeddings:
            self.tied_sync = TiedEmbeddingSync(dims.groups("pp"), torch.distributed.get_rank())
            for part in self.parts:
                if part.embed is not None:
                    self.tied_weights.append(part.embed.tok.weight)
                if part.lm_head is not None:
                    self.tied_weights.append(part.lm_head.weight)
        self.optimizers = self._make_optimizers()
        self.grads_bytes = self.grads_elements = 0

    # ---- construction helpers ------------------------------------------------------------------

    def parameters(self) -> list[nn.Parameter]:
        """The trained parameters (all of them, or the LoRA adapters) of this rank."""
        seen: dict[int, nn.Parameter] = {}
        for part in self.parts:
            for p in part.parameters():
                if p.requires_grad:
                    seen.setdefault(id(p), p)
        return list(seen.values())

    def _make_optimizers(self) -> list[torch.optim.Optimizer]:
        """One optimizer, or (ZeRO-1 under DDP) a ZeroRedundancyOptimizer for the data-parallel
        weights plus a plain one for expert-parallel weights (which differ across ranks)."""
        o = self.options
        if o.optimizer == "sgd":
            cls, kwargs = torch.optim.SGD, {"lr": o.lr, "weight_decay": o.weight_decay}
        else:
            cls = torch.optim.AdamW
            kwargs = {"lr": o.lr, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": o.weight_decay}
        if self.grad_mesh is not None and self.plan.zero_stage == 1 and self.dp_kind == "ddp":
            from torch.distributed.optim import ZeroRedundancyOptimizer

            experts = {id(p) for p in self.expert_params}
            dense = [p for p in self.parameters() if id(p) not in experts]
            opts: list[torch.optim.Optimizer] = [ZeroRedundancyOptimizer(
                dense, optimizer_class=cls, process_group=self.grad_mesh.get_group(), **kwargs)]
            if self.expert_params:
                opts.append(cls(self.expert_params, **kwargs))
            return opts
        return [cls(self.parameters(), **kwargs)]

    # ---- data ------------------------------------------------------------------------------------

    @property
    def local_batch(self) -> int:
        """Sequences per step on this data-parallel replica."""
        return self.grad_accum * self.micro_batch

    def batch(self, data: object, step: int) -> torch.Tensor:
        """This replica's rows of the global batch of `step`, on the device."""
        rows = data.rows(step, self.dp_rank * self.local_batch, self.local_batch)
        return rows.to(self.device, non_blocking=True)

    # ---- one optimizer step ------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def train_step(self, batch: torch.Tensor, record_grads: bool = False) -> tuple[torch.Tensor, bool]:
        """One optimizer step; returns (mean loss, whether this rank computed it: last stage)."""
        x, y = batch[:, :-1], batch[:, 1:]
        if self.positions is not None:  # context parallelism: this rank's chunks of every sequence
            x, y = x[:, self.positions], y[:, self.positions]
        if self.schedule is None:
            loss = self._step_plain(x, y)
            has_loss = True
        else:
            losses: list[torch.Tensor] = []
            with self._autocast():
                if self.is_first:
                    self.schedule.step(x)
                elif self.is_last:
                    self.schedule.step(target=y, losses=losses)
                else:
                    self.schedule.step()
            has_loss = self.is_last
            loss = torch.stack([t.detach().float() for t in losses]).mean() if losses else \
                torch.zeros((), device=self.device)
            if self.tied_sync is not None:
                self.tied_sync(self.tied_weights)
        if self.expert_sync is not None:
            self.expert_sync(self.expert_params)
        if record_grads:
            grads = [local_tensor(p.grad) for p in self.parameters() if p.grad is not None]
            self.grads_bytes = sum(g.nbytes for g in grads)
            self.grads_elements = sum(g.numel() for g in grads)
        for opt in self.optimizers:
            opt.step()
            opt.zero_grad(set_to_none=True)
        return loss, has_loss

    def _step_plain(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model = self.modules[0]
        toggle = self.dp_kind in ("ddp", "replicate") and self.grad_accum > 1
        total = torch.zeros((), device=self.device)
        mb = self.micro_batch
        for i in range(self.grad_accum):
            if toggle:
                set_grad_sync(model, i == self.grad_accum - 1)
            with self._autocast():
                logits = model(x[i * mb:(i + 1) * mb])
            loss = loss_fn(logits, y[i * mb:(i + 1) * mb]) / self.grad_accum
            loss.backward()
            total += loss.detach()
        return total

    # ---- inspection --------------------------------------------------------------------------------

    def named_full_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, full unsharded value) of this rank's parameters. Collective over tp/dp: every rank
        of a stage must iterate to the end."""
        for part in self.parts:
            for name, p in part.named_parameters():
                full = p.full_tensor() if hasattr(p, "full_tensor") else p
                yield name, full.detach()

    def all_parameters(self) -> list[nn.Parameter]:
        """Every parameter of this rank, trained or frozen."""
        seen: dict[int, nn.Parameter] = {}
        for part in self.parts:
            for p in part.parameters():
                seen.setdefault(id(p), p)
        return list(seen.values())

    def weights_bytes(self) -> int:
        return sum(local_tensor(p).nbytes for p in self.all_parameters())

    def optimizer_bytes(self) -> int:
        total = 0
        for optimizer in self.optimizers:
            opt = getattr(optimizer, "optim", optimizer)  # ZeroRedundancyOptimizer: its local shard
            for state in opt.state.values():
                for v in state.values():
                    if isinstance(v, torch.Tensor):
                        total += local_tensor(v).nbytes
        return total
