"""Counting and formatting for the measured-run benchmarks (benchmarks/measured_runs.py,
benchmarks/accuracy_measured.py): one place for the tallies the README tables show."""

from __future__ import annotations

import datetime
import math
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.measured.express import MeasuredRun, NotExpressed
from planner.measured.reasons import PLANNER, SOURCE, kind

SOURCE_NAMES = {
    "dgxc": "NVIDIA dgxc-benchmarking (NeMo, MaxText, PaxML; H100, GB200)",
    "torchtitan": "torchtitan benchmarks (H100, A100, H200, B200)",
    "bloom": "BLOOM-176B prequel (Megatron-DeepSpeed, A100)",
}


def status(result: MeasuredRun | NotExpressed) -> str:
    """expressible | source (the source leaves the run undefined) | planner (a missing feature)."""
    if isinstance(result, MeasuredRun):
        return "expressible"
    return SOURCE if any(kind(r) == SOURCE for r in result.reasons) else PLANNER


@dataclass
class Tally:
    """Rows, expressible rows and reason counts of one source (or of all)."""

    rows: int = 0
    expressible: int = 0
    source_incomplete: int = 0
    planner_blocked: int = 0
    reasons: Counter = field(default_factory=Counter)  # rows citing each reason
    alone: Counter = field(default_factory=Counter)  # rows a planner reason alone blocks

    def add(self, result: MeasuredRun | NotExpressed) -> None:
        self.rows += 1
        s = status(result)
        if s == "expressible":
            self.expressible += 1
            return
        assert isinstance(result, NotExpressed)
        if s == SOURCE:
            self.source_incomplete += 1
        else:
            self.planner_blocked += 1
        self.reasons.update(result.reasons)
        if len(result.reasons) == 1 and s == PLANNER:
            self.alone[result.reasons[0]] += 1

    @property
    def share(self) -> float:
        """Expressible rows of all rows."""
        return self.expressible / self.rows if self.rows else math.nan

    @property
    def share_complete(self) -> float:
        """Expressible rows of the rows the source defines completely."""
        complete = self.rows - self.source_incomplete
        return self.expressible / complete if complete else math.nan

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "expressible": self.expressible, "source_incomplete": self.source_incomplete,
                "planner_blocked": self.planner_blocked, "share": self.share,
                "share_of_complete_rows": self.share_complete, "reasons": dict(self.reasons.most_common()),
                "reasons_alone": dict(self.alone.most_common())}


def tally(results: list[MeasuredRun | NotExpressed]) -> dict[str, Tally]:
    """Per source, plus "all"."""
    out: dict[str, Tally] = {}
    for r in results:
        out.setdefault(r.run.source, Tally()).add(r)
        out.setdefault("all", Tally()).add(r)
    if "all" in out:
        out["all"] = out.pop("all")  # last
    return out


def markdown(headers: list[str], rows: list[list[Any]], right: set[int] | None = None) -> str:
    """A GitHub markdown table; columns in `right` (default: all but the first) are right-aligned."""
    right = set(range(1, len(headers))) if right is None else right
    sep = ["---:" if i in right else "---" for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(x: float, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x * 100:+.1f}%" if signed else f"{x * 100:.1f}%"


def provenance() -> str:
    """Today's date and the checkout's commit (with '+dirty' when the tree has uncommitted changes)."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    commit = (sha or "unknown") + ("+dirty" if dirty else "")
    return f"{datetime.date.today().isoformat()}, commit {commit}"
