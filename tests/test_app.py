"""The Streamlit dashboard (app.py) run with streamlit.testing.v1.AppTest: every view, the one state
and its URL, what-if, cost, compare, nearest feasible plan, measured evidence.

The browser-level checks (clicks on charts, dark mode, what a user sees) are in test_app_browser.py.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from planner.cost import estimate
from planner.dashboard.codes import plan_code
from planner.errors import PlanError
from planner.plan import Plan, PlanDocument, check_plan, plan_hash
from planner.search import Constraints, search
from planner.specs.catalog import load_cluster, load_model
from planner.whatif import legal_values, vary

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
HF = Path(__file__).resolve().parent / "fixtures" / "hf"
TIMEOUT = 120  # seconds per script run; generous for a shared 2-core machine
VIEWS = ["Plans", "Pareto front", "Selected plan", "Compare", "Pipeline schedule", "What-if", "Measured"]


def new_app(**query: str) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = v
    return at


def ok(at: AppTest) -> AppTest:
    """Assert the run raised nothing and showed no error box."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def plain(markdown: str) -> str:
    """Text as the page shows it (the app escapes markdown with backslashes)."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("  \n", "\n")


def captions(at: AppTest) -> str:
    return " ".join(plain(c.value) for c in at.caption)


def errors(at: AppTest) -> str:
    return "\n".join(plain(str(e.value)) for e in at.error)


def warnings(at: AppTest) -> str:
    return "\n".join(plain(str(w.value)) for w in at.warning)


def plans_table(at: AppTest) -> Any:
    return next(d.value for d in at.dataframe if "step s" in d.value.columns)


def charts(at: AppTest) -> list[Any]:
    return list(at.get("plotly_chart"))


def show(at: AppTest, view: str) -> AppTest:
    at.session_state["view"] = view
    return ok(at.run())


def open_constraints(at: AppTest) -> AppTest:
    """The sidebar's Constraints expander draws its widgets only while open."""
    at.session_state["constraints_box"] = True
    return at.run()


def url(at: AppTest) -> dict[str, str]:
    return {k: at.query_params[k] for k in at.query_params}


@pytest.fixture(scope="module")
def default_app() -> AppTest:
    return ok(new_app().run())


# ---- the page with presets --------------------------------------------------------------------------


def test_default_problem_renders_every_view(default_app: AppTest) -> None:
    at = default_app
    table = plans_table(at)
    assert len(table) == 20 and list(table["rank"]) == list(range(1, 21))
    assert table["simulated s"].is_monotonic_increasing  # objective "time": the search's re-ranked order
    assert "llama3-8b on 64 x H100" in captions(at)
    assert [t.label for t in at.tabs] == VIEWS
    assert len(charts(at)) == 0  # only the open view runs: the table, no chart (plotly stays unloaded)
    expected = {"Pareto front": 1, "Selected plan": 2, "Compare": 2, "Pipeline schedule": 1, "What-if": 0,
                "Measured": 0}
    for view, n in expected.items():
        show(at, view)
        assert len(charts(at)) == n, view
    assert any(b.label == "Plan JSON" for b in show(at, "Selected plan").get("download_button"))
    assert show(at, "Measured").info[0].value == "No measurements loaded yet."
    show(at, "Plans")


def test_the_dashboard_ranks_as_planner_plan_does(default_app: AppTest, capsys: pytest.CaptureFixture[str]) -> None:
    """The table is `planner plan`'s ranking (the same search, re-rank and defaults), not a re-sort."""
    from planner.cli import main
    from planner.plan import document_from_json

    argv = ["plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--gpus", "64", "--global-batch", "512",
            "--top", "20", "--json"]
    capsys.readouterr()
    assert main(argv) == 0
    cli = [plan_code(document_from_json(d).plan) for d in json.loads(capsys.readouterr().out)]
    assert list(plans_table(default_app)["plan"]) == cli
    result = search(load_model("llama3-8b"), load_cluster("dgx-h100", gpus=64), 512, top_k=20)
    assert cli == [plan_code(p) for p in result.plans]


@pytest.mark.parametrize(("model", "cluster", "gpus", "batch"), [
    ("gpt2", "localhost-cpu", 4, 8),
    ("bert-base", "dgx-a100-40gb", 8, 64),
    ("mixtral-8x7b", "dgx-h100", 64, 256),
    ("llama2-70b", "dgx-a100-80gb", 64, 128),
])
def test_presets_run_without_exceptions(model: str, cluster: str, gpus: int, batch: int) -> None:
    at = new_app().run()
    at.selectbox(key="model").set_value(model)
    at.selectbox(key="cluster").set_value(cluster)
    at.number_input(key="gpus").set_value(gpus)
    at.number_input(key="global_batch").set_value(batch)
    ok(at.run())
    assert f"{model} on {gpus} x" in captions(at) and f"global batch {batch}" in captions(at)
    assert len(plans_table(at)) > 0
    assert len(charts(show(at, "Pareto front"))) == 1
    for view in VIEWS[2:]:
        show(at, view)


def test_changing_widgets_changes_the_results() -> None:
    at = ok(open_constraints(new_app().run()))
    before = plans_table(at)
    at.selectbox(key="fix_tp").set_value(2)
    at.selectbox(key="fix_pp").set_value(2)
    ok(at.run())
    fixed = plans_table(at)
    assert all(p.startswith("tp2 pp2 ") for p in fixed["plan"])
    assert fixed["step s"].min() >= before["step s"].min()  # a constrained optimum is no better
    assert url(at)["tp"] == "2" and url(at)["pp"] == "2"

    at.selectbox(key="fix_tp").set_value("any")
    at.selectbox(key="fix_pp").set_value("any")
    at.number_input(key="max_mem").set_value(20.0)
    at.multiselect(key="zero").set_value([3])
    ok(at.run())
    capped = plans_table(at)
    assert (capped["mem GiB"] <= 20.0).all() and (capped["ZeRO"] == 3).all()
    assert "tp" not in url(at) and url(at)["zero"] == "3" and url(at)["max_memory_gib"] == "20"

    at.number_input(key="global_batch").set_value(128)
    ok(at.run())
    assert "global batch 128" in captions(at) and url(at)["global_batch"] == "128"
    assert not plans_table(at).equals(capped)


# ---- one state: selection follows the problem; the URL names the state ----------------------------------


def test_selection_never_outlives_its_problem() -> None:
    """The stale-state bug: after a problem change, 'Plan to inspect' and every view show the new
    problem's plan and numbers, never the previous one's."""
    at = ok(new_app().run())
    third = plans_table(at)["plan"].iloc[2]
    at.selectbox(key="pick").set_value(third)
    ok(at.run())
    assert at.selectbox(key="pick").value == third and url(at)["plan"] == third
    assert plain(show(at, "Selected plan").subheader[0].value) == third
    at.session_state["view"] = "Plans"
    at.number_input(key="global_batch").set_value(256)
    ok(at.run())
    table = plans_table(at)
    best, best_step = table["plan"].iloc[0], table["step s"].iloc[0]
    pick = at.selectbox(key="pick")
    assert pick.value == best and "plan" not in url(at)
    assert f"#1 {best}  ({best_step:.4g} s" in pick.format_func(pick.value)
    selected = show(at, "Selected plan")
    assert plain(selected.subheader[0].value) == best
    assert next(m.value for m in selected.metric if m.label == "Step time") == f"{best_step:#.3g} s"


def test_url_round_trip_reproduces_the_page() -> None:
    at = ok(new_app().run())
    at.selectbox(key="model").set_value("llama2-70b")
    at.number_input(key="global_batch").set_value(64)
    at.number_input(key="seq_len").set_value(2048)
    at.selectbox(key="objective").set_value("cost")
    at.text_input(key="tokens").set_value("2T")
    at.number_input(key="price").set_value(2.5)
    open_constraints(at)
    at.multiselect(key="schedules").set_value(["1f1b", "gpipe"])
    at.session_state["constraints_box"] = False
    ok(at.run())
    assert "constraints: schedules 1f1b/gpipe" in captions(at)  # set, though the box is closed
    second = plans_table(at)["plan"].iloc[1]
    at.selectbox(key="pick").set_value(second)
    ok(at.run())
    show(at, "Compare")
    link = url(at)
    assert link == {"model": "llama2-70b", "seq_len": "2048", "global_batch": "64", "objective": "cost",
                    "tokens": "2T", "price": "2.5", "schedules": "1f1b,gpipe", "plan": second, "view": "Compare"}
    again = ok(new_app(**link).run())  # a copied link, or a reload
    assert url(again) == link
    assert again.selectbox(key="pick").value == second and again.session_state["view"] == "Compare"
    assert plans_table(show(again, "Plans")).equals(plans_table(show(at, "Plans")))
    assert "x seq 2048" in captions(again)


def test_invalid_url_parameters_warn_and_valid_ones_apply() -> None:
    at = ok(new_app(seq_len="abc", objective="speed", model="no-such-model", colour="red", gpus="12x").run())
    text = warnings(at)
    for name in ("?seq_len=abc", "?objective=speed", "?model=no-such-model", "?colour=red", "?gpus=12x"):
        assert f"ignoring {name}" in text, name
    assert "llama3-8b on 64 x" in captions(at)  # defaults stand in
    good = ok(new_app(seq_len="2048", objective="throughput", global_batch="128", framework="torchtitan").run())
    assert not good.warning and "x seq 2048" in captions(good) and good.selectbox(key="objective").value == "throughput"
    assert good.selectbox(key="framework").value == "torchtitan" and url(good)["framework"] == "torchtitan"
    assert ok(new_app().run()).selectbox(key="framework").value == "default"  # the cluster's, shown by name
    linked = ok(new_app(plan="tp8 pp8 dp1 mb1").run())  # a well-formed code this problem did not rank
    assert "the linked plan tp8 pp8 dp1 mb1 is not among this problem's plans" in warnings(linked)


def test_error_text_is_shown_literally(monkeypatch: pytest.MonkeyPatch) -> None:
    """Markdown must not eat '*' or '_' in messages: "pp*vpp = 8*4" stays as it is."""
    import planner.search

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PlanError("num_layers 30 is not divisible by pp*vpp = 8*4 (see __init__)", field="pp")

    monkeypatch.setattr(planner.search, "search", refuse)
    at = new_app(model="tiny", cluster="localhost-cpu", gpus="2", global_batch="6").run()  # not searched elsewhere
    assert not at.exception
    raw = "\n".join(str(e.value) for e in at.error)
    assert r"pp\*vpp \= 8\*4" in raw and r"\_\_init\_\_" in raw
    assert "pp*vpp = 8*4 (see __init__)" in errors(at)


def test_internal_errors_are_one_line_and_the_rest_of_the_page_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    import planner.search

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("p2p")

    monkeypatch.setattr(planner.search, "search", broken)
    monkeypatch.delenv("PLANNER_DEBUG", raising=False)
    at = new_app(model="tiny", cluster="localhost-cpu", gpus="3", global_batch="3", view="Measured").run()
    assert not at.exception
    assert "search: internal error: KeyError: 'p2p' (set PLANNER_DEBUG=1 for a traceback)" in errors(at)
    assert at.info[-1].value == "No measurements loaded yet."  # the Measured view still works


@pytest.mark.parametrize(("key", "value", "message"), [
    ("gpus", 12, "not a whole number of 8-GPU nodes"),
    ("zero", [], "choose at least one ZeRO stage"),
    ("recompute", [], "choose at least one recompute mode"),
    ("schedules", [], "choose at least one pipeline schedule"),
    ("tokens", "15 trillion", "expected a token count such as 15T"),
])
def test_bad_inputs_show_messages(key: str, value: Any, message: str) -> None:
    at = open_constraints(new_app().run())
    widget = {"gpus": at.number_input, "tokens": at.text_input}.get(key, at.multiselect)(key=key)
    widget.set_value(value)
    at.run()
    assert not at.exception
    assert message in errors(at)


def test_sequence_length_changes_the_problem(default_app: AppTest) -> None:
    at = default_app
    best = plans_table(at)["step s"].min()
    at.number_input(key="seq_len").set_value(2048)
    ok(at.run())
    assert "x seq 2048" in captions(at)
    assert plans_table(at)["step s"].min() < best  # a quarter of the tokens per step
    at.number_input(key="seq_len").set_value(None)
    ok(at.run())
    assert "x seq 8192" in captions(at) and "seq_len" not in url(at)


# ---- what planners need: cost, compare, legends, nearest feasible ------------------------------------------


def test_training_cost_per_plan() -> None:
    """Days, GPU-hours and dollars for N tokens at each plan's predicted throughput and the given price."""
    at = ok(new_app(tokens="15T", price="2").run())
    table = plans_table(at)
    first = table.iloc[0]
    tokens_per_s = first["tokens/s/GPU"] * 64
    assert first["days"] == pytest.approx(15e12 / tokens_per_s / 86400, rel=1e-9)
    assert first["GPU-hours"] == pytest.approx(15e12 / tokens_per_s / 3600 * 64, rel=1e-9)
    assert first["cost $"] == pytest.approx(first["GPU-hours"] * 2.0, rel=1e-9)
    assert "Training 15T tokens" in captions(at)
    # the catalog price is the default, with its source and date
    default = ok(new_app().run())
    assert "lambda.ai/instances (read 2026-09-20" in captions(default)
    assert plans_table(default)["cost $"].iloc[0] == pytest.approx(plans_table(default)["GPU-hours"].iloc[0] * 3.99)
    cost = ok(new_app(objective="cost").run())
    assert any(m.label == "Cost per million tokens" and m.value.startswith("$") for m in cost.metric)


def test_compare_shows_two_plans_and_their_differences(default_app: AppTest) -> None:
    at = show(default_app, "Compare")
    picked = at.multiselect(key="compare_pick").value
    table = plans_table(show(at, "Plans"))
    assert picked == [table["plan"].iloc[0], table["plan"].iloc[1]]  # the selected (best) plan and the next
    at = show(at, "Compare")
    frames = [d.value for d in at.dataframe]
    metrics = frames[0]
    assert list(metrics[""])[:4] == ["step time", "tokens/s", "MFU", "memory per GPU"]
    diff = frames[1]
    a, b = (plan_of(table, i) for i in (0, 1))
    differing = {k for k in ("tp", "pp", "dp", "cp", "micro_batch", "zero_stage", "placement")
                 if getattr(a, k) != getattr(b, k)}
    assert len(diff) >= len(differing) > 0
    at.multiselect(key="compare_pick").set_value([table["plan"].iloc[0], table["plan"].iloc[2],
                                                  table["plan"].iloc[4]])
    ok(at.run())
    assert url(at)["compare"].count(";") == 2
    assert len(charts(at)) == 2
    show(at, "Plans")


def plan_of(table: Any, i: int) -> Plan:
    """The plan a row of the default problem's table names (looked up among the search's plans)."""
    r = search(load_model("llama3-8b"), load_cluster("dgx-h100", gpus=64), 512, top_k=20)
    return next(p for p in r.plans if plan_code(p) == table["plan"].iloc[i])


def test_plan_code_legend_and_parameter_counts() -> None:
    at = ok(new_app(model="mixtral-8x7b", global_batch="256").run())
    assert "How to read plan codes" in " ".join(e.label for e in at.expander)
    # published: Mixtral 8x7B has 46.7B parameters, 12.9B active per token (Mistral AI, 2023)
    assert "46.7B parameters, 12.9B active per token" in captions(at)


def test_model_and_cluster_upload_in_the_page() -> None:
    at = new_app().run()
    at.radio(key="model_from").set_value("upload")
    at.radio(key="cluster_from").set_value("upload")
    at.run()
    assert not at.exception and len(at.sidebar.info) == 2  # prompts for both files
    at.file_uploader(key="model_file").set_value(("config.json", (HF / "qwen2-0.5b.json").read_bytes(),
                                                   "application/json"))
    profile = json.dumps(load_cluster("dgx-h100").to_dict()).encode()
    at.file_uploader(key="cluster_file").set_value(("h100.json", profile, "application/json"))
    at.number_input(key="gpus").set_value(8)
    at.number_input(key="global_batch").set_value(32)
    ok(at.run())
    assert "uploaded-model on 8 x H100" in captions(at)
    assert "494M parameters" in captions(at)  # Qwen2-0.5B: 494,032,768 on its model card
    link = url(at)
    assert "model_spec" in link and "cluster_spec" in link and "model" not in link
    again = ok(new_app(**link).run())  # the uploaded specs travel in the link
    assert "uploaded-model on 8 x H100" in captions(again) and plans_table(again).equals(plans_table(at))

    at.file_uploader(key="model_file").set_value(("config.json", b"\xff\xfe garbage", "application/json"))
    at.run()
    assert not at.exception and "config.json: not UTF-8 text" in errors(at)
    incomplete = ("config.json", b'{"model_type": "llama"}', "application/json")
    at.file_uploader(key="model_file").set_value(incomplete)
    at.run()
    assert not at.exception and re.search(r"config\.json: \w+: missing", errors(at))  # names the first field
    assert not [d for d in at.dataframe if "step s" in d.value.columns]  # nothing searched while the input is bad


def test_no_plan_fits_offers_the_nearest_feasible_problem() -> None:
    at = new_app(model="llama3-405b", gpus="8", global_batch="64").run()
    assert not at.exception
    assert "no plan fits llama3-405b on 8 x" in errors(at)  # the search's message, verbatim
    offers = [b for b in at.button if b.key and b.key.startswith("alt:")]
    assert offers and any("GPUs (asked 8)" in plain(m.value) for m in at.markdown)
    offers[0].click()
    ok(at.run())
    gpus = at.number_input(key="gpus").value
    assert gpus > 8 and f"llama3-405b on {gpus} x" in captions(at)
    # the offered problem really is the nearest of those tried: every smaller GPU count fails
    model = load_model("llama3-405b")
    for n in (16, 32, 64):
        if n < gpus:
            with pytest.raises(PlanError):
                search(model, load_cluster("dgx-h100", gpus=n), 64, top_k=1)


def test_selecting_a_pareto_plan_updates_the_views(default_app: AppTest) -> None:
    at = default_app
    options = at.selectbox(key="pick").options
    pareto = [o for o in options if o.startswith("Pareto ")]
    assert pareto, "the Pareto plans are offered for inspection"
    code = pareto[-1].removeprefix("Pareto ").split("  (")[0]
    at.selectbox(key="pick").set_value(code)
    ok(at.run())
    assert plain(show(at, "Selected plan").subheader[0].value) == code
    assert url(at)["plan"] == code
    best = plans_table(show(at, "Plans"))["plan"].iloc[0]
    at.selectbox(key="pick").set_value(best)
    ok(at.run())
    assert "plan" not in url(at)


# ---- what-if -------------------------------------------------------------------------------------------------


def test_whatif_offers_only_legal_values_and_rescores() -> None:
    at = ok(new_app(global_batch="512", pp="2", view="What-if").run())
    model, cluster = load_model("llama3-8b"), load_cluster("dgx-h100", gpus=64)
    code = at.selectbox(key="pick").value
    r = search(model, cluster, 512, constraints=Constraints(pp=2), top_k=20)
    plan = next(p for p in [*r.plans, *(p for p, _ in r.pareto)] if plan_code(p) == code)
    for knob in ("tp", "pp", "cp", "vpp", "micro_batch", "zero_stage"):
        widget = next((s for s in at.select_slider if s.key == f"wi_{knob}"), None)
        if widget is None:
            continue
        offered = [int(o) for o in widget.options]
        legal = []
        for v in range(1, 65) if knob != "zero_stage" else range(4):  # brute force with check_plan
            try:
                check_plan(model, cluster, vary(plan, 64, **{knob: v}))
            except PlanError:
                continue
            legal.append(v)
        assert offered == legal == legal_values(model, cluster, plan, knob), knob
    step_before = next(m.value for m in at.metric if m.label == "Step time")
    slider = next(s for s in at.select_slider if s.key == "wi_pp")
    slider.set_value(int(slider.options[-1]))
    ok(at.run())
    step = next(m for m in at.metric if m.label == "Step time")
    assert step.value != step_before and re.fullmatch(r"[+-][0-9.,k]+ s \([+-][0-9.]+%\)", step.delta or "")
    memory = next(m for m in at.metric if m.label == "Memory per GPU")
    assert memory.delta is None or memory.delta.split(" ")[1] == "GiB"
    assert f"pp={slider.value}" in url(at)["whatif"].split(",")
    gpus = next(s for s in at.select_slider if s.key == "wi_gpus")
    assert all(int(n) <= 8 or int(n) % 8 == 0 for n in gpus.options)  # a part of one node, or whole nodes
    at.button(key="wi_reset").click()
    ok(at.run())
    assert "whatif" not in url(at)


def test_linked_whatif_that_is_illegal_warns() -> None:
    """A link naming an illegal what-if plan warns with the rule it breaks, escaped as typed."""
    at = ok(new_app(whatif="pp=8,vpp=3", view="What-if").run())
    assert "ignoring ?whatif=pp=8,vpp=3" in warnings(at)
    assert "num_layers 32 is not divisible by pp*vpp = 8*3" in warnings(at)


# ---- exports ---------------------------------------------------------------------------------------------------


def test_export_buttons_appear_only_when_the_exporters_import(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []

    def export_plan(doc: PlanDocument, fmt: str) -> str:
        seen.append((doc.plan.describe(), fmt))
        return f"# {fmt}\n"

    fake_export = types.ModuleType("planner.export")
    fake_export.export_plan = export_plan  # type: ignore[attr-defined]
    fake_trace = types.ModuleType("planner.trace")
    fake_trace.predicted_trace = lambda doc: {"traceEvents": []}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "planner.export", fake_export)
    monkeypatch.setitem(sys.modules, "planner.trace", fake_trace)
    at = ok(new_app(view="Selected plan").run())
    labels = {b.label for b in at.get("download_button")}
    assert {"Plan JSON", "megatron", "megatron-bridge", "torchtitan", "deepspeed", "Perfetto trace"} <= labels
    assert {fmt for _, fmt in seen} == {"megatron", "megatron-bridge", "torchtitan", "deepspeed"}

    monkeypatch.setitem(sys.modules, "planner.export", None)  # an import that fails
    monkeypatch.setitem(sys.modules, "planner.trace", None)
    at = ok(new_app(view="Selected plan").run())
    labels = {b.label for b in at.get("download_button")}
    assert "Plan JSON" in labels and not labels & {"megatron", "megatron-bridge", "torchtitan", "deepspeed",
                                                   "Perfetto trace"}


# ---- measured.json / validation.json ----------------------------------------------------------------


def _plan_doc() -> dict[str, Any]:
    model = load_model("tiny")
    cluster = load_cluster("localhost-cpu", gpus=2)
    plan = Plan(dp=2, micro_batch=2, global_batch=8, dtype="fp32")
    return PlanDocument(plan=plan, model=model, cluster=cluster,
                        prediction=estimate(model, cluster, plan)).to_json()


def _measured(doc: dict[str, Any], median: float = 0.5) -> dict[str, Any]:
    """The shape executor/run.py writes (values are test data, not a real run)."""
    return {"schema_version": 1, "kind": "measured", "status": "ok", "plan_hash": plan_hash(doc),
            "plan": "tp1 pp1 dp2 mb2", "step_time_s": {"median": median, "p10": median * 0.9,
                                                        "p90": median * 1.2, "mean": median},
            "tokens_per_s": 1000.0, "losses": [5.0, 4.9],
            "memory": {"peak_bytes": 2**28, "weights_bytes": 2**20, "grads_bytes": 2**20,
                       "optimizer_bytes": 2**21, "activations_bytes": 2**22, "activations_peak_bytes": 2**23},
            "env": {"torch": "test"}}


def test_measured_view_shows_predicted_vs_measured(tmp_path: Path) -> None:
    doc = _plan_doc()
    at = new_app(view="Measured").run()
    at.file_uploader(key="measured_files").set_value([
        ("plan.json", json.dumps(doc).encode(), "application/json"),
        ("measured.json", json.dumps(_measured(doc)).encode(), "application/json"),
        ("junk.json", b"\x00\x01", "application/json"),
    ])
    at.run()
    assert not at.exception
    assert "junk.json" in errors(at)
    runs = next(d.value for d in at.dataframe if "measured step ms" in d.value.columns)
    assert runs["measured step ms"].iloc[0] == pytest.approx(500.0)
    assert runs["step error %"].iloc[0] == pytest.approx((doc["prediction"]["step_time_s"] - 0.5) / 0.5 * 100)
    assert at.get("plotly_chart")


def test_measured_view_summarises_validation_reports() -> None:
    """The shipped validation report: MAPE, Spearman and the worst plan as the README quotes them."""
    folder = ROOT / "examples" / "validation" / "cpu-2ranks"
    at = new_app(view="Measured").run()
    at.text_input(key="measured_folder").set_value(str(folder))
    ok(at.run())
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Step-time MAPE"] == "9.4%" and metrics["Spearman"] == "0.93"
    assert metrics["Worst error"] == "15.7%" and metrics["Plans measured"] == "12"
    assert "worst plan: DP ZeRO-2" in captions(at)
    table = next(d.value for d in at.dataframe if "predicted step ms" in d.value.columns)
    assert len(table) == 12 and table["step error %"].abs().max() == pytest.approx(15.7, abs=0.05)
    assert url(at) == {"view": "Measured", "folder": str(folder)}  # the folder travels in the link
    again = ok(new_app(**url(at)).run())
    assert {m.label: m.value for m in again.metric}["Step-time MAPE"] == "9.4%"
