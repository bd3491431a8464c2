"""Regenerate examples/exports/: the search's best plan for two large jobs, exported to every format.

Why: users (and reviewers) can read what an export looks like for a real job without running the
search, and tests/test_export.py re-exports the committed plans to check the files still match.

For each job this runs `planner plan ... --out plan.json` (the search's best plan), then writes
megatron.args, torchtitan.toml (+ torchtitan.overrides.txt), predicted_trace.json and, where
DeepSpeed can run the plan, ds_config.json (+ ds_config.megatron-deepspeed.args). Where it cannot
(context parallelism together with tensor / pipeline parallelism), deepspeed-refused.txt keeps the
exporter's message, and the best plan DeepSpeed can run (what that message advises: `--cp 1 --vpp 1`
with `--pp 1` or `--zero 0 1`, the faster of the two) is searched and exported instead:
plan-deepspeed.json -> ds_config.json.
manifest.json records which plan file and format produced each file.

Run from the repository root: python examples/make_exports.py  (about a minute on two cores).
"""

from __future__ import annotations

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
        manifest[name] = {"plan": plan_file.name, "format": fmt}


def make(job: str, argv: list[str]) -> None:
    folder = OUT / job
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    commands = [f"planner plan {' '.join(argv)} --out plan.json"]
    manifest: dict[str, dict[str, str]] = {"plan.json": {"plan": "plan.json", "format": "plan"}}
    plan_file = search(folder, "plan.json", argv)
    doc = load_plan(plan_file)
    write_format(folder, plan_file, "megatron", "megatron.args", manifest)
    write_format(folder, plan_file, "torchtitan", "torchtitan.toml", manifest)
    atomic_write_json(folder / "predicted_trace.json", predicted_trace(doc))
    manifest["predicted_trace.json"] = {"plan": "plan.json", "format": "trace"}
    try:
        write_format(folder, plan_file, "deepspeed", "ds_config.json", manifest)
    except PlannerError as exc:
        atomic_write_text(folder / "deepspeed-refused.txt", f"planner export plan.json --format deepspeed\n"
                                                            f"planner: error: {exc}\n")
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
        atomic_write_text(folder / "plan-deepspeed.json", best[2])
        ds_plan = folder / "plan-deepspeed.json"
        manifest["plan-deepspeed.json"] = {"plan": "plan-deepspeed.json", "format": "plan"}
        write_format(folder, ds_plan, "deepspeed", "ds_config.json", manifest)
    atomic_write_json(folder / "manifest.json", {"commands": commands, "files": manifest})
    print(f"{folder}: {', '.join(sorted(manifest))}", file=sys.stderr)


if __name__ == "__main__":
    for job, argv in JOBS.items():
        make(job, argv)
