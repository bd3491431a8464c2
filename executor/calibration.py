"""torchrun worker of `planner calibrate`: microbenchmarks with every rank running at once.

    torchrun --standalone --nproc-per-node N -m executor.calibration --out raw.json [--quick]

Measures (all ranks concurrently, so shared cores, memory bandwidth and links are contended as in
training): GEMM time over a grid of shapes, streaming memory bandwidth and the fixed cost of a tiny
op, each collective (all-reduce, all-gather, reduce-scatter, all-to-all, p2p) per group size and
message size, and how much a concurrent all-reduce slows a GEMM; on CPU ranks also the executor's own
steps of its GPT at a size whose arithmetic is negligible (host time per layer and micro-batch, alone
and under TP, TP + SP, ZeRO-3 and a pipeline). Rank 0 writes the raw timings; the
fitting into a cluster profile happens in `planner.calibrate` (no torch needed there).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import itertools
import os
import platform
import socket
import statistics
import sys
import time
from typing import Any

import torch
import torch.distributed as dist

from executor.rank_exit import exit_rank
from executor.run import pick_device
from executor.speed_probe import measure_speed, median_seconds, probe_record, sync
from planner.io import atomic_write_json
from planner.specs.cluster import FUNCTIONAL, FUNCTIONAL_COLLECTIVES

# (tokens M, in K, out N) of linear layers: training runs each as forward x W^T, input gradient g W
# and weight gradient g^T x, so all three are timed and averaged.
GEMM_SHAPES_CPU = [(128, 256, 256), (128, 256, 1024), (512, 256, 256), (512, 256, 1024), (512, 1024, 256),
                   (2048, 256, 256), (2048, 256, 1024), (2048, 1024, 256), (2048, 1024, 1024)]
GEMM_SHAPES_CUDA = [(2048, 1024, 1024), (2048, 4096, 4096), (4096, 4096, 4096), (8192, 4096, 4096),
                    (8192, 4096, 16384), (8192, 8192, 8192), (16384, 8192, 8192)]
# Collective message sizes: up to 16 MB, so that the gradient buckets of the local plans (the demo
# model's 14 MB) lie inside the measured range rather than on the fitted line's extrapolation.
MSG_BYTES = [4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20]
MSG_BYTES_QUICK = [4 << 10, 1 << 20, 16 << 20]
# A collective's time grows with its message. A size timed slower than OUT_OF_ORDER_RATIO x a larger size's
# time was disturbed (something else took the cores while it was timed: on the 2-vCPU VM, 2026-12-06, a
# calibration timed the 4 KiB functional all-reduce at 10.8 ms and the 1 MiB one at 5.3, against 2.4 and
# 3.6 in the calibration before it, and the fitted latency tripled, pricing a TP plan's step 24% high), so it
# is timed again, up to RETIMES times, keeping the lower median: a disturbance only adds time.
OUT_OF_ORDER_RATIO = 1.2
RETIMES = 2


class Progress:
    """A one-line progress bar on rank 0 (stderr)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        frac = self.done / max(self.total, 1)
        bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
        line = f"calibrate [{bar}] {frac * 100:5.1f}% {label}"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(100)[:100])
            if self.done >= self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def _time(fn: Any, device: torch.device, min_time: float, min_reps: int = 3, max_reps: int = 1000) -> float:
    """Median seconds of fn() over repetitions lasting about `min_time` in all.

    The repetition count is agreed by all ranks (from the slowest rank's first call), so that
    collectives inside `fn` are issued the same number of times everywhere.
    """
    fn()
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = _max_over_ranks(time.perf_counter() - t0, device)
    reps = int(min(max_reps, max(min_reps, min_time / max(first, 1e-9))))
    return median_seconds(fn, device, reps, warm=False)


# On CPU ranks a training step issues each collective after compute (a layer's forward or backward, a
# micro-batch's stage), and gloo then takes longer than when the same call repeats back to back: on
# 2 ranks of the 2-vCPU development VM (2026-12-06), after 10 ms of GEMMs the mean 128 KiB all-reduce
# took 1.4 ms against a back-to-back median of 0.3, a 1 MiB functional one 4.4 against 1.5, a 128 KiB
# send / receive pair 0.8 against 0.13 and a 16 MiB all-reduce 17 against 13 (after 1, 3, 6, 12 and 25 ms
# the 1 MiB all-reduce's mean grew 2.0, 2.9, 2.6, 3.2, 3.7 ms, the 12.8 MB one's 12.0 .. 13.5 ms); a
# pure-Python busy loop before the call slowed it as much as GEMMs did, sleeping less (2026-12-06). The
# step pays the sum of its calls, whose typical value is their count times the mean, not the median.
STEP_GAP_S = 0.010  # compute before each timed collective on CPU ranks


def _compute_for(seconds: float, device: torch.device) -> None:
    """Keep this rank's core busy with small GEMMs for `seconds` of wall time (every rank alike, so they
    reach the next collective together)."""
    a = torch.ones(256, 256, device=device)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, a)


def trimmed_mean(values: list[float], cut: float = 0.1) -> float:
    """Mean of `values` without the `cut` fraction at each end (a rare stall of the shared host is
    not the collective's)."""
    xs = sorted(values)
    k = int(len(xs) * cut)
    kept = xs[k:len(xs) - k] if len(xs) > 2 * k else xs
    return sum(kept) / len(kept)


def _time_in_step(fn: Any, device: torch.device, min_time: float, min_reps: int = 5, max_reps: int = 40) -> float:
    """Seconds per fn() (a collective) as a CPU training step meets it: each call after `STEP_GAP_S`
    of compute (untimed), the trimmed mean of the calls. The call count is agreed by all ranks."""
    fn()
    t0 = time.perf_counter()
    fn()
    first = _max_over_ranks(time.perf_counter() - t0, device)
    reps = int(min(max_reps, max(min_reps, min_time / (first + STEP_GAP_S))))
    times = []
    for _ in range(reps):
        _compute_for(STEP_GAP_S, device)
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return trimmed_mean(times)


def _time_back_to_back(fn: Any, device: torch.device, quick: bool) -> float:
    """A collective's seconds per call repeated back to back: the median."""
    return _time(fn, device, 0.05 if quick else 0.15, min_reps=3, max_reps=200)


def _time_collective(fn: Any, device: torch.device, quick: bool) -> float:
    """A collective's seconds per call: in-step on CPU ranks (`_time_in_step`); back to back on GPUs
    (NCCL's kernels do not wait on host threads between a step's kernels)."""
    if device.type == "cpu":
        return _time_in_step(fn, device, 0.15 if quick else 0.3)
    return _time_back_to_back(fn, device, quick)


def _max_over_ranks(value: float, device: torch.device) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device)
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


# A CPU benchmark's operands cycle through this many bytes of tensors, twice a last-level cache of the
# size CPU hosts share per core group (32 MB), so that each call reads them from memory as a training
# step does: a step's weights were last touched a step ago and its activations a layer ago, and the
# whole working set of even the `tiny` GPT's step (weights, gradients, AdamW's moments, activations)
# exceeds the cache (bench_gemm, bench_kernels).
COLD_OPERANDS_BYTES = 64 << 20


def operand_sets(set_bytes: int, device: torch.device) -> int:
    """How many distinct operand sets of `set_bytes` a benchmark cycles through: enough to fill
    COLD_OPERANDS_BYTES on a CPU, one on a GPU (whose operand loads overlap its math)."""
    return -(-COLD_OPERANDS_BYTES // set_bytes) if device.type == "cpu" else 1


class LinearLayerStep:
    """One call: a linear layer as training runs it, autograd's forward (with bias) and backward (input,
    weight and bias gradients), fresh outputs every call, so the dispatch and bookkeeping a real layer
    pays at this size are in its efficiency. On a CPU each call takes the next of `operand_sets` inputs,
    weights and output gradients: inside a `tiny` GPT step (one process, 2026-12-06) its GEMMs took
    1.13-1.32x the time of the same calls on hot operands (`benchmarks/cache_flush.py`), cycled they
    take 1.10-1.23x."""

    def __init__(self, m: int, k: int, n: int, device: torch.device, dtype: torch.dtype) -> None:
        self.shape = (m, k, n)
        size = torch.tensor([], dtype=dtype).element_size()
        count = operand_sets((m * k + n * k + n + m * n) * size, device)
        self.sets = itertools.cycle([(torch.randn(m, k, device=device, dtype=dtype, requires_grad=True),
                                      torch.randn(n, k, device=device, dtype=dtype, requires_grad=True),
                                      torch.zeros(n, device=device, dtype=dtype, requires_grad=True),
                                      torch.randn(m, n, device=device, dtype=dtype)) for _ in range(count)])

    def __call__(self) -> None:
        x, w, b, g = next(self.sets)
        torch.nn.functional.linear(x, w, b).backward(g)
        # freed at once, as a step frees its activation gradients: kept until the set's next turn, the
        # gradients of every set stay allocated, and on two ranks of the VM the 2048-row shapes then ran
        # 1.5-5x slower in some calibrations than in others (2026-12-06)
        x.grad = w.grad = b.grad = None


GEMM_ROUNDS = 3  # bench_gemm's passes over its shapes, --quick too: the median of two is their mean, which one
# slow pass drags (a quick calibration on the VM, 2026-12-06, priced three shapes at 42-65 GFLOP/s against
# 101-144 for the same shapes in three calibrations around it, and the demo's plan 14% long)


class GemmPasses:
    """Seconds per GEMM of each shape: the median of `GEMM_ROUNDS` passes over all the shapes, each timing
    every shape for a third of its window, so that a moment when the shared host runs slow lands in one
    pass of every shape (and is outvoted) rather than in the whole window of one shape (the smallest
    shape's rate varied 105-136 GFLOP/s over seven one-rank calibrations timed in one window; four of each
    alternating, 2026-12-06, the `tiny` GPT's one-rank step priced 98.2-100.7 ms with the passes against
    98.0-102.4 without, 112.7-116.0 against 111.0-116.6 at four micro-batches of one).

    `executor.calibration.main` runs the passes at the start, middle and end of the calibration, not back to
    back: the VM's slow spells last seconds, longer than the three passes together (a quick calibration's
    speed probe read 50.7 GFLOP/s before its benchmarks and 63.0 after, and its GEMMs, timed first, all came
    out 0.7x the next four calibrations'; the demo's plan priced 302 ms against 234-272, 2026-12-07)."""

    def __init__(self, device: torch.device, dtype: torch.dtype, quick: bool) -> None:
        self.device = device
        self.shapes = GEMM_SHAPES_CUDA if device.type == "cuda" else GEMM_SHAPES_CPU
        # --quick times every shape too (shorter windows): dropping every other shape left one
        # of the three 268 MFLOP shapes, the fastest, to price a small GPT's GEMMs (2026-12-06).
        self.window = (0.15 if quick else 0.4) / GEMM_ROUNDS
        self.calls = [LinearLayerStep(m, k, n, device, dtype) for m, k, n in self.shapes]
        self.passes: list[list[float]] = [[] for _ in self.shapes]

    def run_pass(self, bar: Progress) -> None:
        """Time every shape once (collective: every rank calls it)."""
        for i, fn in enumerate(self.calls):
            if dist.is_initialized():
                dist.barrier()
            self.passes[i].append(_max_over_ranks(_time(fn, self.device, self.window) / 3, self.device))
        bar.step(f"GEMMs, pass {len(self.passes[0])} of {GEMM_ROUNDS}")

    def rows(self) -> list[list[float]]:
        """[[m, k, n, FLOPs, seconds], ...]: each shape's median over the passes run."""
        return [[m, k, n, 2.0 * m * k * n, statistics.median(p)] for (m, k, n), p in zip(self.shapes, self.passes,
                                                                                       strict=True)]


def bench_gemm(device: torch.device, dtype: torch.dtype, quick: bool, bar: Progress) -> list[list[float]]:
    """`GemmPasses`' rows, its passes one after another (main spreads them over the calibration)."""
    gemm = GemmPasses(device, dtype, quick)
    for _ in range(GEMM_ROUNDS):
        gemm.run_pass(bar)
    return gemm.rows()


def _time_local(fn: Any, device: torch.device, min_time: float, min_reps: int = 3) -> float:
    """Mean seconds per fn() over a window of wall time, on this rank without collectives.

    The mean over the window (not the median of single calls) is what counts when ranks outnumber
    cores: the scheduler time-slices them in quanta longer than one small op, so most single calls
    look unhindered while the throughput halves.
    """
    fn()
    sync(device)
    reps = 0
    start = time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_time:
        fn()
        sync(device)
        reps += 1
    return (time.perf_counter() - start) / reps


def _rate(fn: Any, device: torch.device, window: float) -> float:
    """Calls of fn() per second over `window` seconds of wall time (all ranks at once: their sum is
    the node's throughput, whatever the scheduler's time slices do to any one rank)."""
    fn()
    sync(device)
    reps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < window:
        fn()
        sync(device)
        reps += 1
    return reps / (time.perf_counter() - start)


class CoreSharing:
    """How much slower a GEMM runs when every rank of the node computes at once than on rank 0 alone.

    Ranks that share cores (or hyper-threads sharing one core's vector units) slow each other down;
    the cost model uses the alone numbers per op and bounds a step by the node's total work. Each round
    times one shape alone, together, alone again (a drift across the round cancels), and `main` spreads the
    rounds over the calibration as it does the GEMM passes: the ratio read 0.83-1.20 over five quick
    calibrations with the three shapes timed back to back once each (2026-12-07), where two single-threaded
    processes on the VM run 5-14% slower together (../shared/research/cpu-step-noise.md)."""

    SHAPES = 3  # GEMM_SHAPES_*[2:5], one per round

    def __init__(self, device: torch.device, dtype: torch.dtype, quick: bool) -> None:
        self.device, self.dtype, self.quick = device, dtype, quick
        self.shapes = (GEMM_SHAPES_CPU if device.type == "cpu" else GEMM_SHAPES_CUDA)[2:2 + self.SHAPES]
        self.ratios: list[float] = []

    def _alone(self, fn: Any, span: float) -> float:
        """Seconds per fn() on rank 0 while the others sleep (a rank waiting in a gloo barrier polls and
        would share the core); the slowest rank's value, 0 elsewhere, so the max is rank 0's."""
        dist.barrier()
        if dist.get_rank() == 0:
            alone = _time_local(fn, self.device, span)
        else:
            alone = 0.0
            time.sleep(span + 0.5)
        dist.barrier()
        return _max_over_ranks(alone, self.device)

    def run_round(self, bar: Progress) -> None:
        """Time the next shape (collective: every rank calls it)."""
        m, k, n = self.shapes[len(self.ratios) % len(self.shapes)]
        x = torch.randn(m, k, device=self.device, dtype=self.dtype)
        w = torch.randn(n, k, device=self.device, dtype=self.dtype)

        def fn() -> None:
            torch.mm(x, w.t())

        span = 0.1 if self.quick else 0.3
        before = self._alone(fn, span)
        rate = torch.tensor([_rate(fn, self.device, 0.3 if self.quick else 0.6)], dtype=torch.float64)
        dist.all_reduce(rate)  # the node's throughput: every rank's calls per second, summed
        after = self._alone(fn, span)
        alone = (before + after) / 2
        self.ratios.append(dist.get_world_size() / (float(rate) * alone))  # rate alone / mean rate together
        bar.step(f"core sharing, round {len(self.ratios)} of {GEMM_ROUNDS}")

    def result(self) -> dict[str, float]:
        """{"gemm_slowdown": the rounds' median ratio, "memory_bandwidth_alone": rank 0's stream alone}
        (collective)."""
        x = torch.randn((4 << 20) if self.device.type == "cpu" else (16 << 20), device=self.device, dtype=self.dtype)
        y = torch.empty_like(x)
        alone = self._alone(lambda: torch.add(x, 1.0, out=y), 0.1)
        return {"gemm_slowdown": statistics.median(self.ratios),
                "memory_bandwidth_alone": 2 * x.numel() * x.element_size() / alone}


def bench_kernels(device: torch.device, dtype: torch.dtype, quick: bool, bar: Progress) -> dict[str, float]:
    """Activation-function throughput (GELU, elements/s) and the fused attention kernel's FLOP rate
    (forward + backward, causal), all ranks at once.

    On a CPU the GELU's input cycles through COLD_OPERANDS_BYTES of tensors, beyond the last-level
    cache, as a training step's activation reads what the GEMM before it wrote to memory: on the 2-vCPU
    VM (one process, 2026-12-06) GELU forward + backward of 512 x 1024 took 0.81 ms on one hot input and
    1.35 ms cycling through 64 MB, and 1.2 ms inside a `tiny` GPT step (a dispatch mode around each op):
    its math and its memory traffic do not overlap on a core, and the hot rate had priced it at 0.78.
    The attention kernel's queries, keys, values and output gradients cycle likewise: the `tiny` GPT's
    attention (4 x 4 heads x 128 x 64) took 2.76 ms forward + backward hot, 3.0 cycled and 3.3 inside
    a step (the same VM and day)."""
    import torch.nn.functional as F

    n_inputs = operand_sets(512 * 1024 * torch.tensor([], dtype=dtype).element_size(), device)
    xs = [torch.randn(512, 1024, device=device, dtype=dtype, requires_grad=True) for _ in range(n_inputs)]
    g = torch.randn_like(xs[0])
    inputs = itertools.cycle(xs)

    def gelu() -> None:
        x = next(inputs)
        torch.autograd.grad(F.gelu(x), x, g)

    dist.barrier()
    sec = _max_over_ranks(_time(gelu, device, 0.1 if quick else 0.3), device)
    rate = xs[0].numel() * 2.5 / sec  # forward + backward (1.5x forward), as the cost model counts them
    b, heads, s, d = (4, 4, 128, 64) if device.type == "cpu" else (4, 32, 2048, 128)
    n_sets = operand_sets(4 * b * heads * s * d * xs[0].element_size(), device)  # q, k, v, output gradient
    sets = itertools.cycle([[torch.randn(b, heads, s, d, device=device, dtype=dtype, requires_grad=i < 3)
                             for i in range(4)] for _ in range(n_sets)])

    def attention() -> None:
        q, k, v, go = next(sets)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.autograd.grad(out, (q, k, v), go)

    dist.barrier()
    sec_att = _max_over_ranks(_time(attention, device, 0.1 if quick else 0.3), device)
    work = 4.0 * b * s * s * heads * d * 0.5 * (1 + 2.5)  # causal forward + backward, as the model counts
    bar.step("activation and attention kernels")
    return {"activation_rate": rate, "attention_flops_per_s": work / sec_att}


def bench_memory(device: torch.device, dtype: torch.dtype, quick: bool, bar: Progress) -> dict[str, float]:
    numel = (16 << 20) if device.type == "cuda" else (4 << 20)
    x = torch.randn(numel, device=device, dtype=dtype)
    y = torch.empty_like(x)
    if dist.is_initialized():
        dist.barrier()
    sec = _max_over_ranks(_time(lambda: torch.add(x, 1.0, out=y), device, 0.1 if quick else 0.3), device)
    bandwidth = 2 * x.numel() * x.element_size() / sec  # read x, write y
    bar.step("memory bandwidth")
    tiny = torch.ones(1, device=device, dtype=dtype)

    def loop() -> None:
        for _ in range(200):
            tiny.add_(1.0)

    op = _max_over_ranks(_time(loop, device, 0.1), device) / 200
    bar.step("kernel overhead")
    return {"bandwidth": bandwidth, "kernel_overhead_s": op}


# Working sets (bytes, input + output) of the streaming sweep that finds the last-level cache: from
# well inside a core's share of it to several times the largest share a CPU host gives one rank.
CACHE_SWEEP_BYTES = tuple(mb << 20 for mb in (4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256))


def bench_cache(device: torch.device, dtype: torch.dtype, quick: bool, bar: Progress) -> list[list[float]]:
    """Streaming rate (bytes/s) of y = x + 1 over growing working sets, all ranks at once (they share
    the cache as in training): [[working-set bytes, bytes/s], ...]. The rate falls from the cache's to
    the memory's where the sweep outgrows the cache; `planner calibrate` fits both and the capacity."""
    rows = []
    for ws in CACHE_SWEEP_BYTES:
        x = torch.randn(ws // 2 // 4, device=device, dtype=torch.float32)
        y = torch.empty_like(x)
        if dist.is_initialized():
            dist.barrier()
        sec = _max_over_ranks(_time(lambda x=x, y=y: torch.add(x, 1.0, out=y), device, 0.05 if quick else 0.15),
                              device)
        rows.append([float(ws), ws / sec])
        del x, y
    bar.step("cache and memory bandwidth")
    return rows


def _groups(world: int, size: int, stride: int) -> tuple[list[list[int]], list[Any]]:
    """Disjoint groups of `size` ranks `stride` apart covering the world; every rank creates all."""
    ranks_lists: list[list[int]] = []
    seen: set[int] = set()
    for r in range(world):
        if r in seen:
            continue
        members = [r + i * stride for i in range(size)]
        if members[-1] >= world or any(x in seen for x in members):
            continue
        seen.update(members)
        ranks_lists.append(members)
    handles = [dist.new_group(ranks) for ranks in ranks_lists]
    return ranks_lists, handles


def _collective(op: str, nbytes: int, group: Any, size: int, device: torch.device,
                dtype: torch.dtype) -> Any:
    """One call of collective `op` on `nbytes`; an `<op>_functional` name issues it as DTensor does
    (torch's functional collective: an out-of-place result, then its wait)."""
    import torch.distributed._functional_collectives as funcol

    elem = torch.tensor([], dtype=dtype).element_size()
    n = max(size, nbytes // elem // size * size)
    base = op.removesuffix(FUNCTIONAL)
    functional = base != op
    if base == "all_reduce":
        buf = torch.ones(n, device=device, dtype=dtype)
        if functional:
            return lambda: funcol.wait_tensor(funcol.all_reduce(buf, "sum", group))
        return lambda: dist.all_reduce(buf, group=group)
    if base == "all_gather":
        shard = torch.ones(n // size, device=device, dtype=dtype)
        if functional:
            return lambda: funcol.wait_tensor(funcol.all_gather_tensor(shard, 0, group))
        out = torch.empty(n, device=device, dtype=dtype)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in 2.13
        return lambda: gather(out, shard, group=group)
    if base == "reduce_scatter":
        full = torch.ones(n, device=device, dtype=dtype)
        if functional:
            return lambda: funcol.wait_tensor(funcol.reduce_scatter_tensor(full, "sum", 0, group))
        out = torch.empty(n // size, device=device, dtype=dtype)
        return lambda: dist.reduce_scatter_tensor(out, full, group=group)
    if op == "all_to_all":
        inp = torch.ones(n, device=device, dtype=dtype)
        out = torch.empty(n, device=device, dtype=dtype)
        return lambda: dist.all_to_all_single(out, inp, group=group)
    raise ValueError(op)


def collective_ops(device_type: str) -> tuple[str, ...]:
    """The collectives calibrate times; on CPU also as DTensor issues them (functional collectives cost
    more than the in-place calls on gloo)."""
    ops = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all")
    return ops + FUNCTIONAL_COLLECTIVES if device_type == "cpu" else ops


def collective_group_sizes(max_size: int) -> list[int]:
    """Group sizes timed on a link tier whose largest group has `max_size` ranks."""
    return sorted({g for g in (2, 4, 8, 16, max_size) if 2 <= g <= max_size})


def progress_total(device_type: str, world: int, local_world: int, quick: bool) -> int:
    """How many steps the progress bar of `main` counts: one per benchmark that reports (`Progress.step`)."""
    total = GEMM_ROUNDS + 2 + 1  # GEMM passes; memory bandwidth, kernel overhead; kernels
    cpu = device_type == "cpu"
    total += 2 * cpu  # cache levels, host time
    if world > 1:
        tiers = [min(world, local_world)] + ([world // local_world] if world > local_world else [])
        total += sum(len(collective_group_sizes(m)) * len(collective_ops(device_type)) + 1 for m in tiers)
        total += 1 + (1 + GEMM_ROUNDS) * cpu  # overlap; framework steps, core-sharing rounds
    return total


def retime_out_of_order(rows: list[list[float]], time_size: Any) -> list[list[float]]:
    """`rows` [[bytes, seconds], ...] ascending in bytes, with each size slower than OUT_OF_ORDER_RATIO x a
    larger size's time timed again by `time_size(index)` (up to RETIMES rounds), the lower time kept.

    Every rank must call it with the same rows (times agreed by `_max_over_ranks`), so that all of them
    re-time the same sizes in the same order."""
    out = [[b, float(t)] for b, t in rows]
    for _ in range(RETIMES):
        late = [i for i in range(len(out) - 1)
                if out[i][1] > OUT_OF_ORDER_RATIO * min(t for _, t in out[i + 1:])]
        if not late:
            break
        for i in late:
            out[i][1] = min(out[i][1], float(time_size(i)))
    return out


def bench_collectives(device: torch.device, dtype: torch.dtype, world: int, local_world: int, quick: bool,
                      bar: Progress) -> dict[str, dict[str, Any]]:
    """{tier: {op: {group size: [[bytes, seconds], ...]}}} for intra-node (and inter-node) groups; on CPU
    ranks the calls are timed in step (`_time_in_step`), and also back to back, as a burst of calls
    issued one after another runs them (ZeroRedundancyOptimizer's per-tensor broadcasts), under
    "burst": {tier: {op: ...}}."""
    rank = dist.get_rank()
    sizes = MSG_BYTES_QUICK if quick else MSG_BYTES
    result: dict[str, dict[str, Any]] = {}
    burst: dict[str, dict[str, Any]] = {}
    cpu = device.type == "cpu"

    def over_sizes(fns: list[Any], share: float = 1.0) -> tuple[list[list[float]], list[list[float]]]:
        """([[bytes, seconds], ...] in step, and back to back on CPU ranks) of fns[i], one call of each of
        `sizes`, each size slower than a larger one timed again (`retime_out_of_order`); `share`: the part
        of a call that is one transfer of the size."""
        def in_step(i: int) -> float:
            dist.barrier()
            return _max_over_ranks(_time_collective(fns[i], device, quick), device) * share

        def burst_of(i: int) -> float:
            return _max_over_ranks(_time_back_to_back(fns[i], device, quick), device) * share

        rows, rows_burst = [], []
        for i, nbytes in enumerate(sizes):
            rows.append([nbytes, in_step(i)])
            if cpu:
                rows_burst.append([nbytes, burst_of(i)])
        return retime_out_of_order(rows, in_step), retime_out_of_order(rows_burst, burst_of)
    tiers = [("intra_node", 1, min(world, local_world))]
    if world > local_world:
        tiers.append(("inter_node", local_world, world // local_world))
    ops = collective_ops(device.type)
    for tier, stride, max_size in tiers:
        group_sizes = collective_group_sizes(max_size)
        res: dict[str, Any] = {op: {} for op in (*ops, "p2p")}
        res_burst: dict[str, Any] = {op: {} for op in (*ops, "p2p")}
        for g in group_sizes:
            ranks_lists, handles = _groups(world, g, stride)
            mine = next((h for rl, h in zip(ranks_lists, handles, strict=True) if rank in rl), None)
            for op in ops:
                rows, rows_burst = over_sizes([_collective(op, nbytes, mine, g, device, dtype) if mine is not None
                                               else (lambda: None) for nbytes in sizes])
                res[op][str(g)] = rows
                if cpu:
                    res_burst[op][str(g)] = rows_burst
                bar.step(f"{tier} {op} x{g}")
        # p2p between neighbours `stride` apart: pairs send one way then the other
        partner = rank + stride if (rank // stride) % 2 == 0 else rank - stride
        elem = torch.tensor([], dtype=dtype).element_size()

        def exchange(buf: torch.Tensor, partner: int = partner) -> None:
            if 0 <= partner < world:
                if rank < partner:
                    dist.send(buf, partner)
                    dist.recv(buf, partner)
                else:
                    dist.recv(buf, partner)
                    dist.send(buf, partner)

        # one transfer of nbytes: half the exchange
        rows, rows_burst = over_sizes([functools.partial(exchange, torch.ones(max(1, nbytes // elem), device=device,
                                                                               dtype=dtype)) for nbytes in sizes],
                                      share=0.5)
        res["p2p"]["2"] = rows
        bar.step(f"{tier} p2p")
        result[tier] = res
        if cpu:
            res_burst["p2p"]["2"] = rows_burst
            burst[tier] = res_burst
    if burst:
        result["burst"] = burst
    return result


def host_model(tp: int = 2) -> dict[str, int]:
    """The executor's GPT at a size whose arithmetic is negligible (a layer's kernels move a few hundred
    bytes): its step time is the host's, Python modules, autograd and the dispatch of every op. Split
    `tp` ways (tensor and sequence parallelism), each rank holds one 4-wide head, a 16-wide MLP slice, 8
    vocabulary rows and 2 positions."""
    t = max(2, tp)
    return {"hidden": 4 * t, "num_heads": t, "ffn_hidden": 16 * t, "vocab_size": 8 * t, "seq_len": 2 * t}


HOST_MODEL = host_model()  # hidden 8, 2 heads, ffn 32, vocabulary 16, sequence 4


def _step_time(layers: int, tp: int, world: int, device: torch.device, steps: int, micro_batch: int = 4,
               optimizer: str = "adamw", model: dict[str, Any] = HOST_MODEL, **plan_sizes: Any) -> float:
    """Median training-step time of the executor's GPT at `model`'s size with `layers` layers and 4
    sequences per step, run by the executor itself with tensor parallelism `tp` (or the sizes in
    `plan_sizes`, e.g. pp=2 or dp=2 with zero_stage=3); with tp = 1 and nothing else every rank trains
    its own copy, without communication. AdamW, as the cost model prices every step."""
    from planner.plan import Plan

    plan = Plan(tp=tp, micro_batch=micro_batch, global_batch=4, dtype="fp32", **plan_sizes)
    return _plan_step_time(layers, plan, device, steps, model, optimizer)


def _plan_step_time(layers: int, plan: Any, device: torch.device, steps: int, model: dict[str, Any],
                    optimizer: str = "adamw") -> float:
    """Median training-step time of the executor's GPT at `model`'s size with `layers` layers under
    `plan` (a planner.plan.Plan), the maximum over ranks (2 warm-up steps)."""
    import dataclasses

    from executor.data import make_data
    from executor.parallel_dims import ParallelDims
    from executor.trainer import Trainer, TrainOptions
    from planner.plan import PlanDocument
    from planner.specs.catalog import localhost_cpu
    from planner.specs.model import ModelSpec

    spec = ModelSpec(name="calib", num_layers=layers, dtype="fp32", **model)
    cluster = dataclasses.replace(localhost_cpu(), gpus_per_node=plan.world_size)
    doc = PlanDocument(plan=plan, model=spec, cluster=cluster)
    dims = ParallelDims.from_plan(plan)
    mesh = dims.build_mesh(device.type) if plan.world_size > 1 else None
    trainer = Trainer(doc, dims, mesh, device, TrainOptions(optimizer=optimizer, lr=1e-3, seed=0))
    data = make_data(None, spec.vocab_size, spec.seq_len, 0, "auto")
    times = []
    for step in range(steps + 2):
        batch = trainer.batch(data, step)
        if plan.world_size > 1:
            dist.barrier()
        t0 = time.perf_counter()
        trainer.train_step(batch)
        sync(device)
        if step >= 2:
            times.append(time.perf_counter() - t0)
    return _max_over_ranks(statistics.median(times), device)


OPTIMIZER_TENSORS = 64  # parameter tensors of the DTensor optimizer benchmark


def bench_dtensor_optimizer(device: torch.device, world: int, quick: bool) -> float:
    """Host seconds per parameter tensor that an AdamW step (the executor's: torch.optim's per-tensor
    loop) spends beyond a plain tensor's when the parameter is a DTensor, as under tensor parallelism,
    FSDP2 and `replicate`: every element-wise op of the step passes through DTensor's dispatch. Timed on
    OPTIMIZER_TENSORS negligible tensors (8 x 8 per rank) plain and sharded over all ranks, in alternating
    rounds; the median difference. On the 2-vCPU VM: 23 us per plain tensor, 140 per DTensor
    (2026-12-06), i.e. 8 ms of the `tiny` GPT's 68 tensors a step."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    mesh = init_device_mesh(device.type, (world,))

    def optimizer(dtensor: bool) -> Any:
        params = [torch.nn.Parameter(distribute_tensor(torch.randn(8 * world, 8, device=device), mesh, [Shard(0)])
                                     if dtensor else torch.randn(8, 8, device=device))
                  for _ in range(OPTIMIZER_TENSORS)]
        for p in params:
            p.grad = torch.randn_like(p)
        return torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)  # the executor's

    plain, sharded = optimizer(False), optimizer(True)
    extra = []
    for _ in range(3 if quick else 5):
        dist.barrier()
        t_plain = _time_local(plain.step, device, 0.02)
        t_sharded = _time_local(sharded.step, device, 0.02)
        extra.append(max(0.0, t_sharded - t_plain) / OPTIMIZER_TENSORS)
    return _max_over_ranks(statistics.median(extra), device)


def bench_framework_steps(device: torch.device, world: int, quick: bool, bar: Progress) -> dict[str, Any]:
    """The host time of each parallel layout, measured where it is all there is: executor steps of
    HOST_MODEL (negligible arithmetic, a few hundred bytes per collective) under tensor parallelism
    (tp = world, 1 and `layers` layers), tensor + sequence parallelism, ZeRO-3 (dp = world) and a
    pipeline (pp = world, 4 micro-batches). Rounds interleave the five so that a drift of the machine's
    speed shifts all alike; the median round counts. `planner calibrate` fits TP's host time per layer
    and micro-batch, SP's and FSDP's per layer and the pipeline schedule's per micro-batch as what these
    steps take beyond the profile's price of them (their ops and collective latencies), after the
    optimizer's per-tensor DTensor cost (`bench_dtensor_optimizer`), which the steps also pay."""
    from planner.calibrate import framework_step_plans

    steps = 3 if quick else 4  # per round; each step's median over them, the rounds' median
    model = host_model(world)
    runs = framework_step_plans(world)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(3 if quick else 5):
        for key, (n, plan) in runs.items():
            dist.barrier()
            # the pipelined step is the shortest (~10 ms): more of them for the same timing resolution
            n_steps = 6 * steps if key == "pp_host_step_s" else steps
            times[key].append(_plan_step_time(n, plan, device, n_steps, model))
    dtensor = bench_dtensor_optimizer(device, world, quick)
    bar.step("tensor-parallel, sequence-parallel, FSDP and pipeline host time")
    return {"layers": runs["tp_host_step_s"][0], "world": world, "host_model": model,
            "dtensor_optimizer_tensor_s": dtensor,
            **{k: _max_over_ranks(statistics.median(v), device) for k, v in times.items()}}


def bench_host(device: torch.device, world: int, quick: bool, bar: Progress) -> dict[str, Any]:
    """Host time per layer and per micro-batch: executor steps of HOST_MODEL (negligible arithmetic)
    with 1 and 5 layers and with 4 micro-batches of 1 sequence, every rank training its own copy at
    once (as ranks share the node in training). Rounds alternate the three so that a drift of the
    machine's speed shifts all alike; the median round counts."""
    rounds, steps = (3, 10) if quick else (5, 20)
    times: dict[str, list[float]] = {"step_1layer_s": [], "step_5layers_s": [], "step_1layer_4microbatches_s": []}
    for _ in range(rounds):
        for key, layers, mb in (("step_1layer_s", 1, 4), ("step_5layers_s", 5, 4),
                                ("step_1layer_4microbatches_s", 1, 1)):
            dist.barrier()
            times[key].append(_step_time(layers, 1, world, device, steps, micro_batch=mb, model=HOST_MODEL))
    bar.step("host time per layer and micro-batch")
    return {"host_model": HOST_MODEL, **{k: statistics.median(v) for k, v in times.items()}}


def bench_overlap(device: torch.device, dtype: torch.dtype, quick: bool, bar: Progress) -> dict[str, float]:
    """Slowdown of a GEMM while an all-reduce runs beside it (communication steals compute).

    The all-reduce is sized to take about half the GEMM's time (on a CPU, 16 MB), so the extra time
    of running both stands well above the timing noise; the GEMM alone, the all-reduce alone and
    both together are timed in interleaved rounds (medians), so a drift of the machine's speed
    shifts all three alike."""
    n = 1024 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    buf = torch.ones((4 << 20) if device.type == "cpu" else (64 << 20), device=device, dtype=dtype)

    def gemm() -> None:
        torch.mm(a, b)

    def comm() -> None:
        dist.all_reduce(buf)

    def both() -> None:
        work = dist.all_reduce(buf, async_op=True)
        torch.mm(a, b)
        work.wait()

    def once(fn: Any) -> float:
        dist.barrier()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        return time.perf_counter() - t0

    for fn in (gemm, comm, both):  # warm up
        once(fn)
    first = _max_over_ranks(once(both), device)
    rounds = int(min(50, max(5, (0.3 if quick else 0.9) / max(2 * first, 1e-9))))
    times: dict[Any, list[float]] = {gemm: [], comm: [], both: []}
    for _ in range(rounds):
        for fn in (gemm, comm, both):
            times[fn].append(once(fn))
    t_gemm, t_comm, t_both = (_max_over_ranks(statistics.median(times[fn]), device) for fn in (gemm, comm, both))
    bar.step("overlap")
    extra = max(0.0, t_both - max(t_gemm, t_comm))
    return {"gemm_s": t_gemm, "comm_s": t_comm, "both_s": t_both,
            "slowdown": min(1.0, extra / max(min(t_gemm, t_comm), 1e-12))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="executor.calibration")
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    device, backend = pick_device(args.device, local_rank)
    if device.type == "cpu":
        torch.set_num_threads(1)
    kwargs: dict[str, Any] = {"timeout": _dt.timedelta(seconds=args.timeout)}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(backend, **kwargs)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    bar = Progress(progress_total(device.type, world, local_world, args.quick), enabled=rank == 0)
    try:
        # the speed probe before and after every benchmark: what `planner.speed` compares a run's own
        # probe with, to tell the machine's drift from the model's error
        probe_before = measure_speed(device)
        # the GEMM passes and core-sharing rounds at the start, middle and end (GemmPasses, CoreSharing)
        gemm = GemmPasses(device, dtype, args.quick)
        cores = CoreSharing(device, dtype, args.quick) if world > 1 and device.type == "cpu" else None

        def spread_round() -> None:
            gemm.run_pass(bar)
            if cores is not None:
                cores.run_round(bar)

        spread_round()
        raw = {
            "memory": bench_memory(device, dtype, args.quick, bar),
            "cache": bench_cache(device, dtype, args.quick, bar) if device.type == "cpu" else [],
            "collectives": bench_collectives(device, dtype, world, local_world, args.quick, bar)
            if world > 1 else {},
            "overlap": bench_overlap(device, dtype, args.quick, bar) if world > 1 else {},
        }
        spread_round()
        raw["kernels"] = bench_kernels(device, dtype, args.quick, bar)
        raw["host"] = bench_host(device, world, args.quick, bar) if device.type == "cpu" else {}
        raw["framework"] = (bench_framework_steps(device, world, args.quick, bar)
                            if world > 1 and device.type == "cpu" else {})
        spread_round()
        # GEMM_ROUNDS (3) rounds in all: the start, middle and end; progress_total counts them
        assert len(gemm.passes[0]) == GEMM_ROUNDS, "spread_round() must run GEMM_ROUNDS times"
        raw["gemm"] = gemm.rows()
        raw["gemm_passes"] = gemm.passes  # each shape's seconds in each pass: how far the machine moved
        raw["contention"] = cores.result() if cores is not None else {}
        probe_after = measure_speed(device)
        raw["speed_probe"] = probe_record(probe_before, probe_after)
        if rank == 0:
            name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
                platform.processor() or platform.machine())
            raw["env"] = {"host": socket.gethostname(), "device": name, "device_type": device.type,
                          "backend": backend, "torch": torch.__version__, "world_size": world,
                          "local_world_size": local_world, "nnodes": max(1, world // local_world),
                          "cpu_count": os.cpu_count(), "dtype": str(dtype).replace("torch.", ""),
                          "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                          "quick": args.quick}
            if device.type == "cuda":
                raw["env"]["memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
                raw["env"]["num_sms"] = torch.cuda.get_device_properties(device).multi_processor_count
            atomic_write_json(args.out, raw)
        return 0
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    exit_rank(main())
