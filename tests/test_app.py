"""The Streamlit dashboard (app.py): AppTest runs of the page, and its upload / comparison helpers."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from planner.cost import estimate
from planner.plan import Plan, PlanDocument, plan_hash
from planner.specs.catalog import load_cluster, load_model

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
HF = Path(__file__).resolve().parent / "fixtures" / "hf"
TIMEOUT = 120  # seconds per script run; generous for a shared 2-core machine


def _load_app() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("dashboard_app", APP)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


app = _load_app()


def new_app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


def ok(at: AppTest) -> AppTest:
    """Assert the run raised nothing and showed no error box."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def plans_table(at: AppTest) -> Any:
    return at.dataframe[0].value


def charts(at: AppTest) -> list[Any]:
    return list(at.get("plotly_chart"))


def errors(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in at.error)


@pytest.fixture(scope="module")
def default_app() -> AppTest:
    return ok(new_app().run())


# ---- the page with presets --------------------------------------------------------------------------


def test_default_problem_renders_every_view(default_app: AppTest) -> None:
    at = default_app
    table = plans_table(at)
    assert len(table) == 20 and list(table["rank"]) == list(range(1, 21))
    assert table["step s"].is_monotonic_increasing  # objective "time": best first
    assert "llama3-8b on 64 x H100" in " ".join(c.value for c in at.caption)
    # Pareto chart, memory + time breakdown, schedule, what-if memory + time
    assert len(charts(at)) >= 6
    assert [t.label for t in at.tabs] == ["Plans", "Selected plan", "Pipeline schedule", "What-if",
                                          "Measured"]
    assert any(b.label == "Plan JSON" for b in at.get("download_button"))
    assert at.info[0].value == "No measurements loaded yet."


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
    caption = " ".join(c.value for c in at.caption)
    assert f"{model} on {gpus} x" in caption and f"global batch {batch}" in caption
    assert len(plans_table(at)) > 0 and len(charts(at)) >= 6


def test_changing_widgets_changes_the_results() -> None:
    at = ok(new_app().run())
    before = plans_table(at)
    at.selectbox(key="fix_tp").set_value(2)
    at.selectbox(key="fix_pp").set_value(2)
    ok(at.run())
    fixed = plans_table(at)
    assert all(p.startswith("tp2 pp2 ") for p in fixed["plan"])
    assert fixed["step s"].iloc[0] >= before["step s"].iloc[0]  # a constrained optimum is no better

    at.selectbox(key="fix_tp").set_value("any")
    at.selectbox(key="fix_pp").set_value("any")
    at.number_input(key="max_mem").set_value(20.0)
    at.multiselect(key="zero").set_value([3])
    ok(at.run())
    capped = plans_table(at)
    assert (capped["mem GiB"] <= 20.0).all() and (capped["ZeRO"] == 3).all()

    at.number_input(key="global_batch").set_value(128)
    ok(at.run())
    assert "global batch 128" in " ".join(c.value for c in at.caption)
    assert not plans_table(at).equals(capped)


def test_selecting_a_plan_updates_the_breakdowns(default_app: AppTest) -> None:
    at = default_app
    first = at.subheader[0].value
    options = at.selectbox(key="selected").options
    pareto = [i for i, o in enumerate(options) if o.startswith("Pareto:")]
    assert pareto, "the Pareto plans are offered for inspection"
    at.selectbox(key="selected").set_value(pareto[-1])
    ok(at.run())
    assert at.subheader[0].value != first
    assert options[pareto[-1]].split("  (")[0].removeprefix("Pareto: ") == at.subheader[0].value


def test_whatif_rescores_and_reports_illegal_plans() -> None:
    at = ok(new_app().run())

    def slider(prefix: str) -> Any:
        return next(s for s in at.select_slider if s.key.startswith(prefix))

    step_before = at.metric[4].value
    slider("wi_pp").set_value(2)
    ok(at.run())
    assert at.metric[4].value != step_before
    assert any("pp2" in m.value for m in at.markdown)

    slider("wi_tp").set_value(16)  # llama3-8b has 8 kv heads
    at.run()
    assert not at.exception
    assert "Illegal plan" in errors(at) and "num_kv_heads 8 is not divisible by tp 16" in errors(at)


def test_plan_that_fits_nowhere_shows_the_reason() -> None:
    at = new_app().run()
    at.selectbox(key="model").set_value("llama3-405b")
    at.number_input(key="gpus").set_value(8)
    at.number_input(key="global_batch").set_value(64)
    at.run()
    assert not at.exception
    assert "no plan fits llama3-405b on 8 x" in errors(at)


def test_internal_errors_are_one_line_and_the_rest_of_the_page_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    import planner.search

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("p2p")

    monkeypatch.setattr(planner.search, "search", broken)
    monkeypatch.delenv("PLANNER_DEBUG", raising=False)
    at = new_app()
    for k, v in {"model": "tiny", "cluster": "localhost-cpu", "gpus": "3", "global_batch": "3"}.items():
        at.query_params[k] = v  # a problem no other test searches (results are cached per input)
    at.run()
    assert not at.exception
    assert "search: internal error: KeyError: 'p2p' (set PLANNER_DEBUG=1 for a traceback)" in errors(at)
    assert at.info[-1].value == "No measurements loaded yet."  # the Measured tab still works


@pytest.mark.parametrize(("key", "value", "message"), [
    ("gpus", 12, "not a whole number of 8-GPU nodes"),
    ("zero", [], "choose at least one ZeRO stage"),
    ("recompute", [], "choose at least one recompute mode"),
    ("schedules", [], "choose at least one pipeline schedule"),
])
def test_bad_inputs_show_messages(key: str, value: Any, message: str) -> None:
    at = new_app().run()
    widget = at.number_input(key=key) if key == "gpus" else at.multiselect(key=key)
    widget.set_value(value)
    at.run()
    assert not at.exception
    assert message in errors(at)


def test_sequence_length_changes_the_problem(default_app: AppTest) -> None:
    at = default_app
    best = plans_table(at)["step s"].iloc[0]
    at.number_input(key="seq_len:llama3-8b").set_value(2048)
    ok(at.run())
    assert "x seq 2048" in " ".join(c.value for c in at.caption)
    assert plans_table(at)["step s"].iloc[0] < best  # a quarter of the tokens per step
    at.number_input(key="seq_len:llama3-8b").set_value(8192)
    ok(at.run())


def test_url_query_sets_initial_inputs() -> None:
    at = new_app()
    at.query_params["model"] = "gpt2"
    at.query_params["cluster"] = "localhost-cpu"
    at.query_params["gpus"] = "4"
    at.query_params["global_batch"] = "8"
    at.query_params["pp"] = "2"
    at.query_params["schedules"] = "gpipe"
    ok(at.run())
    assert "gpt2 on 4 x cpu-core" in " ".join(c.value for c in at.caption)
    table = plans_table(at)
    assert (table["schedule"] == "gpipe").all() and all(" pp2 " in p for p in table["plan"])
    bad = new_app()
    bad.query_params["model"] = "no-such-model"
    bad.run()
    assert not bad.exception and "ignoring ?model=no-such-model" in bad.warning[0].value


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
    at = ok(new_app().run())
    labels = {b.label for b in at.get("download_button")}
    assert {"Plan JSON", "megatron", "torchtitan", "deepspeed", "Perfetto trace"} <= labels
    assert {fmt for _, fmt in seen} == {"megatron", "torchtitan", "deepspeed"}

    monkeypatch.setitem(sys.modules, "planner.export", None)  # an import that fails
    monkeypatch.setitem(sys.modules, "planner.trace", None)
    at = ok(new_app().run())
    labels = {b.label for b in at.get("download_button")}
    assert "Plan JSON" in labels and not labels & {"megatron", "torchtitan", "deepspeed", "Perfetto trace"}


# ---- uploads -----------------------------------------------------------------------------------------


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
    assert "uploaded-model on 8 x H100" in " ".join(c.value for c in at.caption)

    at.file_uploader(key="model_file").set_value(("config.json", b"\xff\xfe garbage", "application/json"))
    at.run()
    assert not at.exception and "config.json: not UTF-8 text" in errors(at)
    incomplete = ("config.json", b'{"model_type": "llama"}', "application/json")
    at.file_uploader(key="model_file").set_value(incomplete)
    at.run()
    assert not at.exception and "config.json: num_attention_heads: missing" in errors(at)
    assert len(at.dataframe) == 0  # nothing searched while the input is bad


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


# The shape `planner validate` writes (planner/validate.py); the numbers are test data.
VALIDATION = {
    "kind": "validation", "model": "tiny", "cluster": {"name": "localhost-cpu", "gpu": {"name": "cpu"}},
    "nproc_per_node": 2, "global_batch": 8,
    "summary": {"n_plans": 2, "mape": 0.2, "spearman": 1.0, "worst_plan": "dp"},
    "plans": [
        {"name": "dp", "plan": "tp1 pp1 dp2 mb2", "predicted_step_time_s": 0.016,
         "measured_step_time_s": 0.02, "error": -0.2, "launch_medians_s": [0.019, 0.021],
         "predicted_time": {"compute": 0.01}},
        {"name": "pp", "plan": "tp1 pp2 dp1 mb1", "predicted_step_time_s": 0.04,
         "measured_step_time_s": 0.05, "error": -0.2, "launch_medians_s": [0.05],
         "predicted_time": {"compute": 0.02}},
    ],
}


def test_measured_tab_shows_predicted_vs_measured(tmp_path: Path) -> None:
    doc = _plan_doc()
    at = new_app().run()
    at.file_uploader(key="measured_files").set_value([
        ("plan.json", json.dumps(doc).encode(), "application/json"),
        ("measured.json", json.dumps(_measured(doc)).encode(), "application/json"),
        ("junk.json", b"\x00\x01", "application/json"),
    ])
    at.run()
    assert not at.exception
    assert "junk.json" in errors(at)
    runs = next(d.value for d in at.dataframe if "measured step s" in d.value.columns)
    assert runs["measured step s"].iloc[0] == pytest.approx(0.5)
    assert at.get("plotly_chart")

    (tmp_path / "measured.json").write_text(json.dumps(_measured(doc, median=0.75)))
    (tmp_path / "plan.json").write_text(json.dumps(doc))
    (tmp_path / "validation.json").write_text(json.dumps(VALIDATION))
    at.file_uploader(key="measured_files").set_value(None)
    at.text_input(key="measured_folder").set_value(str(tmp_path))
    ok(at.run())
    runs = next(d.value for d in at.dataframe if "measured step s" in d.value.columns)
    assert runs["measured step s"].iloc[0] == pytest.approx(0.75)
    assert any("Validation report" in h.value for h in at.subheader)
    assert any("predicted_step_time_s" in d.value.columns for d in at.dataframe)


# ---- pure helpers ------------------------------------------------------------------------------------


def test_schedule_figure_draws_every_op_and_the_bubbles() -> None:
    model, cluster = load_model("tiny"), load_cluster("localhost-cpu", gpus=4)
    plan = Plan(pp=4, micro_batch=1, global_batch=8, dtype="fp32")
    sim = app.cached_simulation(app._spec_key(model), app._spec_key(cluster), json.dumps(plan.to_dict()))
    fig, note = app.schedule_figure(sim, plan.pp, plan.grad_accum)
    by_name = {t.name: t for t in fig.data}
    assert len(by_name["forward"].x) == len(by_name["backward"].x) == 4 * 8
    assert len(by_name["idle (bubble)"].x) > 0 and note == ""
    many = {**sim, "events": sim["events"] * 200}
    _, note = app.schedule_figure(many, plan.pp, plan.grad_accum)
    assert note.startswith("showing micro-batches")
