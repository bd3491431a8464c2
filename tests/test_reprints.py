"""A run printed in several tables of one source counts once (planner.measured.reprints).

Hand-read from BLOOM's prequel chronicles (bigscience-workshop/bigscience, train/tr11-176B-ml/
chronicles-prequel.md at 59a90ee): the 200B tp 8 x pp 10 x dp 4 run of 02-20 (221.21 s per iteration,
94.39 TFLOPs, 35GB) is printed in three tables of "Choosing the fastest 3D Topology" and again under
"tile and wave quantization" (rows 20, 24, 31, 42 of the shipped CSV); the 182B tp 4 x pp 12 x dp 8 mbs 2
run with 96 heads (107.12 s, 02-26) under "Another round of NHEADS" with its memory (48GB) and again
under "Batchsize Warmup" without it (rows 113, 131); the 18B tp 8 mbs 2 configuration was launched
twice and printed 130.43 and 119.19 s (rows 59, 60): two runs.
"""

from __future__ import annotations

import dataclasses

import pytest

from planner.measured import distinct, printed_runs


@pytest.fixture(scope="module")
def bloom() -> list:
    return printed_runs(["bloom"])


def test_a_run_printed_in_four_tables_counts_once(bloom: list) -> None:
    once = distinct(bloom)
    rows = {r.row for r in once.runs}
    assert 20 in rows and not {24, 31, 42} & rows
    repeated = sorted(p.row for p, first in once.reprints if first.row == 20)
    assert repeated == [24, 31, 42]


def test_two_launches_of_one_configuration_are_two_runs(bloom: list) -> None:
    rows = {r.row for r in distinct(bloom).runs}
    assert {59, 60} <= rows


def test_a_reprint_lends_the_memory_the_first_printing_left_blank(bloom: list) -> None:
    by_row = {r.row: r for r in bloom}
    assert by_row[113].memory_gib == 48.0 and by_row[131].memory_gib is None
    first, later = by_row[113], by_row[131]
    # the same run printed the other way round: the blank first printing takes the later one's memory
    once = distinct([later, dataclasses.replace(first, row=999)])
    assert [r.row for r in once.runs] == [131] and once.runs[0].memory_gib == 48.0


def test_the_shipped_tables_hold_thirteen_reprints() -> None:
    """Eight BLOOM runs are printed more than once (13 extra rows); the other sources print each run once."""
    once = distinct(printed_runs())
    assert len(once.reprints) == 13
    assert {p.source for p, _ in once.reprints} == {"bloom"}
    assert all(p.step_time_s == first.step_time_s for p, first in once.reprints)


def test_rows_without_a_step_time_are_never_merged() -> None:
    row = next(r for r in printed_runs() if r.step_time_s is None)
    twice = [row, dataclasses.replace(row, row=row.row + 10_000)]
    assert len(distinct(twice).runs) == 2
