"""The dashboard's Streamlit-free parts (planner.dashboard: plan codes, the URL state, charts, text)
and planner.feasible, checked against brute force and hand-worked cases."""

from __future__ import annotations

import base64
import math
import re
import zlib

import pytest

from planner.dashboard import charts
from planner.dashboard.codes import looks_like_code, plan_code
from planner.dashboard.fmt import compact, delta, md_escape, money, seconds
from planner.dashboard.state import (
    DashboardState,
    format_whatif,
    from_query,
    pack_spec,
    parse_whatif,
    to_query,
    unpack_spec,
)
from planner.errors import PlanError
from planner.feasible import data_parallel_sizes, nearby_batches, nearest_feasible
from planner.plan import Plan
from planner.search import Constraints, search
from planner.simulate import simulate_plan
from planner.specs.catalog import load_cluster, load_model

PROBLEMS = [("llama3-8b", "dgx-h100", 64, 512), ("mixtral-8x7b", "dgx-h100", 64, 256),
            ("llama2-70b", "dgx-a100-80gb", 64, 128)]


# ---- plan codes ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "cluster", "gpus", "batch"), PROBLEMS)
def test_plan_codes_name_one_plan_within_a_search(model: str, cluster: str, gpus: int, batch: int) -> None:
    m, c = load_model(model), load_cluster(cluster, gpus=gpus)
    r = search(m, c, batch, top_k=50)
    plans = {*r.plans, *(p for p, _ in r.pareto)}
    codes = {plan_code(p) for p in plans}
    assert len(codes) == len(plans)  # distinct plans, distinct codes
    assert all(looks_like_code(c) for c in codes)


def test_whatif_changes_round_trip_and_name_bad_parts() -> None:
    changes = {"tp": 2, "vpp": 2, "schedule": "interleaved-1f1b", "sequence_parallel": False, "gpus": 128}
    text = format_whatif(changes)
    assert text == "tp=2,vpp=2,schedule=interleaved-1f1b,sequence_parallel=off,gpus=128"
    assert parse_whatif(text) == changes and format_whatif({}) is None
    for bad, part in (("dp=4", "'dp=4'"), ("tp=two", "'tp=two'"), ("tp=2,tp=4", "'tp=4'"), ("", "no changes")):
        with pytest.raises(ValueError, match=re.escape(part)):
            parse_whatif(bad)


# ---- the state and its URL --------------------------------------------------------------------------------------


STATES = [
    DashboardState(),
    DashboardState(model="llama2-70b", seq_len=2048, gpus=128, global_batch=1024, objective="cost", top_k=7,
                   tp=8, pp=4, max_memory_gib=40.5, zero=(1, 3), recompute=("selective",), schedules=("gpipe",),
                   sp="on", tokens="15T", price=2.25, plan="tp8 pp4 dp4 mb1 sp z1 [tp>dp>cp>pp]",
                   compare=("tp8 pp4 dp4 mb1 sp z1", "tp8 pp4 dp4 v2 mb1 sp z3"), whatif="pp=2,micro_batch=2,gpus=256",
                   view="What-if"),
    DashboardState(model_spec=pack_spec({"name": "x", "num_layers": 2}), cluster="dgx-b200", view="Measured",
                   folder="runs/2026-12 sweep"),
]


@pytest.mark.parametrize("state", STATES)
def test_state_round_trips_through_the_url(state: DashboardState) -> None:
    query = to_query(state)
    assert all(isinstance(v, str) for v in query.values())
    again, warnings = from_query(query)
    assert again == state and not warnings
    assert to_query(DashboardState()) == {}  # defaults keep links short


def test_bad_parameters_each_give_one_warning() -> None:
    state, warnings = from_query({"seq_len": "abc", "objective": "speed", "gpus": "0", "zero": "4",
                                  "plan": "DROP TABLE", "view": "Nope", "whatif": "dp=3", "colour": "red",
                                  "top_k": "500", "model_spec": "!!!", "tokens": "lots", "price": "-1",
                                  "global_batch": "128"})
    assert state == DashboardState(global_batch=128)
    names = [w.split("=")[0].removeprefix("ignoring ?") for w in warnings]
    assert sorted(names) == sorted(["seq_len", "objective", "gpus", "zero", "plan", "view", "colour", "top_k",
                                    "model_spec", "tokens", "price", "whatif"])
    assert any("not a known objective" in w for w in warnings)


def test_embedded_specs_are_bounded() -> None:
    spec = {"name": "m", "num_layers": 80, "hidden": 8192}
    assert unpack_spec(pack_spec(spec) or "") == spec
    bomb = base64.urlsafe_b64encode(zlib.compress(b"[" + b" " * (8 << 20) + b"]", 9)).decode()
    assert len(bomb) < 16_000
    with pytest.raises(ValueError, match="too large"):
        unpack_spec(bomb)
    with pytest.raises(ValueError, match="not an embedded spec"):
        unpack_spec(base64.urlsafe_b64encode(zlib.compress(b"[1, 2]")).decode())


# ---- text ---------------------------------------------------------------------------------------------------------


def test_markdown_escaping_keeps_every_character() -> None:
    nasty = "pp*vpp = 8*4, __init__, $x$, `code`, [link](url), <b>bold</b>, :red[x], # h, 1. item, a|b, ~s~"
    escaped = md_escape(nasty)
    assert re.sub(r"\\(.)", r"\1", escaped) == nasty
    assert not re.search(r"(?<!\\)[*_$`\[\]<>:|~#]", escaped)  # no markup character left unescaped


def test_numbers_with_units() -> None:
    assert [compact(x) for x in (14400, 999_999, 4_266_667, 1234, 0.0123)] == [
        "14.4k", "1M", "4.27M", "1,234", "0.0123"]
    assert delta(1000, 15400, "tokens/s") == "-14.4k tokens/s (-93.5%)"  # not "-1.44e+04"
    assert delta(2.2, 2.0, "s") == "+0.2 s (+10.0%)" and delta(0.46, 0.45, "pp", 100) == "+1 pp"
    assert delta(2.0, 2.0, "s") is None
    assert [seconds(x) for x in (0.0123, 2.4, 500, 1.5e7)] == ["12.3 ms", "2.40 s", "8.33 min", "173.6 days"]
    assert [money(x) for x in (950, 12_345, 8_533_333, None)] == ["$950", "$12.3k", "$8.53M", "-"]


# ---- charts ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lo", "hi"), [(6.7, 20.1), (0.002, 40.0), (20, 300), (1.0, 1.3), (0.9, 1e6), (3e-4, 5e-4)])
def test_log_ticks_are_few_and_at_round_values(lo: float, hi: float) -> None:
    """Never every digit of every decade ("2 3 4 5 100 2 3"): 2 to 9 ticks, inside the range, at
    1-2-5 multiples (or finer steps only inside a narrow range), each label distinct."""
    ticks = charts.log_ticks(lo, hi)
    assert 2 <= len(ticks) <= 9 and ticks == sorted(ticks)
    assert all(lo * 0.999 <= t <= hi * 1.001 for t in ticks)
    labels = [charts.tick_text(t) for t in ticks]
    assert len(set(labels)) == len(labels)
    mantissas = {round(t / 10 ** math.floor(math.log10(t)), 6) for t in ticks}
    if hi / lo >= 10:
        assert mantissas <= {1.0, 2.0, 5.0}


def _points(model: str = "llama3-8b", gpus: int = 64, batch: int = 512) -> tuple[list, list, float]:
    r = search(load_model(model), load_cluster("dgx-h100", gpus=gpus), batch, top_k=20)
    return list(zip(r.plans, r.predictions, strict=True)), r.pareto, r.predictions[0]["memory_limit_gib"]


def test_pareto_chart_keeps_the_useful_range() -> None:
    ranked, front, limit = _points()
    chart = charts.pareto_figure(ranked, front, ranked[0][0], limit)
    best = ranked[0][1]["step_time_s"]
    slowest_ranked = max(pr["step_time_s"] for _, pr in ranked)
    everything = {plan_code(p): pr["step_time_s"] for p, pr in [*ranked, *front]}
    cutoff = max(slowest_ranked * 1.1, min(max(everything.values()), best * charts.OUTLIER_FACTOR))
    assert chart.axis_max_s == pytest.approx(cutoff)
    assert chart.off_scale == sum(t > cutoff for t in everything.values()) > 0  # ZeRO-3 + full recompute plans
    data = [t for t in chart.figure.data if t.get("customdata") is not None]
    drawn = {c: y for t in data for c, y in zip(t["customdata"], t["y"], strict=True)}
    assert set(drawn) == set(everything) and max(drawn.values()) <= cutoff * (1 + 1e-12)
    legend = [t["name"] for t in chart.figure.data if t.get("showlegend") is not False]
    depths = {p.pp for p, _ in [*ranked, *front]}
    assert len(legend) <= len(depths) + 5 and len(legend) == len(set(legend))  # no repeated entries
    colors = [t["marker"]["color"] for t in chart.figure.data
              if t["name"].startswith("pp") and t.get("showlegend") is not False]
    assert len(colors) == len(set(colors))  # one colour per pipeline depth
    line = next(t for t in chart.figure.data if t["name"] == "Pareto front")
    assert line["line"]["color"] == charts.NEUTRAL


def _relative_luminance(hex_color: str) -> float:
    rgb = [int(hex_color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def test_reference_lines_show_on_light_and_dark_backgrounds() -> None:
    """WCAG contrast of the neutral line colour against white and Streamlit's dark background (#0e1117)."""
    def contrast(a: str, b: str) -> float:
        la, lb = sorted((_relative_luminance(a), _relative_luminance(b)), reverse=True)
        return (la + 0.05) / (lb + 0.05)

    for background in ("#ffffff", "#0e1117"):
        assert contrast(charts.NEUTRAL, background) >= 3.0, background


def _schedule(pp: int = 4, batch: int = 64) -> tuple[Plan, dict]:
    model, cluster = load_model("llama2-7b"), load_cluster("dgx-h100", gpus=pp)
    plan = Plan(pp=pp, micro_batch=1, global_batch=batch)
    sim = simulate_plan(model, cluster, plan)
    events = [(e.rank, e.kind, e.micro_batch, e.stage, float(e.start), float(e.end)) for e in sim.events]
    return plan, {"events": events, "step_time_s": float(sim.step_time_s), "pipeline_s": float(sim.pipeline_s)}


def _bars(fig: charts.Figure) -> dict[str, list[tuple[str, float, float]]]:
    return {t["name"]: list(zip(t["y"], t["base"], t["x"], strict=True)) for t in fig.data}


def test_schedule_draws_every_operation_and_every_gap() -> None:
    plan, sim = _schedule(pp=4, batch=16)
    events = sim["events"]
    assert not charts.needs_overview(events, plan.pp)
    bars = _bars(charts.schedule_figure(events, plan.pp, plan.grad_accum, sim["step_time_s"], sim["pipeline_s"]))
    assert len(bars["forward"]) + len(bars["backward"]) == len(events)
    for r in range(plan.pp):  # forward + backward + idle tile each stage's timeline: no gap
        covered = sum(w for kind in bars.values() for y, _, w in kind if y == f"stage {r}")
        assert covered == pytest.approx(sim["pipeline_s"], rel=1e-9)


def test_schedule_at_many_micro_batches_overview_and_window() -> None:
    plan, sim = _schedule(pp=4, batch=256)
    events = sim["events"]
    assert plan.grad_accum == 256 and charts.needs_overview(events, plan.pp)
    lo, hi = charts.default_window(events, plan.pp, sim["pipeline_s"])
    window = (sim["pipeline_s"] * 0.4, sim["pipeline_s"] * 0.4 + (hi - lo))
    bars = _bars(charts.schedule_figure(events, plan.pp, plan.grad_accum, sim["step_time_s"], sim["pipeline_s"],
                                        window))
    overlapping = [e for e in events if e[5] > window[0] and e[4] < window[1]]
    assert len(bars["forward"]) + len(bars["backward"]) == len(overlapping)  # each drawn, none cut off
    for r in range(plan.pp):
        covered = sum(w for kind in bars.values() for y, _, w in kind if y == f"stage {r}")
        assert covered == pytest.approx(window[1] - window[0], rel=1e-9)
    overview = charts.schedule_overview(events, plan.pp, plan.grad_accum, sim["pipeline_s"], window)
    heat = overview.data[0]
    width = sim["pipeline_s"] / len(heat["x"])
    for r in range(plan.pp):  # the busy shares add up to the stage's busy time
        busy = sum(e[5] - e[4] for e in events if e[0] == r)
        assert sum(heat["z"][r]) * width == pytest.approx(busy, rel=1e-6)


# ---- the nearest feasible problem --------------------------------------------------------------------------------


def test_nearby_batches_are_the_nearest_divisible_ones() -> None:
    model, cluster = load_model("gpt3-175b"), load_cluster("dgx-a100-80gb", gpus=5128)
    sizes = data_parallel_sizes(model, cluster)
    got = nearby_batches(2520, sizes)
    brute = sorted((b for b in range(1, 6000) if b != 2520 and any(b % d == 0 for d in sizes)),
                   key=lambda b: (abs(b - 2520), b))[:len(got)]
    assert got == brute


def test_nearest_feasible_relaxes_constraints_and_batch() -> None:
    model, cluster = load_model("tiny"), load_cluster("dgx-h100", gpus=8)
    cons = Constraints(tp=1, pp=1, cp=1)  # dp must be 8, and 8 does not divide 7
    with pytest.raises(PlanError):
        search(model, cluster, 7, constraints=cons)
    alts = nearest_feasible(model, cluster, 7, cons)
    assert [a.change for a in alts][:2] == ["without the constraints", "global batch 8 (asked 7)"]
    assert alts[1].plan.dp == 8 and alts[1].plan == search(model, cluster, 8, constraints=cons, top_k=1).plans[0]


def test_nearest_feasible_adds_gpus_for_a_model_too_large() -> None:
    model, cluster = load_model("llama3-405b"), load_cluster("dgx-h100", gpus=8)
    alts = nearest_feasible(model, cluster, 64)
    assert len(alts) == 1 and alts[0].change.endswith("GPUs (asked 8)")
    n = alts[0].gpus
    for smaller in (16, 32, 64):  # every GPU count tried before it has no plan
        if smaller < n:
            with pytest.raises(PlanError):
                search(model, load_cluster(cluster, gpus=smaller), 64, top_k=1)
