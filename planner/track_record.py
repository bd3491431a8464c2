"""How close the cost model has come on published measured runs like a given plan: its track record.

A prediction is only as good as the model is on runs of its kind, and that differs by an order of
magnitude between kinds (NeMo on H100 within 4-5%; Megatron-DeepSpeed on A100 11% short; torchtitan's
context parallelism at 64k+ tokens 17% short). `python benchmarks/accuracy_measured.py --write-record`
stores every published run it predicts (framework, GPU, precision, parallel sizes, sequence length and
the step-time error) in planner/data/accuracy_record.json, and `planner explain` prints the record of the
runs most like the plan: those that share its framework, then its GPU, its precision, whether it runs
context parallelism, its sequence-length bucket and its TP width, as far down that list as at least
MIN_RUNS runs remain. tests/test_track_record.py keeps the shipped record equal to what the model
predicts today.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

RECORD_FILE = "accuracy_record.json"
MIN_RUNS = 3  # fewer runs than this say too little about a kind of run to print as its record


def seq_len_bucket(seq_len: int) -> str:
    """Issue 14's sequence-length buckets."""
    s = seq_len
    return ("<=2k" if s <= 2048 else "4k" if s <= 4096 else "8k" if s <= 8192 else "16-32k" if s <= 32768
            else ">=64k")


@dataclass(frozen=True)
class RecordRow:
    """One predicted published run: what kind of run it was and the step-time error."""

    source: str
    label: str
    framework: str  # the root framework profile (planner.framework.framework_root)
    gpu: str
    dtype: str
    tp: int
    cp: int
    seq_len: int
    error: float  # (predicted - measured) / measured


@dataclass(frozen=True)
class Record:
    rows: tuple[RecordRow, ...]
    provenance: str  # when, at which commit and by which command it was computed


@dataclass(frozen=True)
class Criterion:
    """One way a published run can be like the plan: its description for the plan and the test."""

    describe: Callable[[RecordRow], str]
    key: Callable[[RecordRow], Any]


# Most telling first: the framework sets overlaps and kernels, the GPU the rates, then the recipe.
CRITERIA: tuple[Criterion, ...] = (
    Criterion(lambda r: r.framework, lambda r: r.framework),
    Criterion(lambda r: f"on {r.gpu}", lambda r: r.gpu),
    Criterion(lambda r: r.dtype, lambda r: r.dtype),
    Criterion(lambda r: "context parallel" if r.cp > 1 else "no context parallelism", lambda r: r.cp > 1),
    Criterion(lambda r: f"seq {seq_len_bucket(r.seq_len)}", lambda r: seq_len_bucket(r.seq_len)),
    Criterion(lambda r: f"tp {r.tp}", lambda r: r.tp),
)


ERROR_DIGITS = 6  # the errors as stored (a millionth of the measured step)


def to_json(rows: list[RecordRow], provenance: str) -> str:
    """The record file's text: one run per line."""
    lines = [json.dumps({**asdict(r), "error": round(r.error, ERROR_DIGITS)}) for r in rows]
    return f'{{"provenance": {json.dumps(provenance)}, "rows": [\n' + ",\n".join(lines) + "\n]}\n"


def load() -> Record | None:
    """The shipped record, or None where the package holds none."""
    path = resources.files("planner.data").joinpath(RECORD_FILE)
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    return Record(tuple(RecordRow(**r) for r in doc["rows"]), doc["provenance"])


def similar(record: Record, like: RecordRow) -> tuple[list[str], list[RecordRow]]:
    """The published runs most like `like` (a plan as a row, its error unused): the criteria matched in
    order while at least MIN_RUNS runs remain, and those runs; ([], []) if fewer than MIN_RUNS share
    its framework."""
    runs = list(record.rows)
    matched: list[str] = []
    for c in CRITERIA:
        narrower = [r for r in runs if c.key(r) == c.key(like)]
        if len(narrower) < MIN_RUNS:
            break
        runs = narrower
        matched.append(c.describe(like))
    return (matched, runs) if matched else ([], [])


def summary_line(record: Record | None, like: RecordRow) -> str:
    """`planner explain`'s track-record line for a plan described by `like`."""
    if record is None:
        return "track record: none shipped (python benchmarks/accuracy_measured.py --write-record writes it)"
    matched, runs = similar(record, like)
    if not runs:
        return (f"track record: fewer than {MIN_RUNS} published measured runs under the framework profile "
                f"{like.framework!r}; `planner validate` measures plans on your own machines")
    errors = [r.error for r in runs]
    mape = sum(abs(e) for e in errors) / len(errors)
    bias = sum(errors) / len(errors)
    unmatched = [c.describe(like) for c in CRITERIA[len(matched):]]
    closer = f"; fewer than {MIN_RUNS} of them also match: {', '.join(unmatched)}" if unmatched else ""
    return (f"track record: {len(runs)} published runs like this one ({', '.join(matched)}) were predicted with "
            f"step-time MAPE {mape * 100:.1f}%, bias {bias * 100:+.1f}% ({min(errors) * 100:+.1f}% to "
            f"{max(errors) * 100:+.1f}%){closer} ({record.provenance})")
