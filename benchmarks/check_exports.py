"""Run the torchtitan and DeepSpeed exports of each example folder through the frameworks' own code.

Called by benchmarks/check_exports.sh (which checks the Megatron-LM exports in its own Python 3.12
environment); prints one line per export: `<folder> <format>: passed|failed|skipped: <reason>`.
Usage: python benchmarks/check_exports.py FOLDER [FOLDER ...]
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from planner.export import export_files
from planner.export.check import check_deepspeed, check_torchtitan, framework_versions
from planner.plan import load_plan


def check_folder(folder: Path) -> list[tuple[str, bool | None, str]]:
    out: list[tuple[str, bool | None, str]] = []
    versions = framework_versions()
    manifest = json.loads((folder / "manifest.json").read_text())["files"]
    if "torchtitan_job.py" in manifest:
        doc = load_plan(folder / manifest["torchtitan_job.py"]["plan"])
        if versions["torchtitan"] == "absent":
            out.append(("torchtitan", None, "torchtitan is not installed"))
        else:
            files = {"torchtitan_job.py": (folder / "torchtitan_job.py").read_text()}
            last = (doc.plan.pp - 1) * (doc.plan.world_size // doc.plan.pp)
            with tempfile.TemporaryDirectory() as tmp:
                results = [check_torchtitan(doc, files, Path(tmp) / str(r), rank=r) for r in sorted({0, last})]
            failed = [r for r in results if not r.passed]
            out.append(("torchtitan", not failed, (failed or results)[0].reason))
    if "ds_config.json" in manifest:
        doc = load_plan(folder / manifest["ds_config.json"]["plan"])
        if versions["deepspeed"] == "absent":
            out.append(("deepspeed", None, "deepspeed is not installed"))
        else:
            config = json.loads((folder / "ds_config.json").read_text())
            r = check_deepspeed(config, doc.plan.dp, doc.plan.world_size)
            out.append(("deepspeed", r.passed, r.reason))
    # the committed files must be what the exporter writes for the committed plan
    for name, entry in manifest.items():
        if entry["format"] in ("torchtitan", "deepspeed", "megatron") and name.endswith((".py", ".json", ".args")):
            doc = load_plan(folder / entry["plan"])
            fresh = export_files(doc, entry["format"], primary_name=name).get(name)
            if fresh is not None and fresh != (folder / name).read_text():
                out.append((entry["format"], False, f"{name} is stale: rerun examples/make_exports.py"))
    return out


def main() -> int:
    versions = framework_versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    bad = 0
    for arg in sys.argv[1:]:
        folder = Path(arg)
        for fmt, passed, reason in check_folder(folder):
            verdict = "skipped" if passed is None else "passed" if passed else "failed"
            bad += passed is False
            print(f"{folder.name} {fmt}: {verdict}: {reason}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
