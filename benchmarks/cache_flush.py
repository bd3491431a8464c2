"""Does a training step's data survive in a CPU host's cache between uses? (docs/cost-model.md §2)

Three measurements on one process, one thread, each a median over alternating rounds:

1. Training steps of GPTs (the executor's model, AdamW), with and without a write sweep over a buffer
   larger than the last-level cache share between each micro-batch's forward and its backward. If the
   activations and weights a backward reads were still in cache, the sweep would slow it.
2. The GEMMs of the `tiny` GPT's steps, timed inside the step (a dispatch mode around each mm / addmm)
   against the same shapes called alone with their operands hot: whether a step's GEMMs pay for
   fetching operands the step evicted.
3. Those GEMMs alone right after a 64 MB sweep and after the `--sweep-mb` one.

    python benchmarks/cache_flush.py [--sweep-mb 512] [--rounds 9]

The cost model reads the answer: a training step streams from memory (`planner.cost.terms`), and
`planner calibrate` times a CPU's GEMMs on operands cycling through 64 MB, so that what a step pays
for fetching them is in the calibrated curve (`executor.calibration.LinearLayerStep`,
`planner.cost.compute.gemm_op_times`).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from executor.model import Transformer, init_weights
from executor.speed_probe import median_seconds
from planner.specs.catalog import model_preset

# (layers, hidden, ffn, micro-batch): the tiny GPT at one and four sequences, and two smaller GPTs
# whose whole state is a few MB.
MODELS = [(4, 256, 1024, 1), (4, 256, 1024, 4), (2, 128, 512, 1), (1, 128, 512, 1)]


def step_times(layers: int, hidden: int, ffn: int, micro_batch: int, sweep: torch.Tensor,
               rounds: int) -> tuple[float, float, int]:
    """Median seconds of a step without and with the sweep between forward and backward (the
    sweep's own time excluded), and the model's parameter count."""
    spec = dataclasses.replace(model_preset("tiny"), num_layers=layers, hidden=hidden, ffn_hidden=ffn)
    torch.manual_seed(0)
    model = Transformer(spec, True)
    init_weights(model, spec, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    tokens = torch.randint(0, spec.vocab_size, (micro_batch, spec.seq_len))

    def step(flush: bool) -> float:
        start = time.perf_counter()
        out = model(tokens)
        loss = nn.functional.cross_entropy(out.flatten(0, 1), tokens.flatten())
        swept = 0.0
        if flush:
            t = time.perf_counter()
            sweep.add_(1.0)
            swept = time.perf_counter() - t
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - start - swept

    for _ in range(3):
        step(False)
    plain, flushed = [], []
    for _ in range(rounds):
        plain.append(step(False))
        flushed.append(step(True))
    return statistics.median(plain), statistics.median(flushed), sum(p.numel() for p in model.parameters())


def in_step_gemms(micro_batch: int, rounds: int) -> dict[tuple, list[float]]:
    """Seconds of each mm / addmm call inside training steps of the `tiny` GPT, by (op, operand shapes
    and strides)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    spec = model_preset("tiny")
    torch.manual_seed(0)
    model = Transformer(spec, True)
    init_weights(model, spec, 0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    tokens = torch.randint(0, spec.vocab_size, (micro_batch, spec.seq_len))
    calls: dict[tuple, list[float]] = {}

    class Timed(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            kwargs = kwargs or {}
            if func not in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
                return func(*args, **kwargs)
            t = time.perf_counter()
            out = func(*args, **kwargs)
            operands = tuple((tuple(a.shape), tuple(a.stride())) for a in args if isinstance(a, torch.Tensor))
            key = (func.__name__, operands)
            calls.setdefault(key, []).append(time.perf_counter() - t)
            return out

    def step() -> None:
        out = model(tokens)
        nn.functional.cross_entropy(out.flatten(0, 1), tokens.flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    with Timed():
        for _ in range(rounds):
            step()
    return calls


def hot_time(key: tuple, rounds: int) -> float:
    """Median seconds of one call of `key`'s op on fresh operands of its shapes and strides, hot."""
    name, operands = key
    args = [torch.empty_strided(shape, stride).normal_() for shape, stride in operands]
    fn = getattr(torch.ops.aten, name.split(".")[0])
    return median_seconds(lambda: fn(*args), torch.device("cpu"), rounds * 3)


def gemm_times(m: int, k: int, n: int, sweeps: list[torch.Tensor], rounds: int) -> list[tuple[str, float, list[float]]]:
    """(role, hot seconds, seconds right after each sweep) of a linear layer's three GEMMs."""
    x, w, g, b = torch.randn(m, k), torch.randn(n, k), torch.randn(m, n), torch.zeros(n)
    roles = [("forward", lambda: torch.addmm(b, x, w.t())), ("input gradient", lambda: torch.mm(g, w)),
             ("weight gradient", lambda: torch.mm(g.t(), x))]
    out = []
    for role, fn in roles:
        hot: list[float] = []
        cold: list[list[float]] = [[] for _ in sweeps]
        for _ in range(rounds * 3):
            t = time.perf_counter()
            fn()
            hot.append(time.perf_counter() - t)
            for i, sweep in enumerate(sweeps):
                sweep.add_(1.0)
                t = time.perf_counter()
                fn()
                cold[i].append(time.perf_counter() - t)
        out.append((role, statistics.median(hot), [statistics.median(c) for c in cold]))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sweep-mb", type=int, default=512, help="size of the buffer the sweep writes")
    ap.add_argument("--rounds", type=int, default=9, help="alternating rounds per measurement")
    args = ap.parse_args(argv)
    if args.sweep_mb < 1 or args.rounds < 1:
        print("cache_flush: --sweep-mb and --rounds must be at least 1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    sweep = torch.empty(args.sweep_mb * 2**20 // 4)
    print(f"Training steps, with and without a {args.sweep_mb} MB write sweep between forward and backward "
          f"(median of {args.rounds} alternating rounds):\n")
    print("| GPT | parameters | micro-batch | step ms | with the sweep ms | ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for layers, hidden, ffn, mb in MODELS:
        plain, flushed, params = step_times(layers, hidden, ffn, mb, sweep, args.rounds)
        print(f"| {layers} layers x {hidden} (ffn {ffn}) | {params / 1e6:.2f} M | {mb} | {plain * 1e3:.2f} | "
              f"{flushed * 1e3:.2f} | {flushed / plain:.3f} |")
    for mb in (1, 4):
        calls = in_step_gemms(mb, args.rounds)
        inside = sum(statistics.median(v) * len(v) for v in calls.values()) / args.rounds
        alone = sum(hot_time(k, args.rounds) * len(v) for k, v in calls.items()) / args.rounds
        print(f"\nThe `tiny` GPT's GEMMs at {mb} sequence(s) per step: {inside * 1e3:.1f} ms per step timed inside "
              f"the step, {alone * 1e3:.1f} ms for the same calls alone with hot operands (ratio {inside / alone:.3f})")
    small = torch.empty(64 * 2**20 // 4)
    print(f"\nThe `tiny` GPT's GEMMs at one sequence of 128 tokens, hot and right after a 64 MB and a "
          f"{args.sweep_mb} MB sweep (median of {args.rounds * 3}):\n")
    print(f"| shape (tokens x in x out) | GEMM | hot us | after 64 MB us | after {args.sweep_mb} MB us |")
    print("| --- | --- | ---: | ---: | ---: |")
    for m, k, n in ((128, 256, 1024), (128, 1024, 256), (128, 256, 256)):
        for role, hot, cold in gemm_times(m, k, n, [small, sweep], args.rounds):
            print(f"| {m} x {k} x {n} | {role} | {hot * 1e6:.0f} | {cold[0] * 1e6:.0f} | {cold[1] * 1e6:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
