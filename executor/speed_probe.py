"""The speed probe: the machine's GEMM and streaming rates at one moment, the same way every time.

A shared host's speed wanders (on this project's 2-vCPU VM a GEMM's rate moved between 147 and 179
GFLOP/s over two idle minutes while its memory stream stayed within 12.2-12.9 GB/s). `planner calibrate`
runs the probe around its compute and memory benchmarks and `executor.run` around each plan's steps, so
`planner compare` / `validate` can say how fast the machine ran during a measurement against its
calibration (`planner.speed`), instead of leaving that drift inside the prediction error.

Every rank probes at once (as they run in training); the slowest rank's rate is kept, because the
slowest rank sets a step's pace.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from planner.io import write_kernel_control
from planner.speed import SPEED_KEYS

# (tokens, in, out) of the probe's linear layer and the bytes its streaming add reads: on CPUs a
# linear layer of the size local plans run (calibrate's 268 MFLOP shape with the larger output, about
# 6 ms per forward + backward on one core; 2026-12-06, twelve one-rank samples over three minutes: the
# `tiny` GPT's step moved 113.7-129.3 ms while the step times this linear's rate stayed within +-3%,
# where the earlier 512 x 1024 x 1024 probe's rate moved 144-173 GFLOP/s out of step with it) and a
# stream of at least twice a CPU rank's last-level cache share (40-70 MB on the 2-vCPU VM; so it
# measures memory, not cache); on GPUs sizes that run near the device's sustained rates.
PROBE_GEMM = {"cpu": (512, 256, 1024), "cuda": (8192, 8192, 8192)}
PROBE_STREAM_BYTES = {"cpu": 128 << 20, "cuda": 2 << 30}
PROBE_REPS = 5
GEMM_CALLS_PER_REP = {"cpu": 4, "cuda": 1}  # the CPU probe's linear is short: more calls, the same time
_primed = False  # whether this process has run the probe once (see measure_speed)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so a wall-clock interval covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], Any], device: torch.device, reps: int, warm: bool = True) -> float:
    """Median wall seconds of `reps` calls of fn(), each synchronised; `warm`: one untimed call first
    (allocation, kernel selection). executor.calibration times its benchmarks with it too."""
    if warm:
        fn()
        sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemm_flops(kind: str) -> float:
    """FLOPs of one probe call: the forward GEMM and the input- and weight-gradient GEMMs."""
    m, k, n = PROBE_GEMM[kind]
    return 3 * 2.0 * m * k * n


def _gemm_rate(device: torch.device, dtype: torch.dtype, kind: str, reps: int) -> float:
    m, k, n = PROBE_GEMM[kind]
    x = torch.randn(m, k, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(n, k, device=device, dtype=dtype, requires_grad=True)
    g = torch.randn(m, n, device=device, dtype=dtype)

    def linear() -> None:
        x.grad = w.grad = None
        torch.nn.functional.linear(x, w).backward(g)

    return gemm_flops(kind) / median_seconds(linear, device, reps)


def _stream_rate(device: torch.device, dtype: torch.dtype, kind: str, reps: int) -> float:
    a = torch.ones(PROBE_STREAM_BYTES[kind] // 2 // torch.tensor([], dtype=dtype).element_size(), device=device,
                   dtype=dtype)
    b = torch.empty_like(a)
    return 2.0 * a.numel() * a.element_size() / median_seconds(lambda: torch.add(a, 1.0, out=b), device, reps)


def measure_speed(device: torch.device, reps: int = PROBE_REPS) -> dict[str, Any] | None:
    """{"gemm_flops_per_s", "stream_bytes_per_s", "gemm_shape"}: a linear layer's forward + backward (3
    GEMMs) and an out-of-place add over a buffer larger than the cache, medians of `reps` calls, the
    slowest rank's; `gemm_shape` names the linear (rates of different probes are not compared).

    None where any rank could not allocate the probe's buffers (a plan that fills the device): the probe
    is a diagnostic and never fails the run it measures. Collective: every rank must call it."""
    kind = "cuda" if device.type == "cuda" else "cpu"
    dtype = torch.bfloat16 if kind == "cuda" else torch.float32
    if dist.is_initialized():
        dist.barrier()
    global _primed
    try:
        if not _primed:  # once unmeasured first: a process's first large allocations take page faults and
            # its allocator settles (glibc raises its mmap threshold after the first frees), which would
            # slow only the first probe of a process (5-10% on the 2-vCPU VM)
            _gemm_rate(device, dtype, kind, 1)
            _stream_rate(device, dtype, kind, 1)
            _primed = True
        gemm = _gemm_rate(device, dtype, kind, reps * GEMM_CALLS_PER_REP[kind])
        stream = _stream_rate(device, dtype, kind, reps)
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError too
        if not _out_of_memory(exc):
            raise
        gemm = stream = 0.0  # this rank could not probe: nor does the group
    if kind == "cuda":
        torch.cuda.empty_cache()  # the probe's buffers are not the plan's
    forget_peak_rss()  # the buffers are freed: they must not stand in for the plan's peak
    rates = torch.tensor([gemm, stream], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(rates, op=dist.ReduceOp.MIN)
    if float(rates.min()) <= 0:
        return None
    return {"gemm_flops_per_s": float(rates[0]), "stream_bytes_per_s": float(rates[1]),
            "gemm_shape": list(PROBE_GEMM[kind])}


def _out_of_memory(exc: BaseException) -> bool:
    """An allocation that failed: CUDA's OutOfMemoryError or the CPU allocator's "can't allocate"."""
    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or "allocate" in str(exc).lower()


def forget_peak_rss() -> None:
    """Reset the process's peak resident set (Linux: /proc/self/clear_refs), so the probe's buffers do
    not stand in for the plan's peak in measured.json's `rss_bytes`; elsewhere nothing to do."""
    write_kernel_control("/proc/self/clear_refs", "5")


def probe_record(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """measured.json's / calibrate's `speed_probe`: the mean of the probes taken before and after a
    measurement (the drift across it, halved) with both kept, and the probe's linear; None unless both
    were taken."""
    if before is None or after is None:
        return None
    shape = {"gemm_shape": before["gemm_shape"]} if "gemm_shape" in before else {}
    return {**{k: (before[k] + after[k]) / 2 for k in SPEED_KEYS}, **shape, "before": before, "after": after}
