"""Tensor parallelism as DTensor runs it (torchtitan, this project's executor), priced in step time: with SP
the column-parallel linears save the gathered input, so backward issues no re-gather (two all-gathers per
layer and micro-batch fewer); a per-op checkpoint policy that saves no gather output re-runs them; full
recompute's non-reentrant checkpoint stops before a layer's last collective (one reduce-scatter fewer).

Worked example: Llama 3 8B (32 layers) on one DGX H100, tp 8 with SP, 4 micro-batches of 1 x 8192 tokens,
under a profile whose TP collectives are all exposed (torchtitan's, tp_overlap "none"). One activation
all-gather (or reduce-scatter) moves 8192 x 4096 x 2 B = 64 MiB; each is priced by the communication model
alone (`collective_time`), and the step time must move by exactly the count of them the switch removes.
The memory side and the collective counts are checked on real executor runs by tests/test_crosscheck.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import planner.cost.terms as terms_module
from planner.cost import estimate
from planner.cost.comm import collective_time
from planner.framework import framework
from planner.plan import Plan
from planner.specs.catalog import cluster_preset, model_preset

MODEL = model_preset("llama3-8b")
CLUSTER = cluster_preset("dgx-h100").with_gpus(8)
MICRO_BATCHES, LAYERS = 4, 32
ACT = 8192 * 4096 * 2.0  # bytes of one micro-batch's activation


def _plan(recompute: str) -> Plan:
    return Plan(tp=8, sequence_parallel=True, micro_batch=1, global_batch=MICRO_BATCHES, recompute=recompute,
                framework="torchtitan-compile")


def _step(recompute: str, monkeypatch: pytest.MonkeyPatch, **switches: bool) -> float:
    """The step time with the profile's DTensor switches set as given (the rest of the profile unchanged)."""
    monkeypatch.setattr(terms_module, "framework", lambda name: dataclasses.replace(framework(name), **switches))
    try:
        return float(estimate(MODEL, CLUSTER, _plan(recompute))["step_time_s"])
    finally:
        monkeypatch.undo()


def _one(op: str) -> float:
    return float(collective_time(CLUSTER, op, np.array([ACT]), np.array([8.0]), np.array([1.0]))[0])


def test_torchtitan_and_the_executor_run_dtensor_tp() -> None:
    for name in ("torchtitan", "torchtitan-compile-2024", "torchtitan-async-tp", "this"):
        fw = framework(name)
        assert fw.sp_keeps_gathered_input and fw.recompute_skips_last_collective, name
    for name in ("megatron-lm", "megatron-core", "nemo", "deepspeed"):
        fw = framework(name)
        assert not fw.sp_keeps_gathered_input and not fw.recompute_skips_last_collective, name


def test_a_saved_gathered_input_removes_two_all_gathers_per_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    assert framework("torchtitan-compile").tp_overlap == "none"  # every TP collective exposed
    off = dict(sp_keeps_gathered_input=False, recompute_skips_last_collective=False)
    regather = _step("none", monkeypatch, **off)
    kept = _step("none", monkeypatch, **{**off, "sp_keeps_gathered_input": True})
    assert regather - kept == pytest.approx(MICRO_BATCHES * LAYERS * 2 * _one("all_gather"), rel=1e-9)


def test_a_per_op_policy_recomputes_the_gathers_it_did_not_save(monkeypatch: pytest.MonkeyPatch) -> None:
    off = dict(sp_keeps_gathered_input=False, recompute_skips_last_collective=False)
    regather = _step("op-selective", monkeypatch, **off)
    kept = _step("op-selective", monkeypatch, **{**off, "sp_keeps_gathered_input": True})
    assert kept == pytest.approx(regather, rel=1e-12)


def test_full_recompute_stops_before_the_last_reduce_scatter(monkeypatch: pytest.MonkeyPatch) -> None:
    base = dict(sp_keeps_gathered_input=True)
    rerun = _step("full", monkeypatch, **base, recompute_skips_last_collective=False)
    stopped = _step("full", monkeypatch, **base, recompute_skips_last_collective=True)
    assert rerun - stopped == pytest.approx(MICRO_BATCHES * LAYERS * _one("reduce_scatter"), rel=1e-9)
