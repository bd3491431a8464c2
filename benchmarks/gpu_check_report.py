"""Helpers of benchmarks/gpu_check.sh (run by it; not meant to be run alone).

    python benchmarks/gpu_check_report.py env DIR/env.json --device cuda|cpu [--nvidia-smi CMD]
    python benchmarks/gpu_check_report.py preset DIR/env.json
    python benchmarks/gpu_check_report.py report DIR --cluster CLUSTER --dtype D --steps N --warmup W ...

`env`: the setup check; writes the date, device, torch / CUDA / cuDNN versions, driver, compute
capability, whether the GPU has FP8 tensor cores, and the commit; prints one summary line.
`preset`: the catalog cluster preset whose GPU matches the device (used when calibration fails).
`report`: reads DIR/plans.tsv, DIR/steps.tsv, DIR/plans/ID.json (each plan with its prediction) and
DIR/measured/ID.json (what `planner run` measured) and writes DIR/report.json and DIR/report.md:
per plan predicted vs measured step time and peak memory, and over the measured plans step-time
MAPE, bias, worst error, Spearman rank correlation, memory MAPE and bias.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FP8_NOTE = ("fp8 not run: the executor refuses FP8 / FP4 recipes (executor/run.py check_executable: it has no "
            "FP8 GEMM kernels yet), so every plan ran in {dtype}")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def cmd_env(args: argparse.Namespace) -> int:
    import torch

    env: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "gpu" if args.device == "cuda" else "cpu-dry",
        "host": socket.gethostname(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "commit": _git("rev-parse", "HEAD"),
        "commit_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device although nvidia-smi "
                  "lists one", file=sys.stderr)
            return 1
        props = torch.cuda.get_device_properties(0)
        cc = (props.major, props.minor)
        smi = ""
        with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
            smi = subprocess.run([args.nvidia_smi, "--query-gpu=driver_version,power.limit", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        env.update({
            "device": torch.cuda.get_device_name(0), "gpus_visible": torch.cuda.device_count(),
            "compute_capability": f"{cc[0]}.{cc[1]}", "memory_gib": props.total_memory / 2**30,
            "sms": props.multi_processor_count, "cudnn": torch.backends.cudnn.version(),
            "nvidia_smi": smi, "bf16": torch.cuda.is_bf16_supported(),
            "fp8_hardware": cc >= (8, 9),  # Ada / Hopper and later have FP8 tensor cores
        })
    else:
        env.update({"device": f"cpu-dry ({platform.processor() or platform.machine()})", "fp8_hardware": False})
    Path(args.out).write_text(json.dumps(env, indent=1) + "\n")
    print(f"{env['device']}, torch {env['torch']}, CUDA {env['cuda']}, commit {env['commit'][:12]}"
          f"{' (uncommitted changes)' if env['commit_dirty'] else ''}, fp8 hardware: "
          f"{'yes' if env['fp8_hardware'] else 'no'}")
    return 0


def cmd_preset(args: argparse.Namespace) -> int:
    from planner.specs.catalog import cluster_names, cluster_preset

    env = json.loads(Path(args.env).read_text())
    if env["mode"] != "gpu":
        print("localhost-cpu")
        return 0
    name = env["device"].upper()
    for c in cluster_names():
        gpu = cluster_preset(c).gpu
        if gpu.name.split("-")[0] in name and gpu.memory_bytes / 2**30 >= 0.9 * env["memory_gib"]:
            print(c)
            return 0
    print(f"no catalog cluster preset has a GPU matching {env['device']!r}", file=sys.stderr)
    return 1


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def spearman(a: list[float], b: list[float]) -> float | None:
    from planner.validate import spearman as rank_corr

    r = rank_corr(a, b)
    return None if r != r else r  # nan (fewer than 2 plans, or constant) -> None


def plan_row(spec: dict[str, str], plan_path: Path, measured_path: Path, step: dict[str, str] | None,
             preset: Any) -> dict[str, Any]:
    from planner.compare import comparison_rows
    from planner.cost import estimate
    from planner.plan import load_plan, plan_hash

    model = Path(spec["model"]).stem if spec["model"].endswith(".json") else spec["model"]
    row: dict[str, Any] = {**spec, "model": model, "status": step["status"] if step else "not run",
                           "note": step["note"] if step else "",
                           "run_seconds": float(step["seconds"]) if step else None}
    for k in ("seq_len", "micro_batch", "global_batch"):
        row[k] = int(row[k])
    if not plan_path.exists():
        row["status"] = "no plan"
        return row
    doc = load_plan(plan_path)
    pred = doc.prediction or {}
    row.update(plan=doc.plan.describe(), plan_hash=plan_hash(json.loads(plan_path.read_text())),
               predicted_step_time_s=float(pred["step_time_s"]), predicted_fits=bool(pred.get("fits", True)))
    if preset is not None:  # what the uncalibrated catalog preset predicts for the same plan
        row["preset_step_time_s"] = float(estimate(doc.model, preset, doc.plan)["step_time_s"])
    measured = json.loads(measured_path.read_text()) if measured_path.exists() else None
    by_metric = {r.metric: r for r in comparison_rows(doc, pred, measured or {})}
    row["predicted_peak_gib"] = by_metric["memory_gib_per_gpu"].predicted
    if measured is None or measured.get("status") != "ok":
        if measured is not None and row["status"] == "ok":
            row["status"] = "failed"
        return row
    if measured.get("plan_hash") != row["plan_hash"]:
        row.update(status="failed", note=f"measured.json is of another plan ({measured.get('plan_hash')})")
        return row
    row["measured_step_time_s"] = float(measured["step_time_s"]["median"])
    row["measured_step_time_p10_p90_s"] = [measured["step_time_s"]["p10"], measured["step_time_s"]["p90"]]
    row["measured_peak_gib"] = by_metric["memory_gib_per_gpu"].measured
    row["step_time_error"] = row["predicted_step_time_s"] / row["measured_step_time_s"] - 1
    if row["predicted_peak_gib"] and row["measured_peak_gib"]:
        row["memory_error"] = row["predicted_peak_gib"] / row["measured_peak_gib"] - 1
    if "preset_step_time_s" in row:
        row["preset_step_time_error"] = row["preset_step_time_s"] / row["measured_step_time_s"] - 1
    row["losses"] = [measured["losses"][0], measured["losses"][-1]] if measured.get("losses") else None
    return row


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if "measured_step_time_s" in r]
    err = [r["step_time_error"] for r in ok]
    mem = [r["memory_error"] for r in ok if "memory_error" in r]
    pre = [r["preset_step_time_error"] for r in ok if "preset_step_time_error" in r]
    out: dict[str, Any] = {
        "plans": len(rows), "measured": len(ok),
        "skipped": sum(r["status"] == "skipped" for r in rows),
        "failed": sum(r["status"] not in ("ok", "skipped") for r in rows),
        "step_time_mape": sum(abs(e) for e in err) / len(err) if err else None,
        "step_time_bias": sum(err) / len(err) if err else None,
        "step_time_worst": max(err, key=abs) if err else None,
        "step_time_worst_plan": max(ok, key=lambda r: abs(r["step_time_error"]))["id"] if ok else None,
        "spearman": spearman([r["predicted_step_time_s"] for r in ok], [r["measured_step_time_s"] for r in ok]),
        "memory_mape": sum(abs(e) for e in mem) / len(mem) if mem else None,
        "memory_bias": sum(mem) / len(mem) if mem else None,
        "preset_step_time_mape": sum(abs(e) for e in pre) / len(pre) if pre else None,
        "preset_step_time_bias": sum(pre) / len(pre) if pre else None,
    }
    by_axis: dict[str, list[float]] = {}
    for r in ok:
        by_axis.setdefault(r["axis"], []).append(r["step_time_error"])
    out["step_time_mape_by_axis"] = {a: sum(abs(e) for e in es) / len(es) for a, es in by_axis.items()}
    return out


def _pct(x: float | None, sign: bool = True) -> str:
    return "-" if x is None else (f"{x * 100:+.1f}%" if sign else f"{x * 100:.1f}%")


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f}"


def _gib(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def markdown(rep: dict[str, Any]) -> str:
    env, s = rep["env"], rep["summary"]
    lines = [f"# Single-GPU check: {env['device']}, {env['date'][:10]}", ""]
    if env["mode"] != "gpu":
        lines += ["**A CPU rehearsal (`--cpu-dry`) with tiny sizes: no GPU was used; these numbers say nothing "
                  "about GPU accuracy.**", ""]
    lines += [
        f"- device: {env['device']}" + (f" (compute capability {env['compute_capability']}, "
                                        f"{env['memory_gib']:.0f} GiB, {env['sms']} SMs; driver / power limit: "
                                        f"{env.get('nvidia_smi') or '-'})" if env["mode"] == "gpu" else ""),
        f"- torch {env['torch']}, CUDA {env['cuda']}" + (f", cuDNN {env['cudnn']}" if env.get("cudnn") else "")
        + f", Python {env['python']}, host {env['host']}",
        f"- commit {env['commit']}" + (" (with uncommitted changes)" if env["commit_dirty"] else ""),
        f"- predicted with: {rep['cluster_used']} ({rep['calibration']})",
        f"- each plan: `planner run` (one rank, {rep['dtype']}, AdamW), {rep['warmup']} warm-up + {rep['steps']} "
        "timed steps; measured = median step; memory = peak allocated (CUDA) or tensors (CPU)",
        f"- {rep['fp8']}",
        f"- {rep['elapsed_s']:.0f} s of a {rep['budget_s']} s budget",
        "",
        f"**{s['measured']} of {s['plans']} plans measured** ({s['skipped']} skipped for time, {s['failed']} failed): "
        f"step-time MAPE {_pct(s['step_time_mape'], False)}, bias {_pct(s['step_time_bias'])}, worst "
        f"{_pct(s['step_time_worst'])} (plan {s['step_time_worst_plan']}), Spearman "
        + ("-" if s["spearman"] is None else f"{s['spearman']:.2f}")
        + f"; peak memory MAPE {_pct(s['memory_mape'], False)}, bias {_pct(s['memory_bias'])}"
        + (f". The uncalibrated preset: step-time MAPE {_pct(s['preset_step_time_mape'], False)}, bias "
           f"{_pct(s['preset_step_time_bias'])}" if s["preset_step_time_mape"] is not None else "") + ".",
        "",
        "| id | axis | model | seq | mb | gb | recompute | predicted ms | measured ms | error | preset error "
        "| pred GiB | meas GiB | mem error | status |",
        "|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rep["plans"]:
        status = r["status"] + (f": {r['note']}" if r["note"] and r["status"] != "ok" else "")
        lines.append(
            f"| {r['id']} | {r['axis']} | {r['model']} | {r['seq_len']} | {r['micro_batch']} | {r['global_batch']} "
            f"| {r['recompute']} | {_ms(r.get('predicted_step_time_s'))} | {_ms(r.get('measured_step_time_s'))} "
            f"| {_pct(r.get('step_time_error'))} | {_pct(r.get('preset_step_time_error'))} "
            f"| {_gib(r.get('predicted_peak_gib'))} | {_gib(r.get('measured_peak_gib'))} "
            f"| {_pct(r.get('memory_error'))} | {status.replace('|', '/')} |")
    lines += ["", "Step-time MAPE by axis: " + (", ".join(f"{a} {_pct(m, False)}" for a, m in
                                                        s["step_time_mape_by_axis"].items()) or "-"), "",
              "Files: `env.json`, `cluster-profile.json` (calibration), `plans/ID.json` (plan + prediction), "
              "`measured/ID.json` (`planner run`), `steps.tsv`, `logs/`. Written by `bash benchmarks/gpu_check.sh`.",
              ""]
    return "\n".join(lines)


def cmd_report(args: argparse.Namespace) -> int:
    from planner.specs.catalog import load_cluster

    d = Path(args.dir)
    env = json.loads((d / "env.json").read_text())
    steps = {s["step"]: s for s in _read_tsv(d / "steps.tsv")}
    cal = steps.get("calibrate", {})
    preset = None  # the catalog preset's prediction beside the calibrated one
    proc = subprocess.run([sys.executable, __file__, "preset", str(d / "env.json")], capture_output=True, text=True)
    if proc.returncode == 0 and proc.stdout.strip() != args.cluster:
        preset = load_cluster(proc.stdout.strip(), gpus=1)
    rows = [plan_row(spec, d / "plans" / f"{spec['id']}.json", d / "measured" / f"{spec['id']}.json",
                     steps.get(f"run {spec['id']}"), preset) for spec in _read_tsv(d / "plans.tsv")]
    rep = {
        "kind": "gpu-check", "env": env, "dtype": args.dtype, "steps": args.steps, "warmup": args.warmup,
        "budget_s": args.budget, "elapsed_s": args.elapsed,
        "cluster_used": Path(args.cluster).name if args.cluster.endswith(".json") else f"catalog preset {args.cluster}",
        "calibration": f"calibration {cal.get('status', 'not run')}" + (f": {cal['note']}" if cal.get("status") !=
                                                                         "ok" and cal.get("note") else ""),
        "fp8": FP8_NOTE.format(dtype=args.dtype) + ("; this GPU has FP8 tensor cores" if env.get("fp8_hardware")
                                                    else "; this device has no FP8 tensor cores either"),
        "summary": summary(rows), "plans": rows, "steps_log": list(steps.values()),
    }
    (d / "report.json").write_text(json.dumps(rep, indent=1) + "\n")
    (d / "report.md").write_text(markdown(rep))
    s = rep["summary"]
    rho = "-" if s["spearman"] is None else f"{s['spearman']:.2f}"
    print(f"{s['measured']}/{s['plans']} plans measured: step-time MAPE {_pct(s['step_time_mape'], False)}, "
          f"bias {_pct(s['step_time_bias'])}, Spearman {rho}, memory MAPE {_pct(s['memory_mape'], False)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check_report.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("env")
    p.add_argument("out")
    p.add_argument("--device", choices=("cuda", "cpu"), required=True)
    p.add_argument("--nvidia-smi", default="nvidia-smi")
    p.set_defaults(func=cmd_env)
    p = sub.add_parser("preset")
    p.add_argument("env")
    p.set_defaults(func=cmd_preset)
    p = sub.add_parser("report")
    p.add_argument("dir")
    p.add_argument("--cluster", required=True)
    p.add_argument("--dtype", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--budget", type=int, required=True)
    p.add_argument("--elapsed", type=float, required=True)
    p.set_defaults(func=cmd_report)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
