"""torchrun entry point: train a plan for a few steps on every rank and write `measured.json`.

    torchrun --standalone --nproc-per-node 4 -m executor.run --plan plan.json --steps 10 --warmup 3

`--steps` counts timed steps, run after `--warmup` untimed ones. Backend and device come from the
environment: NCCL + one CUDA device per local rank when GPUs are present, gloo + CPU otherwise
(`--device` overrides). Bad input (unreadable plan, wrong world size, unsupported features) is one
line on stderr and exit status 2; a failure while training is exit status 1 and, where rank 0 can
still write, a `"status": "failed"` measured.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

from executor.errors import ResourceMismatch, UnsupportedPlan
from executor.options import (
    DEFAULT_TIMEOUT_S,
    OPTIMIZERS,
    default_out,
)
from executor.parallel_dims import ParallelDims
from executor.trainer import TrainOptions
from planner.errors import PlannerError
from planner.io import atomic_write_json, load_json
from planner.plan import PlanDocument, load_plan, plan_hash


def check_executable(doc: PlanDocument) -> None:
    """Raise UnsupportedPlan for what this executor cannot run (checked before any process starts)."""
    ParallelDims.from_plan(doc.plan).check_supported()
    if doc.model.head != "lm":
        raise UnsupportedPlan(f"model {doc.model.name!r} has an {doc.model.head!r} head; the executor runs "
                              "decoder language models only", field="model.head")


def load_checked(path: str | Path) -> tuple[PlanDocument, dict[str, Any]]:
    """The plan document and its raw JSON (for the hash), or a PlannerError."""
    doc = load_plan(path)
    check_executable(doc)
    raw = load_json(path)
    return doc, raw[0] if isinstance(raw, list) else raw


def add_worker_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--plan", required=True, nargs="+", help="plan JSON(s) written by `planner plan`")
    ap.add_argument("--steps", type=int, default=10, help="timed steps (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps")
    ap.add_argument("--data", default=None, help="text file to train on (default: synthetic tokens)")
    ap.add_argument("--tokenizer", default="auto", choices=("auto", "byte", "char"))
    ap.add_argument("--profile", action="store_true", help="write a torch.profiler Chrome trace per rank")
    ap.add_argument("--out", default=None, nargs="+", help="measured.json path per plan (default: beside it)")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per rank (default 1 on CPU)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="collective timeout, seconds")
    ap.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--run-id", default="", help="echoed into measured.json (the launcher's handle)")


def pick_device(choice: str, local_rank: int) -> tuple[torch.device, str]:
    """(device, backend): CUDA + NCCL when asked or available, else CPU + gloo."""
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise UnsupportedPlan("--device cuda but no CUDA device is available", field="device")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), "nccl"
    return torch.device("cpu"), "gloo"


def check_args(args: argparse.Namespace) -> None:
    if args.steps < 1:
        raise UnsupportedPlan(f"must be >= 1, got {args.steps}", field="steps")
    if args.warmup < 0:
        raise UnsupportedPlan(f"must be >= 0, got {args.warmup}", field="warmup")
    if args.threads is not None and args.threads < 1:
        raise UnsupportedPlan(f"must be >= 1, got {args.threads}", field="threads")
    if not args.timeout > 0:
        raise UnsupportedPlan(f"must be > 0 seconds, got {args.timeout}", field="timeout")
    if not args.lr > 0:
        raise UnsupportedPlan(f"must be > 0, got {args.lr}", field="lr")


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def main(argv: list[str] | None = None) -> int:
    """Run one plan, or several in turn within one process group (`--plan a.json b.json --out ...`):
    `planner validate` measures many plans per launch so torch's start-up is paid once."""
    ap = argparse.ArgumentParser(prog="executor.run", description=__doc__.split("\n\n")[0])
    add_worker_arguments(ap)
    args = ap.parse_args(argv)
    rank, world = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    local_world = _env_int("LOCAL_WORLD_SIZE", world)
    nnodes = _env_int("GROUP_WORLD_SIZE", max(1, world // max(1, local_world)))
    jobs = []
    try:
        check_args(args)
        outs = args.out or [None] * len(args.plan)
        if len(outs) != len(args.plan):
            raise UnsupportedPlan(f"{len(args.plan)} plans but {len(outs)} --out paths", field="out")
        from executor.data import make_data

        for plan_path, out_path in zip(args.plan, outs, strict=True):
            doc, raw = load_checked(plan_path)
            if doc.plan.world_size != world:
                raise ResourceMismatch(f"the plan needs {doc.plan.world_size} processes (tp*cp*dp*pp = "
                                       f"{doc.plan.tp}*{doc.plan.cp}*{doc.plan.dp}*{doc.plan.pp}) but "
                                       f"{world} were started", field="world_size")
            data = make_data(args.data, doc.model.vocab_size, doc.model.seq_len, args.seed, args.tokenizer)
            job_args = argparse.Namespace(**{**vars(args), "plan": plan_path})
            jobs.append((job_args, doc, raw, data, Path(out_path) if out_path else default_out(plan_path)))
        device, backend = pick_device(args.device, local_rank)
    except PlannerError as exc:
        if rank == 0:
            print(f"executor.run: error: {exc}", file=sys.stderr)
        return 2
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else
                                                            torch.get_num_threads())
    if device.type == "cpu" or args.threads is not None:
        torch.set_num_threads(threads)
    import gc

    import torch.distributed as dist

    if world > 1 or "MASTER_ADDR" in os.environ:
        kwargs: dict[str, Any] = {"timeout": _dt.timedelta(seconds=args.timeout)}
        if device.type == "cuda":
            kwargs["device_id"] = device
        dist.init_process_group(backend, **kwargs)
    ctx: dict[str, Any] = {}
    try:
        for job_args, doc, raw, data, out in jobs:
            ctx = {"args": job_args, "doc": doc, "raw": raw, "device": device, "backend": backend,
                   "world": world, "rank": rank, "nnodes": nnodes, "threads": threads, "out": out, "data": data}
            result = train_and_measure(ctx)
            if rank == 0:
                atomic_write_json(out, result)
                print(f"executor.run: wrote {out}", flush=True)
            gc.collect()
            if dist.is_initialized():
                dist.barrier()
        return 0
    except Exception as exc:
        print(f"executor.run: rank {rank} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc()
        if rank == 0 and ctx:
            with contextlib.suppress(Exception):  # the report must not hide the failure itself
                atomic_write_json(ctx["out"], failed_document(ctx, f"{type(exc).__name__}: {exc}"))
        sys.stderr.flush()
        os._exit(1)  # other ranks may be blocked in a collective; torchrun tears the group down
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _header(ctx: dict[str, Any]) -> dict[str, Any]:
    args, doc = ctx["args"], ctx["doc"]
    from executor.measure import SCHEMA_VERSION, environment

    head: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "kind": "measured", "status": "ok",
        "plan_hash": plan_hash(ctx["raw"]), "plan_file": str(Path(args.plan).resolve()),
        "plan": doc.plan.describe(), "run_id": args.run_id,
        "steps_requested": args.steps, "warmup": args.warmup,
        "env": environment(ctx["device"], ctx["backend"], ctx["world"], ctx["nnodes"], ctx["threads"]),
    }
    if doc.prediction:
        keys = ("step_time_s", "tokens_per_s", "memory_gib_per_gpu")
        head["predicted"] = {k: doc.prediction[k] for k in keys if k in doc.prediction}
    return head


def failed_document(ctx: dict[str, Any], error: str) -> dict[str, Any]:
    d = _header(ctx)
    d["status"] = "failed"
    d["error"] = error
    return d


def train_and_measure(ctx: dict[str, Any]) -> dict[str, Any]:
    """Build the trainer, run warm-up + timed steps, reduce over ranks; returns measured.json."""
    from executor.measure import (
        ActivationMeter,
        reduce_losses,
        reduce_max,
        rss_bytes,
        stats,
        timed,
    )
    from executor.trainer import Trainer

    args, doc, device, world = ctx["args"], ctx["doc"], ctx["device"], ctx["world"]
    dims = ParallelDims.from_plan(doc.plan)
    mesh = dims.build_mesh(device.type) if world > 1 else None
    options = TrainOptions(optimizer=args.optimizer, lr=args.lr, seed=args.seed)
    trainer = Trainer(doc, dims, mesh, device, options)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the peak of training, not of initialisation
    meter = ActivationMeter(trainer.parts, trainer.parameters())
    data = ctx["data"]

    total = args.warmup + args.steps
    measure_step = 0  # the first step (a warm-up step unless --warmup 0) carries the memory hooks
    losses: list[float] = []
    valid: list[bool] = []
    times: list[float] = []
    profiler = None
    for step in range(total):
        if step == args.warmup and args.profile:
            profiler = _start_profiler(device)
        batch = trainer.batch(data, step)
        measuring = step == measure_step
        if measuring:
            meter.arm()
        (loss, has_loss), seconds = timed(
            lambda b=batch, rec=measuring: trainer.train_step(b, record_grads=rec), device, world)
        if measuring:
            meter.disarm()
        losses.append(float(loss))
        valid.append(has_loss)
        if step >= args.warmup:
            times.append(seconds)
    trace = None
    if profiler is not None:
        profiler.stop()
        trace = ctx["out"].with_name(f"{ctx['out'].stem}.trace.rank{ctx['rank']}.json")
        profiler.export_chrome_trace(str(trace))

    step_times = reduce_max(times, world)
    losses = reduce_losses(losses, valid, world)
    weights, grads, opt = trainer.weights_bytes(), trainer.grads_bytes, trainer.optimizer_bytes()
    act, act_peak = meter.activations_bytes, meter.peak_bytes
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else weights + grads + opt + act_peak
    _, rss_peak = rss_bytes()
    mem = reduce_max([peak, weights, grads, opt, act, act_peak, rss_peak, meter.max_in_flight], world)
    s = stats(step_times)
    plan = doc.plan
    result = _header(ctx)
    result.update({
        "step_times_s": step_times,
        "losses": losses,
        "step_time_s": s,
        "tokens_per_s": plan.global_batch * doc.model.seq_len / s["median"],
        "memory": {
            "peak_bytes": int(mem[0]), "weights_bytes": int(mem[1]), "grads_bytes": int(mem[2]),
            "optimizer_bytes": int(mem[3]), "activations_bytes": int(mem[4]),
            "activations_peak_bytes": int(mem[5]), "rss_bytes": int(mem[6]),
            "max_microbatches_in_flight": int(mem[7]),
        },
        "executor": {
            "data_parallel": trainer.dp_description,
            "expert_parallel": (f"ep{dims.ep}: {doc.model.num_experts // dims.ep} experts per rank, "
                                "all-to-all dispatch") if dims.ep > 1 else "none",
            "precision": "bf16 autocast" if trainer.amp is not None else "fp32",
            "optimizer": args.optimizer, "lr": args.lr, "seed": args.seed,
            "data": str(Path(args.data).resolve()) if args.data else "synthetic",
            "global_batch": plan.global_batch, "micro_batch": plan.micro_batch,
            "grad_accum": plan.grad_accum, "seq_len": doc.model.seq_len,
            "profile_trace_rank0": str(trace.with_name(f"{ctx['out'].stem}.trace.rank0.json"))
            if trace else None,
        },
    })
    return result


def _start_profiler(device: torch.device):
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=acts)
    prof.start()
    return prof


if __name__ == "__main__":
    sys.exit(main())
