"""Counting the collectives a rank issues, at the dispatcher (the buffer convention of traffic.py).

Every `torch.distributed` call (DDP's C++ reducer, FSDP2, ZeroRedundancyOptimizer, pipelining's
batch_isend_irecv, `dist.all_reduce` in the executor's own autograd functions) reaches the dispatcher
as a c10d op, and DTensor's redistributions as functional collectives, so one `TorchDispatchMode`
sees them all, with real process groups (tests/executor_workers/crosscheck.py) and with the fake one
of the dry run (executor/dry_run.py) alike.

Bytes are the buffer each call is given, as `planner/cost/traffic.py` counts them: all-reduce and
broadcast the tensor, all-gather the gathered output, reduce-scatter the full input, all-to-all the
input, send the tensor sent (receives are recorded as "recv" and are not traffic of this rank).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def _nb(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _tensors(ts: list[torch.Tensor]) -> int:
    return sum(_nb(t) for t in ts)


def collective_rules() -> dict[Any, tuple[str, Callable[[tuple[Any, ...]], int], int]]:
    """op packet -> (collective, bytes of the call, index of the process-group argument)."""
    c10d, fc = torch.ops.c10d, torch.ops._c10d_functional
    return {
        c10d.allreduce_: ("all_reduce", lambda a: _tensors(a[0]), 1),
        c10d.allreduce_coalesced_: ("all_reduce", lambda a: _tensors(a[0]), 1),
        c10d._allgather_base_: ("all_gather", lambda a: _nb(a[0]), 2),
        c10d.allgather_: ("all_gather", lambda a: sum(_tensors(o) for o in a[0]), 2),
        c10d.allgather_into_tensor_coalesced_: ("all_gather", lambda a: _tensors(a[0]), 2),
        c10d._reduce_scatter_base_: ("reduce_scatter", lambda a: _nb(a[1]), 2),
        c10d.reduce_scatter_: ("reduce_scatter", lambda a: sum(_tensors(i) for i in a[1]), 2),
        c10d.reduce_scatter_tensor_coalesced_: ("reduce_scatter", lambda a: _tensors(a[1]), 2),
        c10d.broadcast_: ("broadcast", lambda a: _tensors(a[0]), 1),
        c10d.alltoall_base_: ("all_to_all", lambda a: _nb(a[1]), 2),
        c10d.send: ("send", lambda a: _tensors(a[0]), 1),
        c10d.recv_: ("recv", lambda a: _tensors(a[0]), 1),
        fc.all_reduce: ("all_reduce", lambda a: _nb(a[0]), 2),
        fc.all_reduce_coalesced: ("all_reduce", lambda a: _tensors(a[0]), 2),
        fc.all_gather_into_tensor: ("all_gather", lambda a: _nb(a[0]) * a[1], 2),
        fc.all_gather_into_tensor_coalesced: ("all_gather", lambda a: _tensors(a[0]) * a[1], 2),
        fc.reduce_scatter_tensor: ("reduce_scatter", lambda a: _nb(a[0]), 3),
        fc.reduce_scatter_tensor_coalesced: ("reduce_scatter", lambda a: _tensors(a[0]), 3),
        fc.all_to_all_single: ("all_to_all", lambda a: _nb(a[0]), 3),
        fc.broadcast: ("broadcast", lambda a: _nb(a[0]), 2),
    }


class CollectiveLedger(TorchDispatchMode):
    """Records {op, bytes, ranks, phase} of every collective issued inside the context.

    phase is "bwd" inside the autograd engine, else "other" (forward, optimizer, gradient syncs after
    backward). DTensor ops are passed on (NotImplemented) so that the ledger sees the collectives
    DTensor lowers them to, as torch's CommDebugMode does. `paused()` stops recording (one-off work).
    """

    def __init__(self) -> None:
        super().__init__()
        import torch.distributed as dist
        from torch.distributed.tensor import DTensor

        self._dist, self._dtensor = dist, DTensor
        self.rules = collective_rules()
        self.rows: list[dict[str, Any]] = []
        self.recording = True
        self._ranks_of: dict[int, tuple[int, ...]] = {}

    def _ranks(self, group: Any) -> tuple[int, ...]:
        dist = self._dist
        pg = dist.distributed_c10d._resolve_process_group(group) if isinstance(group, str) else \
            dist.ProcessGroup.unbox(group)
        key = id(pg)
        if key not in self._ranks_of:
            self._ranks_of[key] = tuple(dist.get_process_group_ranks(pg))
        return self._ranks_of[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if any(issubclass(t, self._dtensor) for t in types):
            return NotImplemented
        rule = self.rules.get(getattr(func, "_overloadpacket", None))
        if rule is not None and self.recording:
            op, size, gi = rule
            phase = "bwd" if torch._C._current_graph_task_id() != -1 else "other"
            self.rows.append({"op": op, "bytes": int(size(args)), "ranks": list(self._ranks(args[gi])),
                              "phase": phase})
        return func(*args, **(kwargs or {}))


def classify(rows: list[dict[str, Any]], groups: Sequence[tuple[str, Sequence[int]]]) -> list[dict[str, Any]]:
    """Tag each row with a kind: p2p over a group given as "cp" -> "cp" (the ring attention's exchanges),
    other p2p -> "pp"; an all-to-all over the "ep" group -> "ep"; another collective over exactly the
    ranks of one of `groups` (kind, ranks), the first that matches, -> that kind; else "other". Groups
    of one rank never match."""
    keyed = [(kind, sorted(ranks)) for kind, ranks in groups if len(ranks) > 1]
    out = []
    for r in rows:
        ranks = sorted(r["ranks"])
        if r["op"] in ("send", "recv"):
            kind = "cp" if ("cp", ranks) in keyed else "pp"
        elif r["op"] == "all_to_all" and ("ep", ranks) in keyed:  # (the ep group may also be the dp group)
            kind = "ep"
        else:
            kind = next((k for k, g in keyed if g == ranks and k != "cp"), "other")
        out.append({**r, "kind": kind})
    return out
