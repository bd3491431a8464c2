"""Measurement side of the planner <-> executor cross-checks (tests/test_crosscheck.py).

Importable without a process group (the single-process checks use `SavedBytes` in the test process)
and a torchrun worker:

    torchrun --standalone --nproc-per-node 2 tests/executor_workers/crosscheck.py --out r.json

(`PLANS` on 2 ranks; `PLANS_4` with --nproc-per-node 4.)

For every plan of `PLANS` the worker trains warm-up steps, then records every collective of one
training step on each rank with `CollectiveLedger` (and, for tensor-parallel plans, the per-module
counts of torch's `CommDebugMode` alongside), and for tensor- and context-parallel plans the bytes one
micro-batch forward saves for backward on each rank. Rank 0 writes the raw measurements as JSON; the test computes
the predictions and asserts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import saved_tensors_hooks
from torch.utils._python_dispatch import TorchDispatchMode

from executor.activation_checkpoint import RECOMPUTE_TAG
from executor.rank_exit import exit_rank
from planner.specs.model import ModelSpec

# Tiny models, one per architecture family. fp32 plans throughout (CPU): activations, weights and
# gradients all have 4-byte elements, so no mixed-precision convention enters the comparison.
GPT = ModelSpec(name="gpt", num_layers=4, hidden=64, num_heads=4, ffn_hidden=128, vocab_size=128, seq_len=16,
                dtype="fp32")  # learned positions, GELU, LayerNorm, biases, tied embeddings
LLAMA = dataclasses.replace(GPT, name="llama", norm="rmsnorm", position="rope", activation="swiglu", bias=False,
                            qkv_bias=False, num_kv_heads=2, tied_embeddings=False)  # RoPE, SwiGLU, RMSNorm, GQA
MOE = dataclasses.replace(LLAMA, name="moe", num_kv_heads=4, num_experts=4, top_k=2, capacity_factor=1.0)
MODELS = {"gpt": GPT, "llama": LLAMA, "moe": MOE}

# Multi-rank plans: name -> (model, plan fields). Micro-batch 2, two micro-batches per step per replica.
PLANS: dict[str, tuple[str, dict[str, Any]]] = {
    "tp2": ("gpt", {"tp": 2}),
    "tp2-llama": ("llama", {"tp": 2}),
    "tp2-sp": ("gpt", {"tp": 2, "sequence_parallel": True}),
    "tp2-sp-llama": ("llama", {"tp": 2, "sequence_parallel": True}),
    "tp2-full-recompute": ("gpt", {"tp": 2, "recompute": "full"}),
    "tp2-math-selective": ("gpt", {"tp": 2, "flash_attention": False, "recompute": "selective"}),
    "dp2-ddp": ("gpt", {"dp": 2}),
    "dp2-zero1": ("gpt", {"dp": 2, "zero_stage": 1}),
    "dp2-zero2": ("gpt", {"dp": 2, "zero_stage": 2}),
    "dp2-fsdp2": ("gpt", {"dp": 2, "zero_stage": 3}),
    "pp2-1f1b": ("gpt", {"pp": 2}),
    "pp2-1f1b-llama": ("llama", {"pp": 2}),
    "pp2-interleaved": ("gpt", {"pp": 2, "vpp": 2, "schedule": "interleaved-1f1b"}),
    "cp2-llama": ("llama", {"cp": 2}),
    "cp2-gpt": ("gpt", {"cp": 2}),
    "dp2-ep2-moe": ("moe", {"dp": 2, "ep": 2}),
}
# Plans on four ranks (a second launch).
PLANS_4: dict[str, tuple[str, dict[str, Any]]] = {
    "tp2-cp2-llama": ("llama", {"tp": 2, "cp": 2}),
    "cp2-dp2-zero1": ("gpt", {"cp": 2, "dp": 2, "zero_stage": 1}),
    "ep2-tp2-moe": ("moe", {"tp": 2, "dp": 2, "ep": 2}),
    "cp2-dp2-ep2-moe": ("moe", {"cp": 2, "dp": 2, "ep": 2}),
    "dp4-hsdp2-zero3": ("gpt", {"dp": 4, "zero_stage": 3, "shard_group": 2}),
}
MICRO_BATCH, MICRO_BATCHES = 2, 2
WARMUP = 2  # pipeline shape inference (step 0) and DDP's bucket rebuild (step 1) are one-off


def plan_fields(fields: dict[str, Any]) -> dict[str, Any]:
    dp = fields.get("dp", 1)
    return {"micro_batch": MICRO_BATCH, "global_batch": MICRO_BATCH * MICRO_BATCHES * dp, **fields}


# ---- saved activations -------------------------------------------------------------------------------


def local(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor holding the memory: a DTensor's shard, an AsyncCollectiveTensor's result."""
    while True:
        inner = getattr(t, "_local_tensor", None)  # DTensor
        if inner is None:
            inner = getattr(t, "elem", None)  # AsyncCollectiveTensor (funcol results, e.g. after all-reduce)
        if not isinstance(inner, torch.Tensor):
            return t
        t = inner


def _key(t: torch.Tensor) -> int:
    return local(t).untyped_storage().data_ptr()


class SavedBytes:
    """Unique bytes saved for backward inside the context (`saved_tensors_hooks`), deduplicated by
    storage, parameters excluded, plus the inputs of recomputed (checkpointed) modules of `model`:
    a checkpointed region saves nothing itself (its own hooks take over) but keeps its inputs alive
    to run the forward again in backward."""

    def __init__(self, model: nn.Module, params: list[torch.Tensor] | None = None) -> None:
        self.model = model
        ps = list(model.parameters()) if params is None else params
        self.param_keys = {_key(p) for p in ps}
        self.seen: dict[int, int] = {}
        self.rows: list[tuple[tuple[int, ...], str, int]] = []
        self._handles: list[Any] = []
        self._ctx = saved_tensors_hooks(self._pack, lambda t: t)

    @property
    def total(self) -> int:
        return sum(self.seen.values())

    def _add(self, t: Any) -> None:
        if not isinstance(t, torch.Tensor) or isinstance(t, nn.Parameter) or (t.is_leaf and t.requires_grad):
            return
        base = local(t)
        key = base.untyped_storage().data_ptr()
        if key in self.param_keys or key in self.seen:
            return
        self.seen[key] = base.untyped_storage().nbytes()
        self.rows.append((tuple(base.shape), str(base.dtype), self.seen[key]))

    def _inputs(self, _mod: nn.Module, args: tuple[Any, ...]) -> None:
        for a in args:
            self._add(a)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self._add(t)
        return t

    def __enter__(self) -> SavedBytes:
        for m in self.model.modules():
            if getattr(m, RECOMPUTE_TAG, False):
                self._handles.append(m.register_forward_pre_hook(self._inputs))
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)
        for h in self._handles:
            h.remove()


# ---- collectives -------------------------------------------------------------------------------------


def _nb(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _rules() -> dict[Any, tuple[str, Any, int]]:
    """op packet -> (kind, bytes of the call as traffic.py counts them, index of the group argument).

    Every torch.distributed call (DDP's C++ reducer, FSDP2, ZeroRedundancyOptimizer, pipelining's
    batch_isend_irecv, dist.all_reduce) reaches the dispatcher as a c10d op; DTensor redistributions
    as functional collectives. Buffer convention: all-reduce/broadcast the tensor, all-gather the
    gathered output, reduce-scatter the full input, all-to-all the input, send the tensor sent.
    """
    c10d, fc = torch.ops.c10d, torch.ops._c10d_functional

    def tensors(ts: list[torch.Tensor]) -> int:
        return sum(_nb(t) for t in ts)

    return {
        c10d.allreduce_: ("all_reduce", lambda a: tensors(a[0]), 1),
        c10d.allreduce_coalesced_: ("all_reduce", lambda a: tensors(a[0]), 1),
        c10d._allgather_base_: ("all_gather", lambda a: _nb(a[0]), 2),
        c10d.allgather_: ("all_gather", lambda a: sum(tensors(o) for o in a[0]), 2),
        c10d.allgather_into_tensor_coalesced_: ("all_gather", lambda a: tensors(a[0]), 2),
        c10d._reduce_scatter_base_: ("reduce_scatter", lambda a: _nb(a[1]), 2),
        c10d.reduce_scatter_: ("reduce_scatter", lambda a: sum(tensors(i) for i in a[1]), 2),
        c10d.reduce_scatter_tensor_coalesced_: ("reduce_scatter", lambda a: tensors(a[1]), 2),
        c10d.broadcast_: ("broadcast", lambda a: tensors(a[0]), 1),
        c10d.alltoall_base_: ("all_to_all", lambda a: _nb(a[1]), 2),
        c10d.send: ("send", lambda a: tensors(a[0]), 1),
        c10d.recv_: ("recv", lambda a: tensors(a[0]), 1),
        fc.all_reduce: ("all_reduce", lambda a: _nb(a[0]), 2),
        fc.all_reduce_coalesced: ("all_reduce", lambda a: tensors(a[0]), 2),
        fc.all_gather_into_tensor: ("all_gather", lambda a: _nb(a[0]) * a[1], 2),
        fc.all_gather_into_tensor_coalesced: ("all_gather", lambda a: tensors(a[0]) * a[1], 2),
        fc.reduce_scatter_tensor: ("reduce_scatter", lambda a: _nb(a[0]), 3),
        fc.reduce_scatter_tensor_coalesced: ("reduce_scatter", lambda a: tensors(a[0]), 3),
        fc.all_to_all_single: ("all_to_all", lambda a: _nb(a[0]), 3),
        fc.broadcast: ("broadcast", lambda a: _nb(a[0]), 2),
    }


class CollectiveLedger(TorchDispatchMode):
    """Records (op, bytes, group ranks, phase) of every collective issued inside the context.

    phase is "bwd" inside the autograd engine, else "other" (forward, optimizer, gradient syncs
    after backward). DTensor ops are passed on (NotImplemented) so that the ledger sees the
    collectives DTensor lowers them to, as CommDebugMode does.
    """

    def __init__(self) -> None:
        super().__init__()
        import torch.distributed as dist
        from torch.distributed.tensor import DTensor

        self._dist, self._dtensor = dist, DTensor
        self.rules = _rules()
        self.rows: list[dict[str, Any]] = []

    def _ranks(self, group: Any) -> tuple[int, ...]:
        dist = self._dist
        pg = dist.distributed_c10d._resolve_process_group(group) if isinstance(group, str) else \
            dist.ProcessGroup.unbox(group)
        return tuple(dist.get_process_group_ranks(pg))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(issubclass(t, self._dtensor) for t in types):
            return NotImplemented
        rule = self.rules.get(getattr(func, "_overloadpacket", None))
        if rule is not None:
            op, size, gi = rule
            phase = "bwd" if torch._C._current_graph_task_id() != -1 else "other"
            self.rows.append({"op": op, "bytes": int(size(args)), "ranks": list(self._ranks(args[gi])),
                              "phase": phase})
        return func(*args, **(kwargs or {}))


def classify(rows: list[dict[str, Any]], groups: dict[str, list[int]]) -> list[dict[str, Any]]:
    """Tag each row with the traffic.py kind: p2p over the cp group -> cp (the ring attention's
    exchanges), other p2p -> pp; a collective over the tp group -> tp; an all-to-all over the ep group
    -> ep (the token exchanges); a collective over the gradient group (dp, or dp x cp with context parallelism), the
    expert-data-parallel group or the pipeline's first and last rank -> dp (replicated, expert and
    tied-embedding gradients, which model.py and traffic.py count with the data-parallel traffic)."""
    def key(name: str) -> list[int] | None:
        ranks = sorted(groups.get(name, []))
        return ranks if len(ranks) > 1 else None

    tied = sorted({groups["pp"][0], groups["pp"][-1]})
    dp_like = [g for g in (key("dp"), key("grad"), key("edp"), key("shard"), key("replicate"),
                           tied if len(tied) > 1 else None) if g]
    out = []
    for r in rows:
        ranks = sorted(r["ranks"])
        if r["op"] in ("send", "recv"):
            kind = "cp" if ranks == key("cp") else "pp"
        elif ranks == key("tp"):
            kind = "tp"
        elif ranks == key("ep") and r["op"] == "all_to_all":
            kind = "ep"
        elif ranks in dp_like:  # (with dp = ep the gradient all-reduce runs on the ep group's ranks)
            kind = "dp"
        else:
            kind = "other"
        out.append({**r, "kind": kind})
    return out


# ---- the torchrun worker -----------------------------------------------------------------------------


def _comm_debug_counts(cdm: Any) -> dict[str, Any]:
    """CommDebugMode's totals and per-module backward counts, with op packets as strings."""
    per_module = {}
    for fqn, d in cdm.comm_module_counts.items():  # per-module forward/backward counts (no getter)
        per_module[fqn] = {ph: {str(k): v for k, v in d[ph].items()} for ph in ("forward", "backward")}
    return {"total": {str(k): v for k, v in cdm.get_comm_counts().items()}, "modules": per_module}


def run_plan(name: str, model_key: str, fields: dict[str, Any]) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.distributed.tensor.debug import CommDebugMode

    from executor.data import SyntheticData
    from executor.expert_parallel import expert_groups
    from executor.parallel_dims import ParallelDims
    from executor.plans import local_plan
    from executor.trainer import Trainer, TrainOptions, loss_fn

    spec = MODELS[model_key]
    doc = local_plan(spec, **plan_fields(fields))
    dims = ParallelDims.from_plan(doc.plan)
    mesh = dims.build_mesh("cpu")
    rank = dist.get_rank()
    # SGD: the optimizer itself communicates only where the plan says so (ZeRO-1's parameter
    # broadcasts; with SP the partial gradients of the replicated norm weights, once each). AdamW
    # would touch a partial DTensor gradient three times and all-reduce it each time.
    trainer = Trainer(doc, dims, mesh, torch.device("cpu"), TrainOptions(optimizer="sgd", lr=0.1, seed=0))
    data = SyntheticData(spec.vocab_size, spec.seq_len, seed=1)
    for step in range(WARMUP):
        trainer.train_step(trainer.batch(data, step))
    dist.barrier()
    groups = {d: dims.groups(d)[[rank in g for g in dims.groups(d)].index(True)] for d in ("tp", "dp", "pp", "cp")}
    if trainer.grad_mesh is not None:
        groups["grad"] = dist.get_process_group_ranks(trainer.grad_mesh.get_group())
        if doc.plan.hybrid:  # the plan's definition: shard groups of consecutive gradient-group ranks
            grad, f = sorted(groups["grad"]), doc.plan.shard_group
            i = grad.index(rank)
            groups["shard"] = grad[i - i % f:i - i % f + f]
            groups["replicate"] = grad[i % f::f]
    if dims.ep > 1:
        groups.update(expert_groups(dims, rank))
    ledger = CollectiveLedger()
    with ledger:
        trainer.train_step(trainer.batch(data, WARMUP))
    dist.barrier()
    result: dict[str, Any] = {"rank": rank, "rows": classify(ledger.rows, groups), "dp": trainer.dp_description,
                              "first_stage": trainer.is_first}
    # The parameters' storage is the module's own without a wrapper or under DDP (FSDP2's and replicate's
    # unsharded copies would count as saved tensors).
    if (dims.tp > 1 or dims.cp > 1) and dims.pp == 1 and trainer.dp_kind in ("none", "ddp"):
        # One more micro-batch, forward + backward outside the trainer: the bytes its forward (and loss)
        # saves for backward on this rank, and its collectives seen by both CommDebugMode (which can
        # follow one forward and its backward per context, so not a whole accumulating step) and the
        # ledger.
        model = trainer.modules[0]
        batch = trainer.batch(data, WARMUP + 1)[:MICRO_BATCH]
        x, y = batch[:, :-1], batch[:, 1:]
        if trainer.positions is not None:  # context parallelism: this rank's chunks of the sequence
            x, y = x[:, trainer.positions], y[:, trainer.positions]
        debug, mb_ledger = CommDebugMode(), CollectiveLedger()
        with debug, mb_ledger:
            with SavedBytes(model, trainer.parameters()) as saved:
                loss = loss_fn(model(x), y)
            loss.backward()
        for opt in trainer.optimizers:
            opt.zero_grad(set_to_none=True)
        result["saved_bytes"] = saved.total
        result["comm_debug"] = _comm_debug_counts(debug)
        result["micro_batch_rows"] = classify(mb_ledger.rows, groups)
    return result


def main() -> int:
    import torch.distributed as dist

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", default="")
    args = ap.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    results: dict[str, Any] = {}
    plans = PLANS if world == 2 else PLANS_4
    for name, (model_key, fields) in plans.items():
        if args.only and name not in args.only.split(","):
            continue
        try:
            mine = run_plan(name, model_key, fields)
            every = [None] * world
            dist.all_gather_object(every, mine)
            results[name] = {"ranks": every}
        except Exception as exc:  # report and stop: the other ranks may be stuck in a collective
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            if rank == 0:
                with open(args.out, "w") as fh:
                    json.dump(results, fh)
            sys.stderr.flush()
            os._exit(1)
    if rank == 0:
        with open(args.out, "w") as fh:
            json.dump(results, fh)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_rank(main())
