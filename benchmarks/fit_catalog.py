"""Fit the shipped GPU catalog's efficiencies to the shipped measured runs, reproducibly.

Runs `planner fit` on the measured tables (planner/data/validation/measured-2026/: NVIDIA
dgxc-benchmarking, torchtitan, BLOOM) with leave-one-source-out and leave-one-family-out errors, then
writes every adopted value (`gemm_efficiency`, `attention_efficiency`, `gemm_efficiency_by_dtype`) into
planner/data/gpus.json with a note in the GPU's `source` naming this command, the run count and date,
and each framework's adopted overlap slowdown (`planner fit --overlaps`) into
planner/data/framework_fits.json (the profiles in frameworks.json state only what their frameworks'
documentation and source do), then rewrites the track record `planner explain` prints
(`accuracy_measured.py --write-record`).

Kept, not refitted: A100-SXM4-80GB's `gemm_efficiency`, fitted to Korthikanti et al. 2022 Table 4
(Megatron-LM's own measurements of the layer the cost model's formulas come from;
`python benchmarks/fit_a100.py`). The measured tables' A100 runs (BLOOM's 2022 Megatron-DeepSpeed stack,
torchtitan) alone would give a lower value; the fit prints it. A value fitted at an end of the physical
range is not adopted (the fit says which): the model misses another mechanism on those runs. Every
other GPU starts from the unfitted assumption (`--from-assumptions`), so the script gives the same
values whether or not it ran before, and its cross-validation never predicts a held-out run with a
value fitted on it.

Usage: python benchmarks/fit_catalog.py [--dry-run]   (about a minute and a half on one core)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from planner.cli import main as planner_main
from planner.fit import ASSUMED_GEMM_EFFICIENCY, is_overlap, overlap_of
from planner.io import atomic_write_text

CATALOG = Path(__file__).resolve().parents[1] / "planner" / "data" / "gpus.json"
FRAMEWORK_FITS = CATALOG.with_name("framework_fits.json")
KEEP = ["A100-SXM4-80GB:gemm_efficiency"]
NOTE = re.compile(r" \| fitted by python benchmarks/fit_catalog\.py[^|]*")  # every earlier fit's note


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the fit, leave the catalog as it is")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fit.json"
        argv = ["fit", "--from-assumptions", "--overlaps", "--out", str(out)] + [
            x for k in KEEP for x in ("--keep", k)]
        rc = planner_main(argv)
        if rc:
            return rc
        doc = json.loads(out.read_text())
    if args.dry_run:
        return 0
    catalog = json.loads(CATALOG.read_text(encoding="utf-8"))
    pooled = {k: v["pooled"]["mape"] for k, v in doc["cross_validation"].items()}
    changed = []
    for gpu_name in sorted({f["gpu"] for f in doc["fitted"] if f["gpu"]}):  # ("": a framework's)
        entry = catalog["gpus"][gpu_name]
        kept = {k.split(":", 1)[1] for k in KEEP if k.split(":", 1)[0] == gpu_name}
        derated = bool(entry.get("efficiencies_of"))  # a power-limited part: only its clock is fitted
        if derated:
            entry["clock_fraction"] = 1.0
        else:  # back to the assumption the fit started from, then what it adopts
            if "gemm_efficiency" not in kept:
                entry["gemm_efficiency"] = ASSUMED_GEMM_EFFICIENCY
            if "attention_efficiency" not in kept:
                entry.pop("attention_efficiency", None)
            entry.pop("gemm_efficiency_by_dtype", None)
        values = {f["name"]: f["value"] for f in doc["fitted"] if f["adopted"] and f["gpu"] == gpu_name}
        rows = max(f["rows"] for f in doc["fitted"] if f["gpu"] == gpu_name)
        for name, v in values.items():
            if name in ("gemm_efficiency", "attention_efficiency", "clock_fraction"):
                entry[name] = v
            else:
                key = name[name.index("[") + 1:-1]
                entry.setdefault("gemm_efficiency_by_dtype", {})[key] = v
        if not values:
            entry["source"] = NOTE.sub("", entry["source"])
            continue
        fitted = ", ".join(f"{k} {v:.2f}" for k, v in values.items())
        cv = ", ".join(f"leave-one-{k}-out MAPE {v * 100:.1f}% over all runs" for k, v in pooled.items())
        entry["source"] = NOTE.sub("", entry["source"]) + (
            f" | fitted by python benchmarks/fit_catalog.py ({dt.date.today().isoformat()}, commit "
            f"{doc['commit']}) on the {rows} measured runs on this GPU in planner/data/validation/measured-2026: "
            f"{fitted}; {cv}")
        if values:
            changed.append(gpu_name)
    atomic_write_text(CATALOG, json.dumps(catalog, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {CATALOG.relative_to(CATALOG.parents[2])}: {', '.join(changed) or 'nothing'} updated",
          file=sys.stderr)
    write_framework_fits(doc, pooled)
    # `planner explain`'s track record is the model's errors at these values (planner.track_record): a new
    # process, so that it reads the catalog just written
    return subprocess.call([sys.executable, str(Path(__file__).with_name("accuracy_measured.py")), "--write-record"],
                           stdout=subprocess.DEVNULL)


def write_framework_fits(doc: dict, pooled: dict[str, float]) -> None:
    """Every framework's adopted overlap slowdown, with the runs it came from (the file is rewritten whole:
    a framework whose value is no longer adopted falls back to the cluster's)."""
    cv = ", ".join(f"leave-one-{k}-out MAPE {v * 100:.1f}% over all runs" for k, v in pooled.items())
    fits = {}
    for f in doc["fitted"]:
        if is_overlap(f["name"]) and f["adopted"]:
            fits[overlap_of(f["name"])] = {
                "value": f["value"], "runs": f["rows"],
                "note": f"fitted by python benchmarks/fit_catalog.py (planner fit --overlaps; "
                        f"{dt.date.today().isoformat()}, commit {doc['commit']}) on the {f['rows']} measured runs "
                        f"in planner/data/validation/measured-2026 whose step time depends on it; {cv}"}
    out = {"_comment": "Parameters fitted per framework (a profile and every release that extends it) on measured "
                       "runs by python benchmarks/fit_catalog.py; a profile in frameworks.json that states its own "
                       "value keeps it. overlap_slowdown: the fraction of an overlapped collective's time by which it "
                       "slows the compute beside it under the framework's overlap implementation.",
           "overlap_slowdown": dict(sorted(fits.items()))}
    atomic_write_text(FRAMEWORK_FITS, json.dumps(out, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {FRAMEWORK_FITS.relative_to(FRAMEWORK_FITS.parents[2])}: "
          + (", ".join(f"{k} {v['value']:.2f}" for k, v in sorted(fits.items())) or "no framework value adopted"),
          file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
