"""Simulation of one training step of many plans (the second tier after the closed form).

Each pipeline rank runs its forward (F) and backward (B) passes in the exact order of its schedule
(GPipe, 1F1B, or Megatron-LM's interleaved 1F1B with v model chunks per rank); an op starts when the
rank is free and its input (the previous virtual stage's F, or the next one's B) has arrived. Sends
to the neighbouring stage are blocking, as in Megatron-LM, so they extend the sending op. Stages are
uneven: the first virtual stage also embeds, the last also runs the LM head and the loss. After its
last backward, each rank reduces its gradients over data parallelism on a separate stream that
overlaps that backward; the step ends when every rank has reduced and stepped its optimizer.

The op end times are the longest paths of that dependency graph, computed for many plans at once
(vectorised over plans and ranks, padded to the largest) level by level: rank r's k-th op sits at
level k + r in its warm-up forwards, k + p - 1 in its steady phase and k + 2p - 2 - r in its
cool-down backwards, which puts every op's input at a lower level (forwards chain up the ranks in
warm-up, backwards down in cool-down), so one level's ops are independent: e = max(the rank's last
end, the input's end) + d, three array operations per level for all plans, L + 2p - 2 levels for a
step of L ops per rank. Op durations come from the cost model's per-micro-batch terms
(`planner.cost.terms.CostTerms`), the overlap rules from `planner.cost.overlap`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from planner.cost import CostTerms, batch_from_plans, cost_terms
from planner.cost.overlap import core_sharing_stretch, data_parallel
from planner.cost.stages import StageLayout, stage_layout
from planner.graph import LayerGraph
from planner.plan import Plan
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

Array = np.ndarray


@dataclass
class Event:
    """One executed op: rank, kind (F/B), micro-batch, virtual stage, start and end (s)."""

    rank: int
    kind: str
    micro_batch: int
    stage: int
    start: float
    end: float


@dataclass
class StepSimulation:
    """One simulated step: its time, the ops (if asked for) and each pipeline rank's timeline.

    per_stage[r]: rank, busy_s, idle_s, end_s (last backward ends), virtual_stages, and the
    data-parallel synchronisation after the pipeline: last_backward_start_s, grad_sync_s (the
    once-per-step reduction overlapping the last backward, ZeRO-0/1), sync_end_s (when the rank has
    waited for it), param_gather_s (ZeRO-1/2's once-per-step all-gather), finish_s (ready for the
    optimizer); zero_fwd_s / zero_bwd_s (ZeRO-2/3): the per-micro-batch collectives of each of its
    virtual stages in forward / backward.
    """

    step_time_s: float
    pipeline_s: float  # until the last backward ends
    events: list[Event]  # empty unless asked for
    per_stage: list[dict] = field(default_factory=list)
    sync_s: float = 0.0  # when every rank has finished its data-parallel synchronisation
    emb_sync_s: float = 0.0  # tied-embedding all-reduce after that
    optimizer_s: float = 0.0
    zero_stage: int = 0
    p2p_s: float = 0.0  # one blocking send between neighbouring stages
    stage_layers: list[tuple[int, int]] = field(default_factory=list)  # [g]: first and last layer index

    def summary(self) -> dict:
        return {"step_time_s": self.step_time_s, "pipeline_s": self.pipeline_s, "per_stage": self.per_stage}


# ---- schedule orders --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Orders:
    """Every rank's op sequence as arrays (pp, L): backward?, micro-batch, chunk."""

    is_b: Array
    mb: Array
    chunk: Array


def _warm(schedule: str, pp: int, vpp: int, m: int) -> Array:
    """Each rank's warm-up forwards W_r (pp,), in virtual micro-batches (see `_orders`)."""
    total = m * vpp
    r = np.arange(pp, dtype=np.int32)
    if schedule == "gpipe" or pp == 1:
        return np.full(pp, total, dtype=np.int32)
    if vpp == 1:
        return np.minimum(pp - r - 1, m).astype(np.int32)
    return np.minimum((pp - r - 1) * 2 + (vpp - 1) * pp, total).astype(np.int32)


def _pass_order(k: Array, warm: Array, total: int) -> tuple[Array, Array]:
    """Is op k of a rank with `warm` warm-up forwards a backward, and which virtual micro-batch q of
    its pass (forwards and backwards each count theirs from 0) it runs (broadcast; see `_orders`)."""
    rel = k - warm
    in_warm = k < warm
    in_steady = ~in_warm & (k < 2 * total - warm)
    odd, half = (rel & 1) == 1, rel >> 1  # rel % 2 == 1 and rel // 2 (floor, also below zero)
    is_b = ~in_warm & (~in_steady | odd)
    return is_b, np.where(in_warm, k, np.where(in_steady, np.where(odd, half, warm + half), k - total))


def _ops(k: Array, warm: Array, pp: int, vpp: int, m: int) -> tuple[Array, Array, Array]:
    """(backward?, micro-batch, chunk) of op k of the ranks whose warm-up counts are `warm` (broadcast)."""
    is_b, q = _pass_order(k, warm, m * vpp)
    if vpp == 1:
        return is_b, q, np.zeros_like(q)
    mb = (q // (pp * vpp)) * pp + q % pp
    c = (q // pp) % vpp
    return is_b, mb, np.where(is_b, vpp - 1 - c, c)


def _orders(schedule: str, pp: int, vpp: int, m: int) -> _Orders:
    """Op sequences of every rank, vectorised.

    With T = m·v virtual micro-batches and W_r warm-up forwards, rank r runs F(0..W_r-1), then
    alternates F(W_r + i), B(i), then runs the remaining backwards. 1F1B: W_r = min(p - r - 1, m)
    (Narayanan et al. 2021, Fig. 4 top); interleaved: W_r = (p - r - 1)·2 + (v - 1)·p, virtual
    micro-batch k being chunk (k // p) % v of micro-batch (k // (p v))·p + k % p, backwards walking the
    chunks in reverse (Megatron-LM's schedule; Fig. 4 bottom); GPipe: W_r = m (all forwards first).
    """
    # int32 (a step has far fewer than 2^31 ops): integer division and modulo run twice as fast
    warm = _warm(schedule, pp, vpp, m)
    k = np.arange(2 * m * vpp, dtype=np.int32)[None, :]
    is_b, mb, chunk = _ops(k, warm[:, None], pp, vpp, m)
    return _Orders(is_b=is_b, mb=mb, chunk=chunk)


def schedule_order(schedule: str, pp: int, vpp: int, m: int, rank: int) -> list[tuple[str, int, int]]:
    """The op sequence (kind, micro-batch, chunk) rank `rank` executes (see `_orders`)."""
    o = _orders(schedule, pp, vpp, m)
    return [("B" if b else "F", int(j), int(c)) for b, j, c in zip(o.is_b[rank], o.mb[rank], o.chunk[rank],
                                                                      strict=True)]


@dataclass(frozen=True)
class _Graph:
    """The dependency graph of one schedule shape, laid out by level for the solver.

    Op (r, k), rank r's k-th op, sits at level k + offset: r while the rank is in its warm-up
    forwards, p - 1 in its steady 1F1B phase and 2p - 2 - r in its cool-down backwards. Every op's
    input then sits at a strictly lower level (checked when the graph is built), so all ops of one
    level can run at once: forwards that chain up the ranks in warm-up and backwards that chain down
    in cool-down are spread over successive levels. A rank has no op at some levels (a hole: no
    duration, no input); it then just carries its last end time on.
    """

    schedule: str
    pp: int
    vpp: int
    m: int
    warm: Array  # (pp,) each rank's warm-up forwards
    # per level and rank, (D, pp) with D = L + 2p - 2 levels: the op's index in `_op_seconds`'s table
    # (a hole: 2G, no time), and the level and rank of the op it waits for (level -1: nothing)
    duration: Array
    in_level: Array
    in_rank: Array
    last_level: Array  # (pp,) the level of each rank's last op
    sends: Array  # (pp,) how many of each rank's ops end with a blocking send

    def per_op(self, level_major: Array) -> Array:
        """A (D, pp) array laid out by level read back per op, (pp, L): rank r's k-th op's cell."""
        k = np.arange(2 * self.m * self.vpp, dtype=np.int32)[None, :]
        r = np.arange(self.pp, dtype=np.int32)[:, None]
        return level_major[_level(k, r, self.warm[:, None], self.pp, k.shape[1]), r]


def _level(k: Array, r: Array, warm: Array, pp: int, length: int) -> Array:
    """The level of op k of rank r (broadcast; see `_Graph`)."""
    return k + np.where(k < warm, r, np.where(k < length - warm, pp - 1, 2 * pp - 2 - r))


@lru_cache(maxsize=128)
def _graph(schedule: str, pp: int, vpp: int, m: int) -> _Graph:
    """Built on the level grid directly: each (level, rank) cell finds its op by inverting `_level`
    (an op's phase fixes its offset), so no per-op array is scattered."""
    warm = _warm(schedule, pp, vpp, m)
    n_virtual = pp * vpp
    length = 2 * m * vpp
    depth = length + 2 * pp - 2
    lev = np.arange(depth, dtype=np.int32)[:, None]
    r = np.arange(pp, dtype=np.int32)[None, :]
    w = warm[None, :]
    k_warm, k_steady, k_cool = lev - r, lev - (pp - 1), lev - (2 * pp - 2 - r)
    k = np.where((k_warm >= 0) & (k_warm < w), k_warm,
                 np.where((k_steady >= w) & (k_steady < length - w), k_steady,
                          np.where((k_cool >= length - w) & (k_cool < length), k_cool, -1)))
    op = k >= 0
    assert np.array_equal(op.sum(axis=0), np.full(pp, length)), "schedule levels inconsistent"
    total = m * vpp
    is_b, q = _pass_order(k, w, total)
    c = (q // pp) % vpp  # the chunk, counted in its pass's order (backwards walk the chunks down)
    first = (r == 0) & np.where(is_b, c == vpp - 1, c == 0)
    last = (r == pp - 1) & np.where(is_b, c == 0, c == vpp - 1)
    sends = np.where(is_b, ~first, ~last)
    # F of stage g waits for F of g - 1; B of g for B of g + 1 (the last stage's B for its own F).
    # Same chunk one rank down (up): the same q; across the wrap to the previous (next) chunk, one
    # group of p earlier in that pass's order; the last stage's own F of that micro-batch: q + (v-1)p.
    has = op & (is_b | ~first)
    dep_rank = np.where(is_b, np.where(last, r, (r + 1) % pp), (r - 1) % pp)
    wraps = np.where(is_b, r == pp - 1, r == 0) & ~(is_b & last)
    dep_q = np.where(wraps, q - pp, np.where(is_b & last, q + (vpp - 1) * pp, q))
    dep_b = is_b & ~last
    dw = warm[dep_rank]
    dep_pos = np.where(dep_b, np.where(dep_q < total - dw, dw + 2 * dep_q + 1, dep_q + total),
                       np.where(dep_q < dw, dep_q, 2 * dep_q - dw))
    in_level = np.where(has, _level(dep_pos, dep_rank, dw, pp, length), -1)
    # The levels are only right if every input is at a lower level.
    assert np.all(in_level < lev), "schedule levels inconsistent"
    g = np.where(is_b, vpp - 1 - c, c) * pp + r
    duration = np.where(op, np.where(is_b, n_virtual + g, g) + np.where(sends, 2 * n_virtual + 1, 0), 2 * n_virtual)
    last_level = _level(np.int32(length - 1), r[0], warm, pp, length)
    return _Graph(schedule=schedule, pp=pp, vpp=vpp, m=m, warm=warm, duration=duration.astype(np.int32),
                  in_level=in_level.astype(np.int32), in_rank=dep_rank.astype(np.int32), last_level=last_level,
                  sends=(sends & op).sum(axis=0))


@dataclass(frozen=True)
class _Padded:
    """The level-major graphs of n plans side by side: every plan's ranks on one axis (plan i's ranks
    at columns starts[i]..starts[i] + its pp), D levels, (D, R) so a level is contiguous. Levels
    beyond a plan's depth have no duration and no input. Plans are laid out deepest first, so the
    plans still running at level k are the first active[k] columns."""

    dur: Array  # (D, R) seconds
    dep: Array  # (D, R) flat index into the (1 + D·R) end times; cell 0 is time 0 ("nothing")
    starts: Array  # (n,) first column of each plan (in the order given)
    active: Array  # (D,) columns of the plans still running at each level


def _pad(graphs: list[_Graph], seconds: list[Array]) -> _Padded:
    """Lay plans' graphs and op durations (`_op_seconds`, one each per plan) side by side, deepest
    first.

    The arrays are zero-filled by the allocator, so the levels past a plan's depth are never touched
    (no writes, no page faults) and `_solve` stops computing them."""
    depths = [g.duration.shape[0] for g in graphs]
    order = sorted(range(len(graphs)), key=lambda i: -depths[i])
    pps = np.array([graphs[i].duration.shape[1] for i in order], dtype=np.intp)
    ends_at = np.cumsum(pps)
    starts = np.empty(len(graphs), dtype=np.intp)
    starts[order] = ends_at - pps
    width = int(ends_at[-1])
    d_max = depths[order[0]]
    # level k runs the plans deeper than k: a prefix of the columns
    sorted_depths = np.array([depths[i] for i in order])
    active = ends_at[np.searchsorted(-sorted_depths, -np.arange(d_max), side="left") - 1]
    dur = np.zeros((d_max, width))  # zero-filled: padding costs no writes, and dep 0 reads time 0
    dep = np.zeros((d_max, width), dtype=np.int32 if width * d_max < 2**31 - 1 else np.intp)
    flat: dict[int, Array] = {}  # per distinct graph: the inputs' flat indices for a plan at column 0
    for i, g in enumerate(graphs):
        dn = depths[i]
        cols = slice(starts[i], starts[i] + g.duration.shape[1])
        dur[:dn, cols] = seconds[i].take(g.duration)
        base = flat.get(id(g))
        if base is None:
            in_level = g.in_level.astype(np.intp)  # (the flat index can pass 2^31 where the graph's cannot)
            base = flat[id(g)] = np.where(in_level < 0, -(width * d_max + 1), 1 + in_level * width + g.in_rank)
        # a missing input lands below 0 for every offset and is clipped to cell 0 (time 0)
        np.maximum(base + starts[i], 0, out=dep[:dn, cols])
    return _Padded(dur=dur, dep=dep, starts=starts, active=active)


def _solve(pad: _Padded) -> Array:
    """End time at every level and column, (D, R), level by level: an op ends at max(its rank's last
    end, its input's end) + its duration; a hole (no duration, no input) carries the last end on."""
    d_max, width = pad.dur.shape
    ends = np.zeros(1 + d_max * width)
    full_view = ends[1:].reshape(d_max, width)
    prev = np.zeros(width)
    ready_all = np.empty(width)
    # phases of levels with the same plans running: the columns past them are left untouched
    cuts = [0, *(np.flatnonzero(np.diff(pad.active)) + 1).tolist(), d_max]
    for k0, k1 in itertools.pairwise(cuts):
        w = int(pad.active[k0])
        dur, dep = pad.dur[k0:k1, :w], pad.dep[k0:k1, :w]
        view, ready, prev = full_view[k0:k1, :w], ready_all[:w], prev[:w]
        for k in range(k1 - k0):
            ends.take(dep[k], out=ready)
            np.maximum(prev, ready, out=ready)
            prev = np.add(ready, dur[k], out=view[k])
    return full_view


def run_schedule(fwd: Array, bwd: Array, m: int, pp: int, vpp: int, schedule: str,
                 p2p: float = 0.0) -> tuple[float, list[Event], Array, Array]:
    """Run `schedule` with per-virtual-stage durations `fwd[g]`, `bwd[g]` (g = chunk·pp + rank).

    Returns (makespan, events, per-rank end time, per-rank start of its last backward). Sends to a
    neighbouring virtual stage take `p2p` seconds and block the sender.
    """
    graph = _graph(schedule, pp, vpp, m)
    pad = _pad([graph], [_op_seconds(np.asarray(fwd, dtype=np.float64), np.asarray(bwd, dtype=np.float64),
                                     float(p2p))])
    ends, d = graph.per_op(_solve(pad)), graph.per_op(pad.dur)  # (pp, L)
    return float(ends.max()), _events(graph, ends, d), ends[:, -1], ends[:, -1] - d[:, -1]


def _op_seconds(fwd: Array, bwd: Array, p2p: float) -> Array:
    """Every kind of op's seconds, as `_Graph.duration` indexes them: each virtual stage's forward and
    backward pass, nothing (a hole), then the passes again with a blocking send to the neighbour."""
    alone = np.concatenate([fwd, bwd, [0.0]])
    return np.concatenate([alone, alone + p2p])


def _events(graph: _Graph, ends: Array, d: Array) -> list[Event]:
    """Every op as an Event, from its end time and duration (pp, L)."""
    o = _orders(graph.schedule, graph.pp, graph.vpp, graph.m)
    stage = o.chunk * graph.pp + np.arange(graph.pp)[:, None]
    pp, length = o.is_b.shape
    out = []
    for r in range(pp):
        for k in range(length):
            out.append(Event(r, "B" if o.is_b[r, k] else "F", int(o.mb[r, k]), int(stage[r, k]),
                             float(ends[r, k] - d[r, k]), float(ends[r, k])))
    return out


# ---- whole plans ------------------------------------------------------------------------------


def _layout(lg: LayerGraph, plan: Plan) -> StageLayout:
    return stage_layout(lg.pattern, len(lg.kinds), plan.pp, plan.vpp, plan.first_stage_layers, plan.last_stage_layers,
                        plan.account)


def _stage_durations(terms: CostTerms, rows: Array, layout: StageLayout) -> tuple[Array, Array]:
    """Forward and backward seconds per micro-batch of every virtual stage, (len(rows), G)."""
    vl = np.asarray(layout.virtual_layers, dtype=np.float64)  # (G, K)
    fwd = terms.layer_fwd[rows] @ vl.T
    bwd = terms.layer_bwd[rows] @ vl.T
    # The pipeline schedule's host cost per micro-batch and chunk, half on each pass.
    host = terms.pp_host[rows][:, None] / 2
    fwd, bwd = fwd + host, bwd + host
    fwd[:, 0] += terms.pre_fwd[rows]
    bwd[:, 0] += terms.pre_bwd[rows]
    fwd[:, -1] += terms.post_fwd[rows]
    bwd[:, -1] += terms.post_bwd[rows]
    return fwd, bwd


def simulate_plans(model: ModelSpec, cluster: ClusterSpec, plans: list[Plan],
                   events: bool = False) -> list[StepSimulation]:
    """Simulate one step of each plan (same dtype and attention kernel), all in one pass."""
    if not plans:
        return []
    batch = batch_from_plans(plans)
    terms = cost_terms(model, cluster, batch)
    shapes = [(p.schedule if p.pp > 1 else "1f1b", p.pp, p.vpp, p.grad_accum) for p in plans]
    layouts = [_layout(terms.graph, p) for p in plans]
    graphs = [_graph(*shape) for shape in shapes]
    seconds, busy_all = [], []
    for i, (g, (_, pp, _, m)) in enumerate(zip(graphs, shapes, strict=True)):
        fwd, bwd = _stage_durations(terms, np.array([i]), layouts[i])
        seconds.append(_op_seconds(fwd[0], bwd[0], float(terms.p2p[i])))
        # each micro-batch runs one forward and one backward of each of the rank's virtual stages
        busy_all.append(m * (fwd[0] + bwd[0]).reshape(-1, pp).sum(axis=0) + float(terms.p2p[i]) * g.sends)
    pad = _pad(graphs, seconds)
    ends_all = _solve(pad)  # (D, R)
    ov = cluster.overlap_slowdown_for(terms.framework)
    out = []
    for i, (g, (_, pp, vpp, m)) in enumerate(zip(graphs, shapes, strict=True)):
        ranks = np.arange(pp)
        cols = slice(pad.starts[i], pad.starts[i] + pp)
        ends, d = ends_all[:, cols], pad.dur[:, cols]
        rank_end = ends[g.last_level, ranks]
        last_b = rank_end - d[g.last_level, ranks]
        busy = busy_all[i]
        makespan = float(rank_end.max())
        stretch = float(core_sharing_stretch(busy.sum() / pp, makespan, cluster.compute_slowdown))
        rank_end, last_b, makespan, busy = rank_end * stretch, last_b * stretch, makespan * stretch, busy * stretch
        # Data-parallel synchronisation per rank (its class's parameters), overlapping its last backward.
        layout = layouts[i]
        rc = np.asarray(layout.rank_class)
        layers = terms.classes.layers[i]  # (C, K)
        fw = terms.framework
        fwd_w = (layers @ terms.layer_fwd[i])[rc] * (1.0 if fw.param_gather_overlap else 0.0)
        bwd_w = (layers @ terms.layer_bwd[i])[rc] * (1.0 if fw.dp_overlap else 0.0)
        dp = data_parallel(batch.zero[i], terms.has_dp[i], np.float64(m), terms.dp_reduce[i][rc],
                           terms.dp_reduce_mb[i][rc], terms.dp_gather[i][rc], terms.dp_gather_mb[i][rc],
                           fwd_w, bwd_w, ov, terms.dp_reduce_last[i][rc])
        zero = int(batch.zero[i])
        if zero >= 2:  # per-micro-batch collectives: exposed as the closed form counts them
            sync_end = rank_end + dp.exposed
            finish = sync_end
        else:
            # the reduction starts with the last backward (overlapped) or after it; its last bucket only
            # when that backward ends, behind the buckets before it
            early = dp.after_backward - dp.last_bucket
            hidden_end = (last_b if fw.dp_overlap else rank_end) + early
            slowed = ov * np.minimum(early, rank_end - last_b) if fw.dp_overlap else 0.0
            sync_end = np.maximum(rank_end, hidden_end) + dp.last_bucket + slowed
            finish = sync_end + dp.before_forward
        optimizer = float(np.max(terms.optimizer[i][terms.classes.valid[i]]))
        sync = float(finish.max())
        emb = float(terms.emb_sync[i])
        step = sync + emb + optimizer
        # Per-micro-batch ZeRO-2/3 collectives of each virtual stage: its share of its rank's layers.
        vl = np.asarray(layout.virtual_layers, dtype=np.float64).sum(axis=1)
        rank_layers = np.maximum(np.asarray(layout.rank_layers, dtype=np.float64).sum(axis=1), 1.0)
        share = vl.reshape(vpp, pp) / rank_layers[None, :]
        gather_mb, reduce_mb = terms.dp_gather_mb[i][rc], terms.dp_reduce_mb[i][rc]
        has_dp = bool(terms.has_dp[i])
        # each rank's row, as Python floats converted a column at a time (tolist), not value by value
        gather = terms.dp_gather[i][rc] if has_dp else np.zeros(pp)
        rows = zip(busy.tolist(), (makespan - busy).tolist(), rank_end.tolist(), last_b.tolist(),
                   dp.after_backward.tolist(), sync_end.tolist(), gather.tolist(), finish.tolist(),
                   (share * gather_mb).T.tolist(),
                   (share * (reduce_mb + (gather_mb if zero == 3 else 0.0))).T.tolist(), strict=True)
        per_stage = [{"rank": r, "busy_s": b_s, "idle_s": idle, "end_s": end,
                      "virtual_stages": list(range(r, pp * vpp, pp)), "last_backward_start_s": lb,
                      "grad_sync_s": gs, "sync_end_s": se, "param_gather_s": pg, "finish_s": fin,
                      "zero_fwd_s": zf, "zero_bwd_s": zb}
                     for r, (b_s, idle, end, lb, gs, se, pg, fin, zf, zb) in enumerate(rows)]
        ev = _events(g, g.per_op(ends) * stretch, g.per_op(d) * stretch) if events else []
        bounds = np.concatenate([[0], np.cumsum(vl)]).astype(int)
        out.append(StepSimulation(step_time_s=step, pipeline_s=makespan, events=ev, per_stage=per_stage,
                                  sync_s=sync, emb_sync_s=emb, optimizer_s=optimizer, zero_stage=zero,
                                  p2p_s=float(terms.p2p[i]) * stretch,
                                  stage_layers=[(int(bounds[j]), int(bounds[j + 1]) - 1) for j in range(pp * vpp)]))
    return out


def simulate_plan(model: ModelSpec, cluster: ClusterSpec, plan: Plan, events: bool = True) -> StepSimulation:
    """Simulate one step of `plan`, with its events (for the trace and the schedule view)."""
    return simulate_plans(model, cluster, [plan], events=events)[0]
