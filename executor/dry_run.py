"""Dry run: build any rank of a plan's full-size job in this one process and run one step, on no memory.

`dry_run(doc, ranks)` does, for each chosen rank, what `executor.run` does on that rank of a real
launch, with the same code (`Trainer`): it joins a process group of the plan's full world size, builds
the DeviceMesh, the model split into this rank's pipeline stages, tensor / expert parallelism
(DTensor), activation checkpointing, the data-parallel wrapper (DDP / ZeroRedundancyOptimizer /
FSDP2) and the optimizer, then runs one training step (every micro-batch through the pipeline
schedule, backward, optimizer step) while counting every collective the rank issues. Two stand-ins
make that free: torch's *fake* process group (`FakeStore`, the backend torchtitan's dry runs use: every
collective returns at once, nothing is sent) and the meta device (tensors with shapes and dtypes, no
storage, kernels that only compute output shapes). A 16,384-rank llama3-405b rank builds and steps in
well under a minute (benchmarks/bench_dry_run.py).

What it reports per rank (`RankReport`): mesh coordinates, the stage chunks and layers it holds, every
parameter's global and local shape and DTensor placements, the bytes of parameters, of the gradients
left after backward and of the optimizer state torch's optimizer created, and the collectives of one
step by kind (tp / pp / dp / ep, by the group they run on), op and phase.

A fake group delivers no data, and the meta device has no streams, so a few places in torch that read
what a peer sent, or that need a real device, are bridged while a dry run is active (`torch_bridges`,
each undone on exit). None of them changes which collectives run or their sizes:
- DDP's constructor compares every rank's parameter shapes (values received): skipped;
- DDP's reducer returns the all-reduced bucket through the work's future, which a fake work on the
  meta device leaves empty: the dry run registers a comm hook doing the same all-reduce and average
  (torch's default: one all-reduce per bucket, divided by the group size);
- FSDP2 allocates its all-gather / reduce-scatter buffers on the mesh's device (this CPU) and refuses
  meta parameters: its device is the meta device, with a no-op stream / event handle;
- the pipeline schedule's first step votes with its neighbours on static / dynamic shapes and then
  receives the neighbour stage's activation metadata: the vote is skipped (dynamic, as a real run
  without declared shapes decides) and the metadata received is the stage boundary's, the residual
  stream of one micro-batch (micro_batch, seq/tp with SP else seq, hidden) in the parameters' dtype.
  That metadata inference (a forward and backward of each chunk) is one-off start-up work, as in
  tests/test_crosscheck.py (which measures after warm-up): its collectives are not counted.
- MoE routing has no token values to act on: executor.model.expert_counts spreads the tokens evenly.

The dry run executes the CPU recipe (fp32 parameters, no autocast: bf16 autocast runs on CUDA only),
so activation and weight-gather bytes are fp32 ones; parameters, gradients and optimizer state are
fp32 on CUDA too (the executor keeps fp32 parameters under autocast).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import re
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from executor.collectives import CollectiveLedger, classify
from executor.errors import UnsupportedPlan
from executor.expert_parallel import expert_groups
from executor.parallel_dims import ParallelDims
from executor.run import check_executable
from executor.trainer import Trainer, TrainOptions, local_tensor
from planner.plan import PlanDocument, check_plan

FAKE_BACKEND = "cpu:fake,meta:fake"  # meta tensors' collectives go to the fake group too
# Collective kinds by the group they run on: tp, pp (p2p), dp (the data-parallel group), ep (the expert
# all-to-all group), edp (expert gradients over the expert-data-parallel group), tied (the embedding /
# LM-head gradient pair of a pipeline); traffic.py counts edp and tied under "dp".
GROUP_KINDS = ("tp", "pp", "dp", "ep", "edp", "tied", "other")
TRAFFIC_KIND = {"edp": "dp", "tied": "dp"}


@dataclass(frozen=True)
class ParamInfo:
    """One parameter as this rank holds it."""

    name: str
    global_shape: tuple[int, ...]
    local_shape: tuple[int, ...]
    placements: str  # "dp:Shard(dim=0) tp:Shard(dim=0)" (mesh dimension: placement), "" for a plain tensor
    dtype: str
    local_bytes: int
    trainable: bool = True  # False: frozen (LoRA's base weights): no gradient, no optimizer state


@dataclass(frozen=True)
class StageChunk:
    """One model chunk (virtual pipeline stage) a rank holds."""

    stage: int
    layers: tuple[int, ...]
    embedding: bool
    head: bool


@dataclass(frozen=True)
class CollectiveCount:
    """Collectives of one step of one kind / op / phase: how many calls and their buffer bytes."""

    kind: str
    op: str
    phase: str
    calls: int
    bytes: int


@dataclass(frozen=True)
class RankReport:
    """What one rank of the job holds and issues (see the module docstring)."""

    rank: int
    coords: dict[str, int]
    pp_rank: int
    stages: tuple[StageChunk, ...]
    data_parallel: str
    params: tuple[ParamInfo, ...]
    weight_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    weight_elements: int  # local parameter elements (each tied tensor once)
    grad_elements: int
    optimizer_params: int  # local parameter elements the optimizer holds state for
    optimizer_tensors: int  # parameter tensors it holds state for (AdamW keeps a step count for each)
    collectives: tuple[CollectiveCount, ...]
    build_s: float
    step_s: float
    groups: dict[str, list[int]] = field(default_factory=dict)

    def comm_bytes(self) -> dict[str, int]:
        """Bytes of one step by traffic.py's kinds (tp, cp, pp, dp, ep; what this rank sends) and "other"."""
        out = {"tp": 0, "cp": 0, "pp": 0, "dp": 0, "ep": 0, "other": 0}
        for c in self.collectives:
            if c.op != "recv":
                out[TRAFFIC_KIND.get(c.kind, c.kind)] += c.bytes
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_ranks(dims: ParallelDims) -> list[int]:
    """The first rank, the last, and the first rank of every pipeline stage, in order."""
    grid = np.moveaxis(dims.rank_grid(), dims.mesh_names.index("pp"), 0).reshape(dims.pp, -1)
    return sorted({0, dims.world_size - 1, *(int(row[0]) for row in grid)})


def check_ranks(ranks: list[int], world: int) -> None:
    bad = [r for r in ranks if not 0 <= r < world]
    if bad:
        raise UnsupportedPlan(f"rank {bad[0]} is out of range: the plan has {world} ranks (0-{world - 1})",
                              field="ranks")


# ---- bridges over what a fake group on the meta device cannot provide ------------------------------------


class _Event:
    def record(self, stream: object = None) -> _Event:
        return self

    def wait(self, stream: object = None) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


class _Stream:
    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def wait_stream(self, stream: object) -> None:
        pass

    def wait_event(self, event: object) -> None:
        pass

    def record_event(self, event: _Event | None = None) -> _Event:
        return event or _Event()

    def synchronize(self) -> None:
        pass


class _MetaDeviceHandle:
    """What FSDP2 asks of `torch.cuda`: streams and events, here doing nothing (meta has no queue)."""

    Stream = _Stream
    Event = _Event
    _current = _Stream()

    @staticmethod
    def current_stream(device: object = None) -> _Stream:
        return _MetaDeviceHandle._current

    @staticmethod
    def stream(stream: object) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @staticmethod
    def synchronize(device: object = None) -> None:
        pass

    @staticmethod
    def is_available() -> bool:
        return True


@contextlib.contextmanager
def torch_bridges(boundary: torch.Tensor, ledger: CollectiveLedger) -> Iterator[None]:
    """Install the bridges listed in the module docstring; undo them on exit."""
    import torch.distributed._composable.replicate_with_fsdp as replicate_mod
    import torch.distributed.device_mesh as mesh_mod
    import torch.distributed.fsdp._fully_shard._fsdp_collectives
    import torch.distributed.fsdp._fully_shard._fsdp_init
    import torch.distributed.fsdp._fully_shard._fsdp_state
    import torch.distributed.fsdp._fully_shard._fully_shard as fully_shard_mod
    import torch.distributed.pipelining.schedules as schedules
    import torch.distributed.pipelining.stage as stage_mod
    import torch.nn.parallel.distributed as ddp_mod
    from torch.distributed.fsdp._fully_shard import _fsdp_param_group as param_group_mod
    from torch.distributed.pipelining._utils import _StageBackwardMeta, _StageForwardMeta, _TensorMeta
    from torch.distributed.pipelining.stage import InferenceMode

    original_handle = mesh_mod._get_device_handle

    def device_handle(device_type: str = "cuda") -> Any:
        return _MetaDeviceHandle if device_type == "meta" else original_handle(device_type)

    def meta_device(_mesh: object) -> torch.device:
        return torch.device("meta")

    def warmup_dynamic(self: Any, stages: list[Any], has_backward: bool, p2p_done: bool) -> None:
        for stage in stages:
            stage._inference_mode = InferenceMode.DYNAMIC

    def boundary_meta(self: Any, src_stage: int) -> Any:
        fwd = src_stage < self.stage_index
        meta = _TensorMeta(shape=boundary.shape, stride=boundary.stride(), dtype=boundary.dtype,
                           requires_grad=fwd)
        return _StageForwardMeta(forward_metas=(meta,)) if fwd else _StageBackwardMeta(backward_metas=(meta,))

    def unrecorded(fn: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            was, ledger.recording = ledger.recording, False
            try:
                return fn(*args, **kwargs)
            finally:
                ledger.recording = was
        return run

    patches: list[tuple[object, str, Any]] = [
        (ddp_mod, "_verify_param_shape_across_processes", lambda *a, **k: None),
        (fully_shard_mod, "_get_device_from_mesh", meta_device),
        (replicate_mod, "_get_device_from_mesh", meta_device),
        (param_group_mod.FSDPParamGroup, "_validate_no_meta_params", lambda self: None),
        (schedules._PipelineSchedule, "_warmup_p2p", warmup_dynamic),
        (stage_mod.PipelineStage, "_recv_meta", boundary_meta),
        (stage_mod.PipelineStage, "_forward_metadata_inference",
         unrecorded(stage_mod.PipelineStage._forward_metadata_inference)),
        (stage_mod.PipelineStage, "_backward_metadata_inference",
         unrecorded(stage_mod.PipelineStage._backward_metadata_inference)),
    ]
    for name, module in list(sys.modules.items()):
        if name.startswith("torch.distributed") and getattr(module, "_get_device_handle", None) is original_handle:
            patches.append((module, "_get_device_handle", device_handle))
    saved = [(obj, attr, obj.__dict__[attr] if isinstance(obj, type) else getattr(obj, attr))
             for obj, attr, _ in patches]
    try:
        for obj, attr, value in patches:
            setattr(obj, attr, value)
        yield
    finally:
        for obj, attr, value in reversed(saved):
            setattr(obj, attr, value)


def _ddp_allreduce_hook(state, bucket):  # untyped: DDP rejects a `bucket` annotation other than GradBucket
    """DDP's default gradient reduction (average = all-reduce of the bucket / group size), returning
    the bucket through a completed future (a fake work's future on the meta device holds nothing)."""
    group = state
    buf = bucket.buffer()
    buf.div_(group.size())
    dist.all_reduce(buf, group=group)
    fut: torch.futures.Future = torch.futures.Future()
    fut.set_result(buf)
    return fut


@contextlib.contextmanager
def fake_world(rank: int, world: int) -> Iterator[None]:
    """This process as rank `rank` of a `world`-rank fake process group."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("a process group is already initialised in this process")
    dist.init_process_group(FAKE_BACKEND, store=FakeStore(), rank=rank, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


# ---- one rank ----------------------------------------------------------------------------------------------


def _placements(p: torch.Tensor) -> str:
    placements = getattr(p, "placements", None)
    if placements is None:
        return ""
    names = p.device_mesh.mesh_dim_names or tuple(str(i) for i in range(p.device_mesh.ndim))
    return " ".join(f"{n}:{pl!r}" for n, pl in zip(names, placements, strict=True))


def _param_infos(trainer: Trainer) -> list[ParamInfo]:
    out, seen = [], set()
    for part in trainer.parts:
        for name, p in part.named_parameters(remove_duplicate=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            loc = local_tensor(p)
            out.append(ParamInfo(name=name, global_shape=tuple(p.shape), local_shape=tuple(loc.shape),
                                 placements=_placements(p), dtype=str(loc.dtype).removeprefix("torch."),
                                 local_bytes=loc.numel() * loc.element_size(), trainable=p.requires_grad))
    return out


def _optimizer_state(trainer: Trainer) -> tuple[int, int, int]:
    """(bytes of the state torch's optimizers created, local elements of the parameters it covers,
    parameter tensors it covers) on this rank (ZeroRedundancyOptimizer: its local partition)."""
    nbytes = covered = tensors = 0
    for optimizer in trainer.optimizers:
        opt = getattr(optimizer, "optim", optimizer)
        for param, state in opt.state.items():
            covered += local_tensor(param).numel()
            tensors += 1
            for v in state.values():
                if isinstance(v, torch.Tensor):
                    loc = local_tensor(v)
                    nbytes += loc.numel() * loc.element_size()
    return nbytes, covered, tensors


def _stage_chunks(trainer: Trainer) -> list[StageChunk]:
    out = []
    for stage, part in zip(trainer.stage_ids, trainer.parts, strict=True):
        out.append(StageChunk(stage=stage, layers=tuple(int(k) for k in part.layers),
                              embedding=part.embed is not None, head=part.lm_head is not None))
    return out


def _groups(dims: ParallelDims, rank: int, shard_group: int | None = None) -> dict[str, list[int]]:
    """This rank's process groups by kind: "dp" is the gradient group (dp x cp ranks with context
    parallelism, as the trainer averages them), ep / edp as expert_parallel lays them out; with hybrid
    sharding "shard" (f neighbouring gradient ranks) and "replicate" (the ranks f apart)."""
    out = {d: next(g for g in dims.groups(d) if rank in g) for d in ("tp", "pp", "cp")}
    out["dp"] = dims.group(("dp", "cp"), rank)
    if shard_group is not None:
        i = out["dp"].index(rank)
        out["shard"] = out["dp"][i - i % shard_group:i - i % shard_group + shard_group]
        out["replicate"] = out["dp"][i % shard_group::shard_group]
    if dims.ep > 1:
        out.update(expert_groups(dims, rank))
    pp_group = out["pp"]
    out["tied"] = sorted({pp_group[0], pp_group[-1]})
    return out


def _boundary(doc: PlanDocument) -> torch.Tensor:
    plan, spec = doc.plan, doc.model
    seq = spec.seq_len // plan.cp // (plan.tp if plan.sequence_parallel else 1)
    return torch.empty(plan.micro_batch, seq, spec.hidden, device="meta")


def dry_run_rank(doc: PlanDocument, rank: int, optimizer: str = "adamw") -> RankReport:
    """Build rank `rank` of `doc`'s job and run one step (see the module docstring)."""
    plan, spec = doc.plan, doc.model
    dims = ParallelDims.from_plan(plan)
    check_ranks([rank], dims.world_size)
    ledger = CollectiveLedger()
    t0 = time.perf_counter()
    with fake_world(rank, dims.world_size), torch_bridges(_boundary(doc), ledger):
        mesh = dims.build_mesh("cpu")
        trainer = Trainer(doc, dims, mesh, torch.device("meta"), TrainOptions(optimizer=optimizer),
                          materialize=False)
        from torch.nn.parallel import DistributedDataParallel

        for module in trainer.modules:
            if isinstance(module, DistributedDataParallel):
                module.register_comm_hook(module.process_group, _ddp_allreduce_hook)
        params = _param_infos(trainer)
        build_s = time.perf_counter() - t0
        batch = torch.empty(trainer.local_batch, spec.seq_len + 1, dtype=torch.long, device="meta")
        t1 = time.perf_counter()
        with ledger:
            trainer.train_step(batch, record_grads=True)
        step_s = time.perf_counter() - t1
        grad_bytes, grad_elems = trainer.grads_bytes, trainer.grads_elements
        opt_bytes, opt_params, opt_tensors = _optimizer_state(trainer)
        groups = _groups(dims, rank, plan.shard_group if plan.hybrid else None)
        weight_elems = sum(local_tensor(p).numel() for p in trainer.all_parameters())  # trained and frozen
        weight_bytes = trainer.weights_bytes()
        stages = _stage_chunks(trainer)
        description = trainer.dp_description
        pp_rank = trainer.pp_rank
    rows = classify(ledger.rows, [("tp", groups["tp"]), ("dp", groups["dp"]), ("dp", groups.get("shard", [])),
                                  ("dp", groups.get("replicate", [])), ("ep", groups.get("ep", [])),
                                  ("edp", groups.get("edp", [])), ("tied", groups["tied"]), ("cp", groups["cp"])])
    counts: Counter = Counter()
    sizes: Counter = Counter()
    for r in rows:
        key = (r["kind"], r["op"], r["phase"])
        counts[key] += 1
        sizes[key] += r["bytes"]
    collectives = tuple(CollectiveCount(kind=k[0], op=k[1], phase=k[2], calls=counts[k], bytes=sizes[k])
                        for k in sorted(counts))
    return RankReport(rank=rank, coords=dims.coords(rank), pp_rank=pp_rank, stages=tuple(stages),
                      data_parallel=description, params=tuple(params), weight_bytes=weight_bytes,
                      grad_bytes=grad_bytes, optimizer_bytes=opt_bytes, weight_elements=weight_elems,
                      grad_elements=grad_elems, optimizer_params=opt_params, optimizer_tensors=opt_tensors,
                      collectives=collectives, build_s=build_s, step_s=step_s, groups=groups)


class DryRunFailed(RuntimeError):
    """Building or stepping a rank failed: the executor cannot run this plan as built (a finding)."""


def _in_child(doc: PlanDocument, rank: int, optimizer: str) -> tuple[str, Any]:
    # FSDP2 warns that the root module returns a view (the logits; nothing modifies them in place).
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
    try:
        return "ok", dry_run_rank(doc, rank, optimizer)
    except Exception as exc:  # reported by the parent; the child's traceback goes to stderr if asked
        if os.environ.get("PLANNER_DEBUG"):
            traceback.print_exc()
        return "error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:400]}"


def dry_run(doc: PlanDocument, ranks: list[int] | None = None, optimizer: str = "adamw",
            jobs: int = 1) -> list[RankReport]:
    """`dry_run_rank` for each of `ranks` (default: `default_ranks`), each in a fresh forked process
    (DTensor caches plans per mesh shape across process groups, so one process builds one rank),
    `jobs` at a time. UnsupportedPlan for what the executor cannot build (checked before anything
    is built) or a rank out of range; DryRunFailed when building or stepping a rank fails."""
    check_plan(doc.model, doc.cluster, doc.plan)
    check_executable(doc)
    dims = ParallelDims.from_plan(doc.plan)
    chosen = default_ranks(dims) if ranks is None else list(ranks)
    check_ranks(chosen, dims.world_size)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(processes=max(1, min(jobs, len(chosen))), maxtasksperchild=1) as pool:
        results = pool.starmap(_in_child, [(doc, r, optimizer) for r in chosen], chunksize=1)
    reports = []
    for rank, (status, value) in zip(chosen, results, strict=True):
        if status != "ok":
            raise DryRunFailed(f"rank {rank}: {value}")
        reports.append(value)
    return reports


def layer_pattern(name: str) -> str:
    """`layers.17.attn.qkv.q.weight` -> `layers.*.attn.qkv.q.weight` (to group a rank's parameters)."""
    return re.sub(r"^layers\.\d+\.", "layers.*.", name)
