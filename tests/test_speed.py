"""The speed probe (executor.speed_probe) and the calibrated profile re-based to a run's speed (planner.speed).

The re-basing is checked against a physical invariant rather than its own formula: on one rank (no
communication) a machine whose every compute and memory rate halves takes exactly twice as long, for any
plan; so any time term the re-basing forgot to scale breaks the factor of two.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from planner.calibrate import build_profile, write_profile
from planner.compare import compare, comparison_rows, render
from planner.cost import estimate
from planner.io import load_json
from planner.plan import Plan, PlanDocument
from planner.specs.catalog import load_cluster, model_preset
from planner.speed import SpeedRatio, at_speed, speed_ratio

ROOT = Path(__file__).resolve().parents[1]
RAW: dict[str, Any] = load_json(ROOT / "tests" / "fixtures" / "calibration_raw.json")
PROBE = {"gemm_flops_per_s": 160e9, "stream_bytes_per_s": 12.5e9}


def _profile(probe: dict[str, float] | None = PROBE):
    raw = copy.deepcopy(RAW)
    if probe is not None:
        raw["speed_probe"] = {**probe, "before": probe, "after": probe}
    return build_profile(raw)


ONE_RANK_PLANS = [
    Plan(micro_batch=4, global_batch=4, dtype="fp32"),
    Plan(micro_batch=1, global_batch=4, dtype="fp32"),  # 4 micro-batches: host time per micro-batch
    Plan(micro_batch=4, global_batch=4, dtype="fp32", recompute="full"),
    Plan(micro_batch=2, global_batch=4, dtype="fp32", recompute="selective"),
]


@pytest.mark.parametrize("plan", ONE_RANK_PLANS, ids=lambda p: p.describe())
def test_half_the_machine_speed_takes_twice_as_long_on_one_rank(plan: Plan) -> None:
    # the fixture's calibration predates the cache sweep and the host-time steps: those parts as this
    # VM's calibration of 2026-12-06 measured them, so that every time term of a CPU profile takes part
    p = _profile()
    gpu = dataclasses.replace(p.gpu, cache_bytes=41.6e6, cache_bandwidth=28.9e9)
    one = dataclasses.replace(p, gpu=gpu, gpus_per_node=1, compute_slots_per_node=0,
                              host_layer_overhead_s=0.45e-3, host_microbatch_overhead_s=0.15e-3)
    tiny = model_preset("tiny")
    base = estimate(tiny, one, plan)["step_time_s"]
    assert estimate(tiny, at_speed(one, SpeedRatio(0.5, 0.5)), plan)["step_time_s"] == pytest.approx(2 * base)
    # slower compute alone: longer, but by less than twice (the memory-bound ops keep their speed)
    slower = estimate(tiny, at_speed(one, SpeedRatio(0.5, 1.0)), plan)["step_time_s"]
    assert base < slower < 2 * base


def test_a_run_far_from_its_calibrations_speed_says_so() -> None:
    """`planner run` notes a probe ratio beyond 1.25x either way (the 2026-12-07 demo that calibrated at 45
    GFLOP/s and ran at 82: +50% as calibrated, -7.7% at the run's speed); within it, nothing is added."""
    from executor.launch import comparison_table

    assert SpeedRatio(1.2, 0.85).drift_note() is None
    assert SpeedRatio(1.82, 1.06).drift_note().count("1.82x") == 1
    low = SpeedRatio(1.0, 0.7).drift_note()
    assert "memory stream 0.70x" in low and "GEMM" not in low
    doc = PlanDocument(plan=Plan(dp=2, micro_batch=4, global_batch=8, dtype="fp32"), model=model_preset("tiny"),
                       cluster=_profile(), prediction={"step_time_s": 0.3, "tokens_per_s": 3400.0,
                                                       "memory_gib_per_gpu": 0.09})
    measured = {"schema_version": 1, "kind": "measured", "status": "ok", "plan_hash": doc.hash,
                "plan": "tp1 pp1 dp2 mb4", "warmup": 3, "step_times_s": [0.2, 0.21], "tokens_per_s": 5100.0,
                "step_time_s": {"median": 0.2, "p10": 0.19, "p90": 0.26, "mean": 0.2},
                "memory": {"peak_bytes": 2**26, "rss_bytes": 2**29},
                "env": {"torch": "test", "world_size": 2, "nnodes": 1, "device": "cpu", "backend": "gloo"}}
    for gemm, noted in ((160e9 * 1.82, True), (160e9 * 1.1, False)):
        run = {**measured, "speed_probe": {"gemm_flops_per_s": gemm, "stream_bytes_per_s": 12.5e9}}
        table = comparison_table(doc, run)
        assert "at this run's machine speed" in table
        assert ("note: the machine ran its GEMM 1.82x as fast" in table) is noted
        # planner compare: the same re-based prediction as a row, and the same note
        result = compare(doc, run)
        rows = {r["metric"]: r for r in result["rows"]}
        again = estimate(doc.model, at_speed(doc.cluster, SpeedRatio(gemm / 160e9, 1.0)), doc.plan)["step_time_s"]
        assert rows["step_time_at_run_speed_s"]["predicted"] == pytest.approx(again)
        assert rows["step_time_at_run_speed_s"]["measured"] == 0.2
        assert ("note: the machine ran its GEMM 1.82x as fast" in render(result)) is noted
    assert "step_time_at_run_speed_s" not in {r["metric"] for r in compare(doc, measured)["rows"]}  # no probe


def test_the_profile_keeps_calibrations_probe_and_a_run_is_compared_with_it(tmp_path: Path) -> None:
    path = write_profile(tmp_path / "profile.json", _profile(), RAW)
    cluster = load_cluster(str(path))  # through the file, as `--cluster profile.json` reads it
    assert cluster.provenance["speed_probe"] == PROBE
    run = {"speed_probe": {"gemm_flops_per_s": 144e9, "stream_bytes_per_s": 13.75e9}}
    ratio = speed_ratio(cluster, run)
    assert ratio == SpeedRatio(compute=pytest.approx(0.9), memory=pytest.approx(1.1))
    assert speed_ratio(cluster, {}) is None  # a run written before the probe existed
    assert speed_ratio(_profile(probe=None), run) is None  # a profile calibrated before it
    doc = PlanDocument(plan=Plan(dp=2, micro_batch=4, global_batch=8, dtype="fp32"), model=model_preset("tiny"),
                       cluster=cluster)
    rows = {r.metric: r for r in comparison_rows(doc, None, run)}
    assert rows["speed.gemm"].predicted == 160e9 and rows["speed.gemm"].measured == 144e9
    assert rows["speed.stream"].measured == 13.75e9
    assert json.loads(path.read_text())["provenance"]["speed_probe"] == PROBE


def test_rates_of_different_probes_are_not_compared(tmp_path: Path) -> None:
    """The CPU probe's linear changed on 2026-12-06 (512 x 1024 x 1024 -> 512 x 256 x 1024, which runs
    about a tenth slower on the VM): a run probed with one and a calibration with the other would read
    that as the machine's drift. Their rates are compared only where both name the same linear (or
    neither does: files written before probes named theirs)."""
    new, old = {**PROBE, "gemm_shape": [512, 256, 1024]}, {**PROBE, "gemm_shape": [512, 1024, 1024]}
    calibrated_new = load_cluster(str(write_profile(tmp_path / "p.json", _profile(new), RAW)))
    assert calibrated_new.provenance["speed_probe"]["gemm_shape"] == [512, 256, 1024]
    assert speed_ratio(calibrated_new, {"speed_probe": {**new, "gemm_flops_per_s": 144e9}}) == SpeedRatio(
        compute=pytest.approx(0.9), memory=pytest.approx(1.0))
    assert speed_ratio(calibrated_new, {"speed_probe": old}) is None
    assert speed_ratio(calibrated_new, {"speed_probe": PROBE}) is None  # a run that did not name its linear
    assert speed_ratio(_profile(), {"speed_probe": new}) is None  # a profile that did not
    doc = PlanDocument(plan=Plan(dp=2, micro_batch=4, global_batch=8, dtype="fp32"), model=model_preset("tiny"),
                       cluster=calibrated_new)
    assert not [r for r in comparison_rows(doc, None, {"speed_probe": old}) if r.metric.startswith("speed.")]


def test_forgetting_the_peak_rss_forgets_a_freed_buffer() -> None:
    """measured.json's rss_bytes must not be the probe's 128 MB buffers: the kernel's own peak counter
    (VmHWM) drops back after the reset."""
    torch = pytest.importorskip("torch")
    from executor.measure import rss_bytes
    from executor.speed_probe import forget_peak_rss

    def release_freed_heap() -> None:
        """Hand memory freed into the C heap back to the kernel: after earlier tests freed hundreds of MB
        there, the buffer can come from (and go back to) the heap instead of its own mapping, and stay
        resident once deleted."""
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)

    release_freed_heap()
    forget_peak_rss()  # an earlier peak of this process (another test's) is not the buffer's
    buf = torch.ones(64 << 20)  # 256 MB, touched
    _, peak_with = rss_bytes()
    del buf
    release_freed_heap()
    forget_peak_rss()
    _, peak_after = rss_bytes()
    assert peak_with - peak_after > 200 << 20


def test_the_probe_measures_a_linear_layer_and_a_stream() -> None:
    """Both rates from the real probe on this machine; its GEMM rate is the rate torch's own counter of
    FLOPs (FlopCounterMode, over the probe's linear layer) gives for the probe's timed seconds."""
    torch = pytest.importorskip("torch")
    from torch.utils.flop_counter import FlopCounterMode

    from executor.speed_probe import PROBE_GEMM, gemm_flops, measure_speed

    rates = measure_speed(torch.device("cpu"), reps=3)
    assert rates["gemm_flops_per_s"] > 1e9 and rates["stream_bytes_per_s"] > 1e8
    m, k, n = PROBE_GEMM["cpu"]
    x = torch.randn(m, k, requires_grad=True)
    w = torch.randn(n, k, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.linear(x, w).backward(torch.randn(m, n))
    assert counter.get_total_flops() == gemm_flops("cpu")  # what measure_speed divides by its seconds


def test_a_probe_that_cannot_allocate_is_skipped_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan that fills the device leaves no room for the probe's buffers: the run goes on without a
    probe (measured.json's `speed_probe` null, no rates compared) instead of failing; other errors
    still surface."""
    torch = pytest.importorskip("torch")
    import executor.speed_probe as probe

    def full(*args: Any, **kwargs: Any) -> float:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(probe, "_stream_rate", full)
    assert probe.measure_speed(torch.device("cpu"), reps=1) is None
    assert probe.probe_record(None, {"gemm_flops_per_s": 1.0, "stream_bytes_per_s": 1.0}) is None
    assert speed_ratio(_profile(), {"speed_probe": None}) is None

    def broken(*args: Any, **kwargs: Any) -> float:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(probe, "_stream_rate", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        probe.measure_speed(torch.device("cpu"), reps=1)
