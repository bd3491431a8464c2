"""`planner run serve.json`: serve a serving plan's request stream under torchrun and compare with its
prediction (the serving counterpart of executor/launch.py).

Python API: `run_serve(plan, nproc, out)` returns the parsed measured.json (for `planner validate
--serve`); `run_serve_calibration(nproc, out)` the calibration timings.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from executor.errors import ResourceMismatch
from planner.errors import PlannerError
from planner.io import load_json

REPO_ROOT = Path(__file__).resolve().parent.parent


class ServeRunFailed(RuntimeError):
    """torchrun (or a rank) failed while serving; the message holds the exit status and output tail."""


def _torchrun(nproc: int, worker_args: list[str], threads: int | None, device: str, quiet: bool) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "executor.serve", *worker_args, "--device", device]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
        cmd += ["--threads", str(threads)]
    else:
        env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run(cmd, env=env, cwd=str(REPO_ROOT), text=True, errors="replace",
                          stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE)
    if not quiet:
        sys.stderr.write(proc.stderr)
    return proc.returncode, proc.stderr


def default_out(plan: str | Path) -> Path:
    p = Path(plan)
    return p.with_name(p.stem + ".measured.json")


def check(plan: str | Path, nproc: int | None) -> tuple[Any, int]:
    """The serving document and the ranks it needs; PlannerError (exit 2) for what cannot run."""
    from executor.serve import check_executable
    from planner.serve.plan import load_serve_plan

    doc = load_serve_plan(plan)
    check_executable(doc)
    need = doc.plan.pools[0].tp
    if nproc is not None and nproc != need:
        raise ResourceMismatch(f"the plan serves with tp {need}: it needs {need} processes, not "
                               f"--nproc-per-node {nproc}", field="nproc_per_node")
    return doc, need


def run_serve(plan: str | Path, nproc: int | None = None, out: str | Path | None = None, *, threads: int | None = None,
              device: str = "auto", seed: int = 0, quiet: bool = True) -> dict[str, Any]:
    """Serve `plan` on this node and return its measured.json (PlannerError for bad input,
    ServeRunFailed if serving fails)."""
    _, need = check(plan, nproc)
    out = Path(out) if out is not None else default_out(plan)
    rc, tail = _torchrun(need, ["--plan", str(Path(plan).resolve()), "--out", str(out.resolve()), "--seed", str(seed)],
                         threads, device, quiet)
    if rc != 0 or not out.exists():
        raise ServeRunFailed(f"serving {plan} failed (exit status {rc})\n{tail[-3000:]}")
    return load_json(out)


def run_serve_calibration(nproc: int, out: str | Path, *, threads: int | None = None, device: str = "auto",
                          repeats: int = 24) -> dict[str, Any]:
    """Time the calibration models on `nproc` ranks (tensor parallel when nproc > 1)."""
    rc, tail = _torchrun(nproc, ["--calibrate", "--out", str(Path(out).resolve()), "--repeats", str(repeats)],
                         threads, device, True)
    if rc != 0:
        raise ServeRunFailed(f"serving calibration on {nproc} rank(s) failed (exit status {rc})\n{tail[-3000:]}")
    return load_json(out)


def comparison_table(doc: Any, measured: dict[str, Any]) -> str:
    """Predicted vs measured TTFT / TPOT percentiles and throughput."""
    pred = doc.prediction or {}
    rows = []
    for key, label in (("ttft_ms", "TTFT ms"), ("tpot_ms", "TPOT ms")):
        for q in ("p50", "p90", "p99"):
            p, m = pred.get(key, {}).get(q), measured[key][q]
            err = "-" if not p or not m else f"{(p - m) / m * 100:+.1f}%"
            rows.append((f"{label} {q}", "-" if p is None else f"{p:.1f}", f"{m:.1f}", err))
    p, m = pred.get("tokens_per_s"), measured["tokens_per_s"]
    rows.append(("output tokens/s", "-" if p is None else f"{p:.1f}", f"{m:.1f}",
                 "-" if not p or not m else f"{(p - m) / m * 100:+.1f}%"))
    widths = [max(len(r[i]) for r in [("", "predicted", "measured", "error"), *rows]) for i in range(4)]
    head = (f"serving {measured['plan']}: {measured['env']['world_size']} rank(s), {measured['env']['device']}; "
            f"{measured['measured_requests']} of {measured['requests']} requests measured")
    lines = [head, "  ".join(h.ljust(w) for h, w in zip(("", "predicted", "measured", "error"), widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


SERVE_RUN_FLAGS = ("plan", "nproc_per_node", "out", "threads", "device", "seed")
"""The `planner run` arguments a serving plan uses; any other one set away from its default is refused."""


def check_serve_flags(args: argparse.Namespace) -> None:
    """A training-only flag given with a serving plan (`--steps`, `--data`, `--nnodes`, `--dry-run`...)
    would be silently ignored: refuse it, naming the flag."""
    from executor.launch import add_run_arguments
    from planner.dry_run_report import add_dry_run_arguments

    parser = argparse.ArgumentParser(add_help=False)
    add_run_arguments(parser)
    add_dry_run_arguments(parser)
    defaults = vars(parser.parse_args([str(args.plan)]))
    for name, value in vars(args).items():
        if name not in SERVE_RUN_FLAGS and name in defaults and value != defaults[name]:
            flag = "--" + name.replace("_", "-")
            raise ResourceMismatch(f"{flag} applies to training plans; {Path(args.plan).name} is a serving plan "
                                   f"(it takes --nproc-per-node, --out, --threads, --device, --seed)",
                                   field=name)


def run_serve_command(args: argparse.Namespace) -> int:
    """`planner run serve.json`: 0 ok, 2 bad input, 1 serving failed."""
    try:
        check_serve_flags(args)
        doc, _ = check(args.plan, args.nproc_per_node)
        out = Path(args.out) if args.out else default_out(args.plan)
        if out.is_dir():
            raise ResourceMismatch(f"{out} is a directory", field="out")
    except PlannerError as exc:
        print(f"planner run: error: {exc}", file=sys.stderr)
        return 2
    try:
        measured = run_serve(args.plan, args.nproc_per_node, out, threads=args.threads, device=args.device,
                             seed=args.seed, quiet=False)
    except ServeRunFailed as exc:
        print(f"planner run: failed: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("planner run: interrupted", file=sys.stderr)
        return 130
    print(comparison_table(doc, measured))
    print(f"wrote {out}")
    return 0
