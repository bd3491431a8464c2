"""`planner run`: check a plan against the resources, run it under torchrun, report predicted vs measured.

Single node (default): `torchrun --standalone --nproc-per-node N -m executor.run ...`.
Multi-node: the rendezvous flags are passed through, e.g. on every node
    planner run plan.json --nnodes 2 --node-rank $NODE_RANK --nproc-per-node 8 \\
        --rdzv-endpoint head-node:29500 --rdzv-id job42
(SLURM: `srun --nodes 2 --ntasks-per-node 1 planner run plan.json --nnodes 2 --nproc-per-node 8
--rdzv-endpoint $HEAD:29500`, one launcher per node; c10d rendezvous assigns node ranks.)
Global rank 0 writes measured.json; the launcher on its node prints the comparison table.

Python API: `run_plan(...)` runs a plan and returns the parsed measured.json (for `planner validate`).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from executor.errors import ResourceMismatch, UnsupportedPlan
from executor.ledger import mark_failed, read_run
from executor.options import DEFAULT_TIMEOUT_S, OPTIMIZERS, default_out
from planner.compare import ComparisonRow, comparison_rows, step_time_at_speed
from planner.errors import PlannerError
from planner.io import load_json
from planner.plan import PlanDocument
from planner.speed import speed_ratio

REPO_ROOT = Path(__file__).resolve().parent.parent


class RunFailed(RuntimeError):
    """torchrun (or a rank) failed while training; the message holds the exit status and output tail."""


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The `planner run` arguments (also used by `python -m executor.launch`)."""
    parser.add_argument("plan", help="plan JSON written by `planner plan`")
    parser.add_argument("--nproc-per-node", type=int, default=None,
                        help="processes per node (default: the plan's world size / --nnodes)")
    parser.add_argument("--nnodes", type=int, default=1, help="number of nodes (default 1)")
    parser.add_argument("--node-rank", type=int, default=0, help="this node's rank (static rendezvous)")
    parser.add_argument("--rdzv-endpoint", default=None, help="HOST:PORT of the rendezvous (multi-node)")
    parser.add_argument("--rdzv-backend", default="c10d", help="rendezvous backend (default c10d)")
    parser.add_argument("--rdzv-id", default="planner-run", help="job id shared by all nodes")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after the warm-up (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps (default 3)")
    parser.add_argument("--data", default=None, help="text file to train on (default: synthetic tokens)")
    parser.add_argument("--tokenizer", default="auto", choices=("auto", "byte", "char"),
                        help="for --data: byte-level (vocab >= 256) or character-level")
    parser.add_argument("--profile", action="store_true", help="write a torch.profiler Chrome trace per rank")
    parser.add_argument("--out", default=None,
                        help="the measured result (default: <plan>.measured.json beside the plan)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per rank (default 1 on CPU)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"collective timeout in seconds, also how long the rendezvous waits for every "
                             f"node to join (default {DEFAULT_TIMEOUT_S:g})")
    parser.add_argument("--optimizer", default="adamw", choices=OPTIMIZERS)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-restarts", type=int, default=0,
                        help="torchrun restarts on failure (default 0); with --checkpoint-every a restart "
                             "resumes from the newest checkpoint")
    parser.add_argument("--checkpoint-every", type=int, default=0,
                        help="save a torch.distributed.checkpoint every K steps (default 0: off)")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="checkpoint folder (default: <out>.checkpoints/<run id> beside measured.json)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="default: CUDA + NCCL when GPUs are present, else CPU + gloo")


def _uses_cuda(choice: str) -> bool:
    if choice == "cpu":
        return False
    import torch

    return choice == "cuda" or torch.cuda.is_available()


def validate(args: argparse.Namespace) -> PlanDocument:
    """Everything checkable before processes start; raises PlannerError (exit 2) with one clear line."""
    from executor.run import check_args, load_checked  # imports torch: only when running

    check_args(args)
    doc, _ = load_checked(args.plan)
    world = doc.plan.world_size
    if args.nnodes < 1:
        raise ResourceMismatch(f"must be >= 1, got {args.nnodes}", field="nnodes")
    if args.nproc_per_node is None:
        if world % args.nnodes:
            raise ResourceMismatch(f"the plan's {world} processes do not split over {args.nnodes} nodes",
                                   field="nnodes")
        args.nproc_per_node = world // args.nnodes
    if args.nproc_per_node < 1:
        raise ResourceMismatch(f"must be >= 1, got {args.nproc_per_node}", field="nproc_per_node")
    if args.nproc_per_node * args.nnodes != world:
        raise ResourceMismatch(
            f"the plan needs {world} processes (tp*cp*dp*pp = {doc.plan.tp}*{doc.plan.cp}*{doc.plan.dp}*"
            f"{doc.plan.pp}) but --nproc-per-node {args.nproc_per_node} x --nnodes {args.nnodes} = "
            f"{args.nproc_per_node * args.nnodes}", field="world_size")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        raise ResourceMismatch("a multi-node run needs --rdzv-endpoint HOST:PORT", field="rdzv_endpoint")
    if args.rdzv_endpoint:
        host, colon, port = args.rdzv_endpoint.rpartition(":")
        if colon and (not host or not port.isdigit() or not 0 < int(port) < 65536):
            raise ResourceMismatch(f"must be HOST or HOST:PORT with a port in 1..65535, got "
                                   f"{args.rdzv_endpoint!r}", field="rdzv_endpoint")
    if not 0 <= args.node_rank < args.nnodes:
        raise ResourceMismatch(f"must be in [0, {args.nnodes}), got {args.node_rank}", field="node_rank")
    if args.max_restarts < 0:
        raise ResourceMismatch(f"must be >= 0, got {args.max_restarts}", field="max_restarts")
    if args.checkpoint_every:
        from executor.checkpoint import check_checkpointable

        check_checkpointable(doc.plan)
    if args.checkpoint_dir:  # found here, not as a distributed-checkpoint traceback on every rank later
        from planner.io import check_folder_target

        check_folder_target(Path(args.checkpoint_dir), "checkpoint_dir")
    if _uses_cuda(args.device):
        import torch

        have = torch.cuda.device_count()
        if args.nproc_per_node > have:
            raise ResourceMismatch(f"--nproc-per-node {args.nproc_per_node} needs that many GPUs but this "
                                   f"node has {have}", field="nproc_per_node")
    else:
        _check_host_memory(doc, args.nproc_per_node)
    if args.data:
        from executor.data import make_data

        make_data(args.data, doc.model.vocab_size, doc.model.seq_len, args.seed, args.tokenizer)
    out = Path(args.out) if args.out else default_out(args.plan)
    if out.exists() and out.is_dir():
        raise UnsupportedPlan(f"{out} is a directory", field="out")
    return doc


def state_bytes_per_rank(doc: PlanDocument) -> float:
    """fp32 weights + grads + two AdamW states of one rank's model share (ZeRO sharding applied)."""
    p = doc.plan
    params = doc.model.params / (p.tp * p.pp)
    shard = p.shard_group if p.hybrid else p.dp
    weights = 4 * params / (shard if p.zero_stage >= 3 else 1)
    grads = 4 * params / (shard if p.zero_stage >= 2 else 1)
    optim = 8 * params / (shard if p.zero_stage >= 1 else 1)
    return weights + grads + optim


def _check_host_memory(doc: PlanDocument, nproc_per_node: int) -> None:
    """Refuse a CPU run whose model state alone cannot fit this host's memory (e.g. a GPU-cluster plan
    for a 70B model), instead of letting the kernel kill the ranks."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    need = state_bytes_per_rank(doc) * nproc_per_node
    if need > 0.8 * total:
        raise ResourceMismatch(f"{doc.model.name}: weights, gradients and optimizer state alone need "
                               f"{need / 2**30:.1f} GiB on this node ({nproc_per_node} CPU ranks) but it has "
                               f"{total / 2**30:.1f} GiB", field="memory")


def torchrun_command(args: argparse.Namespace, out: Path, run_id: str,
                     more: list[tuple[Path, Path]] | None = None) -> list[str]:
    """`python -m torch.distributed.run ... -m executor.run ...` for these arguments.

    `more` appends further (plan, out) pairs that the same launch runs one after another.
    """
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if args.nnodes == 1 and not args.rdzv_endpoint:
        cmd += ["--standalone"]
    else:
        # the rendezvous waits at most --timeout for every node to join (torchrun's own default: 600 s,
        # then it keeps retrying), so a node that never comes up ends the run instead of hanging it
        cmd += ["--nnodes", str(args.nnodes), "--node-rank", str(args.node_rank),
                "--rdzv-backend", args.rdzv_backend, "--rdzv-endpoint", args.rdzv_endpoint,
                "--rdzv-id", args.rdzv_id, "--rdzv-conf", f"join_timeout={max(1, int(args.timeout))}"]
    cmd += ["--nproc-per-node", str(args.nproc_per_node), "--max-restarts", str(args.max_restarts)]
    plans = [Path(args.plan), *(p for p, _ in more or [])]
    outs = [out, *(o for _, o in more or [])]
    cmd += ["-m", "executor.run", "--plan", *(str(p.resolve()) for p in plans), "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--out", *(str(o) for o in outs), "--timeout", str(args.timeout),
            "--optimizer", args.optimizer, "--lr", repr(args.lr), "--seed", str(args.seed),
            "--device", args.device, "--tokenizer", args.tokenizer, "--run-id", run_id]
    if args.data:
        cmd += ["--data", str(Path(args.data).resolve())]
    if args.profile:
        cmd += ["--profile"]
    if args.checkpoint_every:
        cmd += ["--checkpoint-every", str(args.checkpoint_every)]
    if args.checkpoint_dir:
        cmd += ["--checkpoint-dir", str(Path(args.checkpoint_dir).resolve())]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    return cmd


def _child_env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    # The workers import `executor` and `planner` from this checkout even when it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if args.threads is not None:
        env["OMP_NUM_THREADS"] = str(args.threads)
    elif not _uses_cuda(args.device):
        env.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank on CPU (torchrun's default too)
    if getattr(args, "checkpoint_every", 0):
        from executor.checkpoint import KEY_ENV

        env.setdefault(KEY_ENV, secrets.token_hex(32))  # signs checkpoints; never written to disk
    return env


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else (f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.3f} s")


def _fmt_gib(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f} GiB"


def comparison_table(doc: PlanDocument, measured: dict[str, Any]) -> str:
    """Predicted vs measured (rows from planner.compare.comparison_rows): step time (median [p10, p90])
    and its busy / waiting split where measured, tokens/s, peak memory per rank."""
    by_metric = {r.metric: r for r in comparison_rows(doc, doc.prediction or {}, measured)}
    rows = []

    def err(row: ComparisonRow) -> str:  # the prediction's error, as planner compare / validate
        return "-" if row.error is None else f"{row.error * 100:+.1f}%"

    step = by_metric["step_time_s"]
    rows.append(("step time", _fmt_s(step.predicted),
                 f"{_fmt_s(step.measured)} [p10 {_fmt_s(step.measured_p10)}, p90 {_fmt_s(step.measured_p90)}]",
                 err(step)))
    for name in ("busy", "waiting"):
        if f"time.{name}" in by_metric:
            row = by_metric[f"time.{name}"]
            rows.append((f"  {row.label}", _fmt_s(row.predicted), _fmt_s(row.measured), err(row)))
    ratio = speed_ratio(doc.cluster, measured)
    if ratio is not None:  # the prediction had the model been calibrated at the speed of this run
        again = step_time_at_speed(doc, ratio)
        rows.append(("  at this run's machine speed", _fmt_s(again), _fmt_s(step.measured),
                     err(dataclasses.replace(step, predicted=again))))
    tok = by_metric["tokens_per_s"]
    rows.append(("tokens/s", "-" if tok.predicted is None else f"{tok.predicted:,.0f}",
                 "-" if tok.measured is None else f"{tok.measured:,.0f}", err(tok)))
    mem = by_metric["memory_gib_per_gpu"]
    rss = measured["memory"]["rss_bytes"] / 2**30
    rows.append(("peak memory/rank", _fmt_gib(mem.predicted), f"{_fmt_gib(mem.measured)} (RSS {_fmt_gib(rss)})",
                 err(mem)))
    for key, unit in (("speed.gemm", "GFLOP/s"), ("speed.stream", "GB/s")):
        if key in by_metric:  # at calibration (the prediction's side) vs during this run, and their ratio
            row = by_metric[key]
            rows.append((row.label.split(" (")[0] + " (probe)", f"{row.predicted / 1e9:.1f} {unit}",
                         f"{row.measured / 1e9:.1f} {unit}", f"x{row.measured / row.predicted:.2f}"))
    env = measured["env"]
    head = (f"plan {measured.get('plan', '')}: {env['world_size']} ranks on {env['nnodes']} node(s), "
            f"{env['device']}, {env['backend']}; {len(measured['step_times_s'])} timed steps after "
            f"{measured['warmup']} warm-up")
    widths = [max(len(r[i]) for r in [("", "predicted", "measured", "error"), *rows]) for i in range(4)]
    lines = [head, "  ".join(h.ljust(w) for h, w in zip(("", "predicted", "measured", "error"), widths,
                                                          strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    losses = measured.get("losses") or []
    if losses:
        lines.append(f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps")
    note = ratio.drift_note() if ratio is not None else None
    if note:
        lines.append(note)
    return "\n".join(lines)


def _read_measured(out: Path, run_id: str) -> dict[str, Any] | None:
    return read_run(out, run_id)


def _relay(stream: Any, quiet: bool) -> str:
    """Copy the ranks' stderr to ours as it comes (unless quiet) and return its last lines.

    torchrun's own Python traceback (`ChildFailedError`) is left out: the failure summary it prints
    below it names the failed ranks, and a clear one-line reason follows from `planner run`."""
    tail: collections.deque[str] = collections.deque(maxlen=400)
    block: list[str] | None = None
    for line in stream:
        tail.append(line)
        if quiet:
            continue
        if block is None and line.startswith("Traceback (most recent call last):"):
            block = [line]
            continue
        if block is not None:
            block.append(line)
            if line[:1] in (" ", "\t"):
                continue
            if "ChildFailedError" not in line:
                sys.stderr.writelines(block)
            block = None
            continue
        sys.stderr.write(line)
        sys.stderr.flush()
    if block and not quiet:
        sys.stderr.writelines(block)
    return "".join(tail)


def failure_reason(tail: str, rc: int) -> str:
    """One line from a failed launch's output: ranks killed by a signal (torchrun's summary) and the
    first rank's own error line."""
    parts = []
    rank = None
    killed = []
    for line in tail.splitlines():
        m = re.match(r"\s*rank\s*:\s*(\d+)", line)
        if m:
            rank = int(m.group(1))
            continue
        m = re.match(r"\s*exitcode\s*:\s*(-?\d+).*?\((SIG[A-Z]+)\)", line)
        if m and rank is not None and m.group(2) != "SIGTERM":  # SIGTERM: torchrun's own teardown
            killed.append(f"rank {rank} was killed by {m.group(2)}")
        if m:
            rank = None
    parts.extend(dict.fromkeys(killed))
    if "RendezvousTimeoutError" in tail:
        parts.append("the rendezvous timed out: not every node joined within --timeout")
    errors = re.findall(r"executor\.run: (rank \d+ failed.*)", tail)
    if errors:
        parts.append(errors[0].strip())
    if not parts:
        parts.append(f"torchrun exited with status {rc}")
    return "; ".join(parts)


def _failed_header(args: argparse.Namespace, plan_path: str | Path) -> dict[str, Any]:
    """What the launcher knows of a run whose rank 0 wrote nothing (measured.json's header)."""
    from executor.ledger import SCHEMA_VERSION
    from planner.plan import load_plan, plan_hash

    raw = load_json(plan_path)
    raw = raw[0] if isinstance(raw, list) and raw else raw
    return {"schema_version": SCHEMA_VERSION, "kind": "measured", "plan_hash": plan_hash(raw),
            "plan_file": str(Path(plan_path).resolve()), "plan": load_plan(plan_path).plan.describe(),
            "steps_requested": args.steps, "warmup": args.warmup}


class Terminated(BaseException):
    """The launcher was sent SIGTERM: torchrun and its ranks are stopped before it exits."""


STOP_GRACE_S = 30.0  # torchrun's own teardown of its ranks, before the launcher kills what is left


def _launch(cmd: list[str], args: argparse.Namespace, quiet: bool) -> tuple[int, str]:
    """Run torchrun, relaying its output. The launcher owns its children: SIGTERM or SIGINT sent to the
    launcher alone (a scheduler, `kill`) is forwarded to torchrun, which stops its ranks; whatever is
    left after STOP_GRACE_S is killed, so no rank keeps training after `planner run` has exited."""
    proc = subprocess.Popen(cmd, env=_child_env(args), cwd=str(REPO_ROOT), text=True, errors="replace",
                            stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE)
    previous: dict[int, Any] = {}

    def forward(signum: int, _frame: Any) -> None:
        for sig, handler in previous.items():  # a second signal takes the default path
            signal.signal(sig, handler)
        previous.clear()
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, forward)
    try:
        tail = _relay(proc.stderr, quiet)
        return proc.wait(), tail
    except BaseException:
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def execute(args: argparse.Namespace, quiet: bool = False) -> tuple[int, dict[str, Any] | None, str]:
    """Run torchrun for validated `args`; returns (exit status, measured.json if this node has it,
    the output tail). A failed launch leaves measured.json marked `"failed"` with every step rank 0
    persisted (written here when rank 0 itself died)."""
    out = (Path(args.out) if args.out else default_out(args.plan)).resolve()
    keep_previous(out)
    run_id = uuid.uuid4().hex
    cmd = torchrun_command(args, out, run_id)
    try:
        rc, tail = _launch(cmd, args, quiet)
    except (KeyboardInterrupt, Terminated) as exc:
        reason = "interrupted (SIGINT)" if isinstance(exc, KeyboardInterrupt) else "terminated (SIGTERM)"
        _mark_failed_here(args, out, run_id, f"the launcher was {reason}; torchrun and its ranks were stopped")
        raise
    if rc != 0:
        return rc, _mark_failed_here(args, out, run_id, failure_reason(tail, rc)), tail
    return rc, _read_measured(out, run_id), tail


def _mark_failed_here(args: argparse.Namespace, out: Path, run_id: str, reason: str) -> dict[str, Any] | None:
    """measured.json marked failed with `reason` where this node holds it (rank 0's node; on one node the
    launcher writes it even when rank 0 wrote nothing); None on another node of a multi-node run."""
    if _read_measured(out, run_id) is None and args.nnodes > 1:
        return None
    return mark_failed(out, run_id, reason, _failed_header(args, args.plan))


def previous_path(out: Path) -> Path:
    """Where the result a new run would overwrite is kept: measured.json -> measured.prev.json."""
    return out.with_name(out.stem + ".prev" + out.suffix)


def keep_previous(out: Path) -> Path | None:
    """Copy a completed (`"ok"`) measured.json at `out` to `previous_path(out)` before a new run writes
    there, so a run that fails (at start-up, or a different plan's run in the same folder) never leaves
    the folder without the last good measurement. Returns the copy, or None when there was nothing to keep."""
    from planner.io import atomic_write_bytes

    try:
        ok = out.is_file() and isinstance(doc := load_json(out), dict) and doc.get("status") == "ok"
    except PlannerError:
        return None
    if not ok:
        return None
    return atomic_write_bytes(previous_path(out), out.read_bytes())


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on `out` for a whole one-node run (a hidden `.NAME.lock` beside it, kept): a
    second `planner run` writing the same measured.json is refused instead of both exiting 0 with one
    result lost."""
    from planner.errors import LockedError
    from planner.io import exclusive_lock

    try:
        with exclusive_lock(out.with_name(f".{out.name}.lock")):
            yield
    except LockedError:
        raise ResourceMismatch(f"another planner run is writing {out}; wait for it or choose another --out",
                               field="out") from None


def run_command(args: argparse.Namespace) -> int:
    """`planner run`: 0 ok, 2 bad input (one line on stderr), 1 the run failed."""
    try:
        doc = validate(args)
    except PlannerError as exc:
        print(f"planner run: error: {exc}", file=sys.stderr)
        return 2
    out = (Path(args.out) if args.out else default_out(args.plan)).resolve()
    # One node: lock the result for the whole run. Several nodes start `planner run` with the same --out
    # (often on a shared file system) and the one that draws global rank 0 writes it: no lock there.
    lock = output_lock(out) if args.nnodes == 1 else contextlib.nullcontext()
    try:
        with lock:
            rc, measured, tail = execute(args)
    except PlannerError as exc:
        print(f"planner run: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("planner run: interrupted; torchrun and its ranks were stopped", file=sys.stderr)
        return 130
    except Terminated:
        print("planner run: terminated; torchrun and its ranks were stopped", file=sys.stderr)
        return 143
    if rc != 0:
        if measured is None:
            print(f"planner run: failed ({failure_reason(tail, rc)})", file=sys.stderr)
        else:
            print(f"planner run: failed: {measured.get('error')}; {out} keeps the "
                  f"{measured.get('steps_completed', 0)} completed step(s) (status failed)", file=sys.stderr)
        if previous_path(out).is_file():
            print(f"planner run: the previous completed result is kept in {previous_path(out)}", file=sys.stderr)
        return 1
    if measured is None:
        print(f"planner run: done; measured.json is written by the node holding global rank 0 ({out})")
        return 0
    from planner.plan import refresh_prediction

    stale = refresh_prediction(doc)
    if stale:
        print(f"planner run: warning: {stale}", file=sys.stderr)
    if doc.cluster.device == "cuda" and not _uses_cuda(args.device):
        print(f"planner run: warning: the prediction is for {doc.cluster.num_gpus} x {doc.cluster.gpu.name}, but "
              "these ranks ran on CPU cores: the comparison below is across devices (plan for localhost-cpu or "
              "a profile from planner calibrate to compare like with like)", file=sys.stderr)
    print(comparison_table(doc, measured))
    if measured.get("restarts"):
        print(f"resumed {len(measured['restarts'])} time(s): from step(s) "
              f"{', '.join(str(r.get('resumed_from_step')) for r in measured['restarts'])}")
    print(f"wrote {out}")
    return 0


def run_plan(plan_path: str | Path, nproc_per_node: int | None = None, steps: int = 10, warmup: int = 3,
             out: str | Path | None = None, quiet: bool = True, **options: Any) -> dict[str, Any]:
    """Run a plan on this node and return its measured.json (as a dict).

    `options` are any other `planner run` flags by their dest name (data, optimizer, lr, seed, threads,
    timeout, profile, device, ...). Raises PlannerError for bad input and RunFailed if training fails.
    """
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args([str(plan_path)])
    args.nproc_per_node, args.steps, args.warmup = nproc_per_node, steps, warmup
    args.out = str(out) if out is not None else None
    for k, v in options.items():
        if not hasattr(args, k):
            raise TypeError(f"run_plan() got an unknown option {k!r}")
        setattr(args, k, v)
    validate(args)
    rc, measured, tail = execute(args, quiet=quiet)
    if rc != 0 or measured is None:
        raise RunFailed(f"running {plan_path} failed (exit status {rc})\n{tail[-4000:]}")
    return measured


def run_plans(jobs: list[tuple[str | Path, str | Path]], nproc_per_node: int, steps: int = 10, warmup: int = 3,
              **options: Any) -> list[dict[str, Any] | None]:
    """Run several (plan, measured.json path) jobs in ONE torchrun launch, one after another.

    Returns each job's measured.json (None where the launch failed before writing it). Used by
    `planner validate`, which would otherwise pay torch's start-up once per plan.
    """
    if not jobs:
        return []
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args([str(jobs[0][0])])
    args.nproc_per_node, args.steps, args.warmup = nproc_per_node, steps, warmup
    for k, v in options.items():
        if not hasattr(args, k):
            raise TypeError(f"run_plans() got an unknown option {k!r}")
        setattr(args, k, v)
    outs = [Path(o).resolve() for _, o in jobs]
    for plan, out in jobs:
        args.plan, args.out = str(plan), str(out)
        validate(args)
    args.plan = str(jobs[0][0])
    run_id = uuid.uuid4().hex
    more = [(Path(p), o) for (p, _), o in zip(jobs[1:], outs[1:], strict=True)]
    cmd = torchrun_command(args, outs[0], run_id, more)
    rc, tail = _launch(cmd, args, quiet=True)
    if rc != 0:  # plans of this launch that started and did not finish say so
        reason = failure_reason(tail, rc)
        for (plan, _), o in zip(jobs, outs, strict=True):
            if _read_measured(o, run_id) is not None:
                mark_failed(o, run_id, reason, _failed_header(args, plan))
    return [_read_measured(o, run_id) for o in outs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m executor.launch", description=__doc__.split("\n\n")[0])
    add_run_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
