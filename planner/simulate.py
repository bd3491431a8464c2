"""Discrete-event simulation of one training step of a plan (the second tier after the closed form).

Each pipeline rank runs its forward (F) and backward (B) passes in the exact order of its schedule
(GPipe, 1F1B, or Megatron-LM's interleaved 1F1B with v model chunks per rank); an op starts when the
rank is free and its input (the previous virtual stage's F, or the next one's B) has arrived. Sends
to the neighbouring stage are blocking, as in Megatron-LM, so they extend the sending op. Stages are
uneven: the first virtual stage also embeds, the last also runs the LM head and the loss. After its
last backward, each rank reduces its gradients over data parallelism on a separate stream that
overlaps that backward; the step ends when every rank has reduced and stepped its optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from planner.cost.batch import batch_from_plans
from planner.cost.model import _structure_terms, _timing_terms
from planner.plan import Plan
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec


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
    step_time_s: float
    pipeline_s: float  # until the last backward ends
    events: list[Event]
    per_stage: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict:
        return {"step_time_s": self.step_time_s, "pipeline_s": self.pipeline_s, "per_stage": self.per_stage}


def schedule_order(schedule: str, pp: int, vpp: int, m: int, rank: int) -> list[tuple[str, int, int]]:
    """The op sequence (kind, micro-batch, chunk) rank `rank` executes.

    1F1B: min(p - rank - 1, m) warm-up forwards, then one forward / one backward pairs, then the
    remaining backwards (Narayanan et al. 2021, Fig. 4 top). Interleaved: virtual micro-batch k maps to
    chunk (k // p) % v and micro-batch (k // (p v)) p + k % p; warm-up (p - rank - 1)·2 + (v - 1)·p
    forwards (Megatron-LM's schedule; Narayanan et al. 2021, Fig. 4 bottom). GPipe: all forwards,
    then all backwards.
    """
    if schedule == "gpipe" or pp == 1:
        order = [("F", j, 0) for j in range(m)]
        return order + [("B", j, 0) for j in range(m)]
    if vpp == 1:
        warm = min(pp - rank - 1, m)
        order = [("F", j, 0) for j in range(warm)]
        f, b = warm, 0
        while f < m:
            order.append(("F", f, 0))
            f += 1
            order.append(("B", b, 0))
            b += 1
        order += [("B", j, 0) for j in range(b, m)]
        return order
    total = m * vpp

    def fwd(k: int) -> tuple[str, int, int]:
        return ("F", (k // (pp * vpp)) * pp + k % pp, (k // pp) % vpp)

    def bwd(k: int) -> tuple[str, int, int]:
        return ("B", (k // (pp * vpp)) * pp + k % pp, vpp - 1 - (k // pp) % vpp)

    warm = min((pp - rank - 1) * 2 + (vpp - 1) * pp, total)
    order = [fwd(k) for k in range(warm)]
    kf, kb = warm, 0
    while kf < total:
        order.append(fwd(kf))
        kf += 1
        order.append(bwd(kb))
        kb += 1
    order += [bwd(k) for k in range(kb, total)]
    return order


def run_schedule(fwd: np.ndarray, bwd: np.ndarray, m: int, pp: int, vpp: int, schedule: str,
                 p2p: float = 0.0) -> tuple[float, list[Event], np.ndarray, np.ndarray]:
    """Run `schedule` with per-virtual-stage durations `fwd[g]`, `bwd[g]` (g = chunk·pp + rank).

    Returns (makespan, events, per-rank end time, per-rank start of its last backward). Sends to a
    neighbouring virtual stage take `p2p` seconds and block the sender.
    """
    n_virtual = pp * vpp
    orders = [schedule_order(schedule, pp, vpp, m, r) for r in range(pp)]
    pos = [0] * pp
    rank_free = [0.0] * pp
    f_done = np.full((n_virtual, m), np.nan)
    b_done = np.full((n_virtual, m), np.nan)
    events: list[Event] = []
    last_b_start = np.zeros(pp)
    remaining = sum(len(o) for o in orders)
    while remaining:
        progressed = False
        for r in range(pp):
            while pos[r] < len(orders[r]):
                kind, j, chunk = orders[r][pos[r]]
                g = chunk * pp + r
                if kind == "F":
                    dep = 0.0 if g == 0 else f_done[g - 1, j]
                    dur = fwd[g] + (p2p if g < n_virtual - 1 else 0.0)
                else:
                    dep = f_done[g, j] if g == n_virtual - 1 else b_done[g + 1, j]
                    dur = bwd[g] + (p2p if g > 0 else 0.0)
                if np.isnan(dep):
                    break  # waits for another rank
                start = max(rank_free[r], dep)
                end = start + dur
                (f_done if kind == "F" else b_done)[g, j] = end
                rank_free[r] = end
                if kind == "B":
                    last_b_start[r] = start
                events.append(Event(r, kind, j, g, start, end))
                pos[r] += 1
                remaining -= 1
                progressed = True
        if not progressed:
            raise RuntimeError("pipeline schedule deadlocked (inconsistent order)")
    return max(rank_free), events, np.array(rank_free), last_b_start


def simulate_plan(model: ModelSpec, cluster: ClusterSpec, plan: Plan) -> StepSimulation:
    """Simulate one step of `plan` with op durations from the cost model's terms."""
    batch = batch_from_plans([plan])
    st = _structure_terms(model, cluster, batch)
    tm = _timing_terms(model, cluster, batch, st)
    pp, vpp, m = plan.pp, plan.vpp, plan.grad_accum
    layer_f = float(tm["layer_fwd"][0])
    layer_b = float(tm["layer_bwd"][0])
    per_chunk = model.num_layers / (pp * vpp)
    n_virtual = pp * vpp
    fwd = np.full(n_virtual, per_chunk * layer_f)
    bwd = np.full(n_virtual, per_chunk * layer_b)
    fwd[0] += float(st["pre_f"][0])
    bwd[0] += float(st["pre_b"][0])
    fwd[-1] += float(st["post_f"][0])
    bwd[-1] += float(st["post_b"][0])
    p2p = float(st["p2p"][0]) if pp > 1 else 0.0
    makespan, events, rank_end, last_b_start = run_schedule(fwd, bwd, m, pp, vpp, plan.schedule, p2p)
    slow = cluster.compute_slowdown
    if slow > 1.0:  # ranks sharing cores: the node's total work bounds the step (as in the closed form)
        busy = sum(e.end - e.start for e in events) / pp
        stretch = max(1.0, slow * busy / makespan)
        for e in events:
            e.start, e.end = e.start * stretch, e.end * stretch
        makespan, rank_end, last_b_start = makespan * stretch, rank_end * stretch, last_b_start * stretch

    # Data-parallel reduction per rank: its own stream, overlapping the rank's last backward.
    ov = cluster.overlap_slowdown
    dp_time = float(tm["dp_bwd_comm"][0])
    finish = []
    for r in range(pp):
        last_dur = rank_end[r] - last_b_start[r]
        if plan.zero_stage >= 2:  # per-micro-batch collectives, exposed as the closed form counts them
            exposed = float(tm["dp_exposed"][0])
            finish.append(rank_end[r] + exposed)
        else:
            hidden_end = last_b_start[r] + dp_time
            finish.append(max(rank_end[r], hidden_end) + ov * min(dp_time, last_dur)
                          + float(tm["dp_exposed_fwd"][0]))
    step = max(finish) + float(tm["emb"][0]) + float(tm["optimizer"][0])
    per_stage = []
    for r in range(pp):
        busy = sum(e.end - e.start for e in events if e.rank == r)
        per_stage.append({"rank": r, "busy_s": busy, "idle_s": makespan - busy, "end_s": float(rank_end[r]),
                          "virtual_stages": [c * pp + r for c in range(vpp)]})
    return StepSimulation(step_time_s=step, pipeline_s=makespan, events=events, per_stage=per_stage)
