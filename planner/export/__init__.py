"""Export a plan as a launchable job for Megatron-LM, Megatron-Bridge, torchtitan and DeepSpeed (Megatron-DeepSpeed).

Why: a plan is only useful if it runs in the framework the user already has. Each format writes the
framework's own configuration (flags, a config-registry module, a ds_config) with the model's exact
architecture, plus a multi-node launch script (torchrun with --nnodes / --node-rank / --rdzv-*)
and a SLURM sbatch that runs it once per node. Every export was run through the framework's own
parsers and validators (`CHECKED_WITH`; tests/test_export.py and benchmarks/check_exports.sh) and
names the releases in its header.

When a framework cannot run the plan exactly, the export says so in `# WARNING:` lines, writes the
closest configuration it can run and re-estimates that one; `strict=True` (CLI `--strict`)
refuses instead (`ExportError`, exit status 2). A plan the framework cannot approximate at all is
always an `ExportError`.

One module per framework, each with one table from plan fields to the framework's settings:
`megatron.MEGATRON_FLAGS`, `torchtitan.TORCHTITAN_FIELDS`, `deepspeed.DEEPSPEED_CONFIG` and
`deepspeed.MEGATRON_DEEPSPEED_FLAGS`; Megatron-Bridge translates the Megatron-LM flags
(`bridge.BRIDGE_FIELDS`), so the two cannot differ.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from planner.export.bridge import bridge_files, bridge_warnings
from planner.export.common import CHECKED_WITH, Build, Deviation, ExportError, realised_plan
from planner.export.deepspeed import deepspeed_build, deepspeed_config, deepspeed_files
from planner.export.megatron import megatron_files, megatron_items
from planner.export.serving import SERVE_FORMATS, serve_export_files, serve_export_warnings
from planner.export.torchtitan import torchtitan_files, torchtitan_warnings
from planner.plan import PlanDocument, load_plan

__all__ = ["CHECKED_WITH", "FILE_NAMES", "FORMATS", "Deviation", "ExportError", "deepspeed_config", "export_files",
           "export_plan", "export_warnings", "realised_plan"]

FORMATS = ("megatron", "megatron-bridge", "torchtitan", "deepspeed")

# Default file names of each format's artefacts (the first is the primary one; its stem names the rest).
FILE_NAMES = {
    "megatron": ("megatron.args", "megatron.launch.sh", "megatron.sbatch"),
    "megatron-bridge": ("bridge_pretrain.py", "bridge.launch.sh", "bridge.sbatch"),
    "torchtitan": ("torchtitan_job.py", "torchtitan.launch.sh", "torchtitan.sbatch"),
    "deepspeed": ("ds_config.json", "ds_config.megatron-deepspeed.args", "ds_config.launch.sh", "ds_config.sbatch"),
}


def _stem(fmt: str, primary: str | None) -> str:
    if primary is None:
        return {"megatron": "megatron", "megatron-bridge": "bridge", "torchtitan": "torchtitan",
                "deepspeed": "ds_config"}[fmt]
    stem = Path(primary).name.split(".")[0]
    suffix = {"torchtitan": "_job", "megatron-bridge": "_pretrain"}.get(fmt)
    return stem.removesuffix(suffix) if suffix else stem


def export_files(doc: PlanDocument, fmt: str, strict: bool = False,
                 primary_name: str | None = None) -> dict[str, str]:
    """Every artefact of `fmt` as {file name: text}, the primary one first.

    `primary_name` names the primary file; the others are named after its stem (`<stem>.launch.sh`, ...).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    stem = _stem(fmt, primary_name)
    if fmt == "megatron":
        return megatron_files(doc, strict, stem)
    if fmt == "megatron-bridge":
        return bridge_files(doc, strict, stem)
    if fmt == "torchtitan":
        return torchtitan_files(doc, strict, stem)
    return deepspeed_files(doc, strict, stem)


def export_plan(doc: PlanDocument, fmt: str, strict: bool = False) -> str:
    """The primary export text of `fmt` (the dashboard's download): args, config module or ds_config JSON."""
    return next(iter(export_files(doc, fmt, strict).values()))


def export_warnings(doc: PlanDocument, fmt: str) -> list[str]:
    """The WARNING lines of an export (why: a JSON file cannot carry them, so the CLI prints them)."""
    if fmt == "torchtitan":
        return torchtitan_warnings(doc)
    if fmt == "megatron-bridge":
        return bridge_warnings(doc)
    b = Build(doc, fmt)
    if fmt == "megatron":
        megatron_items(doc, b)
    else:
        deepspeed_build(doc, b)
    return b.warnings(strict=False)


def cmd_export(args: argparse.Namespace) -> int:
    """`planner export`: print the primary artefact, or write all artefacts next to --out."""
    from planner.io import atomic_write_text

    if args.format in SERVE_FORMATS:  # serving plans: vLLM / SGLang / TensorRT-LLM (planner/export/serving.py)
        return _export_serving(args)
    doc = load_plan(args.plan)
    files = export_files(doc, args.format, args.strict, Path(args.out).name if args.out else None)
    for line in export_warnings(doc, args.format):
        print(f"planner: {line.replace('WARNING: ', 'warning: ', 1)}", file=sys.stderr)
    if not args.out:
        sys.stdout.write(next(iter(files.values())))
        print(f"planner: note: use --out to also write {', '.join(list(files)[1:])}", file=sys.stderr)
        return 0
    out = Path(args.out)
    for name, text in files.items():
        path = out if name == out.name else out.with_name(name)
        atomic_write_text(path, text)
        if name.endswith((".sh", ".sbatch")):
            os.chmod(path, 0o755)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _export_serving(args: argparse.Namespace) -> int:
    from planner.io import atomic_write_text
    from planner.serve.plan import load_serve_plan

    doc = load_serve_plan(args.plan)
    files = serve_export_files(doc, args.format, args.strict, Path(args.out).name.split(".")[0] if args.out else None)
    for line in serve_export_warnings(doc, args.format):
        print(f"planner: {line.replace('WARNING: ', 'warning: ', 1)}", file=sys.stderr)
    if not args.out:
        sys.stdout.write(next(iter(files.values())))
        return 0
    out = Path(args.out)
    for name, text in files.items():
        path = out.with_name(name)
        atomic_write_text(path, text)
        if name.endswith(".sh"):
            os.chmod(path, 0o755)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def register(sub: Any) -> None:
    """Add `planner export` to the CLI's subcommands."""
    p = sub.add_parser("export", help="write a plan as a Megatron-LM / Megatron-Bridge / torchtitan / DeepSpeed "
                       "job with launch scripts")
    p.add_argument("plan", help="plan JSON (from planner plan --out or planner estimate --out)")
    p.add_argument("--format", required=True, choices=FORMATS + SERVE_FORMATS,
                   help="target framework (vllm, sglang, trtllm: for serving plans from planner serve)")
    p.add_argument("--out", help="primary file to write (default: print it); the launch scripts and other "
                   "companion files are written next to it")
    p.add_argument("--strict", action="store_true",
                   help="exit 2 instead of exporting the closest configuration when the framework "
                   "cannot run the plan exactly")
    p.set_defaults(func=cmd_export)
