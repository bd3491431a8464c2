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
from planner.export.check import check_deepspeed, check_torchtitan, framework_versions, materialised_gib_per_rank
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
            if None in results:
                out.append(("torchtitan", None, f"one rank materialises {materialised_gib_per_rank(doc):.0f} GiB of "
                            "parameters when torchtitan builds the trainer: more than half this machine's memory"))
            else:
                failed = [r for r in results if r is not None and not r.passed]
                out.append(("torchtitan", not failed, (failed or results)[0].reason))  # type: ignore[union-attr]
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
        if entry["format"] in ("torchtitan", "deepspeed", "megatron", "megatron-bridge") \
                and name.endswith((".py", ".json", ".args")):
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
        try:
            results = check_folder(folder)
        except Exception as exc:  # one folder's failure must not hide the others' verdicts
            results = [("export", False, f"{type(exc).__name__}: {exc}")]
        for fmt, passed, reason in results:
            verdict = "skipped" if passed is None else "passed" if passed else "failed"
            bad += passed is False
            print(f"{folder.name} {fmt}: {verdict}: {reason}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
