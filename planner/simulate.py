"""Simulation of one training step of many plans (the second tier after the closed form).

Each pipeline rank runs its forward (F) and backward (B) passes in the exact order of its schedule
(GPipe, 1F1B, or Megatron-LM's interleaved 1F1B with v model chunks per rank); an op starts when the
rank is free and its input (the previous virtual stage's F, or the next one's B) has arrived. Sends
to the neighbouring stage are blocking, as in Megatron-LM, so they extend the sending op. Stages are
uneven: the first virtual stage also embeds, the last also runs the LM head and the loss. After its
last backward, each rank reduces its gradients over data parallelism on a separate stream that
overlaps that backward; the step ends when every rank has reduced and stepped its optimizer.

The op end times are the longest paths of that dependency graph, computed for many plans at once
(vectorised over plans and ranks, padded to the largest): round k runs every rank's k-th op. An op's
input comes from an earlier round, or, in warm-up and cool-down, from the same round on the
neighbouring rank (forwards chain up the ranks, backwards down). Such a chain, e_r =
max(b_r, e_{r-1}) + d_r, is a segmented prefix maximum: e_r = D_r + max_{s in chain, s <= r}(b_s -
D_{s-1}) with D the running sum of d over ranks, evaluated by doubling (log2 p steps). Op durations
come from the cost model's per-micro-batch terms (`planner.cost.terms.CostTerms`), the overlap rules
from `planner.cost.overlap`.
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
    """Every rank's op sequence as arrays (pp, L): backward?, micro-batch, chunk; and warm-up counts."""

    is_b: Array
    mb: Array
    chunk: Array
    warm: Array  # (pp,) forwards before the first backward, in virtual micro-batches


def _orders(schedule: str, pp: int, vpp: int, m: int) -> _Orders:
    """Op sequences of every rank, vectorised.

    With T = m·v virtual micro-batches and W_r warm-up forwards, rank r runs F(0..W_r-1), then
    alternates F(W_r + i), B(i), then runs the remaining backwards. 1F1B: W_r = min(p - r - 1, m)
    (Narayanan et al. 2021, Fig. 4 top); interleaved: W_r = (p - r - 1)·2 + (v - 1)·p, virtual
    micro-batch k being chunk (k // p) % v of micro-batch (k // (p v))·p + k % p, backwards walking the
    chunks in reverse (Megatron-LM's schedule; Fig. 4 bottom); GPipe: W_r = m (all forwards first).
    """
    total = m * vpp
    length = 2 * total
    # int32 (a step has far fewer than 2^31 ops): integer division and modulo run twice as fast
    r = np.arange(pp, dtype=np.int32)[:, None]
    k = np.arange(length, dtype=np.int32)[None, :]
    if schedule == "gpipe" or pp == 1:
        warm = np.full((pp, 1), total, dtype=np.int32)
    elif vpp == 1:
        warm = np.minimum(pp - r - 1, m)
    else:
        warm = np.minimum((pp - r - 1) * 2 + (vpp - 1) * pp, total)
    rel = k - warm
    in_warm = k < warm
    in_steady = (k >= warm) & (k < 2 * total - warm)
    odd, half = (rel & 1) == 1, rel >> 1  # rel % 2 == 1 and rel // 2 (floor, also below zero)
    is_b = np.where(in_warm, False, np.where(in_steady, odd, True))
    q = np.where(in_warm, k, np.where(in_steady, np.where(odd, half, warm + half), k - total))
    if vpp == 1:
        mb, chunk = q, np.zeros_like(q)
    else:
        mb = (q // (pp * vpp)) * pp + q % pp
        c = (q // pp) % vpp
        chunk = np.where(is_b, vpp - 1 - c, c)
    return _Orders(is_b=is_b, mb=mb, chunk=chunk, warm=warm[:, 0] if warm.shape[0] == pp else np.full(pp, total))


def _position(orders: _Orders, rank: Array, is_b: Array, mb: Array, chunk: Array, pp: int, vpp: int,
              m: int) -> Array:
    """Index of op (is_b, mb, chunk) in rank `rank`'s sequence (the inverse of `_orders`)."""
    total = m * vpp
    if vpp == 1:
        q = mb
    else:
        c = np.where(is_b, vpp - 1 - chunk, chunk)
        q = (mb // pp) * pp * vpp + c * pp + mb % pp
    w = orders.warm[rank]
    fwd = np.where(q < w, q, w + 2 * (q - w))
    bwd = np.where(q < total - w, w + 2 * q + 1, q + total)
    return np.where(is_b, bwd, fwd)


def schedule_order(schedule: str, pp: int, vpp: int, m: int, rank: int) -> list[tuple[str, int, int]]:
    """The op sequence (kind, micro-batch, chunk) rank `rank` executes (see `_orders`)."""
    o = _orders(schedule, pp, vpp, m)
    return [("B" if b else "F", int(j), int(c)) for b, j, c in zip(o.is_b[rank], o.mb[rank], o.chunk[rank],
                                                                      strict=True)]


@dataclass(frozen=True)
class _Graph:
    """The dependency graph of one schedule shape, as index arrays (pp, L)."""

    is_b: Array
    mb: Array
    stage: Array  # virtual stage g = chunk·pp + rank of each op
    duration: Array  # index of each op's duration in [fwd(0..G-1), bwd(0..G-1)], round-major (L, pp)
    sends: Array  # bool: the op ends with a blocking send to a neighbouring stage, round-major (L, pp)
    # The op each op waits for, round-major (L, pp) as the solver lays plans out: its round (position)
    # and rank (round -1: nothing), and whether a forward / backward waits for its neighbour rank within
    # its own round
    in_round: Array
    in_rank: Array
    f_link: Array
    b_link: Array


@lru_cache(maxsize=128)
def _graph(schedule: str, pp: int, vpp: int, m: int) -> _Graph:
    o = _orders(schedule, pp, vpp, m)
    n_virtual = pp * vpp
    length = 2 * m * vpp
    r = np.arange(pp, dtype=np.int32)[:, None]
    g = o.chunk * pp + r
    sends = np.where(o.is_b, g > 0, g < n_virtual - 1)
    # F of stage g waits for F of g - 1; B of g for B of g + 1 (the last stage's B for its own F).
    dep_g = np.where(o.is_b, np.where(g == n_virtual - 1, g, g + 1), g - 1)
    dep_b = o.is_b & (g != n_virtual - 1)
    has = o.is_b | (g > 0)
    dep_rank = dep_g % pp
    dep_pos = _position(o, dep_rank, dep_b, o.mb, dep_g // pp, pp, vpp, m)
    own = np.arange(length, dtype=np.int32)[None, :]
    # Dependencies point to an earlier position, or to the same position on a neighbouring rank (the
    # sweeps resolve those chains); anything else means the order formulas are inconsistent.
    assert np.all(~has | (dep_pos <= own)), "schedule order inconsistent"
    duration = np.where(o.is_b, n_virtual + g, g)
    same = has & (dep_pos == own)
    return _Graph(is_b=o.is_b, mb=o.mb, stage=g, duration=duration.T.copy(), sends=sends.T.copy(),
                  in_round=np.where(has, dep_pos, -1).T.copy(), in_rank=dep_rank.T.copy(),
                  f_link=(same & (dep_rank == r - 1)).T.copy(), b_link=(same & (dep_rank == r + 1)).T.copy())


@dataclass(frozen=True)
class _Padded:
    """The dependency graphs of n plans side by side: every plan's ranks on one axis (plan i's ranks at
    columns starts[i]..starts[i] + its pp), L rounds, round-major (L, R) so a round is contiguous. Ops
    beyond a plan's sequence have no duration and no dependency. A chain never crosses plans: a plan's
    first rank waits for no rank below and its last for none above. Plans are laid out longest first,
    so the plans still running in round k are the first active[k] columns."""

    dur: Array  # (L, R) seconds
    dep: Array  # (L, R) flat index into the (1 + L·R) end times; cell 0 is time 0 ("nothing")
    f_link: Array  # (L, R) bool: a forward waiting for the rank below in the same round
    b_link: Array  # (L, R) bool: a backward waiting for the rank above in the same round
    starts: Array  # (n,) first column of each plan (in the order given)
    active: Array  # (L,) columns of the plans still running in each round


def _pad(graphs: list[_Graph], durations: list[Array]) -> _Padded:
    """Lay plans' graphs (one per plan) and op durations (L, pp) side by side, longest sequence first.

    The arrays are zero-filled by the allocator, so the rounds past a plan's end are never touched
    (no writes, no page faults) and `_solve` stops computing them."""
    lengths = [g.is_b.shape[1] for g in graphs]
    order = sorted(range(len(graphs)), key=lambda i: -lengths[i])
    pps = np.array([graphs[i].is_b.shape[0] for i in order], dtype=np.intp)
    ends_at = np.cumsum(pps)
    starts = np.empty(len(graphs), dtype=np.intp)
    starts[order] = ends_at - pps
    width = int(ends_at[-1])
    l_max = lengths[order[0]]
    # round k runs the plans whose length exceeds k: a prefix of the columns
    sorted_lengths = np.array([lengths[i] for i in order])
    active = ends_at[np.searchsorted(-sorted_lengths, -np.arange(l_max), side="left") - 1]
    dur = np.zeros((l_max, width))  # zero-filled: padding costs no writes, and dep 0 reads time 0
    dep = np.zeros((l_max, width), dtype=np.int32 if width * l_max < 2**31 - 1 else np.intp)
    f_link = np.zeros((l_max, width), dtype=bool)
    b_link = np.zeros((l_max, width), dtype=bool)
    flat: dict[int, Array] = {}  # per distinct graph: the inputs' flat indices for a plan at column 0
    for i, g in enumerate(graphs):
        ln = lengths[i]
        cols = slice(starts[i], starts[i] + g.is_b.shape[0])
        dur[:ln, cols] = durations[i]
        base = flat.get(id(g))
        if base is None:
            in_round = g.in_round.astype(np.intp)  # (the flat index can pass 2^31 where the graph's cannot)
            base = flat[id(g)] = np.where(in_round < 0, -(width * l_max + 1), 1 + in_round * width + g.in_rank)
        # a missing input lands below 0 for every offset and is clipped to cell 0 (time 0)
        np.maximum(base + starts[i], 0, out=dep[:ln, cols])
        f_link[:ln, cols] = g.f_link
        b_link[:ln, cols] = g.b_link
    return _Padded(dur=dur, dep=dep, f_link=f_link, b_link=b_link, starts=starts, active=active)


def _chain(b: Array, d: Array, link: Array) -> Array:
    """e_r = max(b_r, e_{r-1} if link_r) + d_r along the last axis (a segmented prefix maximum)."""
    csum = np.cumsum(d, axis=-1)
    y = b - (csum - d)
    # Segments restart where a cell does not wait for its neighbour. Lifting segment j by j·span, span a
    # power of two above y's range, makes every earlier segment's values smaller than any of segment j's,
    # so one running maximum is the segmented one; the lift is removed again (rounding below 1e-11 s).
    seg = np.cumsum(~link, axis=-1)
    lo, hi = float(y.min()), float(y.max())
    span = 2.0 ** np.ceil(np.log2(hi - lo + 1.0))
    lift = seg * span
    return csum + (np.maximum.accumulate(y + lift, axis=-1) - lift)


def _down_the_ranks(b: Array, d: Array, link: Array) -> Array:
    """`_chain` for a backward chain, which runs from the last rank to the first."""
    return _chain(b[::-1], d[::-1], link[::-1])[::-1]


def _solve(pad: _Padded) -> Array:
    """End time of every op, (L, R), round by round.

    A cell outside every chain gets max(b, ...) + d = b + d from `_chain`, and backwards never wait in a
    forward chain nor forwards in a backward one (a chain's members wait for their neighbour's op of
    the same kind), so a round's chains apply to all its cells without masking by kind.
    """
    l_max, width = pad.dur.shape
    ends = np.zeros(1 + l_max * width)
    full_view = ends[1:].reshape(l_max, width)
    prev = np.zeros(width)
    ready_all = np.empty(width)
    # phases of rounds with the same plans running: the columns past them are left untouched
    cuts = [0, *(np.flatnonzero(np.diff(pad.active)) + 1).tolist(), l_max]
    for k0, k1 in itertools.pairwise(cuts):
        w = int(pad.active[k0])
        dur, dep, f_link, b_link = (x[k0:k1, :w] for x in (pad.dur, pad.dep, pad.f_link, pad.b_link))
        view, ready, prev = full_view[k0:k1, :w], ready_all[:w], prev[:w]
        f_rounds = f_link.any(axis=1).tolist()
        b_rounds = b_link.any(axis=1).tolist()

        for k in range(k1 - k0):
            # Same-round inputs still read 0 here; the chains below supply them.
            ends.take(dep[k], out=ready)
            b = np.maximum(prev, ready, out=ready)
            e = view[k]
            if f_rounds[k]:
                e[...] = _chain(b, dur[k], f_link[k])
                if b_rounds[k]:
                    np.copyto(e, _down_the_ranks(b, dur[k], b_link[k]), where=b_link[k])
            elif b_rounds[k]:
                e[...] = _down_the_ranks(b, dur[k], b_link[k])
            else:
                np.add(b, dur[k], out=e)
            prev = e
    return full_view


def run_schedule(fwd: Array, bwd: Array, m: int, pp: int, vpp: int, schedule: str,
                 p2p: float = 0.0) -> tuple[float, list[Event], Array, Array]:
    """Run `schedule` with per-virtual-stage durations `fwd[g]`, `bwd[g]` (g = chunk·pp + rank).

    Returns (makespan, events, per-rank end time, per-rank start of its last backward). Sends to a
    neighbouring virtual stage take `p2p` seconds and block the sender.
    """
    graph = _graph(schedule, pp, vpp, m)
    d = _durations(graph, np.asarray(fwd, dtype=np.float64), np.asarray(bwd, dtype=np.float64), float(p2p))
    ends = _solve(_pad([graph], [d])).T
    d = d.T
    return float(ends.max()), _events(graph, ends, d), ends[:, -1], ends[:, -1] - d[:, -1]


def _durations(graph: _Graph, fwd: Array, bwd: Array, p2p: float) -> Array:
    """Seconds of every op, round-major (L, pp) as the solver lays plans out: its pass on its virtual
    stage, plus a blocking send."""
    return np.concatenate([fwd, bwd])[graph.duration] + p2p * graph.sends


def _events(graph: _Graph, ends: Array, d: Array) -> list[Event]:
    pp, length = graph.is_b.shape
    out = []
    for r in range(pp):
        for k in range(length):
            out.append(Event(r, "B" if graph.is_b[r, k] else "F", int(graph.mb[r, k]), int(graph.stage[r, k]),
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
    durations = []
    for i, g in enumerate(graphs):
        fwd, bwd = _stage_durations(terms, np.array([i]), layouts[i])
        durations.append(_durations(g, fwd[0], bwd[0], float(terms.p2p[i])))
    pad = _pad(graphs, durations)
    ends_all = _solve(pad)  # (L, R)
    ov = cluster.overlap_slowdown
    out = []
    for i, (g, d_rm, (_, pp, vpp, m)) in enumerate(zip(graphs, durations, shapes, strict=True)):
        d = d_rm.T  # (pp, L)
        ends = ends_all[:d.shape[1], pad.starts[i]:pad.starts[i] + pp].T
        rank_end = ends[:, -1]
        last_b = rank_end - d[:, -1]
        busy = d.sum(axis=1)
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
                           fwd_w, bwd_w, ov)
        zero = int(batch.zero[i])
        if zero >= 2:  # per-micro-batch collectives: exposed as the closed form counts them
            sync_end = rank_end + dp.exposed
            finish = sync_end
        else:
            # the reduction starts with the last backward (overlapped) or after it
            hidden_end = (last_b if fw.dp_overlap else rank_end) + dp.after_backward
            sync_end = np.maximum(rank_end, hidden_end) + ov * np.minimum(dp.after_backward, rank_end - last_b)
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
                   (share * gather_mb).T.tolist(), (share * (reduce_mb + gather_mb)).T.tolist(), strict=True)
        per_stage = [{"rank": r, "busy_s": b_s, "idle_s": idle, "end_s": end,
                      "virtual_stages": list(range(r, pp * vpp, pp)), "last_backward_start_s": lb,
                      "grad_sync_s": gs, "sync_end_s": se, "param_gather_s": pg, "finish_s": fin,
                      "zero_fwd_s": zf, "zero_bwd_s": zb}
                     for r, (b_s, idle, end, lb, gs, se, pg, fin, zf, zb) in enumerate(rows)]
        ev = _events(g, ends * stretch, d * stretch) if events else []
        bounds = np.concatenate([[0], np.cumsum(vl)]).astype(int)
        out.append(StepSimulation(step_time_s=step, pipeline_s=makespan, events=ev, per_stage=per_stage,
                                  sync_s=sync, emb_sync_s=emb, optimizer_s=optimizer, zero_stage=zero,
                                  p2p_s=float(terms.p2p[i]) * stretch,
                                  stage_layers=[(int(bounds[j]), int(bounds[j + 1]) - 1) for j in range(pp * vpp)]))
    return out


def simulate_plan(model: ModelSpec, cluster: ClusterSpec, plan: Plan, events: bool = True) -> StepSimulation:
    """Simulate one step of `plan`, with its events (for the trace and the schedule view)."""
    return simulate_plans(model, cluster, [plan], events=events)[0]
