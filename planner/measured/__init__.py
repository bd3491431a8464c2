"""Published measured GPU training runs as planner plans: the acceptance set for expressing today's runs
and the scoreboard for the cost model's accuracy on them.

`printed_runs()` reads the shipped tables (planner/data/validation/measured-2026/, see SOURCES.md there)
into `PrintedRun` records, one per row, as each source printed it; `express(run)` turns one into a
`MeasuredRun` (ModelSpec, ClusterSpec, Plan, the measurement, framework, source) or a `NotExpressed`
with every reason (`planner.measured.reasons`). `benchmarks/measured_runs.py` tabulates them;
`benchmarks/accuracy_measured.py` predicts the expressible ones (`planner.measured.accuracy`), each run once
(`distinct`: a source that prints one measurement in several tables, `planner.measured.reprints`).
"""

from __future__ import annotations

import csv
from pathlib import Path

from planner.measured import bloom, dgxc, torchtitan
from planner.measured.express import MeasuredRun, NotExpressed, express, planner_features
from planner.measured.printed import PrintedRun, read_csv
from planner.measured.reprints import Distinct, distinct

READERS = {"dgxc": dgxc.read, "torchtitan": torchtitan.read, "bloom": bloom.read}
SOURCES = tuple(READERS)
FILES = {"dgxc": dgxc.FILE, "torchtitan": torchtitan.FILE, "bloom": bloom.FILE}

__all__ = ["FILES", "SOURCES", "Distinct", "MeasuredRun", "NotExpressed", "PrintedRun", "distinct", "express",
           "express_all", "planner_features", "printed_runs", "read_table"]


def printed_runs(sources: tuple[str, ...] | list[str] = SOURCES) -> list[PrintedRun]:
    """Every row of the named sources (all three by default), in file order."""
    unknown = [s for s in sources if s not in READERS]
    if unknown:
        raise ValueError(f"unknown source(s) {', '.join(unknown)} (known: {', '.join(SOURCES)})")
    return [run for s in sources for run in READERS[s]()]


def express_all(runs: list[PrintedRun], substitute: bool = False) -> list[MeasuredRun | NotExpressed]:
    """`express` over many runs with one probe of the planner's features."""
    feats = planner_features()
    return [express(r, substitute, feats) for r in runs]


def read_table(path: str | Path) -> list[PrintedRun]:
    """The rows of a CSV file in the columns of one of the shipped tables (told apart by its header row);
    ValueError naming the file and the known layouts otherwise."""
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"cannot read {p}: {exc}") from exc
    header = set(rows[0]) if rows else set()
    for source in SOURCES:
        if header and set(read_csv(FILES[source])[0]) <= header:
            return READERS[source](rows)
    raise ValueError(f"{p}: not in the columns of a known measured table ({', '.join(SOURCES)}: "
                     f"planner/data/validation/measured-2026/)")
