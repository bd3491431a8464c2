"""Search serving plans: every legal pool configuration screened at once, the best simulated.

Two tiers, as the training search: a vectorised screen scores the whole space with a steady-state
estimate (one representative step per plan), then the best candidates are simulated request by
request (planner/serve/stream.py) and ranked by simulated output tokens/s per GPU among the plans
that meet the SLOs. The Pareto front of tokens/s per user (1 / TPOT) against tokens/s per GPU is
taken over every simulated plan.

Space (aggregated): per replica tp (powers of two within a node, dividing the heads), pp (powers of
two up to the layer count), for MoE models attention_dp and ep (dividing tp x attention_dp and the
experts), max_batch (1 ... 1024) and chunk_size (256 ... 16384, >= max_batch); replicas fill the
GPUs. Disaggregated: a prefill pool (tp, pp, chunk) and a decode pool (tp, pp, attention_dp, ep,
max_batch), and every split of the GPUs between them; the screen rates each split by the slower
pool's request rate (rate matching, Splitwise Sec. 5; DistServe Sec. 4).

Screen (steady state of one scheduler, X requests per step): each step decodes X (osl - 1) sequences
and prefills X isl prompt tokens within the chunk budget. Closed loop of u users (saturated: u = the
slots): X = min(u / (ttft_steps + osl - 1), chunk / (isl + osl - 1)) (Little's law over a request's
cycle; the second term is the prompt budget) and TTFT = u / X - (osl - 1) steps. Open stream of
rate R: X = R x step, TTFT = the prompt's chunks inflated by an M/D/1 wait at the prompt budget's
utilisation. TPOT = the step time. It only orders candidates: every reported number comes from the
simulation.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from planner.errors import PlanError
from planner.serve.kv import context_limit
from planner.serve.plan import SLO, ServeDocument, ServePlan, ServePool, Workload, check_serve_plan
from planner.serve.predict import GIB, check_request_fits, predict
from planner.serve.step import Overheads, StepCost, overheads_for
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CHUNKS = (256, 512, 1024, 2048, 4096, 8192, 16384)
DEFAULT_RERANK = 12  # candidates simulated beyond the ones that make the top list
# The screen keeps plans whose estimate is within these factors of the SLOs: its TPOT is within ~10%
# of the simulation's; its TTFT misses the waves a closed loop of equal requests forms, so it only
# orders the candidates whose TTFT the simulation then decides.
TPOT_SLACK = 1.1
TTFT_SLACK = 2.0
PARETO_SIMULATED = 6  # screen Pareto-front plans simulated beyond the ranked ones


@dataclass(frozen=True)
class ServeConstraints:
    """Dimensions fixed by the user (None: searched)."""

    tp: int | None = None
    pp: int | None = None
    ep: int | None = None
    attention_dp: int | None = None
    max_batch: int | None = None
    chunk_size: int | None = None
    replicas: int | None = None


@dataclass
class ServeResult:
    """What `search_serving` returns (the contract the CLI and the dashboard read)."""

    documents: list[ServeDocument]  # ranked: meeting the SLOs first, by tokens/s per GPU
    pareto: list[ServeDocument]  # tokens/s per user vs tokens/s per GPU, over every simulated plan
    space: int  # candidate plans
    fitting: int  # candidates whose weights and one request's KV cache fit
    screened: int  # candidates the screen passed
    simulated: int
    seconds: float
    pruned: dict[str, int] = field(default_factory=dict)


def _pow2(limit: int) -> list[int]:
    out, v = [], 1
    while v <= limit:
        out.append(v)
        v *= 2
    return out


def _choices(fixed: int | None, values: Iterable[int]) -> list[int]:
    return [fixed] if fixed is not None else list(values)


def tp_choices(model: ModelSpec, cluster: ClusterSpec, fixed: int | None) -> list[int]:
    """Tensor-parallel sizes: powers of two within a node that split heads (and KV heads) evenly."""
    def legal(t: int) -> bool:
        kv = model.num_kv_heads
        return model.num_heads % t == 0 and model.ffn_hidden % t == 0 and (kv % t == 0 or t % kv == 0)

    if fixed is not None:
        return [fixed]
    return [t for t in _pow2(min(cluster.gpus_per_node, model.num_heads)) if legal(t)]


def pool_grid(model: ModelSpec, cluster: ClusterSpec, role: str, cons: ServeConstraints,
              max_gpus: int) -> list[ServePool]:
    """Every pool configuration of `role` using at most `max_gpus` GPUs per replica (replicas = 1)."""
    tps = tp_choices(model, cluster, cons.tp)
    pps = _choices(cons.pp, [p for p in _pow2(model.num_layers)])
    moe = model.is_moe
    adps = _choices(cons.attention_dp, _pow2(max_gpus) if moe and role != "prefill" else [1])
    batches = _choices(cons.max_batch, BATCHES if role != "prefill" else (16,))
    chunks = _choices(cons.chunk_size, CHUNKS) if role != "decode" else [0]
    pools = []
    for tp in tps:
        for pp in pps:
            for adp in adps:
                gpus = tp * adp * pp
                if gpus > max_gpus:
                    continue
                eps = [e for e in _pow2(tp * adp) if not moe or model.num_experts % e == 0] if moe else [1]
                eps = _choices(cons.ep, eps)
                for ep in eps:
                    for b in batches:
                        for c in chunks:
                            if role == "both" and c < b:
                                continue
                            try:
                                pools.append(ServePool(role=role, tp=tp, pp=pp, ep=ep, attention_dp=adp,
                                                       max_batch=b, chunk_size=c or b))
                            except PlanError:
                                continue
    return pools


# ---- the screen ------------------------------------------------------------------------------


@dataclass
class Screen:
    """Vectorised steady-state estimates for a list of pools (one entry per pool)."""

    pools: list[ServePool]
    fits: np.ndarray
    slots: np.ndarray  # running sequences per scheduler
    tpot: np.ndarray  # seconds
    ttft: np.ndarray  # seconds
    rate: np.ndarray  # requests per second of one replica
    tokens_per_s: np.ndarray  # output tokens per second of one replica
    weights: np.ndarray
    request_kv: np.ndarray
    kv_pool: np.ndarray


def screen(model: ModelSpec, cluster: ClusterSpec, pools: list[ServePool], dtype: str, kv_dtype: str,
           workload: Workload, memory_utilization: float, block_size: int, overheads: Overheads,
           users_per_scheduler: np.ndarray | None = None, rate_per_scheduler: np.ndarray | None = None) -> Screen:
    """Steady-state estimates of one replica of each pool (see the module docstring)."""
    isl, osl = workload.isl, workload.osl
    tp = np.array([p.tp for p in pools])
    pp = np.array([p.pp for p in pools])
    ep = np.array([p.ep for p in pools])
    adp = np.array([p.attention_dp for p in pools])
    batch = np.array([p.max_batch for p in pools], dtype=np.float64)
    chunk = np.array([p.chunk_size for p in pools], dtype=np.float64)
    role = pools[0].role
    cost = StepCost(model, cluster, dtype, kv_dtype, tp, pp, ep, adp, overheads=overheads)
    context = isl + (1 if role == "prefill" else osl)
    weights = np.maximum(cost.weight_bytes("first"), cost.weight_bytes("last"))
    kv_pool = cost.kv_pool_bytes(np.where(role == "decode", batch, chunk), batch, memory_utilization)
    per_req = cost.request_kv_bytes(context, block_size)
    kv_requests = np.floor(np.maximum(kv_pool, 0.0) / np.maximum(per_req, 1.0)) // pp
    fits = kv_requests >= 1
    slots = np.maximum(np.minimum(batch, kv_requests), 1.0)
    if role == "prefill":
        c = chunk
        step = cost.step_time(c, np.maximum(1.0, c / isl), 0.0, 0.0, c, c * isl / 2.0)
        rate = pp * adp * c / isl / step
        ttft = np.ceil(isl / c) * step
        return Screen(pools, fits, slots, np.zeros_like(step), ttft, rate, rate, weights, per_req, kv_pool)
    k = slots
    if role == "decode":
        step = cost.step_time(k, k, k, k * (isl + osl / 2.0), 0.0, 0.0)
        tokens = k / step * pp * adp
        return Screen(pools, fits, slots, step, step, tokens / osl, tokens, weights, per_req, kv_pool)
    rate_s = None if rate_per_scheduler is None else np.asarray(rate_per_scheduler, dtype=np.float64)
    users = slots if users_per_scheduler is None else np.asarray(users_per_scheduler, dtype=np.float64)
    n_dec = np.zeros_like(k)
    step = cost.step_time(1.0, 1.0, 1.0, isl + osl / 2.0, 0.0, 0.0)
    for _ in range(3):  # fixed point: requests per step X, decoding sequences X (osl - 1), step time
        room = np.maximum(chunk - n_dec, 1.0)
        if rate_s is None:  # closed loop: Little's law over a request's cycle of ttft + osl - 1 steps
            first = np.ceil(isl / room)
            x = np.minimum(np.minimum(users, slots) / (first + osl - 1), chunk / (isl + osl - 1))
        else:
            x = rate_s * step
        n_dec = np.minimum(x * (osl - 1), slots)
        pre = x * isl
        step = cost.step_time(n_dec + pre, n_dec + x, n_dec, n_dec * (isl + osl / 2.0), pre, pre * isl / 2.0)
    room = np.maximum(chunk - n_dec, 1.0)
    service = np.ceil(isl / room) * step
    if rate_s is None:
        ttft = np.maximum(users / np.maximum(x, 1e-12) - (osl - 1), np.ceil(isl / room)) * step
        tokens = x * osl / step * pp * adp
    else:  # open stream: the prompt budget as an M/D/1 server of utilisation rho
        rho = x * isl / room
        ttft = np.where(rho < 1, service * (1 + rho / (2 * np.maximum(1 - rho, 1e-9))), np.inf)
        tokens = np.where((rho < 1) & (x * (osl - 1) < slots), rate_s * osl, 0.0) * pp * adp
    return Screen(pools, fits, slots, step, ttft, tokens / osl, tokens, weights, per_req, kv_pool)


# ---- search ----------------------------------------------------------------------------------


def _users_per_scheduler(workload: Workload, schedulers: np.ndarray) -> np.ndarray | None:
    if workload.mode == "closed":
        return np.ceil(float(workload.concurrency) / schedulers)  # type: ignore[arg-type]
    if workload.mode == "open":
        return None
    return None


def _meets(screen_ttft: np.ndarray, screen_tpot: np.ndarray, slo: SLO) -> np.ndarray:
    ok = np.ones(screen_ttft.shape, dtype=bool)
    if slo.ttft_ms is not None:
        ok &= screen_ttft * 1e3 <= slo.ttft_ms * TTFT_SLACK
    if slo.tpot_ms is not None:
        ok &= screen_tpot * 1e3 <= slo.tpot_ms * TPOT_SLACK
    return ok


def replica_options(workload: Workload, fixed: int | None, most: int) -> list[int]:
    """Replica counts to try: saturated serving fills every GPU; a fixed load may need fewer GPUs
    (halvings of the most that fit), which raises the tokens/s per GPU the plan is ranked by."""
    if fixed is not None:
        return [fixed] if fixed <= most else []
    if workload.mode == "saturated":
        return [most]
    out, r = [], most
    while r >= 1:
        out.append(r)
        r //= 2
    return out


def _aggregated_candidates(model: ModelSpec, cluster: ClusterSpec, dtype: str, kv_dtype: str, workload: Workload,
                           slo: SLO, cons: ServeConstraints, memory_utilization: float, block_size: int,
                           overheads: Overheads) -> tuple[list[ServePlan], np.ndarray, int, int, int, dict[str, int],
                                                          np.ndarray, np.ndarray]:
    n = cluster.num_gpus
    base = [p for p in pool_grid(model, cluster, "both", cons, n) if n % p.replica_gpus == 0]
    pruned: dict[str, int] = {}
    pools = [ServePool(role="both", tp=p.tp, pp=p.pp, ep=p.ep, attention_dp=p.attention_dp, replicas=r,
                       max_batch=p.max_batch, chunk_size=p.chunk_size)
             for p in base for r in replica_options(workload, cons.replicas, n // p.replica_gpus)]
    if not pools:
        return [], np.zeros(0), 0, 0, 0, pruned, np.zeros(0), np.zeros(0)
    replicas = np.array([p.replicas for p in pools], dtype=np.float64)
    gpus = np.array([p.gpus for p in pools], dtype=np.float64)
    schedulers = np.array([p.schedulers for p in pools], dtype=np.float64)
    users = _users_per_scheduler(workload, schedulers)
    rate = float(workload.request_rate) / schedulers if workload.mode == "open" else None  # type: ignore[arg-type]
    sc = screen(model, cluster, pools, dtype, kv_dtype, workload, memory_utilization, block_size, overheads, users,
                rate)
    # a batch limit above what the KV cache holds runs as the KV limit: keep the smallest such batch
    batch = np.array([p.max_batch for p in pools], dtype=np.float64)
    redundant = (batch > sc.slots) & (batch / 2 >= sc.slots)
    pruned["max_batch above the KV capacity"] = int((redundant & sc.fits).sum())
    if users is not None:  # a batch limit twice the users a scheduler ever has runs as half of it
        idle = (batch / 2 >= users) & ~redundant
        pruned["max_batch above the users per scheduler"] = int((idle & sc.fits).sum())
        redundant |= idle
    pruned["weights or one request's KV cache do not fit"] = int((~sc.fits).sum())
    per_gpu = sc.tokens_per_s * replicas / gpus
    if workload.mode == "open":
        stable = sc.tokens_per_s > 0
        pruned["cannot sustain the request rate"] = int((~stable & sc.fits).sum())
    else:
        stable = np.ones(len(pools), dtype=bool)
    ok = sc.fits & ~redundant & stable
    slo_ok = _meets(sc.ttft, sc.tpot, slo)
    plans = [ServePlan(pools=(p,), dtype=dtype, kv_dtype=kv_dtype, block_size=block_size,
                       memory_utilization=memory_utilization) for p in pools]
    return (plans, np.where(ok, per_gpu, -1.0), len(pools), int(sc.fits.sum()), int((ok & slo_ok).sum()), pruned,
            np.where(ok & slo_ok, 1.0, 0.0), 1e3 / np.maximum(sc.tpot, 1e-12))


def _disaggregated_candidates(model: ModelSpec, cluster: ClusterSpec, dtype: str, kv_dtype: str, workload: Workload,
                              slo: SLO, cons: ServeConstraints, memory_utilization: float, block_size: int,
                              overheads: Overheads) -> tuple[list[ServePlan], np.ndarray, int, int, int, dict[str, int],
                                                             np.ndarray, np.ndarray]:
    n = cluster.num_gpus
    pruned: dict[str, int] = {}
    pre_pools = pool_grid(model, cluster, "prefill", ServeConstraints(tp=cons.tp, pp=cons.pp,
                                                                      chunk_size=cons.chunk_size), n - 1)
    dec_pools = pool_grid(model, cluster, "decode", ServeConstraints(tp=cons.tp, pp=cons.pp, ep=cons.ep,
                                                                     attention_dp=cons.attention_dp,
                                                                     max_batch=cons.max_batch), n - 1)
    if not pre_pools or not dec_pools:
        return [], np.zeros(0), 0, 0, 0, pruned, np.zeros(0), np.zeros(0)
    args = (dtype, kv_dtype, workload, memory_utilization, block_size, overheads)
    sp = screen(model, cluster, pre_pools, *args)
    sd = screen(model, cluster, dec_pools, *args)
    pi = np.flatnonzero(sp.fits & _meets(sp.ttft, np.zeros_like(sp.ttft), slo))
    di = np.flatnonzero(sd.fits & _meets(np.zeros_like(sd.tpot), sd.tpot, slo))
    pruned["weights or one request's KV cache do not fit"] = int((~sp.fits).sum() + (~sd.fits).sum())
    plans: list[ServePlan] = []
    scores: list[float] = []
    tpots: list[float] = []
    space = 0
    for i in pi:
        gp = pre_pools[i].replica_gpus
        for j in di:
            gd = dec_pools[j].replica_gpus
            for np_ in range(1, n // gp + 1):
                rest = n - np_ * gp
                if rest < gd or rest % gd:
                    continue
                nd = rest // gd
                space += 1
                rate = min(sp.rate[i] * np_, sd.rate[j] * nd)
                if workload.mode == "open":
                    need = float(workload.request_rate)  # type: ignore[arg-type]
                    if rate < need:
                        continue
                    rate = need
                plans.append(ServePlan(pools=(
                    ServePool(role="prefill", tp=pre_pools[i].tp, pp=pre_pools[i].pp, replicas=np_,
                              max_batch=pre_pools[i].max_batch, chunk_size=pre_pools[i].chunk_size),
                    ServePool(role="decode", tp=dec_pools[j].tp, pp=dec_pools[j].pp, ep=dec_pools[j].ep,
                              attention_dp=dec_pools[j].attention_dp, replicas=nd, max_batch=dec_pools[j].max_batch,
                              chunk_size=dec_pools[j].max_batch)),
                    dtype=dtype, kv_dtype=kv_dtype, block_size=block_size, memory_utilization=memory_utilization))
                scores.append(rate * workload.osl / n)
                tpots.append(1e3 / max(float(sd.tpot[j]), 1e-12))
    s = np.array(scores)
    return plans, s, space, len(plans), len(plans), pruned, np.ones(len(plans)), np.array(tpots)


def _pareto(docs: list[ServeDocument]) -> list[ServeDocument]:
    """Plans no other plan beats on both tokens/s per user and tokens/s per GPU."""
    pts = sorted(docs, key=lambda d: (-d.prediction["tokens_per_s_per_gpu"],  # type: ignore[index]
                                      -d.prediction["tokens_per_s_per_user"]))  # type: ignore[index]
    front, best_user = [], -1.0
    for d in pts:
        u = d.prediction["tokens_per_s_per_user"]  # type: ignore[index]
        if u > best_user:
            front.append(d)
            best_user = u
    return front


def search_serving(model: ModelSpec, cluster: ClusterSpec, workload: Workload, slo: SLO | None = None, *,
                   dtype: str = "bf16", kv_dtype: str | None = None, disaggregated: bool = False,
                   constraints: ServeConstraints | None = None, top_k: int = 5, rerank: int = DEFAULT_RERANK,
                   memory_utilization: float = 0.9, block_size: int = 16,
                   overheads: Overheads | None = None) -> ServeResult:
    """Search serving plans for `workload` on `cluster` (see the module docstring).

    Raises PlanError (one line naming the limit and the nearest feasible setting) when the request
    exceeds the model's context, when no plan holds one request, or when no plan meets the SLOs.
    """
    start = time.perf_counter()
    slo = slo or SLO()
    cons = constraints or ServeConstraints()
    kv_dtype = kv_dtype or ("fp32" if dtype == "fp32" else "bf16")
    overheads = overheads if overheads is not None else overheads_for(cluster)
    check_request_fits(model, workload)
    build = _disaggregated_candidates if disaggregated else _aggregated_candidates
    plans, score, space, fitting, screened, pruned, slo_screen, user_rate = build(
        model, cluster, dtype, kv_dtype, workload, slo, cons, memory_utilization, block_size, overheads)
    if not plans or fitting == 0 or not (score > 0).any():
        _explain_nothing_fits(model, cluster, workload, dtype, kv_dtype, cons, memory_utilization, block_size,
                              overheads, disaggregated)
    # screen-passing first, then by estimated tokens/s per GPU, ties by the faster TPOT
    order = [int(i) for i in np.lexsort((-user_rate, -score, -slo_screen)) if score[i] > 0]
    # Pareto candidates of the screen (per-user rate vs per-GPU rate), simulated too
    front_idx: list[int] = []
    best = -1.0
    for i in sorted(order, key=lambda i: (-score[i], -user_rate[i])):
        if user_rate[i] > best:
            front_idx.append(i)
            best = user_rate[i]
    docs: list[ServeDocument] = []
    simulated: set[int] = set()

    def simulate(i: int) -> ServeDocument | None:
        simulated.add(i)
        try:
            check_serve_plan(model, cluster, plans[i])
            pred = predict(model, cluster, plans[i], workload, slo, overheads)
        except PlanError:
            return None
        d = ServeDocument(plan=plans[i], model=model, cluster=cluster, workload=workload, slo=slo, prediction=pred)
        docs.append(d)
        return d

    budget = top_k + rerank
    meeting = 0
    for i in order:
        n = len(simulated)
        if (n >= budget and meeting >= top_k) or (n >= 2 * budget and meeting) or n >= 4 * budget:
            break
        d = simulate(i)
        if d is not None and d.prediction["meets_slo"]:  # type: ignore[index]
            meeting += 1
    for i in [i for i in front_idx if i not in simulated][:PARETO_SIMULATED]:
        simulate(i)
    ranked = sorted(docs, key=lambda d: (not d.prediction["meets_slo"],  # type: ignore[index]
                                         -d.prediction["tokens_per_s_per_gpu"]))  # type: ignore[index]
    if not any(d.prediction["meets_slo"] for d in ranked):  # type: ignore[index]
        _explain_no_slo(ranked, slo)
    meeting_docs = [d for d in ranked if d.prediction["meets_slo"]]  # type: ignore[index]
    return ServeResult(documents=meeting_docs[:top_k], pareto=_pareto(docs), space=space, fitting=fitting,
                       screened=screened, simulated=len(simulated), seconds=time.perf_counter() - start,
                       pruned=pruned)


# ---- one-line explanations -----------------------------------------------------------------------


def _explain_no_slo(docs: list[ServeDocument], slo: SLO) -> None:
    """No simulated plan meets the SLOs: name the closest one and the limits it would meet."""
    if not docs:
        raise PlanError("no serving plan could be simulated for this problem", field="slo")
    key = f"p{slo.percentile}"

    def excess(d: ServeDocument) -> float:
        p = d.prediction or {}
        r = []
        if slo.ttft_ms:
            r.append(p["ttft_ms"][key] / slo.ttft_ms)
        if slo.tpot_ms:
            r.append(p["tpot_ms"][key] / slo.tpot_ms)
        return max(r or [0.0])

    best = min(docs, key=excess)
    p = best.prediction or {}
    parts = []
    if slo.ttft_ms:
        parts.append(f"--ttft-ms {np.ceil(p['ttft_ms'][key]):.0f}")
    if slo.tpot_ms:
        parts.append(f"--tpot-ms {np.ceil(p['tpot_ms'][key] * 10) / 10:g}")
    raise PlanError(f"no plan meets {slo.describe()} (closest: {best.plan.describe()} with TTFT {key} "
                    f"{p['ttft_ms'][key]:.0f} ms, TPOT {key} {p['tpot_ms'][key]:.1f} ms; nearest feasible: "
                    f"{' '.join(parts)}, or a lighter load)", field="slo")


def _explain_nothing_fits(model: ModelSpec, cluster: ClusterSpec, workload: Workload, dtype: str, kv_dtype: str,
                          cons: ServeConstraints, memory_utilization: float, block_size: int, overheads: Overheads,
                          disaggregated: bool) -> None:
    """No candidate holds the weights plus one request: say how much the leanest plan has and needs."""
    n = cluster.num_gpus
    grid = pool_grid(model, cluster, "both", ServeConstraints(tp=cons.tp, pp=cons.pp, ep=cons.ep,
                                                               attention_dp=cons.attention_dp, max_batch=1,
                                                               chunk_size=256), n)
    grid = [p for p in grid if p.replica_gpus <= n]
    if not grid:
        raise PlanError(f"no tensor / pipeline split of {model.name} fits {n} GPUs with the fixed sizes "
                        f"(tp {cons.tp}, pp {cons.pp})", field="tp")
    sc = screen(model, cluster, grid, dtype, kv_dtype, workload, memory_utilization, block_size, overheads)
    i = int(np.argmax(sc.kv_pool - sc.request_kv))
    p = grid[i]
    left = max(float(sc.kv_pool[i]), 0.0)
    need = float(sc.request_kv[i])
    if sc.fits.any() and workload.mode == "open":
        raise PlanError(f"no plan on {n} GPUs sustains {workload.request_rate:g} requests/s of isl "
                        f"{workload.isl} / osl {workload.osl} (lower --request-rate or add GPUs)",
                        field="request_rate")
    if sc.fits.any():
        raise PlanError("no plan fits the fixed sizes (relax --tp / --pp / --ep / --max-batch)", field="tp")
    per_token = need / (workload.isl + workload.osl)
    longest = int(left // per_token) if per_token > 0 else 0
    limit = context_limit(model)
    if left <= 0:
        raise PlanError(f"{model.name}'s weights leave no room for a KV cache on {n} x {cluster.gpu.name} "
                        f"(leanest plan {p.describe()}: weights {sc.weights[i] / GIB:.1f} GiB per GPU of "
                        f"{memory_utilization * cluster.gpu.memory_bytes / GIB:.1f} GiB usable); nearest "
                        f"feasible: more GPUs or --dtype fp8", field="kv_cache")
    raise PlanError(f"a request of {workload.isl + workload.osl} tokens needs {need / GIB:.2f} GiB of KV cache per "
                    f"GPU but the leanest plan ({p.describe()}) leaves {left / GIB:.2f} GiB; nearest feasible: "
                    f"isl + osl <= {min(longest, limit)} tokens, --kv-dtype fp8, or more GPUs", field="kv_cache")

