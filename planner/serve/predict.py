"""The `prediction` of one serving plan: memory and KV capacity per GPU, then the request stream simulated.

`predict(model, cluster, plan, workload, slo)` is what `planner serve` ranks, what a serving plan
file carries and what `planner validate --serve` compares with measurements. Its keys (contract):
``ttft_ms`` and ``tpot_ms`` (p50 / p90 / p99 / mean), ``tokens_per_s`` (output tokens per second of
the deployment), ``tokens_per_s_per_gpu``, ``tokens_per_s_per_user`` (1 / TPOT p50),
``requests_per_s``, ``kv_cache_gib_per_gpu`` (the KV pool), ``max_concurrency`` (requests the
deployment's KV caches and batch limits hold at once), ``memory_gib_per_gpu`` with its ``memory``
breakdown, ``fits``, ``meets_slo``, ``no_load`` latencies, and for disaggregated plans the KV
transfer time and the two pools' capacities (rate matching).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from planner.errors import PlanError
from planner.serve.kv import context_limit
from planner.serve.plan import SLO, ServePlan, ServePool, Workload
from planner.serve.step import Overheads, StepCost, overheads_for
from planner.serve.stream import (
    ENGINE_WARMUP_REQUESTS,
    NewShapeTimer,
    StreamResult,
    combine_disaggregated,
    littles_law_rate,
    simulate_scheduler,
)
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

GIB = 2**30


@dataclass
class PoolModel:
    """A pool's step cost and memory (one configuration)."""

    pool: ServePool
    cost: StepCost
    weights: float  # bytes per GPU (the fuller of the first / last stage)
    activations: float
    kv_pool: float  # KV bytes per GPU
    request_kv: float  # KV bytes per GPU one request holds at its full length
    slots: int  # requests one scheduler runs at once (KV and max_batch)
    kv_requests: int  # requests one scheduler's share of the KV pool holds
    _timer: Any = None

    def timer(self, workload: Workload) -> Any:
        if self._timer is None:
            self._timer = self.cost.timer(max(self.pool.chunk_size, self.pool.max_batch), self.pool.max_batch)
        return self._timer


def pool_model(model: ModelSpec, cluster: ClusterSpec, plan: ServePlan, pool: ServePool, workload: Workload,
               overheads: Overheads | None = None) -> PoolModel:
    """Memory, KV capacity and the step cost of one pool."""
    cost = StepCost(model, cluster, plan.dtype, plan.kv_dtype, np.array([pool.tp]), np.array([pool.pp]),
                    np.array([pool.ep]), np.array([pool.attention_dp]), overheads=overheads)
    chunk = pool.chunk_size if pool.role != "decode" else pool.max_batch
    weights = float(np.maximum(cost.weight_bytes("first"), cost.weight_bytes("last"))[0])
    act = float(cost.activation_bytes(chunk, pool.max_batch)[0])
    kv_pool = float(cost.kv_pool_bytes(chunk, pool.max_batch, plan.memory_utilization)[0])
    context = workload.isl + (1 if pool.role == "prefill" else workload.osl)
    per_req = float(cost.request_kv_bytes(context, plan.block_size)[0])
    kv_requests = int(max(kv_pool, 0.0) // per_req) // pool.pp if per_req > 0 else 1 << 30
    return PoolModel(pool=pool, cost=cost, weights=weights, activations=act, kv_pool=kv_pool, request_kv=per_req,
                     slots=min(pool.max_batch, kv_requests), kv_requests=kv_requests)


def kv_transfer_s(model: ModelSpec, cluster: ClusterSpec, plan: ServePlan, decode: PoolModel,
                  isl: int) -> float:
    """Seconds to move one request's prompt KV cache to a decode engine: every decode GPU receives
    its share (its own KV bytes for the prompt) over the inter-node link (one message per GPU, all
    GPUs in parallel; DistServe Sec. 4.3, Splitwise Sec. 4.2)."""
    link = cluster.inter_node
    nbytes = float(decode.cost.request_kv_bytes(isl, 1)[0])
    return link.latency + nbytes / link.bus_bandwidth


def _memory(pm: PoolModel, cluster: ClusterSpec) -> dict[str, float]:
    return {"weights": pm.weights / GIB, "activations": pm.activations / GIB,
            "kv_cache": max(pm.kv_pool, 0.0) / GIB, "reserved": cluster.reserved_memory_bytes / GIB}


def _share(workload: Workload, schedulers: int) -> dict[str, Any]:
    """One scheduler's share of the load."""
    if workload.mode == "closed":
        return {"mode": "closed", "users": -(-int(workload.concurrency) // schedulers)}  # type: ignore[arg-type]
    if workload.mode == "open":
        return {"mode": "open", "rate": float(workload.request_rate) / schedulers}  # type: ignore[arg-type]
    return {"mode": "saturated"}


def no_load(pm: PoolModel, workload: Workload) -> dict[str, float]:
    """TTFT and TPOT of a lone request (no queueing, no other sequences in the batch)."""
    isl, osl = workload.isl, workload.osl
    timer = pm.timer(workload)
    chunk = pm.pool.chunk_size
    ttft, done = 0.0, 0
    while done < isl:
        c = min(chunk, isl - done)
        last = done + c == isl
        ttft += timer(c, 1 if last else 0, 0, 0.0, c, c * (done + c / 2.0))
        done += c
    tpot = float(np.mean(timer.decode_stretch(1, isl + 1.0, max(osl - 1, 1))))
    return {"ttft_ms": ttft * 1e3, "tpot_ms": tpot * 1e3}


def check_request_fits(model: ModelSpec, workload: Workload) -> None:
    """Refuse a request longer than the model's context, naming the nearest feasible lengths."""
    limit = context_limit(model)
    if workload.isl + workload.osl > limit:
        osl = max(1, limit - workload.isl)
        hint = (f"--osl {osl}" if workload.isl < limit else f"--isl {max(1, limit - workload.osl)}")
        raise PlanError(f"isl + osl = {workload.isl} + {workload.osl} = {workload.isl + workload.osl} tokens "
                        f"exceeds {model.name}'s context of {limit} tokens (nearest feasible: {hint})",
                        field="osl" if workload.isl < limit else "isl")


def predict(model: ModelSpec, cluster: ClusterSpec, plan: ServePlan, workload: Workload,
            slo: SLO | None = None, overheads: Overheads | None = None) -> dict[str, Any]:
    """The prediction object of one serving plan (see the module docstring)."""
    slo = slo or SLO()
    overheads = overheads if overheads is not None else overheads_for(cluster)
    check_request_fits(model, workload)
    models = [pool_model(model, cluster, plan, p, workload, overheads) for p in plan.pools]
    for pm in models:
        if pm.kv_requests < 1:
            raise PlanError(f"{pm.pool.role} pool {pm.pool.describe()}: a request of {workload.isl + workload.osl} "
                            f"tokens needs {pm.request_kv / GIB:.2f} GiB of KV cache per GPU but "
                            f"{max(pm.kv_pool, 0.0) / GIB:.2f} GiB is left after weights and activations",
                            field="kv_cache")
    gpus = plan.num_gpus
    if not plan.disaggregated:
        pm = models[0]
        result = _simulate_pool(pm, workload)
        tokens_per_s = result.output_tokens_per_s * pm.pool.schedulers
        max_conc = pm.pool.schedulers * pm.slots
        extra: dict[str, Any] = {"no_load": no_load(pm, workload)}
        memory = _memory(pm, cluster)
    else:
        pre, dec = models
        result, extra = _simulate_disaggregated(model, cluster, plan, pre, dec, workload)
        tokens_per_s = result.output_tokens_per_s * dec.pool.schedulers
        max_conc = dec.pool.schedulers * dec.slots + pre.pool.schedulers * pre.slots
        mems = [_memory(pm, cluster) for pm in models]
        memory = max(mems, key=lambda m: sum(m.values()))
    summary = result.summary()
    tpot_p50 = summary["tpot_ms"]["p50"]
    pred: dict[str, Any] = {
        "ttft_ms": summary["ttft_ms"],
        "tpot_ms": summary["tpot_ms"],
        "e2e_ms": summary["e2e_ms"],
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_gpu": tokens_per_s / gpus,
        "tokens_per_s_per_user": 1e3 / tpot_p50 if tpot_p50 > 0 else 0.0,
        "requests_per_s": tokens_per_s / workload.osl,
        "kv_cache_gib_per_gpu": memory["kv_cache"],
        "max_concurrency": int(max_conc),
        "memory_gib_per_gpu": sum(memory.values()),
        "memory": memory,
        "fits": True,
        "num_gpus": gpus,
        "mean_running_per_scheduler": result.mean_running,
        "simulated_requests": result.requests,
        "measured_requests": result.measured,
        **extra,
    }
    pred["meets_slo"] = slo.met(pred)
    pred["overheads"] = overheads.to_dict()
    return pred


def _simulate_pool(pm: PoolModel, workload: Workload) -> StreamResult:
    share = _share(workload, pm.pool.schedulers)
    timer: Any = pm.timer(workload)
    o = pm.cost.overheads
    miss = o.tp_new_shape_s + pm.cost.model.num_layers * o.tp_new_shape_layer_s if pm.pool.tp > 1 else 0.0
    if miss > 0:  # the host's once-per-shape cost; the engine's warm-up stream has paid for its shapes
        timer = NewShapeTimer(timer, miss)
        simulate_scheduler(timer, workload.isl, workload.osl, pm.pool.max_batch, pm.pool.chunk_size, pm.kv_requests,
                           mode="closed", users=min(ENGINE_WARMUP_REQUESTS, pm.slots),
                           num_requests=ENGINE_WARMUP_REQUESTS)
    return simulate_scheduler(timer, workload.isl, workload.osl, pm.pool.max_batch, pm.pool.chunk_size,
                              pm.kv_requests, mode=share["mode"], users=share.get("users"), rate=share.get("rate"),
                              arrivals=workload.arrivals, num_requests=workload.num_requests, seed=workload.seed)


def pool_capacity_rps(pm: PoolModel, workload: Workload) -> float:
    """Requests per second a pool sustains: prefill, full chunks of prompt tokens back to back; decode,
    every scheduler at its slot limit (osl steps per request); both: the aggregated step of a full batch."""
    timer = pm.timer(workload)
    isl, osl, pool = workload.isl, workload.osl, pm.pool
    if pool.role == "prefill":
        c = pool.chunk_size
        step = timer(c, max(1, c // isl), 0, 0.0, c, c * isl / 2.0)
        return pool.schedulers * c / isl / step
    k = pm.slots
    step = float(np.mean(timer.decode_stretch(k, k * (isl + osl / 2.0), 1)))
    return pool.schedulers * k / (osl * step)


def _simulate_disaggregated(model: ModelSpec, cluster: ClusterSpec, plan: ServePlan, pre: PoolModel,
                            dec: PoolModel, workload: Workload) -> tuple[StreamResult, dict[str, Any]]:
    transfer = kv_transfer_s(model, cluster, plan, dec, workload.isl)
    cap_p, cap_d = pool_capacity_rps(pre, workload), pool_capacity_rps(dec, workload)
    capacity = min(cap_p, cap_d)
    isl, osl = workload.isl, workload.osl
    n = workload.num_requests

    def run(rate: float) -> StreamResult:
        p = simulate_scheduler(pre.timer(workload), isl, 1, pre.pool.max_batch, pre.pool.chunk_size, pre.kv_requests,
                               mode="open", rate=rate / pre.pool.schedulers, arrivals=workload.arrivals,
                               num_requests=n, seed=workload.seed)
        d = simulate_scheduler(dec.timer(workload), isl, osl, dec.pool.max_batch, dec.pool.max_batch,
                               dec.kv_requests, mode="open", rate=rate / dec.pool.schedulers, arrivals="poisson",
                               num_requests=n, seed=workload.seed + 1, prefilled=True, first_token_offset=transfer)
        return combine_disaggregated(p, d, osl)

    if workload.mode == "open":
        rate = float(workload.request_rate)  # type: ignore[arg-type]
    else:
        users = workload.concurrency if workload.mode == "closed" else dec.pool.schedulers * dec.slots
        cache: dict[float, StreamResult] = {}

        def e2e(r: float) -> float:
            cache[r] = run(r)
            return float(cache[r].e2e_s.mean()) if cache[r].e2e_s.size else 1e9

        rate = littles_law_rate(float(users), capacity, e2e)  # type: ignore[arg-type]
    result = run(rate)
    extra = {"disaggregated": {"kv_transfer_ms": transfer * 1e3, "prefill_capacity_rps": cap_p,
                               "decode_capacity_rps": cap_d, "request_rate": rate,
                               "bottleneck": "prefill" if cap_p < cap_d else "decode"},
             "no_load": {"ttft_ms": no_load(pre, workload)["ttft_ms"],
                         "tpot_ms": no_load(dec, workload)["tpot_ms"] + transfer * 1e3 / max(osl - 1, 1)}}
    return result, extra

