"""Regenerate examples/exports/: the search's best plan for two large jobs, exported to every format.

Why: users (and reviewers) can read what an export looks like for a real job without running the
search, and tests/test_export.py re-exports the committed plans to check the files still match.

For each job this runs `planner plan ... --out plan.json` (the search's best plan), then writes
megatron.args (+ megatron.launch.sh, megatron.sbatch), bridge_pretrain.py (+ bridge.launch.sh,
bridge.sbatch), torchtitan_job.py (+ torchtitan.launch.sh,
torchtitan.sbatch), predicted_trace.json and, where DeepSpeed can run the plan, ds_config.json
(+ ds_config.megatron-deepspeed.args, ds_config.launch.sh, ds_config.sbatch). Where a framework
cannot run the plan at all, <format>-refused.txt keeps the exporter's message; for DeepSpeed
(context parallelism together with tensor / pipeline parallelism) the best plan it can run (what
the message advises: `--cp 1 --vpp 1` with `--pp 1` or `--zero 0 1`, the faster of the two) is
searched and exported instead: plan-deepspeed.json -> ds_config.json.
manifest.json records which plan file and format produced each file.
benchmarks/check_exports.sh runs every file through the frameworks' own code.

Run from the repository root: python examples/make_exports.py re-exports the committed plans (seconds);
--replan searches them again first (about a minute on two cores).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from planner.cli import main as planner
from planner.errors import PlannerError
from planner.export import export_files
from planner.io import atomic_write_json, atomic_write_text
from planner.plan import load_plan
from planner.trace import predicted_trace

OUT = Path(__file__).resolve().parent / "exports"

JOBS = {
    # GPT-3 175B as trained in Narayanan et al. 2021 (1536 sequences of 2048 tokens per step).
    "gpt3-175b_1024xA100": ["--model", "gpt3-175b", "--cluster", "dgx-a100-80gb", "--gpus", "1024",
                            "--global-batch", "1536"],
    # Llama 3 70B at its 8192-token context: 1024 sequences = 8.4M tokens per step (Llama 3 used
    # 4M-16M token batches), on 64 DGX H100 nodes.
    "llama3-70b_512xH100": ["--model", "llama3-70b", "--cluster", "dgx-h100", "--gpus", "512",
                            "--global-batch", "1024"],
}


def search(folder: Path, name: str, argv: list[str]) -> Path:
    path = folder / name
    if planner(["plan", *argv, "--top", "3", "--out", str(path)]) != 0:
        raise SystemExit(f"planner plan {' '.join(argv)} failed")
    return path


def write_format(folder: Path, plan_file: Path, fmt: str, primary: str, manifest: dict) -> None:
    for name, text in export_files(load_plan(plan_file), fmt, primary_name=primary).items():
        atomic_write_text(folder / name, text)
        if name.endswith((".sh", ".sbatch")):
            os.chmod(folder / name, 0o755)
        manifest[name] = {"plan": plan_file.name, "format": fmt}


def refused(folder: Path, fmt: str, exc: PlannerError) -> None:
    atomic_write_text(folder / f"{fmt}-refused.txt", f"planner export plan.json --format {fmt}\n"
                                                      f"planner: error: {exc}\n")


def make(job: str, argv: list[str], replan: bool) -> None:
    folder = OUT / job
    old = json.loads((folder / "manifest.json").read_text()) if (folder / "manifest.json").exists() else None
    if replan or old is None:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        commands = [f"planner plan {' '.join(argv)} --out plan.json"]
        search(folder, "plan.json", argv)
    else:  # re-export the committed plans: only the exporters changed
        keep = {"plan.json", "plan-deepspeed.json", "predicted_trace.json", "manifest.json"}
        for path in folder.iterdir():
            if path.name not in keep:
                path.unlink()
        commands = old["commands"]
    plan_file = folder / "plan.json"
    manifest: dict[str, dict[str, str]] = {"plan.json": {"plan": "plan.json", "format": "plan"}}
    write_format(folder, plan_file, "megatron", "megatron.args", manifest)
    write_format(folder, plan_file, "megatron-bridge", "bridge_pretrain.py", manifest)
    try:
        write_format(folder, plan_file, "torchtitan", "torchtitan_job.py", manifest)
    except PlannerError as exc:
        refused(folder, "torchtitan", exc)
    if replan or old is None:
        atomic_write_json(folder / "predicted_trace.json", predicted_trace(load_plan(plan_file)))
    manifest["predicted_trace.json"] = {"plan": "plan.json", "format": "trace"}
    try:
        write_format(folder, plan_file, "deepspeed", "ds_config.json", manifest)
    except PlannerError as exc:
        refused(folder, "deepspeed", exc)
        ds_plan = folder / "plan-deepspeed.json"
        if replan or not ds_plan.exists():
            # What the message advises: no cp, no interleaving, and ZeRO <= 1 wherever pp > 1.
            best = None
            for extra in (["--pp", "1"], ["--zero", "0", "1"]):
                ds_argv = [*argv, "--cp", "1", "--vpp", "1", *extra]
                candidate = search(folder, "plan-deepspeed.json", ds_argv)
                step = load_plan(candidate).prediction["step_time_s"]
                if best is None or step < best[0]:
                    best = (step, ds_argv, candidate.read_text())
            assert best is not None
            commands.append(f"planner plan {' '.join(best[1])} --out plan-deepspeed.json  (the faster of "
                            f"--pp 1 and --zero 0 1)")
            atomic_write_text(ds_plan, best[2])
        manifest["plan-deepspeed.json"] = {"plan": "plan-deepspeed.json", "format": "plan"}
        write_format(folder, ds_plan, "deepspeed", "ds_config.json", manifest)
    atomic_write_json(folder / "manifest.json", {"commands": commands, "files": manifest})
    print(f"{folder}: {', '.join(sorted(manifest))}", file=sys.stderr)


if __name__ == "__main__":
    replan = "--replan" in sys.argv[1:]
    for job, argv in JOBS.items():
        make(job, argv, replan)
