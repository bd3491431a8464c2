"""The discrete-event step simulation: schedule orders, uniform stages against the closed form,
a hand-computed uneven 1F1B timeline, and agreement with the cost model on real plans."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest

from planner.cost import estimate
from planner.plan import Plan
from planner.simulate import run_schedule, schedule_order, simulate_plan
from planner.specs.catalog import cluster_preset, model_preset

# ---- schedule orders --------------------------------------------------------------------------

ORDER_CASES = [("gpipe", p, 1, m) for p in (1, 2, 4) for m in (1, 3, 8)] \
    + [("1f1b", p, 1, m) for p in (1, 2, 3, 4, 8) for m in (1, 2, 3, 5, 8, 16)] \
    + [("interleaved-1f1b", p, v, m) for p in (2, 3, 4) for v in (2, 3) for m in (p, 2 * p, 4 * p)]


@pytest.mark.parametrize(("schedule", "pp", "vpp", "m"), ORDER_CASES)
def test_each_micro_batch_runs_one_f_and_one_b_per_chunk(schedule: str, pp: int, vpp: int, m: int) -> None:
    for rank in range(pp):
        order = schedule_order(schedule, pp, vpp, m, rank)
        assert Counter(order) == Counter((k, j, c) for k in "FB" for j in range(m) for c in range(vpp))
        pos = {op: i for i, op in enumerate(order)}
        for j in range(m):
            for c in range(vpp):
                assert pos[("F", j, c)] < pos[("B", j, c)]


@pytest.mark.parametrize(("pp", "m"), [(2, 1), (2, 4), (4, 2), (4, 8), (8, 16)])
def test_1f1b_warm_up_and_in_flight_limit(pp: int, m: int) -> None:
    """Rank r runs min(p − r − 1, m) warm-up forwards, then alternates; it never holds more than
    p − r micro-batches' activations (Narayanan et al. 2021, Fig. 4)."""
    for rank in range(pp):
        order = schedule_order("1f1b", pp, 1, m, rank)
        warm = min(pp - rank - 1, m)
        assert [k for k, _, _ in order[:warm]] == ["F"] * warm
        in_flight = peak = 0
        for kind, _, _ in order:
            in_flight += 1 if kind == "F" else -1
            peak = max(peak, in_flight)
        assert peak == min(pp - rank, m)
        # micro-batches run in order in each direction
        assert [j for k, j, _ in order if k == "F"] == list(range(m))
        assert [j for k, j, _ in order if k == "B"] == list(range(m))


def test_gpipe_runs_all_forwards_first() -> None:
    order = schedule_order("gpipe", 4, 1, 3, 2)
    assert order == [("F", 0, 0), ("F", 1, 0), ("F", 2, 0), ("B", 0, 0), ("B", 1, 0), ("B", 2, 0)]


def test_interleaved_chunks_cycle_in_groups_of_p() -> None:
    """Megatron-LM's interleaved order: p micro-batches through chunk 0, then the same p through
    chunk 1, ...; backward walks the chunks in reverse."""
    order = schedule_order("interleaved-1f1b", 2, 2, 4, 0)
    fwd = [(j, c) for k, j, c in order if k == "F"]
    bwd = [(j, c) for k, j, c in order if k == "B"]
    assert fwd == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (3, 0), (2, 1), (3, 1)]
    assert bwd == [(0, 1), (1, 1), (0, 0), (1, 0), (2, 1), (3, 1), (2, 0), (3, 0)]


# ---- uniform stages: the closed form is exact -------------------------------------------------

UNIFORM = [("1f1b", p, 1, m) for p in (1, 2, 4, 8) for m in (1, 2, 4, 7, 16)] \
    + [("gpipe", p, 1, m) for p in (2, 4) for m in (1, 4, 9)] \
    + [("interleaved-1f1b", p, v, m) for p in (2, 4) for v in (2, 3, 4) for m in (p, 2 * p, 3 * p)]


@pytest.mark.parametrize(("schedule", "pp", "vpp", "m"), UNIFORM)
def test_uniform_stages_match_the_closed_form(schedule: str, pp: int, vpp: int, m: int) -> None:
    """Per-rank forward f and backward b split evenly over v chunks: makespan (m + (p−1)/v)·(f + b),
    i.e. a bubble of (p−1)/m (1F1B, GPipe) or (p−1)/(v·m) (interleaved) of the ideal m·(f + b)."""
    f, b = 1.5, 2.75
    n_virtual = pp * vpp
    makespan, events, rank_end, _ = run_schedule(np.full(n_virtual, f / vpp), np.full(n_virtual, b / vpp),
                                                 m, pp, vpp, schedule)
    assert makespan == pytest.approx((m + (pp - 1) / vpp) * (f + b), rel=1e-12)
    bubble = makespan - m * (f + b)
    assert bubble / (m * (f + b)) == pytest.approx((pp - 1) / (vpp * m), rel=1e-9, abs=1e-12)
    assert len(events) == 2 * m * n_virtual
    assert max(rank_end) == makespan


def test_events_respect_dependencies_and_never_overlap_on_a_rank() -> None:
    fwd, bwd = np.array([1.0, 2.0, 0.5, 1.5, 1.0, 0.7]), np.array([2.0, 1.0, 3.0, 0.5, 2.5, 1.1])
    pp, vpp, m = 3, 2, 6
    _, events, _, _ = run_schedule(fwd, bwd, m, pp, vpp, "interleaved-1f1b", p2p=0.1)
    end = {(e.kind, e.stage, e.micro_batch): e.end for e in events}
    for e in events:
        sends = (e.kind == "F" and e.stage < 5) or (e.kind == "B" and e.stage > 0)
        work = (fwd if e.kind == "F" else bwd)[e.stage]
        assert e.end == pytest.approx(e.start + work + (0.1 if sends else 0.0))
        if e.kind == "F" and e.stage > 0:
            assert e.start >= end[("F", e.stage - 1, e.micro_batch)]
        if e.kind == "B":
            dep = ("F", 5, e.micro_batch) if e.stage == 5 else ("B", e.stage + 1, e.micro_batch)
            assert e.start >= end[dep]
    for r in range(pp):
        mine = sorted((e.start, e.end) for e in events if e.rank == r)
        assert all(a[1] <= b[0] + 1e-12 for a, b in itertools.pairwise(mine))


def _longest_paths(fwd: np.ndarray, bwd: np.ndarray, m: int, pp: int, vpp: int, schedule: str,
                   p2p: float) -> list[list[float]]:
    """Brute force: every op's end time by walking the ranks' sequences until nothing changes (an op
    starts when its rank is free and its input has ended; a send to a neighbouring stage blocks)."""
    g_last = pp * vpp - 1
    orders = [schedule_order(schedule, pp, vpp, m, r) for r in range(pp)]
    end: dict[tuple[str, int, int], float] = {}
    done = [0] * pp
    while any(done[r] < len(orders[r]) for r in range(pp)):
        progressed = False
        for r in range(pp):
            while done[r] < len(orders[r]):
                kind, mb, chunk = orders[r][done[r]]
                g = chunk * pp + r
                dep = None if kind == "F" and g == 0 else \
                    ("F", g - 1, mb) if kind == "F" else ("F", g, mb) if g == g_last else ("B", g + 1, mb)
                if dep is not None and dep not in end:
                    break
                free = end[orders[r][done[r] - 1][0], orders[r][done[r] - 1][2] * pp + r,
                           orders[r][done[r] - 1][1]] if done[r] else 0.0
                sends = g < g_last if kind == "F" else g > 0
                work = (fwd if kind == "F" else bwd)[g] + (p2p if sends else 0.0)
                end[kind, g, mb] = max(free, end[dep] if dep else 0.0) + work
                done[r] += 1
                progressed = True
        assert progressed, "schedule deadlocks"
    return [[end[k, c * pp + r, mb] for k, mb, c in orders[r]] for r in range(pp)]


_SWEEP = [(s, pp, 1, m) for s in ("1f1b", "gpipe") for pp in (1, 2, 3, 5, 8) for m in (1, 2, 3, 7, 16)] + [
    ("interleaved-1f1b", pp, vpp, m) for pp in (2, 3, 4, 8) for vpp in (2, 3, 5) for m in (pp, 2 * pp, 5 * pp)]


@pytest.mark.parametrize(("schedule", "pp", "vpp", "m"), [
    ("1f1b", 4, 1, 7), ("1f1b", 5, 1, 3), ("gpipe", 3, 1, 5), ("interleaved-1f1b", 4, 2, 8),
    ("interleaved-1f1b", 3, 3, 6), ("interleaved-1f1b", 2, 4, 4), *_SWEEP])
def test_uneven_stages_match_brute_force_longest_paths(schedule: str, pp: int, vpp: int, m: int) -> None:
    """Random uneven stage times: every op's end equals the brute-force longest path (solving level by
    level takes no shortcut), over every schedule, pipelines of 1-8 ranks, 1-5 chunks, fewer
    micro-batches than ranks and more."""
    rng = np.random.default_rng(pp * 100 + vpp * 10 + m)
    g = pp * vpp
    fwd, bwd = rng.uniform(0.1, 3.0, g), rng.uniform(0.1, 5.0, g)
    p2p = float(rng.uniform(0.0, 0.4))
    _, events, rank_end, _ = run_schedule(fwd, bwd, m, pp, vpp, schedule, p2p=p2p)
    expected = _longest_paths(fwd, bwd, m, pp, vpp, schedule, p2p)
    for r in range(pp):
        mine = [e.end for e in events if e.rank == r]
        assert mine == pytest.approx(expected[r], rel=1e-12, abs=1e-12)
        assert rank_end[r] == pytest.approx(expected[r][-1], rel=1e-12)


# ---- uneven stages: the simulation, not the closed form, follows the real schedule -------------


def _closed_form(t: list[float], m: int, v: int = 1) -> float:
    return m * max(t) + (sum(t) - max(t)) / v


def test_hand_computed_1f1b_first_stage_slower() -> None:
    """p = 2, 1F1B. Stage 0: F = 3, B = 4; stage 1: F = 1, B = 2 (no p2p).
    Orders: rank 0 F0 F1 B0 B1 (one warm-up forward), rank 1 F0 B0 F1 B1.

    m = 2:
      r0 F0 [0, 3]   r0 F1 [3, 6]
      r1 F0 [3, 4]   (needs r0 F0)      r1 B0 [4, 6]
      r0 B0 [6, 10]  (needs r1 B0 = 6, r0 free at 6)
      r1 F1 [6, 7]   (needs r0 F1 = 6)  r1 B1 [7, 9]
      r0 B1 [10, 14] (r1 B1 done at 9, r0 free at 10)      -> makespan 14
    Rank 0 is never idle: 3 + 3 + 4 + 4 = 14 = m·t_max. The closed form m·t_max + (Σt − t_max)
    = 2·7 + 3 = 17 charges a fill/drain bubble that the slow first stage never sees.

    m = 3 (rank 0: F0 F1 B0 F2 B1 B2; rank 1: F0 B0 F1 B1 F2 B2):
      r0 F0 [0,3] F1 [3,6]; r1 F0 [3,4] B0 [4,6]; r0 B0 [6,10]; r1 F1 [6,7] B1 [7,9];
      r0 F2 [10,13]; r1 F2 [13,14] B2 [14,16]; r0 B1 [13,17]; r0 B2 [17,21]  -> 21 (closed: 24)
    """
    fwd, bwd = np.array([3.0, 1.0]), np.array([4.0, 2.0])
    for m, expected, closed in ((2, 14.0, 17.0), (3, 21.0, 24.0)):
        makespan, events, rank_end, last_b = run_schedule(fwd, bwd, m, 2, 1, "1f1b")
        assert makespan == expected
        assert _closed_form([7.0, 3.0], m) == closed != makespan
    _, events, rank_end, last_b = run_schedule(fwd, bwd, 2, 2, 1, "1f1b")
    timeline = sorted((e.rank, e.start, e.end, e.kind, e.micro_batch) for e in events)
    assert timeline == [(0, 0, 3, "F", 0), (0, 3, 6, "F", 1), (0, 6, 10, "B", 0), (0, 10, 14, "B", 1),
                        (1, 3, 4, "F", 0), (1, 4, 6, "B", 0), (1, 6, 7, "F", 1), (1, 7, 9, "B", 1)]
    assert list(rank_end) == [14.0, 9.0] and list(last_b) == [10.0, 7.0]


def test_hand_computed_1f1b_with_p2p() -> None:
    """Same stages, m = 2, p2p = 0.5 blocking the sender: stage 0's F sends (3.5), stage 1's B
    sends (2.5); stage 0's B and stage 1's F have no neighbour to send to.
      r0 F0 [0, 3.5]  F1 [3.5, 7]
      r1 F0 [3.5, 4.5]  B0 [4.5, 7]
      r0 B0 [7, 11]   r1 F1 [7, 8]  B1 [8, 10.5]
      r0 B1 [11, 15]                                          -> makespan 15"""
    makespan, *_ = run_schedule(np.array([3.0, 1.0]), np.array([4.0, 2.0]), 2, 2, 1, "1f1b", p2p=0.5)
    assert makespan == 15.0


def test_hand_computed_last_stage_slower_agrees_with_closed_form() -> None:
    """Stage 0: F = 1, B = 2; stage 1: F = 3, B = 4; m = 3:
      r0 F0 [0,1] F1 [1,2]; r1 F0 [1,4] B0 [4,8]; r0 B0 [8,10]; r0 F2 [10,11];
      r1 F1 [8,11] B1 [11,15]; r1 F2 [15,18] B2 [18,22]; r0 B1 [15,17]; r0 B2 [22,24] -> 24
    Here the bottleneck is last, so the fill costs t_0 once: 3·7 + 3 = 24, as the closed form says."""
    makespan, *_ = run_schedule(np.array([1.0, 3.0]), np.array([2.0, 4.0]), 3, 2, 1, "1f1b")
    assert makespan == 24.0 == _closed_form([3.0, 7.0], 3)


def test_gpipe_hand_computed() -> None:
    """GPipe, p = 2, m = 2, stage 0 F = 1, B = 1; stage 1 F = 2, B = 3:
      r0 F0 [0,1] F1 [1,2]; r1 F0 [1,3] F1 [3,5] B0 [5,8] B1 [8,11]; r0 B0 [8,9] B1 [11,12] -> 12"""
    makespan, *_ = run_schedule(np.array([1.0, 2.0]), np.array([1.0, 3.0]), 2, 2, 1, "gpipe")
    assert makespan == 12.0


# ---- whole plans: simulation vs the closed-form cost model -------------------------------------

GPT3 = model_preset("gpt3-175b")
A100_1024 = cluster_preset("dgx-a100-80gb").with_gpus(1024)

PLANS = [
    {"tp": 8, "pp": 16, "dp": 8},
    {"tp": 8, "pp": 16, "dp": 8, "schedule": "interleaved-1f1b", "vpp": 2},
    {"tp": 8, "pp": 16, "dp": 8, "micro_batch": 2, "schedule": "gpipe"},
    {"tp": 8, "pp": 8, "dp": 16, "zero_stage": 1, "recompute": "full"},
    {"tp": 8, "pp": 8, "dp": 16, "zero_stage": 2, "recompute": "full", "sequence_parallel": True},
    {"tp": 8, "pp": 8, "dp": 16, "zero_stage": 3, "recompute": "selective", "sequence_parallel": True},
    {"tp": 4, "pp": 4, "dp": 32, "cp": 2, "schedule": "interleaved-1f1b", "vpp": 4, "recompute": "full"},
]


@pytest.mark.parametrize("kw", PLANS, ids=[Plan(global_batch=1536, **kw).describe() for kw in PLANS])
def test_simulation_agrees_with_estimate_on_gpt3(kw: dict) -> None:
    plan = Plan(global_batch=1536, **kw)
    closed = estimate(GPT3, A100_1024, plan)["step_time_s"]
    sim = simulate_plan(GPT3, A100_1024, plan)
    assert sim.step_time_s == pytest.approx(closed, rel=0.03)
    assert 0 < sim.pipeline_s < sim.step_time_s
    assert len(sim.events) == 2 * plan.grad_accum * plan.pp * plan.vpp
    assert len(sim.per_stage) == plan.pp
    for stage in sim.per_stage:
        assert stage["busy_s"] + stage["idle_s"] == pytest.approx(sim.pipeline_s)
        assert stage["busy_s"] > 0 and stage["idle_s"] >= -1e-9
        assert stage["virtual_stages"] == [c * plan.pp + stage["rank"] for c in range(plan.vpp)]
    summary = sim.summary()
    assert summary["step_time_s"] == sim.step_time_s and summary["per_stage"] == sim.per_stage


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
@pytest.mark.parametrize("recompute", ["none", "full"])
def test_simulation_equals_estimate_without_pipelining(zero: int, recompute: str) -> None:
    """pp = 1: no schedule to simulate, so the two tiers must give the same step."""
    m = model_preset("llama2-7b")
    c = cluster_preset("dgx-a100-80gb").with_gpus(16)
    plan = Plan(tp=2, dp=8, micro_batch=2, global_batch=64, zero_stage=zero, recompute=recompute)
    assert simulate_plan(m, c, plan).step_time_s == pytest.approx(estimate(m, c, plan)["step_time_s"],
                                                                  rel=1e-9)


def test_small_pipelines_agree() -> None:
    m = model_preset("tiny")
    c = cluster_preset("dgx-a100-80gb").with_gpus(8)
    interleaved = {"tp": 2, "pp": 2, "dp": 2, "micro_batch": 2, "schedule": "interleaved-1f1b", "vpp": 2}
    for kw in ({"pp": 4, "dp": 2}, interleaved):
        plan = Plan(global_batch=16, dtype="fp32", **kw)
        assert simulate_plan(m, c, plan).step_time_s == pytest.approx(estimate(m, c, plan)["step_time_s"],
                                                                      rel=0.03)
