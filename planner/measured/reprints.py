"""One run printed in several tables counts once.

A source sometimes prints the same measurement again in a later table, to compare it with new runs:
BLOOM's prequel chronicles list the 200B tp 8 x pp 10 x dp 4 run (221.21 s per iteration, 94.39 TFLOPs,
02-20) in three tables of "Choosing the fastest 3D Topology" and again under "tile and wave
quantization". A reprint is not a second measurement, so counting it again would weigh one run several
times in every MAPE, bias and fit. Two rows of one source are the same run when everything that says
what ran and what it measured is equal: the configuration and the printed step time (two launches of
one configuration give different step times: BLOOM's 18B tp 8 rows read 130.43 and 119.19 s). Where
the tables differ, they differ in what they print beside the run (its table, its date, a memory column
one of them leaves blank), which is kept from the first printing that has it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from planner.measured.printed import PrintedRun

# Where and how a row was printed, not which run it is.
PRINTING_FIELDS = frozenset({"row", "label", "notes", "step_time_how", "memory_gib", "memory_definition"})


@dataclass(frozen=True)
class Distinct:
    """The runs of a list of printed rows, each once, and the rows that reprint one of them."""

    runs: list[PrintedRun]  # in first-printing order
    reprints: list[tuple[PrintedRun, PrintedRun]]  # (the reprint, the run it repeats as counted)


def run_identity(run: PrintedRun) -> tuple:
    """What makes two printed rows the same run: source, configuration and printed step time."""
    return tuple(getattr(run, f.name) for f in dataclasses.fields(run) if f.name not in PRINTING_FIELDS)


def distinct(rows: list[PrintedRun]) -> Distinct:
    """Each run once (rows without a printed step time are never merged: nothing shows them equal).
    A run keeps its first printing, with the memory reading of the first printing that has one."""
    kept: list[PrintedRun] = []
    index: dict[tuple, int] = {}
    reprints: list[tuple[PrintedRun, PrintedRun]] = []
    for r in rows:
        key = run_identity(r) if r.step_time_s is not None else None
        if key is None or key not in index:
            if key is not None:
                index[key] = len(kept)
            kept.append(r)
            continue
        first = kept[index[key]]
        if first.memory_gib is None and r.memory_gib is not None:
            first = dataclasses.replace(first, memory_gib=r.memory_gib, memory_definition=r.memory_definition)
            kept[index[key]] = first
        reprints.append((r, first))
    return Distinct(kept, reprints)
