"""Serving host overheads, fitted from the executor's decode steps of calibration models.

Why: on CPU ranks an engine step's time is largely host work the op costs do not cover (Python,
PyTorch dispatch, DTensor redistribution, one attention call per sequence). `executor.serve
--calibrate` times decode steps of tiny models (1 and 5 layers, batch 1 and 8, tp 1 and 2) whose
ops cost next to nothing; the time beyond what the step model predicts for their ops is

    step_s [+ tp_step_s] + L (layer_s [+ tp_layer_s]) + L b sequence_layer_s,

fitted by least squares (tp 1 first, then the tp > 1 terms with the tp 1 ones held). With tp > 1 the
first step at a token count the process has not run before costs more than its repeats: DTensor
propagates every op's sharding for the new input shapes once and caches it. The calibration times
such steps (fresh token counts, each run twice: first minus repeat) on both models, and
tp_new_shape_s + L tp_new_shape_layer_s is fitted; the simulation charges it on a token count's
first step in the process (`planner.serve.stream.NewShapeTimer`), after the engine's warm-up. The same launch
measures what the training calibration measures differently: forward-only GEMMs in inference mode
(the efficiency curve of a serving step's linear layers, no autograd), one-token GEMVs of eight weight
shapes over 128 MB of distinct weights each (a decode step streams weights no cache holds: the bandwidth
and the fixed cost per weight row are fitted, `fit_gemv`) and the decode attention
kernel against 256-4096 cached keys (its FLOP rate: the slope of time over FLOPs). Everything goes into the
cluster profile's `provenance["serving"]`, which `planner.serve.step.serving_gpu` and `overheads_for`
read. The calibration models are not the models validated.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from planner.serve.step import SERVING_PROVENANCE_KEY, Overheads, StepCost
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec


def _ops_time(spec: ModelSpec, cluster: ClusterSpec, tp: int, layers: int, batch: int, context: int) -> float:
    cost = StepCost(spec, cluster.with_gpus(tp), "fp32", "fp32", np.array([tp]), np.array([1]), overheads=Overheads())
    ctx = batch * (context + 1.0)
    return float(cost.step_time(batch, batch, batch, ctx, 0, 0.0)[0])


def _nonneg_lstsq(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0 (drop a negative one and refit)."""
    cols = list(range(a.shape[1]))
    while True:
        coef, *_ = np.linalg.lstsq(a[:, cols], y, rcond=None)
        if (coef >= 0).all() or not cols:
            out = np.zeros(a.shape[1])
            out[cols] = coef
            return out
        cols.pop(int(np.argmin(coef)))


def fit_overheads(cluster: ClusterSpec, rows: list[dict[str, Any]], spec_of: Any) -> Overheads:
    """Overheads from calibration rows {layers, batch, tp, context, step_s}; `spec_of(layers)` gives
    the calibration model."""
    def residual(r: dict[str, Any]) -> float:
        return r["step_s"] - _ops_time(spec_of(r["layers"]), cluster, r["tp"], r["layers"], r["batch"], r["context"])

    shapes = [r for r in rows if "new_shape_s" in r and r["tp"] > 1]
    rows = [r for r in rows if "step_s" in r]
    one = [r for r in rows if r["tp"] == 1]
    a = np.array([[1.0, r["layers"], r["layers"] * r["batch"]] for r in one])
    y = np.array([residual(r) for r in one])
    step_s, layer_s, seq_s = _nonneg_lstsq(a, y) if one else (0.0, 0.0, 0.0)
    multi = [r for r in rows if r["tp"] > 1]
    tp_step_s = tp_layer_s = 0.0
    if multi:
        a = np.array([[1.0, r["layers"]] for r in multi])
        y = np.array([residual(r) - step_s - r["layers"] * (layer_s + r["batch"] * seq_s) for r in multi])
        tp_step_s, tp_layer_s = _nonneg_lstsq(a, y)
    new_s = new_layer_s = 0.0
    if shapes:  # first step at a new token count minus its repeat: intercept + layers x slope
        a = np.array([[1.0, r["layers"]] for r in shapes])
        new_s, new_layer_s = _nonneg_lstsq(a, np.array([r["new_shape_s"] for r in shapes]))
    return Overheads(step_s=float(step_s), tp_step_s=float(tp_step_s), layer_s=float(layer_s),
                     tp_layer_s=float(tp_layer_s), sequence_layer_s=float(seq_s), tp_new_shape_s=float(new_s),
                     tp_new_shape_layer_s=float(new_layer_s),
                     source="fitted by planner validate --serve from the executor's calibration decode steps "
                            "and new-shape steps")


def decode_attention_flops_per_s(rows: list[list[float]]) -> float:
    """The decode attention kernel's FLOP rate: per head configuration, the least-squares slope of time
    against FLOPs over the context lengths (the intercept is the call's fixed cost, which the host
    overhead fit covers); the configurations' rates averaged. 0 without rows."""
    by_shape: dict[tuple[float, ...], list[tuple[float, float]]] = {}
    for heads, kv_heads, dim, _, flops, sec in rows:
        by_shape.setdefault((heads, kv_heads, dim), []).append((flops, sec))
    rates = []
    for pts in by_shape.values():
        if len(pts) < 2:
            continue
        slope = float(np.polyfit([p[0] for p in pts], [p[1] for p in pts], 1)[0])
        if slope > 0:
            rates.append(1.0 / slope)
    return sum(rates) / len(rates) if rates else 0.0


def fit_gemv(rows: list[list[float]]) -> tuple[float, float]:
    """(seconds per output row, bytes per second) of weight-streaming GEMVs: t = out x row_s + bytes /
    bandwidth by least squares on relative error, from rows [out features, in features, bytes, seconds].
    A CPU GEMV computes one dot product per weight row, each with a fixed cost (its loop and the
    reduction of its vector lanes) beside streaming the row: short rows stream slower (12 GB/s at 512
    inputs, 20 GB/s at 2048 on this VM)."""
    a = np.array([[r[0], r[2]] for r in rows], dtype=np.float64)
    t = np.array([r[3] for r in rows], dtype=np.float64)
    row_s, inv_bw = _nonneg_lstsq(a / t[:, None], np.ones_like(t))
    if inv_bw <= 0:  # degenerate (noise): the largest GEMV's streaming rate, no row cost
        big = max(rows, key=lambda r: r[2])
        return 0.0, big[2] / big[3]
    return float(row_s), float(1.0 / inv_bw)


def with_kernels(cluster: ClusterSpec, kernels: dict[str, Any] | None) -> ClusterSpec:
    """The profile with the serving GEMM curve and weight-streaming bandwidth (from `executor.serve
    --calibrate`'s kernel timings) in `provenance["serving"]`."""
    if not kernels:
        return cluster
    peak = cluster.gpu.peak("fp32" if cluster.device == "cpu" else "bf16")
    by_flops: dict[float, list[float]] = {}
    for _, _, _, flops, sec in kernels["gemm"]:
        by_flops.setdefault(flops, []).append(min(1.0, flops / sec / peak))
    curve = sorted((f, sum(e) / len(e)) for f, e in by_flops.items())
    serving: dict[str, Any] = {"gemm_curve": [list(p) for p in curve], "kernels": kernels}
    if kernels.get("gemv"):
        row_s, bandwidth = fit_gemv(kernels["gemv"])
        serving.update(gemv_row_s=row_s, memory_bandwidth=bandwidth)
    else:  # measured before the GEMV shapes: one sweep of 2048 x 2048 GEMVs over 512 MB
        stream = kernels["stream"]
        serving["memory_bandwidth"] = stream["bytes"] / stream["seconds"]
    if kernels.get("gemm_rows"):  # efficiency by row count: BLAS picks GEMV / small-m / blocked kernels by m
        serving["gemm_rows_curve"] = [[m, min(1.0, flops / sec / peak)] for m, _, _, flops, sec in kernels["gemm_rows"]]
    rate = decode_attention_flops_per_s(kernels.get("decode_attention") or [])
    if rate:
        serving["decode_attention_flops_per_s"] = rate
    prov = dict(cluster.provenance)
    prov[SERVING_PROVENANCE_KEY] = {**prov.get(SERVING_PROVENANCE_KEY, {}), **serving}
    return dataclasses.replace(cluster, provenance=prov)


def with_overheads(cluster: ClusterSpec, overheads: Overheads, rows: list[dict[str, Any]]) -> ClusterSpec:
    """The profile with the serving overheads (and the calibration rows they came from) recorded."""
    prov = dict(cluster.provenance)
    prov[SERVING_PROVENANCE_KEY] = {**prov.get(SERVING_PROVENANCE_KEY, {}), **overheads.to_dict(), "calibration": rows}
    return dataclasses.replace(cluster, provenance=prov)
