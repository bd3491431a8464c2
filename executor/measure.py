"""Measurement: step times (slowest rank), saved-activation bytes, memory, and `measured.json`.

Semantics (a contract the planner's compare/validate code relies on):
- a step is timed on every rank from a barrier to the end of its own step (its device work included);
  the step's time is the maximum over ranks (the slowest rank's); warm-up steps are excluded;
  median, p10, p90 and mean are reported;
- `activations_bytes` is the unique storage saved for backward (`saved_tensors_hooks`, parameters
  excluded) during the first micro-batch forward of each model part this rank holds, plus the
  inputs kept by recomputed (checkpointed) modules; `activations_peak_bytes` replays the order in
  which micro-batch forwards and backwards ran to find the most bytes alive at once (pipelines keep
  several micro-batches in flight);
- CPU `peak_bytes` = weights + grads + optimizer state + activations_peak_bytes (the tensors
  training needs; RSS is reported separately); CUDA `peak_bytes` = `torch.cuda.max_memory_allocated`.
Every memory figure is the maximum over ranks.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import resource
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.graph import saved_tensors_hooks

from executor.activation_checkpoint import RECOMPUTE_TAG
from executor.ledger import SCHEMA_VERSION  # noqa: F401  (re-exported: measured.json's version)

T = TypeVar("T")


def _base(t: torch.Tensor) -> torch.Tensor:
    local = getattr(t, "_local_tensor", None)  # DTensor: its shard is what occupies memory
    return local if local is not None else t


def _storage_key(t: torch.Tensor) -> tuple[int, str] | None:
    t = _base(t)
    try:  # some saved tensors (tensor parallel + sequence parallel) have no valid python storage
        return (t.untyped_storage().data_ptr(), str(t.device))
    except (RuntimeError, NotImplementedError):
        return None


class ActivationMeter:
    """Counts saved-for-backward bytes of one micro-batch forward of each part (see module doc)."""

    def __init__(self, parts: list[nn.Module], params: Iterable[torch.Tensor]) -> None:
        self.parts = parts
        self.param_keys = {k for k in (_storage_key(p) for p in params) if k is not None}
        self.part_bytes = [0] * len(parts)
        self.events: list[tuple[int, int]] = []
        self._armed = False
        self._done = [False] * len(parts)
        self._seen: dict[tuple[int, str], int] | None = None
        self._ctx: saved_tensors_hooks | None = None
        for i, part in enumerate(parts):
            part.register_forward_pre_hook(self._make_pre(i))
            part.register_forward_hook(self._make_post(i))
            for m in part.modules():
                if getattr(m, RECOMPUTE_TAG, False):
                    m.register_forward_pre_hook(self._recompute_inputs)

    def arm(self) -> None:
        self._armed, self._done, self.events = True, [False] * len(self.parts), []

    def disarm(self) -> None:
        self._armed = False

    @property
    def activations_bytes(self) -> int:
        return sum(self.part_bytes)

    @property
    def peak_bytes(self) -> int:
        """Most saved bytes alive at once, replaying forward (+) and backward (-) events."""
        live = peak = 0
        for part, sign in self.events:
            live += sign * self.part_bytes[part]
            peak = max(peak, live)
        return peak if self.events else self.activations_bytes

    @property
    def max_in_flight(self) -> int:
        live = peak = 0
        for _, sign in self.events:
            live += sign
            peak = max(peak, live)
        return peak

    def _add(self, t: torch.Tensor) -> None:
        if self._seen is None or not isinstance(t, torch.Tensor):
            return
        if isinstance(t, nn.Parameter) or (t.is_leaf and t.requires_grad):
            return  # weights (and FSDP's unsharded weights) are not activations
        key = _storage_key(t)
        if key is None or key in self.param_keys:
            return
        self._seen.setdefault(key, _base(t).untyped_storage().nbytes())

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        self._add(t)
        return t

    def _recompute_inputs(self, _mod: nn.Module, args: tuple[Any, ...]) -> None:
        for a in args:
            self._add(a)

    def _make_pre(self, i: int):
        def pre(_mod: nn.Module, _args: tuple[Any, ...]) -> None:
            if self._armed and not self._done[i] and self._ctx is None:
                self._seen = {}
                self._ctx = saved_tensors_hooks(self._pack, lambda t: t)
                self._ctx.__enter__()
        return pre

    def _make_post(self, i: int):
        def post(_mod: nn.Module, _args: tuple[Any, ...], out: Any) -> None:
            if self._ctx is not None and not self._done[i]:
                self._ctx.__exit__(None, None, None)
                self.part_bytes[i] = sum(self._seen.values()) if self._seen else 0
                self._ctx, self._seen, self._done[i] = None, None, True
            if self._armed and isinstance(out, torch.Tensor) and out.requires_grad:
                self.events.append((i, +1))
                out.register_hook(lambda g, i=i: self.events.append((i, -1)))
        return post


def rss_bytes() -> tuple[int, int]:
    """(current, peak) resident set size of this process."""
    cur = peak = 0
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) * 1024
                elif line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return cur, peak


def timed(fn, device: torch.device, world: int, barrier=None):
    """Run `fn()` after a barrier; returns (result, seconds on this rank from the barrier to the end of
    its step). `barrier` replaces the plain one (the executor passes a monitored barrier that names a
    rank that does not arrive). No barrier closes the interval: the slowest rank's seconds are the
    step's (`reduce_step`), and a closing barrier would add a collective no training step issues (on
    CPU ranks a gloo barrier after compute takes 1-1.5 ms; calibrate's steps are timed the same way)."""
    if barrier is not None:
        barrier()
    elif world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def stats(times: list[float]) -> dict[str, float]:
    a = np.asarray(times, dtype=np.float64)
    return {"median": float(np.median(a)), "p10": float(np.percentile(a, 10)),
            "p90": float(np.percentile(a, 90)), "mean": float(a.mean())}


def reduce_max(values: list[float], world: int) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)
    if world > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def busy_timed(fn: Callable[[], T]) -> tuple[T, float]:
    """Run `fn()`; returns (result, CPU seconds of this thread). On a CPU rank with one thread the
    training thread's CPU time is its compute and framework work; blocking waits cost none."""
    c0 = time.thread_time()
    out = fn()
    return out, time.thread_time() - c0


def reduce_step(seconds: float, loss: float, has_loss: bool, world: int,
                busy: float = 0.0) -> tuple[float, float, float]:
    """One step over all ranks: (time of the slowest rank, mean loss over the ranks that computed it,
    the largest `busy` of any rank)."""
    t = torch.tensor([seconds, loss if has_loss else 0.0, 1.0 if has_loss else 0.0, busy], dtype=torch.float64)
    if world > 1:
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t)
        t = torch.stack(parts)
    else:
        t = t[None]
    return float(t[:, 0].max()), float(t[:, 1].sum() / t[:, 2].sum().clamp(min=1.0)), float(t[:, 3].max())


def reduce_losses(losses: list[float], valid: list[bool], world: int) -> list[float]:
    """Mean over the ranks that computed the loss (the last pipeline stage of every replica)."""
    t = torch.tensor([[v if ok else 0.0 for v, ok in zip(losses, valid, strict=True)],
                      [1.0 if ok else 0.0 for ok in valid]], dtype=torch.float64)
    if world > 1:
        dist.all_reduce(t)
    return (t[0] / t[1].clamp(min=1.0)).tolist()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return f"cpu: {line.split(':', 1)[1].strip()}"
    except OSError:
        pass
    return f"cpu: {platform.processor() or platform.machine()}"


def environment(device: torch.device, backend: str, world: int, nnodes: int, threads: int) -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "host": socket.gethostname(),
        "device": device_name(device),
        "backend": backend,
        "world_size": world,
        "nnodes": nnodes,
        "threads_per_rank": threads,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "pid": os.getpid(),
    }
