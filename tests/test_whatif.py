"""planner.whatif: plans built from sizes (shared by `planner estimate` and the dashboard's what-if)
and the legal values of each knob, checked against brute force and the search's own enumeration."""

from __future__ import annotations

import json

import pytest

from planner.cli import main
from planner.cost import estimate
from planner.errors import PlannerError
from planner.plan import Plan, check_plan
from planner.search import Constraints, search
from planner.specs.catalog import load_cluster, load_model
from planner.whatif import build_plan, changes, legal_gpu_counts, legal_values, nearest, vary


def test_build_plan_derives_dp_and_schedule() -> None:
    p = build_plan(64, 512, tp=4, pp=4, cp=2, vpp=2, micro_batch=1)
    assert (p.dp, p.schedule) == (2, "interleaved-1f1b")
    assert build_plan(8, 16, pp=2).schedule == "1f1b"
    assert build_plan(8, 16, pp=2, schedule="gpipe").schedule == "gpipe"
    with pytest.raises(PlannerError, match=r"tp\*pp\*cp = 3\*1\*1 = 3 does not divide the 8 GPUs"):
        build_plan(8, 16, tp=3)


def test_planner_estimate_scores_the_plan_build_plan_gives(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["estimate", "--model", "llama3-8b", "--cluster", "dgx-h100", "--gpus", "64", "--global-batch", "512",
            "--tp", "2", "--pp", "4", "--vpp", "2", "--micro-batch", "2", "--zero", "1", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", gpus=64)
    plan = build_plan(64, 512, tp=2, pp=4, vpp=2, micro_batch=2, zero_stage=1, dtype=model.dtype)
    assert plan.dp == 8 and plan.schedule == "interleaved-1f1b"
    assert printed["step_time_s"] == pytest.approx(estimate(model, cluster, plan)["step_time_s"])


def test_vary_rederives_dp_and_follows_vpp() -> None:
    base = Plan(tp=1, pp=2, dp=4, vpp=2, micro_batch=1, global_batch=64, schedule="interleaved-1f1b")
    p = vary(base, 8, tp=2, pp=1, micro_batch=2, vpp=1, sequence_parallel=True, recompute="full", zero_stage=1)
    assert (p.tp, p.pp, p.dp, p.vpp, p.schedule, p.micro_batch) == (2, 1, 4, 1, "1f1b", 2)
    assert vary(Plan(pp=2, dp=4, global_batch=64, schedule="gpipe"), 8, vpp=1).schedule == "gpipe"
    assert vary(base, 16).dp == 8  # more GPUs: dp grows
    with pytest.raises(PlannerError, match="does not divide the 8 GPUs"):
        vary(base, 8, tp=3)
    with pytest.raises(PlannerError, match="cannot vary dp"):
        vary(base, 8, dp=2)


@pytest.mark.parametrize("knob", ["tp", "pp", "cp", "micro_batch", "vpp", "schedule", "sequence_parallel"])
def test_legal_values_match_brute_force(knob: str) -> None:
    """Every candidate value tried by hand with check_plan: legal_values keeps exactly the legal ones."""
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", gpus=64)
    base = Plan(tp=2, pp=4, dp=8, vpp=2, micro_batch=1, global_batch=512, schedule="interleaved-1f1b",
                sequence_parallel=True)
    pool = {"schedule": ["1f1b", "gpipe", "interleaved-1f1b", "zigzag"],
            "sequence_parallel": [False, True]}.get(knob, list(range(1, 65)))
    expected = []
    for v in pool:
        try:
            p = vary(base, 64, **{knob: v})
            check_plan(model, cluster, p)
        except (PlannerError, TypeError):
            continue
        expected.append(v)
    got = legal_values(model, cluster, base, knob)
    assert got == expected and getattr(base, knob) in got


def test_legal_tp_values_are_those_the_search_enumerates() -> None:
    """An independent path: the search's own divisibility rules, every other knob fixed."""
    model, cluster = load_model("tiny"), load_cluster("dgx-h100", gpus=16)
    base = Plan(tp=1, pp=2, dp=8, micro_batch=1, global_batch=64)
    fixed = Constraints(pp=2, cp=1, micro_batch=1, vpp=1, recompute=("none",), zero_stages=(0,),
                        schedules=("1f1b",), sequence_parallel=False, placements=False)
    r = search(model, cluster, 64, constraints=fixed, top_k=1000)
    assert sorted({p.tp for p in r.plans}) == legal_values(model, cluster, base, "tp")


def test_legal_gpu_counts_match_brute_force() -> None:
    model, base_cluster = load_model("llama3-8b"), load_cluster("dgx-h100", gpus=64)
    plan = Plan(tp=2, pp=4, dp=8, micro_batch=2, global_batch=512)
    expected = []
    for n in range(1, 2049):
        try:
            cluster = load_cluster(base_cluster, gpus=n)
            check_plan(model, cluster, vary(plan, n))
        except PlannerError:
            continue
        expected.append(n)
    assert legal_gpu_counts(model, base_cluster, plan) == expected  # 8 .. 2048 in powers of two
    assert 64 in expected and 12 not in expected


def test_changes_are_what_vary_needs() -> None:
    base = Plan(tp=2, pp=2, dp=16, micro_batch=1, global_batch=512)
    for kw, n in (({"pp": 4}, 64), ({"vpp": 2}, 64), ({"tp": 4, "zero_stage": 1}, 128), ({}, 32)):
        plan = vary(base, n, **kw)
        diff = changes(base, plan)
        assert vary(base, diff.pop("gpus", base.world_size), **diff) == plan
    assert changes(base, base) == {}
    assert changes(base, vary(base, 64, vpp=2)) == {"vpp": 2, "schedule": "interleaved-1f1b"}  # 64 GPUs already


def test_nearest() -> None:
    assert nearest([1, 2, 4, 8], 5) == 4 and nearest([1, 2, 4, 8], 6) == 4 and nearest([1, 2, 4, 8], 7) == 8
    assert nearest(["1f1b", "gpipe"], "interleaved-1f1b") == "1f1b" and nearest([], 3) == 3
