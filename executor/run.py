"""torchrun entry point: train a plan for a few steps on every rank and write `measured.json`.

    torchrun --standalone --nproc-per-node 4 -m executor.run --plan plan.json --steps 10 --warmup 3

`--steps` counts timed steps, run after `--warmup` untimed ones. Backend and device come from the
environment: NCCL + one CUDA device per local rank when GPUs are present, gloo + CPU otherwise
(`--device` overrides). Bad input (unreadable plan, wrong world size, unsupported features) is one
line on stderr and exit status 2; a failure while training is exit status 1.

Faults (see executor/ledger.py): rank 0 persists measured.json after every step (`"running"`), so a
crash loses nothing already measured; a rank that fails writes `"failed"` with its error (the
launcher does it when rank 0 itself died). Every collective has the `--timeout`; each step starts
with a monitored barrier, so a hung rank is named ("rank 1 did not reach step 3 within 10 s").
`--checkpoint-every K` saves a torch.distributed.checkpoint every K steps; when torchrun restarts the
ranks (`--max-restarts`), they resume from the newest verified checkpoint and measured.json keeps
every completed step once (re-run steps' earlier measurements go to `discarded_steps`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import math
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

from executor import faults
from executor.context_parallel import check_cp
from executor.errors import ResourceMismatch, UnsupportedPlan
from executor.ledger import Ledger, mark_failed, read_run
from executor.options import (
    DEFAULT_TIMEOUT_S,
    OPTIMIZERS,
    default_out,
)
from executor.parallel_dims import ParallelDims
from executor.rank_exit import exit_rank
from executor.trainer import TrainOptions
from planner.cost.memory import kept_by_layer_order
from planner.errors import PlannerError
from planner.io import atomic_write_json, load_json
from planner.plan import PlanDocument, load_plan, plan_hash
from planner.precision import recipe


def check_executable(doc: PlanDocument) -> None:
    """Raise UnsupportedPlan for what this executor cannot run (checked before any process starts)."""
    if doc.plan.folded:
        raise UnsupportedPlan(f"the executor runs experts over the layer's tensor-parallel ranks only (etp = tp); "
                              f"etp {doc.plan.expert_tp} < tp {doc.plan.tp} is planned, estimated and exported "
                              "(Megatron-Core's --expert-tensor-parallel-size), not run here", field="etp")
    ParallelDims.from_plan(doc.plan).check_supported()
    check_cp(doc.model, doc.plan)
    if doc.model.head != "lm":
        raise UnsupportedPlan(f"model {doc.model.name!r} has an {doc.model.head!r} head; the executor runs "
                              "decoder language models only", field="model.head")
    if doc.model.position == "alibi":
        raise UnsupportedPlan(f"model {doc.model.name!r} uses ALiBi positions; the executor builds learned or "
                              "rotary positions only (plan and estimate it, not run here)", field="model.position")
    if doc.model.mtp_layers and doc.plan.pp > 1:
        raise UnsupportedPlan("the executor runs multi-token prediction without pipeline parallelism only "
                              "(its last stage would need the token ids); plan and export it, or set mtp_layers 0",
                              field="pp")
    if doc.plan.finetune == "lora" and (doc.plan.tp > 1 or doc.plan.ep > 1):
        raise UnsupportedPlan("the executor runs LoRA plans with tp = 1 and no expert parallelism for now",
                              field="finetune")
    if kept_by_layer_order(doc.plan.recompute) and (doc.model.is_moe or doc.plan.finetune == "lora"):
        raise UnsupportedPlan(f"the executor runs recompute {doc.plan.recompute} on dense models without LoRA "
                              "only (it picks the matmuls to keep by their order in a dense block)",
                              field="recompute")
    if recipe(doc.plan.dtype).low_precision:
        raise UnsupportedPlan(f"the executor does not run {doc.plan.dtype} training yet (it needs FP8/FP4 "
                              "GEMM kernels); plan, estimate and export it, or run it with --dtype bf16",
                              field="dtype")


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
    ap.add_argument("--run-id", default="", help="echoed into measured.json (the launcher's handle; default: "
                    "torchrun's TORCHELASTIC_RUN_ID)")
    ap.add_argument("--checkpoint-every", type=int, default=0,
                    help="save a torch.distributed.checkpoint every K steps; a restarted attempt resumes from "
                         "the newest (0: off)")
    ap.add_argument("--checkpoint-dir", default=None,
                    help="where checkpoints go (default: <out>.checkpoints/<run id> beside measured.json)")


def pick_device(choice: str, local_rank: int) -> tuple[torch.device, str]:
    """(device, backend): CUDA + NCCL when asked or available, else CPU + gloo."""
    use_cuda = choice == "cuda" or (choice == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise UnsupportedPlan("--device cuda but no CUDA device is available", field="device")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank), "nccl"
    return torch.device("cpu"), "gloo"


MAX_TIMEOUT_S = 7 * 24 * 3600  # a collective hung longer than a week is not waiting for anything


MAX_STEPS = 100_000
"""Steps (timed + warm-up) one measurement may run: measured.json keeps and rewrites every step's time
and loss after each step, so the bound keeps that file and its rewrites small (a 100,000-step run at
10 ms a step is 17 minutes; longer training belongs to a training framework)."""


def check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.steps <= MAX_STEPS:
        raise UnsupportedPlan(f"must be in 1..{MAX_STEPS:,}, got {args.steps}", field="steps")
    if not 0 <= args.warmup <= MAX_STEPS - args.steps:
        raise UnsupportedPlan(f"must be >= 0 and --steps + --warmup at most {MAX_STEPS:,}, got {args.warmup}",
                              field="warmup")
    cpus = os.cpu_count() or 1
    if args.threads is not None and not 1 <= args.threads <= cpus:
        raise UnsupportedPlan(f"must be in 1..{cpus} (the CPUs of this node), got {args.threads}", field="threads")
    if not 0 < args.timeout <= MAX_TIMEOUT_S:  # (inf and 1e300 overflowed timedelta on every rank)
        raise UnsupportedPlan(f"must be > 0 and at most {MAX_TIMEOUT_S:,} s (7 days), got {args.timeout}",
                              field="timeout")
    if not 0 < args.lr < math.inf:
        raise UnsupportedPlan(f"must be a finite number > 0, got {args.lr}", field="lr")
    if getattr(args, "checkpoint_every", 0) < 0:
        raise UnsupportedPlan(f"must be >= 0, got {args.checkpoint_every}", field="checkpoint_every")
    faults.from_env()  # a malformed test-only fault spec is bad input too


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
    attempt = _env_int("TORCHELASTIC_RESTART_COUNT", 0)
    args.run_id = args.run_id or os.environ.get("TORCHELASTIC_RUN_ID", "")
    jobs = []
    try:
        check_args(args)
        fault_list = faults.from_env()
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
            if args.checkpoint_every:
                from executor.checkpoint import check_checkpointable

                check_checkpointable(doc.plan)
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

    monitor = None
    if world > 1 or "MASTER_ADDR" in os.environ:
        kwargs: dict[str, Any] = {"timeout": _dt.timedelta(seconds=args.timeout)}
        if device.type == "cuda":
            kwargs["device_id"] = device
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            # torchrun keeps one store across restarts: without a per-attempt prefix a restarted rank
            # can read the dead attempt's gloo addresses ("Gloo connectFullMesh failed").
            store = dist.PrefixStore(f"/planner/attempt_{attempt}", dist.TCPStore(
                os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                timeout=kwargs["timeout"]))
            kwargs.update(store=store, rank=rank, world_size=world)
        dist.init_process_group(backend, **kwargs)
        if world > 1:  # monitored_barrier (names a rank that does not arrive) is gloo-only
            monitor = None if backend == "gloo" else dist.new_group(
                backend="gloo", timeout=_dt.timedelta(seconds=args.timeout))
    ctx: dict[str, Any] = {}
    try:
        for job_args, doc, raw, data, out in jobs:
            ctx = {"args": job_args, "doc": doc, "raw": raw, "device": device, "backend": backend,
                   "world": world, "rank": rank, "nnodes": nnodes, "threads": threads, "out": out, "data": data,
                   "attempt": attempt, "faults": fault_list, "monitor": monitor, "step": None}
            if attempt > 0 and _finished_earlier(ctx):
                continue  # a restart: this plan completed in an earlier attempt of the same run
            result = train_and_measure(ctx)
            if rank == 0:
                atomic_write_json(out, result)
                print(f"executor.run: wrote {out}", flush=True)
            gc.collect()
            if dist.is_initialized():
                dist.barrier()
        return 0
    except Exception as exc:
        where = f" at step {ctx['step']}" if ctx.get("step") is not None else ""
        error = f"rank {rank} failed{where}: {_describe(exc)}"
        print(f"executor.run: {error}", file=sys.stderr)
        if os.environ.get("PLANNER_DEBUG"):
            traceback.print_exc()
        if rank == 0 and ctx:
            with contextlib.suppress(Exception):  # the report must not hide the failure itself
                if ctx.get("ledger") is not None:
                    ctx["ledger"].flush("failed", error)  # keeps every step measured so far
                else:  # failed before the ledger existed: keep what earlier attempts of this run wrote
                    mark_failed(ctx["out"], ctx["args"].run_id, error, _header(ctx))
        sys.stderr.flush()
        os._exit(1)  # other ranks may be blocked in a collective; torchrun tears the group down
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _describe(exc: BaseException) -> str:
    """One line for an exception; a collective timeout says so."""
    text = " ".join(str(exc).split())[:500]
    if isinstance(exc, (StepTimeout, TrainingDiverged)):
        return text
    if re.search(r"timed? ?out|Timeout", text, re.IGNORECASE):
        return f"a collective timed out (a rank is hung or dead): {type(exc).__name__}: {text}"
    return f"{type(exc).__name__}: {text}"


class TrainingDiverged(RuntimeError):
    """The mean loss of a step is NaN or infinite: nothing after it measures anything meaningful."""


class StepTimeout(RuntimeError):
    """A rank did not reach the barrier at the start of a step within the collective timeout."""


def step_barrier(ctx: dict[str, Any], step: int) -> None:
    """Barrier at the start of a step that names the rank(s) that never arrive (gloo monitored_barrier)."""
    import torch.distributed as dist

    timeout = ctx["args"].timeout
    try:
        dist.monitored_barrier(group=ctx["monitor"], timeout=_dt.timedelta(seconds=timeout), wait_all_ranks=True)
    except RuntimeError as exc:
        text = str(exc)
        m = re.search(r"Ranks? ([\d, ]+) failed to pass monitoredBarrier", text)
        if m:
            ranks = sorted({int(r) for r in re.findall(r"\d+", m.group(1))})
            who = ", ".join(map(str, ranks))
            raise StepTimeout(f"rank{'s' if len(ranks) > 1 else ''} {who} did not reach step {step}: dead, or "
                              f"hung for more than the {timeout:g} s --timeout") from None
        if ctx["rank"] != 0:
            raise StepTimeout(f"rank 0 did not answer at step {step}: dead, or hung for more than the "
                              f"{timeout:g} s --timeout") from None
        raise


def _finished_earlier(ctx: dict[str, Any]) -> bool:
    """Whether rank 0's measured.json of this run already says ok (decided by rank 0 for all ranks)."""
    done = ctx["rank"] == 0 and (read_run(ctx["out"], ctx["args"].run_id) or {}).get("status") == "ok"
    if ctx["world"] > 1:
        import torch.distributed as dist

        t = torch.tensor([int(done)])
        dist.broadcast(t, src=0)
        done = bool(t.item())
    return done


def _header(ctx: dict[str, Any]) -> dict[str, Any]:
    args, doc = ctx["args"], ctx["doc"]
    from executor.measure import SCHEMA_VERSION, environment

    head: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "kind": "measured", "status": "running",
        "plan_hash": plan_hash(ctx["raw"]), "plan_file": str(Path(args.plan).resolve()),
        "plan": doc.plan.describe(), "run_id": args.run_id,
        "steps_requested": args.steps, "warmup": args.warmup,
        "env": environment(ctx["device"], ctx["backend"], ctx["world"], ctx["nnodes"], ctx["threads"]),
    }
    if doc.prediction:
        keys = ("step_time_s", "tokens_per_s", "memory_gib_per_gpu")
        head["predicted"] = {k: doc.prediction[k] for k in keys if k in doc.prediction}
    return head


def checkpoint_dir(args: argparse.Namespace, out: Path) -> Path:
    if args.checkpoint_dir:
        return Path(args.checkpoint_dir)
    return out.with_name(f"{out.stem}.checkpoints") / (args.run_id or "run")


def train_and_measure(ctx: dict[str, Any]) -> dict[str, Any] | None:
    """Build the trainer, run warm-up + timed steps (from the newest checkpoint after a restart),
    reduce every step over the ranks, persist it (rank 0); returns measured.json on rank 0."""
    from executor.measure import ActivationMeter, busy_timed, reduce_max, reduce_step, rss_bytes, timed
    from executor.trainer import Trainer

    args, doc, device, world, rank = ctx["args"], ctx["doc"], ctx["device"], ctx["world"], ctx["rank"]
    dims = ParallelDims.from_plan(doc.plan)
    mesh = dims.build_mesh(device.type) if world > 1 else None
    options = TrainOptions(optimizer=args.optimizer, lr=args.lr, seed=args.seed)
    trainer = Trainer(doc, dims, mesh, device, options)

    ckpt = None
    start = 0
    if args.checkpoint_every:
        from executor.checkpoint import Checkpointer, checkpoint_key

        ckpt = Checkpointer(checkpoint_dir(args, ctx["out"]), args.checkpoint_every, checkpoint_key(args.run_id),
                            trainer.modules, trainer.optimizers, rank, world)
    previous = read_run(ctx["out"], args.run_id) if rank == 0 and ctx["attempt"] > 0 else None
    if ckpt is not None and ctx["attempt"] > 0:
        # never resume past the steps measured.json holds (e.g. it was deleted): their measurements
        # would be missing; an older checkpoint (or step 0) re-runs them instead
        start = ckpt.latest(limit=len((previous or {}).get("losses") or []))
    ledger = None
    if rank == 0:
        ledger = Ledger(ctx["out"], _header(ctx), args.warmup, doc.plan.global_batch * doc.model.seq_len)
        if ctx["attempt"] > 0:
            ledger.resume(previous, start, ctx["attempt"])
        ledger.flush()  # from now on measured.json exists and says "running"
        ctx["ledger"] = ledger
    if start:
        ckpt.load(start)

    from executor.speed_probe import measure_speed, probe_record

    probe_before = measure_speed(device)  # the machine's speed around this plan's steps (planner.speed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the peak of training, not of initialisation
    meter = ActivationMeter(trainer.parts, trainer.parameters())
    data = ctx["data"]

    total = args.warmup + args.steps
    # the training thread's CPU time is all of a rank's work only with one CPU thread (no async device)
    busy_measurable = device.type == "cpu" and torch.get_num_threads() == 1
    measure_step = start  # this attempt's first step carries the memory hooks
    profiler = None
    barrier = (lambda s: step_barrier(ctx, s)) if world > 1 else (lambda s: None)
    for step in range(start, total):
        ctx["step"] = step
        faults.inject(ctx["faults"], rank, step, ctx["attempt"])  # TEST-ONLY hook; no-op unless configured
        if step >= args.warmup and args.profile and profiler is None:
            profiler = _start_profiler(device)
        batch = trainer.batch(data, step)
        measuring = step == measure_step
        if measuring:
            meter.arm()
        ((loss, has_loss), busy), seconds = timed(
            lambda b=batch, rec=measuring: busy_timed(lambda: trainer.train_step(b, record_grads=rec)),
            device, world, barrier=lambda s=step: barrier(s))
        if measuring:
            meter.disarm()
        slowest, mean_loss, busiest = reduce_step(seconds, float(loss), has_loss, world, busy)
        if not math.isfinite(mean_loss):  # every rank sees the same mean: all stop here together
            raise TrainingDiverged(f"the loss is {mean_loss}: training diverged (a smaller "
                                   f"--lr than {args.lr:g} may help); the steps before it are kept")
        if ledger is not None:  # persisted at once: a crash after this loses nothing
            ledger.record(mean_loss, slowest, busy=busiest if busy_measurable else None)
        if ckpt is not None and ckpt.due(step + 1) and step + 1 < total:
            ckpt.save(step + 1)
    ctx["step"] = None
    trace = None
    if profiler is not None:
        from planner.io import atomic_output

        profiler.stop()
        trace = ctx["out"].with_name(f"{ctx['out'].stem}.trace.rank{rank}.json")
        with atomic_output(trace) as tmp:
            profiler.export_chrome_trace(str(tmp))

    weights, grads, opt = trainer.weights_bytes(), trainer.grads_bytes, trainer.optimizer_bytes()
    act, act_peak = meter.activations_bytes, meter.peak_bytes
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else weights + grads + opt + act_peak
    _, rss_peak = rss_bytes()
    mem = reduce_max([peak, weights, grads, opt, act, act_peak, rss_peak, meter.max_in_flight], world)
    probe_after = measure_speed(device)  # after the memory readings: its buffers are not the plan's
    if ledger is None:
        return None
    plan = doc.plan
    result = ledger.document("ok")
    result.update({
        "speed_probe": probe_record(probe_before, probe_after),
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
            "checkpoint_every": args.checkpoint_every,
            "checkpoint_dir": str(checkpoint_dir(args, ctx["out"]).resolve()) if args.checkpoint_every else None,
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
    exit_rank(main())
