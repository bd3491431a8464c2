"""Fit the shipped GPU catalog's efficiencies to the shipped measured runs, reproducibly.

Runs `planner fit` on the measured tables (planner/data/validation/measured-2026/: NVIDIA
dgxc-benchmarking, torchtitan, BLOOM) with leave-one-source-out and leave-one-family-out errors, then
writes every adopted value (`gemm_efficiency`, `attention_efficiency`, `gemm_efficiency_by_dtype`) into
planner/data/gpus.json with a note in the GPU's `source` naming this command, the run count and date.

Kept, not refitted: A100-SXM4-80GB's `gemm_efficiency`, fitted to Korthikanti et al. 2022 Table 4
(Megatron-LM's own measurements of the layer the cost model's formulas come from;
`python benchmarks/fit_a100.py`). The measured tables' A100 runs (BLOOM's 2022 Megatron-DeepSpeed stack,
torchtitan) alone would give a lower value; the fit prints it. A value fitted at an end of the physical
range is not adopted (the fit says which): the model misses another mechanism on those runs. Every
other GPU starts from the unfitted assumption (`--from-assumptions`), so the script gives the same
values whether or not it ran before, and its cross-validation never predicts a held-out run with a
value fitted on it.

Usage: python benchmarks/fit_catalog.py [--dry-run]   (about a minute on one core)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import tempfile
from pathlib import Path

from planner.cli import main as planner_main
from planner.fit import ASSUMED_GEMM_EFFICIENCY
from planner.io import atomic_write_text

CATALOG = Path(__file__).resolve().parents[1] / "planner" / "data" / "gpus.json"
KEEP = ["A100-SXM4-80GB:gemm_efficiency"]
NOTE = re.compile(r" \| fitted by python benchmarks/fit_catalog\.py[^|]*")  # every earlier fit's note


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the fit, leave the catalog as it is")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "fit.json"
        argv = ["fit", "--from-assumptions", "--out", str(out)] + [x for k in KEEP for x in ("--keep", k)]
        rc = planner_main(argv)
        if rc:
            return rc
        doc = json.loads(out.read_text())
    if args.dry_run:
        return 0
    catalog = json.loads(CATALOG.read_text(encoding="utf-8"))
    pooled = {k: v["pooled"]["mape"] for k, v in doc["cross_validation"].items()}
    changed = []
    for gpu_name in sorted({f["gpu"] for f in doc["fitted"]}):
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
