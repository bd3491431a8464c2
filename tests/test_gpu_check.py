"""benchmarks/gpu_check.sh, the prepared single-GPU check: its --cpu-dry rehearsal end to end (calibrate,
predict, run every plan, report), checked against the runs' own measured.json files (the report's
numbers must be theirs, and its MAPE / bias / Spearman must follow from them); without a GPU and without
--cpu-dry it exits 2 with one line; and its GPU plan set is valid and fits an 80 GB H100 under a one-rank
CUDA calibration profile (the branch that only a GPU machine runs)."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import statistics
import subprocess
from pathlib import Path

import pytest

from planner.calibrate import build_profile
from planner.cost import estimate
from planner.plan import Plan
from planner.specs.catalog import load_cluster, load_model

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 1800) -> subprocess.CompletedProcess:
    full = {**os.environ, "GPU_CHECK_NVIDIA_SMI": "/nonexistent/nvidia-smi", **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout)  # a hang guard only


def _ranks(xs: list[float]) -> list[float]:
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    for rank, i in enumerate(order):
        r[i] = float(rank)
    return r


def _pearson(a: list[float], b: list[float]) -> float:
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    return cov / (sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b)) ** 0.5


def test_no_gpu_exits_2_with_one_line(tmp_path: Path) -> None:
    proc = _run("--out-root", str(tmp_path / "profiles"), timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no NVIDIA GPU" in lines[0] and "--cpu-dry" in lines[0], proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "profiles").exists()  # nothing written


@pytest.mark.parametrize("args", [["--budget", "abc"], ["--budget", "10"], ["--frobnicate"], ["--out-root"]])
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str]) -> None:
    proc = _run("--cpu-dry", *args, timeout=120)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_cpu_dry_end_to_end(tmp_path: Path) -> None:
    out_root = tmp_path / "profiles"
    today = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    existing = out_root / f"{today}-cpu-dry"  # an earlier report of today: must not be overwritten
    existing.mkdir(parents=True)
    (existing / "report.md").write_text("earlier report\n")
    # a budget no machine runs out of: what is checked is the sequence and the report, never the time
    proc = _run("--cpu-dry", "--out-root", str(out_root), "--budget", "3600")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (existing / "report.md").read_text() == "earlier report\n"
    dirs = sorted(p for p in out_root.iterdir() if p != existing)
    assert len(dirs) == 1
    d = dirs[0]
    assert d.name == f"{today}-cpu-dry-2" or not d.name.startswith(today)  # (a run across midnight UTC)
    assert re.search(r"\[gpu_check +\d+s / 3600s\] plan 06/6", proc.stderr)  # progress per step

    rep = json.loads((d / "report.json").read_text())
    md = (d / "report.md").read_text()
    assert rep["env"]["mode"] == "cpu-dry" and "no GPU was used" in md and "fp8 not run" in md
    assert rep["calibration"] == "calibration ok" and (d / "cluster-profile.json").exists()
    rows = rep["plans"]
    assert [r["status"] for r in rows] == ["ok"] * 6

    # the plans span the axes: micro-batch, recompute none / selective / full, sequence length, model size
    plans = {r["id"]: json.loads((d / "plans" / f"{r['id']}.json").read_text()) for r in rows}
    assert {p["recompute"] for p in plans.values()} == {"none", "selective", "full"}
    assert len({p["micro_batch"] for p in plans.values()}) >= 2
    assert len({p["seq_len"] for p in plans.values()}) >= 2
    assert len({p["model"]["num_layers"] for p in plans.values()}) >= 2
    assert all(p["num_gpus"] == 1 for p in plans.values())

    pred, meas = [], []
    for r in rows:
        m = json.loads((d / "measured" / f"{r['id']}.json").read_text())
        p = plans[r["id"]]
        assert Path(m["plan_file"]).resolve() == (d / "plans" / f"{r['id']}.json").resolve()
        assert m["status"] == "ok" and len(m["step_times_s"]) == rep["steps"]
        step = statistics.median(m["step_times_s"])  # recomputed from the raw step times
        assert r["measured_step_time_s"] == pytest.approx(step, rel=1e-12)
        assert r["predicted_step_time_s"] == pytest.approx(p["prediction"]["step_time_s"], rel=1e-12)
        assert r["step_time_error"] == pytest.approx(p["prediction"]["step_time_s"] / step - 1, rel=1e-9)
        assert r["measured_peak_gib"] == pytest.approx(m["memory"]["peak_bytes"] / 2**30, rel=1e-12)
        assert r["memory_error"] == pytest.approx(r["predicted_peak_gib"] / r["measured_peak_gib"] - 1, rel=1e-9)
        assert (r["micro_batch"], r["seq_len"], r["recompute"]) == (p["micro_batch"], p["seq_len"], p["recompute"])
        pred.append(p["prediction"]["step_time_s"])
        meas.append(step)
    errors = [a / b - 1 for a, b in zip(pred, meas, strict=True)]
    s = rep["summary"]
    assert s["measured"] == s["plans"] == 6 and s["skipped"] == s["failed"] == 0
    assert s["step_time_mape"] == pytest.approx(statistics.fmean(abs(e) for e in errors), rel=1e-9)
    assert s["step_time_bias"] == pytest.approx(statistics.fmean(errors), rel=1e-9)
    assert abs(s["step_time_worst"]) == pytest.approx(max(abs(e) for e in errors), rel=1e-9)
    if len(set(pred)) == len(pred) and len(set(meas)) == len(meas):  # no ties: plain Pearson on ranks
        assert s["spearman"] == pytest.approx(_pearson(_ranks(pred), _ranks(meas)), abs=1e-9)
    assert f"step-time MAPE {s['step_time_mape'] * 100:.1f}%" in md
    for r in rows:  # every plan's line in the markdown carries its measured milliseconds
        assert f"| {r['measured_step_time_s'] * 1e3:.1f} |" in md


def _gpu_plans() -> list[tuple[str, str, int, int, int, str]]:
    """The GPU branch's plan table, read from the script."""
    text = SCRIPT.read_text()
    block = text.split('DTYPE=bf16', 1)[1].split('PLANS="', 1)[1].split('"', 1)[0]
    out = []
    for line in block.strip().splitlines():
        _, axis, model, seq, mb, gb, rc = line.split("|")
        out.append((axis, model, int(seq), int(mb), int(gb), rc))
    return out


def test_gpu_plan_set_under_a_one_rank_cuda_profile() -> None:
    # raw timings as one CUDA rank writes them: no collectives, overlap or CPU-only benchmarks
    gemm = [[m, k, n, 2.0 * m * k * n, 2.0 * m * k * n / 600e12]
            for m, k, n in [(2048, 1024, 1024), (4096, 4096, 4096), (8192, 4096, 16384)]]
    raw = {"gemm": gemm, "memory": {"bandwidth": 4.0e12, "kernel_overhead_s": 5e-6}, "collectives": {},
           "overlap": {}, "tp_overhead": {}, "kernels": {"activation_rate": 1e11, "attention_flops_per_s": 4e14},
           "framework": {}, "contention": {},
           "env": {"host": "h", "device": "NVIDIA H200", "device_type": "cuda", "backend": "nccl", "torch": "x",
                   "world_size": 1, "local_world_size": 1, "nnodes": 1, "cpu_count": 16, "dtype": "bfloat16",
                   "date": "2026-01-01T00:00:00+00:00", "quick": False, "memory_bytes": 150e9, "num_sms": 132}}
    profile = build_profile(raw)
    assert (profile.num_gpus, profile.device) == (1, "cuda")
    assert profile.gpu.gemm_curve and profile.gpu.attention_efficiency == pytest.approx(4e14 / profile.gpu.peak("bf16"))
    h100 = load_cluster("dgx-h100", gpus=1)
    plans = _gpu_plans()
    assert {p[5] for p in plans} == {"none", "selective", "full"}
    assert min(p[2] for p in plans) == 512 and max(p[2] for p in plans) == 16384
    assert len({p[3] for p in plans}) >= 3 and len({p[1] for p in plans}) >= 3
    for axis, name, seq, mb, gb, rc in plans:
        model = load_model(name, seq_len=seq)
        plan = Plan(micro_batch=mb, global_batch=gb, recompute=rc, dtype="bf16", framework="this")
        got = estimate(model, profile, plan)
        assert got["step_time_s"] > 0, (axis, name)
        assert estimate(model, h100, plan)["fits"], (axis, name, seq, mb)  # also fits an 80 GB H100
