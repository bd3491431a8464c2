"""The two memory levels of a CPU host (`GPUSpec.cache_bytes` / `cache_bandwidth`, fitted by `planner
calibrate` from a sweep of streaming adds; docs/cost-model.md §2).

References: synthetic sweeps generated from known parameters (the fit must give them back), and the
executor's own memory ledger for the working set the resident fraction is computed from (measured
on the `tiny` GPT under dp 2, micro-batch 4: 89,949,488 bytes per rank of weights, gradients,
optimizer state and activations, `planner run` on 2026-12-05).
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
from planner.framework import framework
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


LEDGER_BYTES = 89_949_488  # the executor's peak per rank for tiny, dp 2, micro-batch 4 (weights .. activations)
TINY_PARAMS = 3_454_464


def test_the_working_set_is_what_the_executor_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The optimizer's moments wait a whole step between uses, so what decides whether they are still
    in cache is everything the rank holds: the executor's ledger. With a cache of two thirds of it
    the resident fraction is 2 - W/C = 0.5 if the cost model's W is the ledger; the AdamW step then
    streams a fused step's 36 B per parameter half from cache, half from memory, and re-reads the
    other 36 B of torch.optim.AdamW's seven passes from cache. The W that the price implies must be
    the ledger within 3% (the memory model counts the fp32 log-probabilities, 2 MB, that the ledger
    does not)."""
    prof = _cpu_profile(LEDGER_BYTES / 1.5)
    plan = Plan(dp=2, micro_batch=4, global_batch=8, dtype="fp32")
    # the optimizer step alone: without DDP's bucket copies (tests/test_grad_passes.py prices those)
    import planner.cost.terms as terms
    monkeypatch.setattr(terms, "framework", lambda name: dataclasses.replace(framework(name), dp_grad_passes=0.0))
    opt = float(evaluate(load_model("tiny"), prof, batch_from_plans([plan])).optimizer[0])
    cold, hot = TINY_PARAMS * 36 / 13e9, TINY_PARAMS * 36 / 26e9
    resident = (cold + hot - opt) / (cold - hot)  # opt = r x hot + (1 - r) x cold + hot
    assert 0 < resident < 1
    assert (2.0 - resident) * LEDGER_BYTES / 1.5 == pytest.approx(LEDGER_BYTES, rel=0.03)


def test_gpus_and_small_working_sets_keep_one_level() -> None:
    """Without a cache level (every GPU preset) or with the whole step in cache, the price is the
    single-level one at the cache's rate: the resident fraction changes nothing."""
    plan = Plan(dp=2, micro_batch=4, global_batch=8, dtype="fp32")
    tiny = load_model("tiny")
    in_cache = _cpu_profile(1e12)
    one_level = dataclasses.replace(in_cache, gpu=dataclasses.replace(
        in_cache.gpu, cache_bytes=0.0, cache_bandwidth=0.0, memory_bandwidth=26e9))
    a = evaluate(tiny, in_cache, batch_from_plans([plan]))
    b = evaluate(tiny, one_level, batch_from_plans([plan]))
    assert float(a.step_time[0]) == pytest.approx(float(b.step_time[0]), rel=1e-12)
    cold = evaluate(tiny, _cpu_profile(1.0), batch_from_plans([plan]))
    assert float(cold.compute[0]) > float(a.compute[0])  # weights and saved inputs fetched again


def test_serving_keeps_the_cache_rate() -> None:
    """A serving step re-streams weights it streamed one step before: serving prices memory at the
    training calibration's cache rate (what it did before profiles had a cache level)."""
    gpu = serving_gpu(_cpu_profile(34 * MB))
    assert gpu.cache_bytes == 0.0 and gpu.memory_bandwidth == pytest.approx(26e9)
    assert np.isfinite(gpu.memory_time(1e6))
