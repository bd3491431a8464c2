"""The two memory levels of a CPU host (`GPUSpec.cache_bytes` / `cache_bandwidth`, fitted by `planner
calibrate` from a sweep of streaming adds; docs/cost-model.md §2).

References: synthetic sweeps generated from known parameters (the fit must give them back), and the
measurement that a training step's data does not stay in cache between uses (benchmarks/cache_flush.py).
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from executor.calibration import CACHE_SWEEP_BYTES
from planner.calibrate import build_profile, fit_cache_level
from planner.cost import batch_from_plans, evaluate
from planner.io import load_json
from planner.plan import Plan
from planner.serve.step import serving_gpu
from planner.specs.catalog import load_model

ROOT = Path(__file__).resolve().parents[1]
RAW: dict[str, Any] = load_json(ROOT / "tests" / "fixtures" / "calibration_raw.json")
MB = 2**20


def sweep(cache: float, cache_bw: float, memory_bw: float, noise: float = 0.03) -> list[list[float]]:
    """Rates of a streaming add over the calibration's working sets on a host with a cache of `cache`
    bytes: all from cache up to it, none from twice it, linear between; +-noise alternating."""
    rows = []
    for i, ws in enumerate(CACHE_SWEEP_BYTES):
        r = min(1.0, max(0.0, 2.0 - ws / cache))
        rate = 1.0 / (r / cache_bw + (1.0 - r) / memory_bw)
        rows.append([float(ws), rate * (1.0 + noise * (-1) ** i)])
    return rows


@pytest.mark.parametrize("cache, cache_bw, memory_bw", [
    (34 * MB, 27e9, 12.9e9),  # the 2-vCPU Xeon VM of 2026-12-05
    (10 * MB, 40e9, 10e9),
    (90 * MB, 20e9, 15e9),
])
def test_fit_gives_back_a_known_cache_level(cache: float, cache_bw: float, memory_bw: float) -> None:
    c, bc, bm = fit_cache_level(sweep(cache, cache_bw, memory_bw))
    assert c == pytest.approx(cache, rel=0.1)
    assert bc == pytest.approx(cache_bw, rel=0.05)
    assert bm == pytest.approx(memory_bw, rel=0.05)


def test_a_sweep_without_a_knee_is_one_level() -> None:
    """Rates within the noise of each other (a cache larger than the sweep, or none): one level, at
    the largest working set's rate."""
    rows = [[float(ws), 20e9 * (1.0 + 0.03 * (-1) ** i)] for i, ws in enumerate(CACHE_SWEEP_BYTES)]
    assert fit_cache_level(rows) == (0.0, 0.0, rows[-1][1])
    prof = build_profile({**RAW, "cache": rows})
    assert prof.gpu.cache_bytes == 0.0 and prof.gpu.cache_bandwidth == 0.0
    assert prof.gpu.memory_bandwidth == pytest.approx(RAW["contention"]["memory_bandwidth_alone"])


def test_the_profile_carries_the_fitted_level() -> None:
    """Every rank swept at once: the per-rank rates are those of a rank alone times the core-sharing
    slowdown, as the profile's other per-op numbers."""
    share = RAW["contention"]["gemm_slowdown"]
    prof = build_profile({**RAW, "cache": sweep(34 * MB, 27e9 / share, 12.9e9 / share)})
    assert prof.gpu.cache_bytes == pytest.approx(34 * MB, rel=0.1)
    assert prof.gpu.cache_bandwidth == pytest.approx(27e9, rel=0.05)
    assert prof.gpu.memory_bandwidth == pytest.approx(12.9e9, rel=0.05)


def _cpu_profile(cache_bytes: float) -> Any:
    base = build_profile(copy.deepcopy(RAW))
    gpu = dataclasses.replace(base.gpu, cache_bytes=cache_bytes, cache_bandwidth=26e9, memory_bandwidth=13e9,
                              kernel_overhead_s=0.0)
    return dataclasses.replace(base, gpu=gpu, compute_slots_per_node=0)


def test_a_training_step_streams_from_memory_whatever_the_cache() -> None:
    """A write sweep of 128-512 MB between each forward and its backward slows a step of the `tiny` GPT
    by 0-6% and its GEMMs' share of it not at all (`python benchmarks/cache_flush.py`, 2026-12-06; docs
    §2), where the two-level price of 2026-12-05 had one sequence per micro-batch run 12% faster from
    cache than from memory: a step's data does not survive in cache between uses. So the price of a
    training step must not depend on the size of the cache level, and its layers cost what they cost
    on a one-level host at the memory rate (no extra fetch of evicted GEMM operands either)."""
    plans = [Plan(dp=2, micro_batch=mb, global_batch=8, dtype="fp32") for mb in (1, 4)]
    tiny = load_model("tiny")
    small, huge = _cpu_profile(1.0), _cpu_profile(1e12)
    a = evaluate(tiny, small, batch_from_plans(plans))
    b = evaluate(tiny, huge, batch_from_plans(plans))
    np.testing.assert_allclose(a.step_time, b.step_time, rtol=1e-12)
    one_level = dataclasses.replace(huge, gpu=dataclasses.replace(huge.gpu, cache_bytes=0.0, cache_bandwidth=0.0))
    c = evaluate(tiny, one_level, batch_from_plans(plans))
    np.testing.assert_allclose(a.compute, c.compute, rtol=1e-12)
    assert float(c.compute[0]) > 0


def test_serving_keeps_the_cache_rate() -> None:
    """A serving step re-streams weights it streamed one step before: serving prices memory at the
    training calibration's cache rate (what it did before profiles had a cache level)."""
    gpu = serving_gpu(_cpu_profile(34 * MB))
    assert gpu.cache_bytes == 0.0 and gpu.memory_bandwidth == pytest.approx(26e9)
    assert np.isfinite(gpu.memory_time(1e6))
