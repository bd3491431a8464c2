"""Calibration re-times a collective's message size that came out slower than a larger one.

Reference: a machine whose collective takes alpha + bytes / bandwidth exactly (the model calibrate fits),
with some timings disturbed by a known amount; the fit must recover the machine's alpha and bandwidth.
"""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from executor.calibration import MSG_BYTES, retime_out_of_order
from planner.calibrate import fit_alpha_beta

ALPHA, BUSBW = 1.5e-3, 1.0e9  # seconds, bytes/s; a 2-rank all-reduce moves its bytes once (ring factor 1)


def true_time(nbytes: int) -> float:
    return ALPHA + nbytes / BUSBW


def test_disturbed_small_sizes_are_timed_again_and_the_fit_recovers_the_machine() -> None:
    # The first timings of the two smallest messages ran while something else held the cores (x5, x4:
    # 4 KiB at 7.5 ms, 64 KiB at 6.3 ms, against 2.6 ms at 1 MiB), as in a calibration of 2026-12-06.
    disturbed = {0: 5.0, 1: 4.0}
    rows = [[n, true_time(n) * disturbed.get(i, 1.0)] for i, n in enumerate(MSG_BYTES)]
    calls: list[int] = []

    def time_size(i: int) -> float:
        calls.append(i)
        return true_time(MSG_BYTES[i])

    out = retime_out_of_order(rows, time_size)
    assert sorted(calls) == [0, 1]
    assert [b for b, _ in out] == MSG_BYTES
    alpha, busbw = fit_alpha_beta("all_reduce", 2, out)
    assert alpha == pytest.approx(ALPHA, rel=1e-6)
    assert busbw == pytest.approx(BUSBW, rel=1e-6)
    # Without the re-timing the same rows fit nearly twice the machine's latency.
    assert fit_alpha_beta("all_reduce", 2, rows)[0] > 1.9 * ALPHA


def test_a_disturbance_that_outlasts_one_retime_is_timed_once_more() -> None:
    rows = [[n, true_time(n) * (6.0 if i == 0 else 1.0)] for i, n in enumerate(MSG_BYTES)]
    answers = iter([true_time(MSG_BYTES[0]) * 5.0, true_time(MSG_BYTES[0])])  # still disturbed, then not
    out = retime_out_of_order(rows, lambda i: next(answers))
    assert out[0][1] == pytest.approx(true_time(MSG_BYTES[0]))


def test_ordered_timings_are_kept_as_measured() -> None:
    # Noise within the ratio, and a large message measured slow (which no order reveals), stay as they are.
    rows = [[n, true_time(n) * f] for n, f in zip(MSG_BYTES, (1.1, 1.0, 1.05, 1.0, 1.3), strict=True)]

    def never(i: int) -> float:
        raise AssertionError(f"size {MSG_BYTES[i]} re-timed")

    assert retime_out_of_order(rows, never) == rows


def test_a_retime_that_comes_out_slower_keeps_the_first_timing() -> None:
    rows = [[n, true_time(n) * (3.0 if i == 1 else 1.0)] for i, n in enumerate(MSG_BYTES)]
    out = retime_out_of_order(rows, lambda i: true_time(MSG_BYTES[i]) * 10.0)
    assert out[1][1] == pytest.approx(rows[1][1])
