"""Executor overhead: a tp=pp=dp=1 plan vs a plain hand-written PyTorch loop, side by side.

Both train the same model (the `tiny` preset unless --model) on the same batches with AdamW, fp32,
one thread. Steps alternate between the two in one process (which side goes first alternates too),
so host noise hits both alike. The executor step is timed exactly as `executor.run` times it
(a barrier, then the step; barriers are no-ops for one rank); the baseline with perf_counter.
Target: executor median within 5% of the baseline median.

    python benchmarks/bench_executor.py [--model tiny] [--steps 20] [--warmup 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
import torch
import torch.nn.functional as F

from executor.data import SyntheticData
from executor.measure import timed
from executor.model import build_model
from executor.parallel_dims import ParallelDims
from executor.plans import local_plan
from executor.trainer import Trainer, TrainOptions
from planner.specs.catalog import model_preset


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    spec = model_preset(args.model).__class__(**{**model_preset(args.model).to_dict(), "dtype": "fp32"})
    doc = local_plan(spec, micro_batch=args.micro_batch, global_batch=args.global_batch)
    data = SyntheticData(spec.vocab_size, spec.seq_len, seed=0)
    device = torch.device("cpu")

    trainer = Trainer(doc, ParallelDims.from_plan(doc.plan), None, device, TrainOptions(lr=3e-4))

    # The hand-written loop: model, AdamW with the same hyper-parameters, micro-batch accumulation.
    model = build_model(spec, doc.plan.flash_attention, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    mb, ga = doc.plan.micro_batch, doc.plan.grad_accum

    def plain_step(batch: torch.Tensor) -> float:
        x, y = batch[:, :-1], batch[:, 1:]
        total = 0.0
        for i in range(ga):
            logits = model(x[i * mb:(i + 1) * mb])
            loss = F.cross_entropy(logits.flatten(0, 1), y[i * mb:(i + 1) * mb].flatten()) / ga
            loss.backward()
            total += loss.item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return total

    base_t, exec_t, base_loss, exec_loss = [], [], [], []
    for step in range(args.warmup + args.steps):
        batch = data.rows(step, 0, doc.plan.global_batch)
        local = trainer.batch(data, step)  # this replica's rows (all of them: dp = 1), as executor.run

        def run_plain(b: torch.Tensor = batch) -> tuple[float, float]:
            t0 = time.perf_counter()
            loss = plain_step(b)
            return loss, time.perf_counter() - t0

        def run_exec(b: torch.Tensor = local) -> tuple[float, float]:
            (loss, _), seconds = timed(lambda: trainer.train_step(b), device, 1)
            return float(loss), seconds

        if step % 2:  # alternate which side goes first, so neither always follows the other
            (le, te), (lb, tb) = run_exec(), run_plain()
        else:
            (lb, tb), (le, te) = run_plain(), run_exec()
        if step >= args.warmup:
            base_t.append(tb)
            exec_t.append(te)
        base_loss.append(lb)
        exec_loss.append(le)

    def row(name: str, t: list[float]) -> str:
        a = np.asarray(t) * 1e3
        return (f"{name:<22} median {np.median(a):8.1f} ms   p10 {np.percentile(a, 10):8.1f}   "
                f"p90 {np.percentile(a, 90):8.1f}")

    ratio = float(np.median(exec_t) / np.median(base_t))
    print(f"model {spec.name}: {spec.params / 1e6:.2f}M params, global batch {doc.plan.global_batch} x seq "
          f"{spec.seq_len}, micro-batch {mb} (x{ga}), AdamW fp32, {args.threads} thread(s), torch "
          f"{torch.__version__}; {args.steps} timed steps each after {args.warmup} warm-up, interleaved")
    print(row("hand-written loop", base_t))
    print(row("executor (tp=pp=dp=1)", exec_t))
    paired = float(np.median(np.asarray(exec_t) / np.asarray(base_t)))
    print(f"ratio executor/hand-written (median): {ratio:.3f}  ({(ratio - 1) * 100:+.1f}%, target within 5%)")
    print(f"paired ratio (median over steps of executor/hand-written, robust to host drift): {paired:.3f}")
    print(f"final loss: hand-written {base_loss[-1]:.5f}, executor {exec_loss[-1]:.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
