"""Write the exports of tests/test_export.py's VARIANTS (every exporter branch) as example-style folders.

Why: benchmarks/check_exports.sh --variants runs all of them through the frameworks' own code, beyond
the two committed examples. Usage: python benchmarks/write_export_variants.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_export import VARIANTS  # noqa: E402

from planner.export import FORMATS, ExportError, export_files  # noqa: E402
from planner.plan import save_plan  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    for i, doc in enumerate(VARIANTS()):
        folder = out / f"v{i:02d}_{doc.model.name}"
        folder.mkdir(parents=True, exist_ok=True)
        save_plan(folder / "plan.json", doc)
        manifest = {"plan.json": {"plan": "plan.json", "format": "plan"}}
        for fmt in FORMATS:
            try:
                files = export_files(doc, fmt)
            except ExportError as exc:
                (folder / f"{fmt}-refused.txt").write_text(f"{exc}\n")
                continue
            for name, text in files.items():
                (folder / name).write_text(text)
                manifest[name] = {"plan": "plan.json", "format": fmt}
        (folder / "manifest.json").write_text(json.dumps({"commands": [], "files": manifest}, indent=2) + "\n")
        print(folder)


if __name__ == "__main__":
    main()
