"""`planner calibrate`: measure this machine (or cluster) and write a cluster profile JSON.

The microbenchmarks run under torchrun (`executor.calibration`), every rank at once; this module
fits them into the physical parameters the cost model uses and writes a profile that any
`--cluster` accepts:
- GEMM efficiency as a function of FLOPs (`gpu.gemm_curve`), measured throughput / peak;
- streaming memory bandwidth (`gpu.memory_bandwidth`, efficiency 1.0: it *is* the achieved value) and
  the fixed cost of one small op (`gpu.kernel_overhead_s`); on CPU hosts also the last-level cache
  (`gpu.cache_bytes`, `gpu.cache_bandwidth`) from a sweep over working-set sizes (`fit_cache_level`),
  `memory_bandwidth` then being the rate beyond it;
- alpha (latency) and bus bandwidth of every collective per group size, by least squares on
  t = alpha + bytes x factor / busbw over the message sizes (`intra_node.collectives`, and
  `inter_node.collectives` on several nodes);
- `overlap_slowdown`: how much a concurrent all-reduce slows a GEMM;
- on CPU ranks, the host time per layer and micro-batch of the executor's steps, and what tensor,
  sequence and pipeline parallelism and FSDP add to it, from steps of its GPT at a size whose
  arithmetic is negligible (`_fit_host_overheads`, `_fit_framework_overheads`).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from planner.cost.comm import back_to_back_prices, ring_factor
from planner.errors import PlannerError
from planner.io import atomic_write_json, load_json
from planner.specs.catalog import gpu_names, gpu_preset, localhost_cpu
from planner.specs.cluster import ClusterSpec, GPUSpec, LinkSpec
from planner.speed import SPEED_KEYS

PROFILE_KIND = "cluster-profile"
MAX_OVERHEAD_S = 10.0  # the largest host overhead a ClusterSpec accepts


def fit_alpha_beta(op: str, group: int, rows: list[list[float]]) -> tuple[float, float]:
    """(alpha s, busbw B/s) minimising relative error of t = alpha + bytes x factor / busbw."""
    x = np.array([r[0] for r in rows], dtype=np.float64) * float(ring_factor(op, np.array(group))[1])
    t = np.array([r[1] for r in rows], dtype=np.float64)
    w = 1.0 / np.maximum(t, 1e-9)  # relative error
    a = np.stack([np.ones_like(x), x], axis=1) * w[:, None]
    coef, *_ = np.linalg.lstsq(a, t * w, rcond=None)
    alpha, inv_bw = float(coef[0]), float(coef[1])
    if inv_bw <= 0 or alpha < 0:  # degenerate (noise): fall back to the two ends
        alpha = max(0.0, float(t[0]))
        inv_bw = max((t[-1] - alpha) / max(x[-1], 1.0), 1e-15)
    return alpha, 1.0 / inv_bw


def fit_cache_level(rows: list[list[float]]) -> tuple[float, float, float]:
    """(cache_bytes, cache_bandwidth, memory_bandwidth) from streaming rates over working-set sizes,
    rows [working-set bytes, bytes/s]. The model is the cost model's (`GPUSpec.resident_fraction`):
    seconds per byte s(W) = r/B_cache + (1 - r)/B_memory, r = clip(2 - W/C, 0, 1); for each candidate
    capacity C (a fine log grid up to half the largest working set, so that some size streams from
    memory) the two rates by least squares on relative error, the C that fits best kept. (0, 0, B):
    one level, B the largest working set's rate, when the rates differ by under 15% or a fit needs a
    rate that is not positive."""
    ws = np.array([r[0] for r in rows], dtype=np.float64)
    spb = 1.0 / np.array([r[1] for r in rows], dtype=np.float64)
    one_level = (0.0, 0.0, float(1.0 / spb[np.argmax(ws)]))
    if len(rows) < 3 or spb.max() < 1.15 * spb.min():
        return one_level
    best: tuple[float, float, float, float] | None = None
    for c in np.geomspace(ws.min() / 2, ws.max() / 2, 200):
        r = np.clip(2.0 - ws / c, 0.0, 1.0)
        a = np.stack([r, 1.0 - r], axis=1) / spb[:, None]  # relative error: divide by the measured value
        (inv_cache, inv_mem), *_ = np.linalg.lstsq(a, np.ones_like(spb), rcond=None)
        if inv_cache <= 0 or inv_mem <= 0:
            continue
        err = float(np.sum((a @ [inv_cache, inv_mem] - 1.0) ** 2))
        if best is None or err < best[0]:
            best = (err, float(c), 1.0 / inv_cache, 1.0 / inv_mem)
    if best is None or best[2] < 1.15 * best[3]:
        return one_level
    return best[1], best[2], best[3]


def _link(base: LinkSpec, measured: dict[str, Any], name: str, burst: dict[str, Any] | None = None) -> LinkSpec:
    """The link tier's measured collectives: (alpha, busbw) per op and group size, fitted to the calls as a
    step issues them, and where `burst` has them, to calls right after another (burst_alpha, burst_busbw)."""
    table: dict[str, list[dict[str, float]]] = {}
    for op, by_group in measured.items():
        rows = []
        for g, samples in sorted(by_group.items(), key=lambda kv: int(kv[0])):
            alpha, busbw = fit_alpha_beta(op, int(g), samples)
            row = {"group": int(g), "alpha": alpha, "busbw": busbw}
            back_to_back = (burst or {}).get(op, {}).get(g)
            if back_to_back:
                row["burst_alpha"], row["burst_busbw"] = fit_alpha_beta(op, int(g), back_to_back)
            rows.append(row)
        if rows:
            table[op] = rows
    bw = max((r["busbw"] for rows in table.values() for r in rows), default=base.bandwidth)
    lat = min((r["alpha"] for rows in table.values() for r in rows), default=base.latency)
    return dataclasses.replace(base, name=name, bandwidth=bw, efficiency=1.0, latency=lat, collectives=table,
                               source="measured by planner calibrate")


def _match_gpu(device_name: str) -> GPUSpec | None:
    """The catalog GPU whose name matches a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3')."""
    key = device_name.upper()
    for name in gpu_names():
        family = name.split("-")[0]
        if family in key:
            return gpu_preset(name)
    return None


def build_profile(raw: dict[str, Any], name: str | None = None) -> ClusterSpec:
    """Turn raw microbenchmark timings into a cluster profile."""
    env = raw["env"]
    world, local = int(env["world_size"]), int(env["local_world_size"])
    cpu = env["device_type"] == "cpu"
    dtype = "fp32" if cpu else "bf16"
    if cpu:
        base = localhost_cpu()
        gpu = base.gpu
    else:
        matched = _match_gpu(env["device"])
        base_cluster = localhost_cpu()
        gpu = matched or GPUSpec(name=env["device"], peak_flops={"bf16": 1e15}, memory_bytes=env["memory_bytes"],
                                 memory_bandwidth=1e12)
        base = dataclasses.replace(base_cluster, device="cuda", backend="nccl", compute_slots_per_node=0,
                                   reserved_memory_bytes=2 * 2**30)
    # Per-op numbers describe one rank with the node to itself: the GEMM timings (all ranks at once)
    # are divided by the measured core-sharing slowdown, which becomes the node's compute slots.
    contention = raw.get("contention") or {}
    share = max(1.0, float(contention.get("gemm_slowdown", 1.0)))
    if share < 1.02:
        share = 1.0  # within timing noise: no sharing
    gemm = [[m, k, n, f, sec / share] for m, k, n, f, sec in raw["gemm"]]
    best = max(r[3] / r[4] for r in gemm)
    peak = max(gpu.peak(dtype), best / 0.98)  # keep efficiencies below 1 if the datasheet peak is low
    by_flops: dict[float, list[float]] = {}
    for r in gemm:  # shapes with equal FLOPs (e.g. 512x256x1024 and 512x1024x256) are averaged
        by_flops.setdefault(r[3], []).append(r[3] / r[4] / peak)
    curve = sorted((f, min(1.0, sum(e) / len(e))) for f, e in by_flops.items())
    peaks = {k: (peak if k == dtype else v) for k, v in gpu.peak_flops.items()}
    peaks.setdefault(dtype, peak)
    mem = raw["memory"]
    bandwidth = float(contention.get("memory_bandwidth_alone") or mem["bandwidth"])
    kernels = raw.get("kernels") or {}
    activation_rate = float(kernels.get("activation_rate", 0.0)) * share if cpu else 0.0
    attention_eff = min(1.0, float(kernels.get("attention_flops_per_s", 0.0)) * share / peak)
    # The cache sweep (every rank at once, as they share the cache in training): where it shows a
    # cache level, `memory_bandwidth` is the memory's rate and the cache's is kept beside it.
    cache_bytes, cache_bw, memory_bw = fit_cache_level(raw["cache"]) if raw.get("cache") else (0.0, 0.0, 0.0)
    if cache_bytes:
        bandwidth = memory_bw * share
    gpu = dataclasses.replace(
        gpu, name=gpu.name + " (calibrated)", peak_flops=peaks, gemm_curve=tuple(curve),
        memory_bandwidth=bandwidth, memory_efficiency=1.0, cache_bytes=cache_bytes, cache_bandwidth=cache_bw * share,
        kernel_overhead_s=mem["kernel_overhead_s"] / share,
        activation_rate=activation_rate, attention_efficiency=attention_eff,
        memory_bytes=float(env.get("memory_bytes") or gpu.memory_bytes * base.compute_slots_per_node / max(local, 1)
                           if cpu else gpu.memory_bytes),
        num_sms=int(env.get("num_sms", gpu.num_sms)) if not cpu else 0,
        source=f"planner calibrate on {env['host']} ({env['device']}), {env['date']}")
    coll = raw.get("collectives", {})
    burst = coll.get("burst", {})
    intra = _link(base.intra_node, coll["intra_node"], "intra-node (measured)", burst.get("intra_node")) \
        if "intra_node" in coll else base.intra_node
    inter = _link(base.inter_node, coll["inter_node"], "inter-node (measured)", burst.get("inter_node")) \
        if "inter_node" in coll else intra
    overlap = raw.get("overlap", {}).get("slowdown", base.overlap_slowdown)
    tp_raw = raw.get("tp_overhead", {})
    tp_overhead = tp_raw.get("tp_layer_overhead_s", base.tp_layer_overhead_s) / share
    tp_mb_overhead = tp_raw.get("tp_microbatch_overhead_s", base.tp_microbatch_overhead_s) / share
    provenance = {k: env[k] for k in ("host", "device", "backend", "torch", "date", "world_size", "nnodes",
                                      "cpu_count", "quick") if k in env}
    provenance["calibrated_ranks_per_node"] = local
    provenance["overlap"] = raw.get("overlap", {})
    if "tp_overhead" in raw:  # calibrations before the negligible-size TP steps (2026-12-06)
        provenance["tp_overhead"] = raw["tp_overhead"]
    provenance["contention"] = contention
    provenance["kernels"] = kernels
    if raw.get("speed_probe"):  # the machine's speed while it was calibrated (planner.speed)
        provenance["speed_probe"] = {k: float(raw["speed_probe"][k]) for k in SPEED_KEYS}
        if "gemm_shape" in raw["speed_probe"]:
            provenance["speed_probe"]["gemm_shape"] = list(raw["speed_probe"]["gemm_shape"])
    profile = dataclasses.replace(
        base, name=name or f"{env['host']}-calibrated", gpu=gpu, gpus_per_node=local,
        num_nodes=max(1, world // local), intra_node=intra, inter_node=inter,
        compute_slots_per_node=local / share if share > 1.0 else 0,  # ranks' worth of cores
        overlap_slowdown=float(overlap), tp_layer_overhead_s=float(tp_overhead),
        tp_microbatch_overhead_s=float(tp_mb_overhead),
        source=f"measured with {world} ranks ({local} per node) by planner calibrate", provenance=provenance)
    profile = _fit_host_overheads(profile, tp_raw, share, raw.get("host"))
    return _fit_framework_overheads(profile, raw.get("framework") or {}, tp_raw.get("calib_model"))


def _fit_host_overheads(profile: ClusterSpec, tp_raw: dict[str, Any], share: float,
                        host: dict[str, Any] | None = None) -> ClusterSpec:
    """Host time per layer and per micro-batch: what the executor's steps of a GPT whose arithmetic is
    negligible (`host`, executor.calibration.bench_host: 1 and 5 layers, 4 micro-batches) take beyond
    the profile's price of them (its kernel launches), never negative. Profiles calibrated before that
    benchmark: the same residual on the calibration GPT's steps (`tp_raw`), which also absorbs what the
    op costs miss at its size."""
    if host and "host_model" in host:
        return _host_from_steps(profile, host["host_model"], host["step_1layer_s"], host["step_5layers_s"],
                                host["step_1layer_4microbatches_s"], 5, share)
    if "calib_model" not in tp_raw:
        return profile
    return _host_from_steps(profile, tp_raw["calib_model"], tp_raw["step_1layer_s"], tp_raw["step_3layers_s"],
                            tp_raw["step_1layer_4microbatches_s"], 3, share)


def _host_from_steps(profile: ClusterSpec, model: dict[str, Any], one: float, many: float, one_4mb: float,
                     layers: int, share: float) -> ClusterSpec:
    """Per-layer and per-micro-batch residuals of steps with 1 and `layers` layers (4 sequences as one
    micro-batch) and with 1 layer and 4 micro-batches of 1 sequence."""
    from planner.cost import batch_from_plans, evaluate
    from planner.plan import Plan
    from planner.specs.model import ModelSpec

    single = dataclasses.replace(profile, gpus_per_node=1, num_nodes=1, compute_slots_per_node=0)

    def predicted(n_layers: int, micro_batch: int) -> float:
        spec = ModelSpec(name="calib", num_layers=n_layers, dtype="fp32", **model)
        plan = Plan(micro_batch=micro_batch, global_batch=4, dtype="fp32")
        return float(evaluate(spec, single, batch_from_plans([plan])).step_time[0])

    measured_layer = (many - one) / (layers - 1) / share
    layer = max(0.0, measured_layer - (predicted(layers, 4) - predicted(1, 4)) / (layers - 1))
    extra_mbs = (one_4mb - one) / share - (predicted(1, 1) - predicted(1, 4))
    per_mb = max(0.0, extra_mbs / 3 - layer)  # 3 more micro-batches, each also passing the layer
    return dataclasses.replace(profile, host_layer_overhead_s=layer, host_microbatch_overhead_s=per_mb)


def run_calibration(nproc_per_node: int, quick: bool = False, device: str = "auto",
                    extra_torchrun: list[str] | None = None) -> dict[str, Any]:
    """Launch the microbenchmarks with torchrun and return the raw timings."""
    # One rank (a one-GPU machine) measures GEMMs, memory and kernels but no collectives: the
    # profile keeps the base preset's links, which single-rank plans never use.
    if nproc_per_node < 1:
        raise PlannerError(f"must be >= 1, got {nproc_per_node}", field="nproc_per_node")
    with tempfile.TemporaryDirectory(prefix="planner-calibrate-") as tmp:
        out = Path(tmp) / "raw.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", *(extra_torchrun or ["--standalone"]),
               "--nproc-per-node", str(nproc_per_node), "-m", "executor.calibration", "--out", str(out),
               "--device", device]
        if quick:
            cmd.append("--quick")
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("PYTHONWARNINGS", "ignore")
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=None, text=True)
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"calibration failed (torchrun exit status {proc.returncode}): "
                               f"{proc.stdout[-2000:]}")
        return load_json(out)


def write_profile(path: str | Path, profile: ClusterSpec, raw: dict[str, Any]) -> Path:
    """The profile JSON: a ClusterSpec any --cluster accepts, plus the raw measurements."""
    doc = profile.to_dict()
    doc["provenance"] = {**doc.get("provenance", {}), "raw": raw}
    return atomic_write_json(path, doc)


def _solve(measured: float, predict: Callable[[float], float], count: int) -> float:
    """The overhead value at which `predict` (the model's price of a measured step, growing with the
    overhead) gives `measured`, never negative: bisection, since the step grows monotonically but not
    linearly with it (shared cores bound a step by the node's total work; host time can push
    communication out of its overlap window). `count`: how often the overhead occurs, for the first
    bracket."""
    base = predict(0.0)
    if measured <= base:
        return 0.0
    lo, hi = 0.0, (measured - base) / count
    while predict(hi) < measured and hi < MAX_OVERHEAD_S:
        lo, hi = hi, min(2 * hi, MAX_OVERHEAD_S)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if predict(mid) < measured else (lo, mid)
    return (lo + hi) / 2


def framework_step_plans(world: int) -> dict[str, tuple[int, Any]]:
    """(layers, plan) of each step of the negligible-size GPT whose time calibrate measures for the
    parallel layouts' host time on `world` ranks (executor.calibration.bench_framework_steps, keyed by
    its raw timing), 4 sequences each: one micro-batch of 4 through every layer (TP, TP + SP), 4
    micro-batches of 1 (ZeRO-3: 4 / world through every layer; the pipeline: m + p - 1 slots)."""
    from planner.plan import Plan

    layers = 2 * world
    tp = Plan(tp=world, micro_batch=4, global_batch=4, dtype="fp32")
    return {"tp_host_step_1layer_s": (1, tp), "tp_host_step_s": (layers, tp),
            "tp_sp_host_step_s": (layers, dataclasses.replace(tp, sequence_parallel=True)),
            "zero3_host_step_s": (layers, Plan(dp=world, micro_batch=1, global_batch=4, zero_stage=3, dtype="fp32")),
            "pp_host_step_s": (layers, Plan(pp=world, micro_batch=1, global_batch=4, dtype="fp32"))}


def _fit_framework_overheads(profile: ClusterSpec, fw: dict[str, Any], calib: dict[str, Any] | None) -> ClusterSpec:
    """Tensor parallelism's host time per layer and micro-batch, sequence parallelism's and FSDP's per
    layer and the pipeline schedule's per micro-batch and stage: what the executor's steps of the
    negligible-size GPT under each layout (`fw`, executor.calibration.bench_framework_steps) take beyond
    the profile's price of them. Raw timings from before those steps: the residuals of the calibration
    GPT's pipeline / ZeRO-3 / TP + SP steps (`calib`), which also absorb what the op costs miss at its
    size (TP's then came from `tp_overhead`, already in `profile`). The optimizer's extra host time per
    DTensor parameter is timed directly (`bench_dtensor_optimizer`) and taken as measured."""
    if not fw:
        return profile
    from planner.cost import batch_from_plans, evaluate
    from planner.plan import Plan
    from planner.specs.model import ModelSpec

    world, layers = int(fw["world"]), int(fw["layers"])
    # These GPTs compute well under a millisecond between collectives, where gloo's calls run as back to
    # back: their steps are priced with the burst rows (those of a step's calls after compute would put
    # the difference, not host time, into the fit).
    node = dataclasses.replace(back_to_back_prices(profile), gpus_per_node=world, num_nodes=1)
    if "dtensor_optimizer_tensor_s" in fw:  # first: the steps below pay it too (their optimizer's DTensors)
        dtensor = float(fw["dtensor_optimizer_tensor_s"]) / node.compute_slowdown
        profile = dataclasses.replace(profile, dtensor_optimizer_tensor_s=dtensor)
        node = dataclasses.replace(node, dtensor_optimizer_tensor_s=dtensor)
    host = "tp_host_step_s" in fw
    if not host and calib is None:
        return profile
    model = fw["host_model"] if host else calib

    def step(n_layers: int, plan: Plan, gpt: dict[str, Any] = model, **overheads: float) -> float:
        spec = ModelSpec(name="calib", num_layers=n_layers, dtype="fp32", **gpt)
        cluster = dataclasses.replace(node, **overheads)
        return float(evaluate(spec, cluster, batch_from_plans([plan])).step_time[0])

    # the plans calibrate ran (older raw timings ran the same ones on the calibration GPT)
    plans = {key: plan for key, (_, plan) in framework_step_plans(world).items()}
    tp_plan, sp_plan = plans["tp_host_step_s"], plans["tp_sp_host_step_s"]
    z3_plan, pp_plan = plans["zero3_host_step_s"], plans["pp_host_step_s"]
    tp = {"tp_layer_overhead_s": profile.tp_layer_overhead_s,
          "tp_microbatch_overhead_s": profile.tp_microbatch_overhead_s}
    if host:  # TP's per layer from the steps' difference, then its per micro-batch from the 1-layer step
        def tp_layers(x: float) -> float:
            per_layer_only = {"tp_layer_overhead_s": x, "tp_microbatch_overhead_s": 0.0}
            return step(layers, tp_plan, **per_layer_only) - step(1, tp_plan, **per_layer_only)

        tp["tp_layer_overhead_s"] = _solve(fw["tp_host_step_s"] - fw["tp_host_step_1layer_s"], tp_layers,
                                           layers - 1)
        tp["tp_microbatch_overhead_s"] = _solve(
            fw["tp_host_step_1layer_s"],
            lambda y: step(1, tp_plan, tp_layer_overhead_s=tp["tp_layer_overhead_s"], tp_microbatch_overhead_s=y), 1)
    sp_over = profile.sp_layer_overhead_s
    sp_key = "tp_sp_host_step_s" if host else "tp_sp_step_s"
    if sp_key in fw:
        sp_over = _solve(fw[sp_key], lambda x: step(layers, sp_plan, sp_layer_overhead_s=x, **tp), layers)
    z3_over = _solve(fw["zero3_host_step_s" if host else "zero3_step_s"],
                     lambda x: step(layers, z3_plan, fsdp_layer_overhead_s=x), (4 // world) * layers)
    # The pipeline's: from the negligible-size GPT's pipelined step wherever calibrate measured one
    if "pp_host_step_s" in fw:
        pp_over = _solve(fw["pp_host_step_s"],
                         lambda x: step(layers, pp_plan, fw["host_model"], pp_microbatch_overhead_s=x), 4 + world - 1)
    else:
        pp_over = _solve(fw["pp_step_s"], lambda x: step(layers, pp_plan, pp_microbatch_overhead_s=x), 4 + world - 1)
    return dataclasses.replace(profile, pp_microbatch_overhead_s=pp_over, fsdp_layer_overhead_s=z3_over,
                               sp_layer_overhead_s=sp_over, **tp)
