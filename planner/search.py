"""Exhaustive plan search: enumerate every legal plan, score all of them vectorised, keep the best.

The space: tp x cp x pp x dp = GPUs, expert parallelism, micro-batch, virtual stages, schedule,
recompute, sequence parallelism, ZeRO stage and rank placement (which dimensions sit inside a node).
Divisibility rules prune whole size combinations before scoring (each counted with its reason);
memory is checked on every scored plan. Placements that put every group on the same links are
scored once. The closed-form cost model ranks everything; the step simulation (`planner.simulate`)
re-ranks the best `rerank` plans. This is the one ranking path: the CLI, the dashboard, `planner
validate` and the benchmarks all call `search`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from planner.cost import DEFAULT_HEADROOM, evaluate, prediction
from planner.cost.batch import PlanBatch, strides_for
from planner.cost.model import Scores
from planner.errors import PlanError
from planner.framework import default_framework
from planner.framework import framework as framework_profile
from planner.plan import DEFAULT_PLACEMENT, DIMS, RECOMPUTE, SCHEDULES, Plan
from planner.precision import PRECISIONS, check_precision
from planner.simulate import simulate_plans
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

OBJECTIVES = ("time", "throughput", "cost")
CHUNK = 1 << 18  # plans scored per vectorised call (bounds peak memory)
DEFAULT_RERANK = 32  # plans the step simulation re-ranks


@dataclass(frozen=True)
class Constraints:
    """Fixed values (None = search) and allowed sets for the search dimensions."""

    tp: int | None = None
    pp: int | None = None
    dp: int | None = None
    cp: int | None = None
    ep: int | None = None
    vpp: int | None = None
    micro_batch: int | None = None
    recompute: tuple[str, ...] | None = None  # None: the framework's policies
    sequence_parallel: bool | None = None
    zero_stages: tuple[int, ...] = (0, 1, 2, 3)
    schedules: tuple[str, ...] = SCHEDULES
    max_memory_gib: float | None = None
    placements: bool = True  # search rank placement; False keeps the default order
    first_stage_layers: int | None = None  # fix an uneven pipeline split (with last_stage_layers)
    last_stage_layers: int | None = None
    recompute_every: int = 1  # full recompute of 1 in every k layers (plans with recompute "full")
    shard_group: int | None = None  # hybrid sharding: ZeRO over groups of this many dp x cp ranks
    etp: int | None = None  # the experts' tensor-parallel size (MoE parallel folding); None: tp


@dataclass
class SearchResult:
    """Best plans (best first), the Pareto front, and what the search did.

    `simulations[i]` is the step simulation's summary of plans[i] (None beyond the re-ranked ones);
    the first `reranked` plans are ordered by simulated step time, the rest by the closed form.
    """

    plans: list[Plan]
    predictions: list[dict]
    pareto: list[tuple[Plan, dict]]
    space: int  # plans enumerated (legal by divisibility)
    scored: int  # plans scored by the cost model (after placement dedup)
    fitting: int
    pruned: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    simulations: list[dict | None] = field(default_factory=list)
    reranked: int = 0
    rerank_seconds: float = 0.0


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _size_combos(model: ModelSpec, n_gpus: int, global_batch: int, c: Constraints,
                 pruned: Counter) -> Iterator[tuple[int, int, int, int]]:
    """(tp, cp, pp, dp) with tp*cp*pp*dp = n_gpus that pass the divisibility rules."""
    fixed = {k: v for k, v in (("tp", c.tp), ("cp", c.cp), ("pp", c.pp), ("dp", c.dp)) if v is not None}
    product = math.prod(fixed.values())
    if n_gpus % product:  # named as the reason, not hidden behind the other sizes' rules
        sizes = " x ".join(f"{k} {v}" for k, v in fixed.items())
        what = f"{sizes} does" if len(fixed) == 1 else f"the fixed sizes {sizes} = {product} do"
        pruned[f"{what} not divide the {n_gpus} GPUs"] += 1
        return
    for tp in divisors(n_gpus):
        if c.tp is not None and tp != c.tp:
            continue
        if model.num_heads % tp or model.num_kv_heads % tp or model.ffn_hidden % tp:
            pruned["tp does not divide heads / kv_heads / ffn_hidden"] += 1
            continue
        rest = n_gpus // tp
        for cp in divisors(rest):
            if c.cp is not None and cp != c.cp:
                continue
            if model.seq_len % cp:
                pruned["cp does not divide seq_len"] += 1
                continue
            for pp in divisors(rest // cp):
                if c.pp is not None and pp != c.pp:
                    continue
                if not pipeline_splits(model.num_layers, pp, c):
                    pruned["no split of the layers over pp stages"] += 1
                    continue
                dp = rest // cp // pp
                if c.dp is not None and dp != c.dp:
                    continue
                if global_batch % dp:
                    pruned["dp does not divide global_batch"] += 1
                    continue
                yield tp, cp, pp, dp


def pipeline_splits(num_layers: int, pp: int, c: Constraints) -> list[tuple[int, int, int, list[int]]]:
    """(first, last, account, vpp options) of the layer splits searched over pp ranks; (-1, -1, 0) is even.

    Even when pp divides the layers; otherwise (a) the middle ranks hold ceil(L / pp) layers and the
    first and last share the rest, the first (which also embeds) taking the smaller half (Megatron-LM's
    --decoder-first/last-pipeline-num-layers as NeMo sets them, e.g. 126 layers on 8 ranks: 15 + 6 x 16
    + 15), and (b) when L + 2 divides evenly, the embedding and the loss counted as one layer each
    (--account-for-embedding/loss-in-pipeline-split, which NeMo's 405B recipes use with interleaving).
    Any other split is expressed with the constraints (--first-stage-layers / --last-stage-layers).
    """
    return [(f, la, ac, list(vs)) for f, la, ac, vs in
            _pipeline_splits(num_layers, pp, c.first_stage_layers, c.last_stage_layers, c.vpp)]


@functools.lru_cache(maxsize=4096)
def _pipeline_splits(num_layers: int, pp: int, first_layers: int | None, last_layers: int | None,
                     vpp: int | None) -> tuple[tuple[int, int, int, tuple[int, ...]], ...]:
    """`pipeline_splits` on hashable arguments, cached: the nearest-legal hint asks it for every pp of
    thousands of batch sizes and GPU counts."""
    from planner.cost.stages import split_layers, virtual_stage_sizes

    fixed = first_layers is not None or last_layers is not None
    if fixed:
        options = {(first_layers, last_layers, 0)}
    elif num_layers % pp == 0:
        options = {(None, None, 0)}
    elif pp == 2:
        options = {(num_layers // 2, num_layers - num_layers // 2, 0)}
    else:
        options = set()
        for mid in (-(-num_layers // pp), num_layers // pp):  # the floor only if the ceiling leaves too few
            rest = num_layers - mid * (pp - 2)
            if rest >= 2:
                options = {(rest // 2, rest - rest // 2, 0)}
                break
    if not fixed and num_layers % pp and (num_layers + 2) % pp == 0:
        options.add((None, None, 3))
    out = []
    for first, last, account in sorted(options, key=lambda o: (o[0] is not None, o[2], o[:2] if o[0] else ())):
        vpps = []
        if pp == 1:
            candidates = [1]
        elif account:  # L + 2 units over pp x vpp virtual stages
            candidates = [v for v in range(1, (num_layers + 2) // pp + 1) if (num_layers + 2) % (pp * v) == 0]
        else:  # every rank's layers split evenly over its chunks
            try:
                g = math.gcd(*split_layers(num_layers, pp, first, last))
            except ValueError:
                continue
            candidates = [v for v in range(1, g + 1) if g % v == 0]
        for v in candidates:  # virtual_stage_sizes says which are legal
            if vpp is not None and v != vpp:
                continue
            try:
                sizes = virtual_stage_sizes(num_layers, pp, v, first, last, account)
            except ValueError:
                continue
            if min(sum(sizes[r::pp]) for r in range(pp)) >= 1:
                vpps.append(v)
        if vpps:
            out.append((-1 if first is None else first, -1 if last is None else last, account, tuple(vpps)))
    return tuple(out)


def _layout(size: int, stride: int, gpus_per_node: int) -> tuple[int, int]:
    """Scalar twin of `planner.cost.comm.group_layout`: (members per node, nodes spanned)."""
    k = 1 if stride >= gpus_per_node else min(size, max(1, gpus_per_node // max(stride, 1)))
    return k, -(-size // k)


def _placements(tp: int, cp: int, pp: int, dp: int, ep_values: list[int], gpus_per_node: int,
                search: bool, moe: bool = True, etp: int | None = None) -> list[tuple[str, ...]]:
    """Orders of the non-trivial dimensions that put groups on different links (one per layout).

    The expert-parallel and expert-data-parallel groups only count for mixture-of-experts models
    (a dense model has no expert parameters or all-to-alls, so their layout cannot change a score).
    """
    sizes = {"tp": tp, "cp": cp, "dp": dp, "pp": pp}
    if not search:
        return [DEFAULT_PLACEMENT]
    active = [d for d in DEFAULT_PLACEMENT if sizes[d] > 1]
    seen: dict[tuple, tuple[str, ...]] = {}
    for perm in itertools.permutations(active):
        order = tuple(perm) + tuple(d for d in DEFAULT_PLACEMENT if d not in perm)
        st, acc = {}, 1
        for d in order:
            st[d] = acc
            acc *= sizes[d]
        sig: list = [_layout(sizes[d], st[d], gpus_per_node) for d in DIMS]
        sig.append(st["pp"] * pp <= gpus_per_node)
        # (the dp x cp gradient group's layout is the product of the dp and cp layouts above)
        if moe and etp is not None and etp != tp:  # folded: ep after each etp group, then the experts' dp
            sig.extend(_layout(e, st["tp"] * etp, gpus_per_node) for e in ep_values)
            sig.extend(_layout(tp * cp * dp // (etp * e), st["tp"] * etp * e, gpus_per_node) for e in ep_values)
        elif moe:
            sig.extend(_layout(e, st["dp"], gpus_per_node) for e in ep_values)
            sig.extend(_layout(dp // e, st["dp"] * e, gpus_per_node) for e in ep_values)
        seen.setdefault(tuple(sig), order)
    return list(seen.values())


def enumerate_plans(model: ModelSpec, cluster: ClusterSpec, global_batch: int, dtype: str,
                    flash: bool = True, constraints: Constraints | None = None,
                    pruned: Counter | None = None,
                    lora: tuple[int, tuple[str, ...]] | None = None,
                    framework: str | None = None) -> Iterator[PlanBatch]:
    """Yield PlanBatches (about CHUNK plans each) covering the legal plan space.

    Plans are laid out structure by structure (sizes, SP, placement), each followed by all its
    recompute x ZeRO x schedule variants, so the batches carry their group indices and the cost
    model never has to discover them.
    """
    c = constraints or Constraints()
    if c.recompute is None:
        c = dataclasses.replace(c, recompute=framework_profile(framework or default_framework(cluster)).recompute)
    pruned = pruned if pruned is not None else Counter()
    sched_idx = {s: i for i, s in enumerate(SCHEDULES)}
    rc_opts = [RECOMPUTE.index(r) for r in c.recompute]
    full_rc = RECOMPUTE.index("full")
    placements: list[tuple[str, ...]] = []
    place_index: dict[tuple[str, ...], int] = {}
    blocks: list[tuple[np.ndarray, np.ndarray]] = []  # (structure rows, inner rows)
    inner_cache: dict[tuple, np.ndarray] = {}
    pending = 0

    def flush() -> PlanBatch:
        nonlocal pending
        s_rows = [b[0] for b in blocks]
        reps = [len(b[1]) for b in blocks]
        struct = np.concatenate(s_rows)  # columns: tp pp dp cp ep vpp mb sp placement first last account shard etp
        inner = np.concatenate([np.tile(b[1], (len(b[0]), 1)) for b in blocks])
        rep = np.repeat(np.arange(len(struct)), np.repeat(reps, [len(r) for r in s_rows]))
        cols = struct[rep]
        # timing group: structure x (recompute, ZeRO); the schedule is the innermost variant
        rz = inner[:, 0] * 4 + inner[:, 1]
        t_key = rep.astype(np.int64) * 16 + rz
        change = np.ones(len(t_key), dtype=bool)
        change[1:] = t_key[1:] != t_key[:-1]
        t_first = np.flatnonzero(change)
        t_inv = np.cumsum(change) - 1
        s_first = np.searchsorted(rep, np.arange(len(struct)))
        sizes = {"tp": struct[:, 0], "pp": struct[:, 1], "dp": struct[:, 2], "cp": struct[:, 3]}
        strides = {d: np.zeros(len(struct), dtype=np.int64) for d in DIMS}
        for i, order in enumerate(placements):
            sel = struct[:, 8] == i
            if sel.any():
                st = strides_for(order, {d: sizes[d][sel] for d in DIMS})
                for d in DIMS:
                    strides[d][sel] = st[d]
        blocks.clear()
        pending = 0
        n = len(cols)
        return PlanBatch(
            tp=cols[:, 0], pp=cols[:, 1], dp=cols[:, 2], cp=cols[:, 3], ep=cols[:, 4], vpp=cols[:, 5],
            mb=cols[:, 6], gb=np.full(n, global_batch, dtype=np.int64), sched=inner[:, 2], rc=inner[:, 0],
            sp=cols[:, 7].astype(bool), zero=inner[:, 1], stride_tp=strides["tp"][rep],
            stride_cp=strides["cp"][rep], stride_dp=strides["dp"][rep], stride_pp=strides["pp"][rep],
            placement=cols[:, 8], first=cols[:, 9], last=cols[:, 10], account=cols[:, 11], shard=cols[:, 12],
            etp=cols[:, 13],
            every=np.where(inner[:, 0] == full_rc, c.recompute_every, 1), dtype=dtype, flash=flash,
            placements=tuple(placements), groups={"structure": (s_first, rep), "timing": (t_first, t_inv)},
            lora_rank=lora[0] if lora else 0, lora_targets=lora[1] if lora else (), framework=framework,
        )

    for tp, cp, pp, dp in _size_combos(model, cluster.num_gpus, global_batch, c, pruned):
        etp = tp if c.etp is None else c.etp
        # folding (check_plan's rules): an MoE model, etp dividing tp and the experts' width, SP below
        if etp != tp and (not model.is_moe or tp % etp or (model.moe_ffn_hidden or model.ffn_hidden) % etp):
            pruned["etp does not divide tp / the experts' width (or the model has no experts)"] += 1
            continue
        eps = [1]
        if model.is_moe:
            eps = [e for e in divisors(dp * (tp // etp)) if model.num_experts % e == 0]
        if c.ep is not None:
            if c.ep not in eps:
                pruned["ep does not divide num_experts and dp"] += 1
                continue
            eps = [c.ep]
        mbs = [b for b in divisors(global_batch // dp) if c.micro_batch is None or b == c.micro_batch]
        splits = pipeline_splits(model.num_layers, pp, c)
        sps = [False, True] if tp > 1 and (model.seq_len // cp) % tp == 0 else [False]
        if etp != tp:
            sps = [s for s in sps if s]
        if c.sequence_parallel is not None:
            sps = [s for s in sps if s == c.sequence_parallel]
        zeros = [z for z in c.zero_stages if z == 0 or dp * cp > 1]
        shard = 0
        if c.shard_group is not None and c.shard_group < dp * cp:  # hybrid sharding: ZeRO-1/2/3 only
            if (dp * cp) % c.shard_group:
                pruned["shard group does not divide dp x cp"] += 1
                continue
            if eps != [1] or etp != tp:  # hybrid sharding is modelled without expert parallelism (check_plan)
                pruned["hybrid sharding with expert parallelism"] += len(eps) - (1 in eps)
                eps = [1] if 1 in eps else []
                if not eps:
                    continue
            shard = c.shard_group
            zeros = [z for z in zeros if z > 0]
        if not (mbs and splits and sps and zeros and rc_opts):
            pruned["no micro-batch / vpp / sp / ZeRO option satisfies the constraints"] += 1
            continue
        pidx = []
        for o in _placements(tp, cp, pp, dp, eps, cluster.nvlink_domain, c.placements, model.is_moe, etp):
            if o not in place_index:
                place_index[o] = len(placements)
                placements.append(o)
            pidx.append(place_index[o])
        for v, first, last, account in ((v, f, la, ac) for f, la, ac, vs in splits for v in vs):
            dominated = False
            if pp == 1:
                scheds = [sched_idx["1f1b"]]
            elif v == 1:
                scheds = [sched_idx[s] for s in ("1f1b", "gpipe") if s in c.schedules]
                dominated = len(scheds) == 2  # GPipe: 1F1B's step time, more micro-batches in flight
                scheds = scheds[:1]
            else:
                scheds = [sched_idx["interleaved-1f1b"]] if "interleaved-1f1b" in c.schedules else []
            mb_ok = mbs
            if v > 1:  # interleaving needs the micro-batch count to be a multiple of pp
                mb_ok = [b for b in mbs if (global_batch // (dp * b)) % pp == 0]
                if len(mb_ok) < len(mbs):
                    pruned["interleaved: micro-batch count not a multiple of pp"] += len(mbs) - len(mb_ok)
            if not scheds or not mb_ok:
                continue
            struct = np.array([(tp, pp, dp, cp, e, v, b, s, pl, first, last, account, shard, etp) for e, b, s, pl
                               in itertools.product(eps, mb_ok, sps, pidx)], dtype=np.int64)
            key = (tuple(zeros), tuple(scheds))
            inner = inner_cache.get(key)
            if inner is None:
                inner = np.array(list(itertools.product(rc_opts, zeros, scheds)), dtype=np.int64)
                inner_cache[key] = inner
            if dominated:
                pruned["GPipe: same step time as 1F1B, more memory (dominated)"] += len(struct) * len(inner)
            blocks.append((struct, inner))
            pending += len(struct) * len(inner)
            if pending >= CHUNK:
                yield flush()
    if pending:
        yield flush()


def _objective(scores: Scores, cluster: ClusterSpec, objective: str) -> np.ndarray:
    """Lower is better. For a fixed GPU count and batch all three order plans alike; they differ
    in the number they report."""
    if objective == "time":
        return scores.step_time
    if objective == "throughput":
        return -scores.tokens / scores.step_time / cluster.num_gpus
    if objective == "cost":
        return scores.step_time * cluster.num_gpus / scores.tokens
    raise PlanError(f"unknown objective {objective!r} (one of {', '.join(OBJECTIVES)})", field="objective")


def _pareto_mask(t: np.ndarray, mem: np.ndarray) -> np.ndarray:
    """Plans not dominated in (step time, memory): sort by time, keep strictly decreasing memory."""
    order = np.lexsort((mem, t))
    best = np.minimum.accumulate(mem[order])
    keep = np.empty(len(order), dtype=bool)
    keep[0] = True
    keep[1:] = mem[order][1:] < best[:-1]
    mask = np.zeros(len(t), dtype=bool)
    mask[order[keep]] = True
    return mask


def search(model: ModelSpec, cluster: ClusterSpec, global_batch: int, *, dtype: str | None = None,
           flash: bool = True, constraints: Constraints | None = None, objective: str = "time",
           top_k: int = 10, headroom: float = DEFAULT_HEADROOM, rerank: int = DEFAULT_RERANK,
           lora: tuple[int, tuple[str, ...]] | None = None, framework: str | None = None,
           progress: Callable[[int, int], None] | None = None) -> SearchResult:
    """Score the whole legal space and return the `top_k` best fitting plans and the Pareto front.

    The closed form ranks every plan; the best max(top_k, rerank) are kept, the first `rerank` of them
    simulated and re-ordered by simulated step time (0: closed form only). `lora` = (rank, targets)
    plans LoRA fine-tuning on frozen base weights. `framework` names the profile of what runs the plans
    (default: this project's executor on CPU hosts, Megatron-LM on GPUs); its recompute policies are
    the ones searched unless the constraints name others.
    """
    if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
        raise PlanError(f"must be a non-negative integer, got {rerank!r}", field="rerank")
    start = time.perf_counter()
    if objective not in OBJECTIVES:
        raise PlanError(f"unknown objective {objective!r} (one of {', '.join(OBJECTIVES)})",
                        field="objective")
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise PlanError(f"must be a positive integer, got {global_batch!r}", field="global_batch")
    dt = dtype or ("fp32" if cluster.device == "cpu" else model.dtype)
    if dt not in PRECISIONS:
        raise PlanError(f"must be one of {', '.join(PRECISIONS)}, got {dt!r}", field="dtype")
    check_precision(dt, cluster)
    fw = framework_profile(framework or default_framework(cluster))  # (the plans record `framework` as given)
    c = constraints or Constraints()
    if c.recompute is None:
        c = dataclasses.replace(c, recompute=fw.recompute)
    if c.etp is not None and not model.is_moe:
        raise PlanError(f"expert tensor parallelism (etp) needs a mixture-of-experts model; {model.name} has no "
                        "experts", field="etp")
    limit_bytes = None if c.max_memory_gib is None else c.max_memory_gib * 2**30
    pruned: Counter = Counter()
    space = scored = fitting = 0
    least_memory = float("inf")
    best: list[tuple[np.ndarray, PlanBatch, Scores]] = []  # candidate pools per chunk
    pareto_pool: list[tuple[PlanBatch, Scores]] = []
    def absorb(batch: PlanBatch) -> None:
        """Score one chunk and keep its candidates (compact copies: the chunk's arrays are freed
        before the next one is built, which keeps the peak memory to one chunk's)."""
        nonlocal space, scored, fitting, least_memory
        space += len(batch)
        scored += len(batch)
        s = evaluate(model, cluster, batch, headroom, only_fitting=limit_bytes is None)
        ok = s.fits if limit_bytes is None else s.fits & (s.mem_total <= limit_bytes)
        least_memory = min(least_memory, float(s.mem_total.min()))
        n_ok = int(ok.sum())
        fitting += n_ok
        pruned["does not fit in memory"] += len(batch) - n_ok
        if n_ok == 0:
            return
        idx = np.flatnonzero(ok)
        obj = _objective(s, cluster, objective)[idx]
        k = min(top_k * 4, len(idx))
        sel = idx[np.argpartition(obj, k - 1)[:k]] if k < len(idx) else idx
        best.append((_objective(s, cluster, objective)[sel], batch.take(sel), s.compact(sel)))
        pm = _pareto_mask(s.step_time[idx], s.mem_total[idx])
        pidx = idx[pm]
        pareto_pool.append((batch.take(pidx), s.compact(pidx)))

    for batch in enumerate_plans(model, cluster, global_batch, dt, flash, c, pruned, lora, framework):
        absorb(batch)
        del batch  # (not held while the generator builds the next chunk)
        if progress:
            progress(space, fitting)
    if not best:
        reasons = ", ".join(f"{k}: {v}" for k, v in pruned.most_common()) or "no legal size combination"
        hint = _nearest_legal(model, cluster, global_batch, c) if space == 0 else \
            f"; the leanest legal plan needs {least_memory / 2**30:.1f} GiB per GPU (limit " \
            f"{cluster.gpu.memory_bytes * (1 - headroom) / 2**30:.1f} GiB): add GPUs, recompute or shard more"
        raise PlanError(f"no plan fits {model.name} on {cluster.num_gpus} x {cluster.gpu.name} with "
                        f"global batch {global_batch} ({reasons}){hint}", field="plan")
    plans, preds = _rank(best, cluster, objective, max(top_k, rerank), dt)
    pareto = _pareto(pareto_pool, cluster, dt)
    searched = time.perf_counter() - start
    plans, preds, sims = _rerank(model, cluster, plans, preds, rerank)
    return SearchResult(plans=plans[:top_k], predictions=preds[:top_k], pareto=pareto, space=space,
                        scored=scored, fitting=fitting, pruned=dict(pruned), seconds=searched,
                        simulations=sims[:top_k], reranked=min(rerank, len(plans)),
                        rerank_seconds=time.perf_counter() - start - searched)


def _legal(model: ModelSpec, gpus: int, global_batch: int, c: Constraints) -> bool:
    """Whether any (tp, cp, pp, dp) split passes the divisibility rules."""
    return next(_size_combos(model, gpus, global_batch, c, Counter()), None) is not None


def _nearest(value: int, ok: Callable[[int], bool], step: int = 1, limit: int = 4096) -> list[int]:
    """The nearest values below and above `value` (multiples of `step`) for which `ok` holds."""
    found: list[int] = []
    for direction in (-1, 1):
        v = (value // step + (1 if direction > 0 else 0)) * step
        if direction < 0 and v == value:
            v -= step
        for _ in range(limit):
            if v < 1:
                break
            if ok(v):
                found.append(v)
                break
            v += direction * step
    return found


def _nearest_legal(model: ModelSpec, cluster: ClusterSpec, global_batch: int, c: Constraints) -> str:
    """'; nearest global batches that work: ...; nearest GPU counts: ...' for a space that divisibility
    rules out entirely (whole nodes for multi-node clusters)."""
    n = cluster.num_gpus
    batches = _nearest(global_batch, lambda b: _legal(model, n, b, c))
    step = cluster.gpus_per_node if n > cluster.gpus_per_node else 1
    gpus = _nearest(n, lambda g: _legal(model, g, global_batch, c), step=step, limit=1024)
    parts = []
    if batches:
        parts.append(f"nearest global batches that work on {n} GPUs: {' or '.join(map(str, batches))}")
    if gpus:
        parts.append(f"nearest GPU counts that work with global batch {global_batch}: {' or '.join(map(str, gpus))}")
    return "; " + "; ".join(parts) if parts else ""


def _rerank(model: ModelSpec, cluster: ClusterSpec, plans: list[Plan], preds: list[dict],
            k: int) -> tuple[list[Plan], list[dict], list[dict | None]]:
    """Simulate the first k plans and order them by simulated step time (ties: closed-form order).

    Every objective orders plans of one problem alike (fixed GPUs and batch), so the simulated step
    time orders them for all three.
    """
    k = min(k, len(plans))
    if k == 0:
        return plans, preds, [None] * len(plans)
    sims: list[dict | None] = [s.summary() for s in simulate_plans(model, cluster, plans[:k])]
    order = sorted(range(k), key=lambda i: (sims[i]["step_time_s"], i)) + list(range(k, len(plans)))
    sims += [None] * (len(plans) - k)
    return [plans[i] for i in order], [preds[i] for i in order], [sims[i] for i in order]


def _rank(pools: list[tuple[np.ndarray, PlanBatch, Scores]], cluster: ClusterSpec, objective: str,
          top_k: int, dtype: str) -> tuple[list[Plan], list[dict]]:
    entries = []
    for obj, batch, s in pools:
        for i in range(len(batch)):
            entries.append((float(obj[i]), batch, s, i))
    # Stable tie-break on the plan description keeps results deterministic.
    entries.sort(key=lambda e: (e[0], e[1].plan(e[3]).describe()))
    plans, preds = [], []
    for _, batch, s, i in entries[:top_k]:
        plans.append(batch.plan(i))
        preds.append(prediction(s, i, cluster, dtype))
    return plans, preds


def _pareto(pools: list[tuple[PlanBatch, Scores]], cluster: ClusterSpec,
            dtype: str) -> list[tuple[Plan, dict]]:
    t = np.concatenate([s.step_time for _, s in pools])
    mem = np.concatenate([s.mem_total for _, s in pools])
    where = [(b, s, i) for b, s in pools for i in range(len(b))]
    mask = _pareto_mask(t, mem)
    front = [where[i] for i in np.flatnonzero(mask)]
    front.sort(key=lambda e: float(e[1].step_time[e[2]]))
    return [(b.plan(i), prediction(s, i, cluster, dtype)) for b, s, i in front]
