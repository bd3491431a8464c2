"""Streamlit dashboard over the planner library: search, inspect, compare, what-if, predicted vs measured.

Run with `streamlit run app.py` or `planner dashboard` (served on 127.0.0.1).

A view only. Every number comes from `planner.search.search` (the only ranking), `planner.cost.estimate`
(what-if re-scoring of one plan), `planner.simulate.simulate_plan` (the schedule), `planner.pricing`
(training cost), `planner.feasible` (the nearest problem with a plan) and `planner.evidence` (measured
runs). Every view derives from one state (`planner.dashboard.state.DashboardState`: the problem,
the selected plan, the plans compared, the what-if plan and the open view), which is written to the
URL after each change and read from it on load. Only the open view runs; the what-if and schedule
controls rerun only their own fragment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import streamlit as st

from planner.cost import estimate
from planner.dashboard import charts
from planner.dashboard.codes import LEGEND, plan_code
from planner.dashboard.fmt import compact, count, delta, md_escape, money, seconds
from planner.dashboard.state import (
    DEFAULT_CLUSTER,
    DEFAULT_MODEL,
    SP_CHOICES,
    TOP_K,
    VIEWS,
    DashboardState,
    format_whatif,
    from_query,
    pack_spec,
    parse_whatif,
    to_query,
    unpack_spec,
)
from planner.errors import PlannerError
from planner.evidence import Evidence, compare_runs, scan_folder, validation_points, validation_summary
from planner.framework import default_framework, framework_names
from planner.framework import framework as framework_profile
from planner.graph import build_graph
from planner.io import dumps
from planner.plan import RECOMPUTE, SCHEDULES, Plan, PlanDocument, check_plan, plan_hash
from planner.pricing import TrainingCost, default_price, format_tokens, parse_tokens, training_cost
from planner.search import DEFAULT_RERANK, OBJECTIVES, Constraints, divisors, search
from planner.simulate import simulate_plan
from planner.specs.catalog import cluster_names, load_cluster, load_model, model_names
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec
from planner.uploads import cluster_from_upload, model_from_upload
from planner.whatif import KNOBS, changes, legal_gpu_counts, legal_values, vary

# export formats and their fallback file suffixes
EXPORT_FORMATS = {"megatron": "args", "megatron-bridge": "py", "torchtitan": "py", "deepspeed": "json"}
TOKENS_PER_PARAM = 20  # default training length: compute-optimal tokens per parameter (Hoffmann et al. 2022)
GIB = 2**30


# ---- library calls, cached by their (JSON) inputs -------------------------------------------------


def spec_key(spec: ModelSpec | ClusterSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


def constraints_key(c: Constraints) -> tuple[tuple[str, Any], ...]:
    return tuple((f.name, getattr(c, f.name)) for f in dataclasses.fields(c))


def _search_options(framework: str | None = None) -> dict[str, Any]:
    """Keyword arguments as `planner plan` passes them by default (re-ranking the best plans by
    simulation; the framework, None for the cluster's default), so both rank alike."""
    return {"rerank": DEFAULT_RERANK, "framework": framework}


@st.cache_data(max_entries=32, show_spinner="Searching the plan space...")
def cached_search(model_json: str, cluster_json: str, global_batch: int, objective: str,
                  constraints: tuple[tuple[str, Any], ...], top_k: int, framework: str | None = None) -> dict[str, Any]:
    """planner.search.search on a problem given as JSON text; a PlannerError is returned (and cached)."""
    model = ModelSpec.from_dict(json.loads(model_json))
    cluster = ClusterSpec.from_dict(json.loads(cluster_json))
    try:
        r = search(model, cluster, global_batch, constraints=Constraints(**dict(constraints)),
                   objective=objective, top_k=top_k, **_search_options(framework))
    except PlannerError as exc:
        return {"error": str(exc)}
    sims = list(getattr(r, "simulations", None) or [None] * len(r.plans))
    return {"plans": r.plans, "predictions": r.predictions, "pareto": r.pareto, "space": r.space,
            "fitting": r.fitting, "pruned": r.pruned, "seconds": r.seconds, "simulations": sims,
            "reranked": getattr(r, "reranked", 0), "rerank_seconds": getattr(r, "rerank_seconds", 0.0)}


@st.cache_data(max_entries=16, show_spinner="Looking for the nearest problem with a plan...")
def cached_alternatives(model_json: str, cluster_json: str, global_batch: int, objective: str,
                        constraints: tuple[tuple[str, Any], ...], framework: str | None = None) -> list[dict[str, Any]]:
    from planner.feasible import nearest_feasible

    model = ModelSpec.from_dict(json.loads(model_json))
    cluster = ClusterSpec.from_dict(json.loads(cluster_json))
    alts = nearest_feasible(model, cluster, global_batch, Constraints(**dict(constraints)), objective=objective,
                            **_search_options(framework))
    return [dataclasses.asdict(a) | {"plan": a.plan} for a in alts]


@st.cache_data(max_entries=64, show_spinner="Simulating the step...")
def cached_simulation(model_json: str, cluster_json: str, plan_json: str) -> dict[str, Any]:
    """planner.simulate.simulate_plan: events as (rank, kind, micro-batch, stage, start, end)."""
    model = ModelSpec.from_dict(json.loads(model_json))
    cluster = ClusterSpec.from_dict(json.loads(cluster_json))
    sim = simulate_plan(model, cluster, Plan.from_dict(json.loads(plan_json)))
    return {"step_time_s": float(sim.step_time_s), "pipeline_s": float(sim.pipeline_s),
            "events": [(int(e.rank), e.kind, int(e.micro_batch), int(e.stage), float(e.start), float(e.end))
                       for e in sim.events]}


@st.cache_data(max_entries=512, show_spinner=False)
def cached_estimate(model_json: str, cluster_json: str, plan_json: str) -> dict[str, Any]:
    model = ModelSpec.from_dict(json.loads(model_json))
    cluster = ClusterSpec.from_dict(json.loads(cluster_json))
    return estimate(model, cluster, Plan.from_dict(json.loads(plan_json)))


@st.cache_data(max_entries=64, show_spinner=False)
def cached_params(model_json: str) -> tuple[int, int]:
    g = build_graph(ModelSpec.from_dict(json.loads(model_json)))
    return int(g.total_params), int(g.active_params)


def optional(module: str, name: str) -> Any:
    """An attribute of a module that may be missing or broken (exporters, trace); None then."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name, None)
    except Exception:  # missing or broken: the dashboard works without it
        return None


# ---- state: URL <-> widgets --------------------------------------------------------------------------------

# widget key -> (state field, widget value -> state value, state value -> widget value)
WIDGETS: dict[str, tuple[str, Any, Any]] = {
    "model": ("model", str, str), "cluster": ("cluster", str, str), "seq_len": ("seq_len", None, None),
    "gpus": ("gpus", int, int), "global_batch": ("global_batch", int, int), "objective": ("objective", str, str),
    "top_k": ("top_k", int, int), "tokens": ("tokens", None, None), "price": ("price", None, None),
    "fix_tp": ("tp", lambda v: None if v == "any" else int(v), lambda v: "any" if v is None else v),
    "fix_pp": ("pp", lambda v: None if v == "any" else int(v), lambda v: "any" if v is None else v),
    "max_mem": ("max_memory_gib", None, None), "zero": ("zero", tuple, list),
    # the framework's policies (None) until the user chooses others, as `planner plan --recompute`
    "recompute": ("recompute", lambda v: None if list(v) == st.session_state.get("_rc_default") else tuple(v),
                  lambda v: None if v is None else list(v)),
    "schedules": ("schedules", tuple, list), "sp": ("sp", str, str),
    "framework": ("framework", lambda v: None if v == "default" else v, lambda v: v or "default"),
    "measured_folder": ("folder", lambda v: v.strip() or None, lambda v: v or ""),
}
PROBLEM_FIELDS = ("model", "model_spec", "seq_len", "cluster", "cluster_spec", "gpus", "global_batch", "objective",
                  "top_k", "tp", "pp", "max_memory_gib", "zero", "recompute", "schedules", "sp", "framework")


def init_from_url() -> None:
    """On a session's first run, seed every input from the URL (a link or a reload)."""
    ss = st.session_state
    if "_state_loaded" in ss:
        return
    state, warnings = from_query(st.query_params.to_dict())
    ss["_state_loaded"] = True
    ss["_url_warnings"] = warnings
    for key, (name, _, to_widget) in WIDGETS.items():
        value = getattr(state, name)
        ss[key] = to_widget(value) if to_widget else value
    ss["model_from"] = "upload" if state.model_spec else "preset"
    ss["cluster_from"] = "upload" if state.cluster_spec else "preset"
    ss["_model_spec"], ss["_cluster_spec"] = state.model_spec, state.cluster_spec
    ss["plan"], ss["compare"], ss["whatif"], ss["view"] = state.plan, list(state.compare), state.whatif, state.view
    ss["_check_plan"] = state.plan is not None  # warn once if the linked plan is not among the results


def restore_widget_defaults() -> None:
    """Streamlit forgets a widget's value when a run does not draw it (a failed upload hides the
    sequence length): such inputs come back at their defaults, not at the widget's own minimum."""
    ss = st.session_state
    default = DashboardState()
    for key, (name, _, to_widget) in WIDGETS.items():
        if key not in ss:
            value = getattr(default, name)
            ss[key] = to_widget(value) if to_widget else value


def shown(key: str) -> dict[str, Any]:
    """The widget's own value as its default too: a run interrupted after the state was seeded (a click
    while the page still runs) otherwise leaves the browser showing the widget's minimum, which the
    next interaction sends back (streamlit/streamlit#4247)."""
    value = st.session_state.get(key)
    return {} if value is None else {"value": value}


def widget_state() -> dict[str, Any]:
    ss = st.session_state
    out = {}
    for key, (name, from_widget, _) in WIDGETS.items():
        value = ss.get(key)
        out[name] = from_widget(value) if from_widget and value is not None else value
    return out


# ---- the problem ---------------------------------------------------------------------------------------------


@dataclass
class Problem:
    model: ModelSpec
    cluster: ClusterSpec
    global_batch: int
    objective: str
    constraints: Constraints
    top_k: int
    tokens: float
    tokens_default: bool
    price: float | None
    price_note: str
    framework: str | None = None  # None: the cluster's default, as `planner plan`

    def cost(self, pred: dict[str, Any], gpus: int | None = None) -> TrainingCost:
        return training_cost(self.tokens, pred["tokens_per_s"], gpus or self.cluster.num_gpus, self.price)


def _fail(where: Any, exc: Exception) -> None:
    where.error(md_escape(exc))


def _params_caption(model: ModelSpec) -> str:
    total, active = cached_params(spec_key(model))
    act = f", {compact(active)} active per token" if active != total else ""
    return (f"{compact(total)} parameters{act}; {model.num_layers} layers, hidden {model.hidden}, "
            f"{model.num_heads} heads ({model.num_kv_heads} kv)")


def sidebar_model(sb: Any) -> ModelSpec | None:
    ss = st.session_state
    sb.header("Model")
    model = None
    if sb.radio("Model from", ["preset", "upload"], horizontal=True, key="model_from") == "preset":
        names = model_names()
        if ss.get("model") not in names:
            ss["model"] = DEFAULT_MODEL
        model = load_model(sb.selectbox("Model preset", names, key="model"))
        ss["_model_spec"] = None
    else:
        up = sb.file_uploader("Hugging Face config.json or ModelSpec JSON", type=["json"], key="model_file")
        try:
            if up is not None:
                model = model_from_upload(up.getvalue(), up.name)
                ss["_model_spec"] = pack_spec(model.to_dict())
            elif ss.get("_model_spec"):
                model = load_model(unpack_spec(ss["_model_spec"]))
                sb.caption("model from the link (upload a file to replace it)")
            else:
                sb.info("Upload a config.json (GPT-2, GPT-NeoX, Llama, Mistral, Mixtral, Qwen2, BERT).")
        except (PlannerError, ValueError) as exc:
            _fail(sb, exc)
            model = None
    if model is None:
        return None
    seq = sb.number_input("Sequence length", min_value=1, max_value=1 << 20, value=None, step=256, key="seq_len",
                          placeholder=f"{model.seq_len} (the model's)")
    try:
        model = load_model(model, seq_len=int(seq) if seq else None)
    except PlannerError as exc:
        _fail(sb, exc)
        return None
    sb.caption(md_escape(_params_caption(model)))
    return model


def sidebar_cluster(sb: Any) -> ClusterSpec | None:
    ss = st.session_state
    sb.header("Cluster")
    base = None
    if sb.radio("Cluster from", ["preset", "upload"], horizontal=True, key="cluster_from") == "preset":
        names = cluster_names()
        if ss.get("cluster") not in names:
            ss["cluster"] = DEFAULT_CLUSTER
        base = load_cluster(sb.selectbox("Cluster preset", names, key="cluster"))
        ss["_cluster_spec"] = None
    else:
        up = sb.file_uploader("Cluster profile JSON (planner calibrate)", type=["json"], key="cluster_file")
        try:
            if up is not None:
                base = cluster_from_upload(up.getvalue(), up.name)
                ss["_cluster_spec"] = pack_spec(base.to_dict())
                if ss["_cluster_spec"] is None:
                    sb.warning("This profile is too large to carry in the page link; a copied link will not hold it.")
            elif ss.get("_cluster_spec"):
                base = load_cluster(unpack_spec(ss["_cluster_spec"]))
                sb.caption("cluster from the link (upload a file to replace it)")
            else:
                sb.info("Upload a cluster profile written by `planner calibrate` or a ClusterSpec JSON.")
        except (PlannerError, ValueError) as exc:
            _fail(sb, exc)
            base = None
    gpus = int(sb.number_input("Number of GPUs", min_value=1, max_value=1 << 20, key="gpus", **shown("gpus")))
    if base is None:
        return None
    try:
        cluster = load_cluster(base, gpus=gpus)
    except PlannerError as exc:
        _fail(sb, exc)
        return None
    sb.caption(f"{cluster.num_nodes} node(s) x {cluster.gpus_per_node} {md_escape(cluster.gpu.name)}")
    return cluster


def sidebar_problem() -> Problem | None:
    """The inputs; every bad value is shown as an error next to it (None: nothing to search)."""
    sb = st.sidebar
    model = sidebar_model(sb)
    cluster = sidebar_cluster(sb)
    sb.header("Training")
    batch = int(sb.number_input("Global batch (sequences)", min_value=1, max_value=1 << 20, key="global_batch",
                                **shown("global_batch")))
    objective = sb.selectbox("Objective", OBJECTIVES, key="objective",
                             help="time: step time; throughput: tokens/s per GPU; cost: GPU-hours (and dollars) "
                                  "per token. With a fixed GPU count and batch all three rank alike.")
    top_k = int(sb.slider("Plans to rank", min_value=TOP_K[0], max_value=TOP_K[1], key="top_k", **shown("top_k")))
    default_fw = default_framework(cluster) if cluster is not None else None
    fw_choice = sb.selectbox("Framework", ["default", *framework_names()], key="framework",
                             format_func=lambda f: f"default ({default_fw})" if f == "default" else f,
                             help="what runs the plan: what it overlaps and fuses, and the recompute policies "
                                  "searched (planner frameworks lists them)")
    fw = None if fw_choice == "default" else fw_choice
    sb.header("Training cost")
    tokens_text = sb.text_input("Tokens to train", key="tokens", placeholder="e.g. 15T, 300B",
                                help=f"empty: {TOKENS_PER_PARAM} tokens per parameter (compute-optimal, "
                                     "Hoffmann et al. 2022)")
    gpu_price = default_price(cluster.gpu.name) if cluster is not None else None
    price = sb.number_input("Price per GPU-hour (USD)", min_value=0.0, max_value=1e4, value=None, step=0.1,
                            format="%.2f", key="price",
                            placeholder=f"{gpu_price.usd_per_gpu_hour:.2f} (catalog)" if gpu_price else "no default")
    price_note = "your price" if price is not None else (
        f"on-demand list price: {gpu_price.citation()}" if gpu_price else "no catalog price for this GPU")
    sb.caption(md_escape(price_note))
    ss = st.session_state
    rc_default = list(framework_profile(fw or default_fw).recompute) if default_fw else list(RECOMPUTE)
    if ss.get("recompute") is None or ss.get("recompute") == ss.get("_rc_default"):
        ss["recompute"] = rc_default  # follows the framework until the user chooses other modes
    ss["_rc_default"] = rc_default
    options = ["any", *divisors(cluster.num_gpus if cluster else 1)]
    for key in ("fix_tp", "fix_pp"):
        if ss.get(key) not in options:
            ss[key] = "any"
    # drawn only while open (each widget keeps its value while closed): the page stays light
    with sb.expander("Constraints", key="constraints_box", on_change="rerun") as box:
        if box.open:
            keep = {"persist_state": "session"}
            st.selectbox("Fix tp", options, key="fix_tp", **keep)
            st.selectbox("Fix pp", options, key="fix_pp", **keep)
            st.number_input("Max memory per GPU (GiB)", min_value=0.0, max_value=1e6, value=None, step=8.0,
                            key="max_mem", placeholder="the device's usable memory", **keep)
            st.multiselect("Allowed ZeRO stages", [0, 1, 2, 3], key="zero", **keep)
            st.multiselect("Allowed recompute", list(RECOMPUTE), key="recompute",
                           help="the default set is the framework's policies, the set planner plan searches",
                           **keep)
            st.multiselect("Allowed pipeline schedules", list(SCHEDULES), key="schedules", **keep)
            st.selectbox("Sequence parallel", SP_CHOICES, key="sp", **keep)
    tp, pp, max_mem, zero, rc, scheds, sp = (ss[k] for k in ("fix_tp", "fix_pp", "max_mem", "zero", "recompute",
                                                             "schedules", "sp"))
    chosen_constraints = constraints_note(widget_state())
    if chosen_constraints and not box.open:
        sb.caption(md_escape(f"constraints: {chosen_constraints}"))
    bad = [m for m, ok in (("choose at least one ZeRO stage", zero), ("choose at least one recompute mode", rc),
                           ("choose at least one pipeline schedule", scheds)) if not ok]
    for msg in bad:
        sb.error(msg)
    tokens, tokens_default = 0.0, True
    if model is not None:
        if tokens_text and tokens_text.strip():
            try:
                tokens, tokens_default = parse_tokens(tokens_text), False
            except PlannerError as exc:
                _fail(sb, exc)
                return None
        else:
            tokens = TOKENS_PER_PARAM * float(cached_params(spec_key(model))[0])
    if model is None or cluster is None or bad:
        return None
    constraints = Constraints(tp=None if tp == "any" else int(tp), pp=None if pp == "any" else int(pp),
                              max_memory_gib=float(max_mem) if max_mem else None, zero_stages=tuple(sorted(zero)),
                              recompute=None if list(rc) == rc_default else tuple(r for r in RECOMPUTE if r in rc),
                              schedules=tuple(s for s in SCHEDULES if s in scheds),
                              sequence_parallel=None if sp == "any" else sp == "on")
    chosen = price if price is not None else (gpu_price.usd_per_gpu_hour if gpu_price else None)
    return Problem(model, cluster, batch, objective, constraints, top_k, tokens, tokens_default, chosen, price_note,
                   fw)


def constraints_note(inputs: dict[str, Any]) -> str:
    """The constraints that differ from the defaults, in words ("tp 2, ZeRO 1/3")."""
    default = DashboardState()
    parts = [f"{k} {inputs[k]}" for k in ("tp", "pp") if inputs.get(k) is not None]
    if inputs.get("max_memory_gib"):
        parts.append(f"at most {inputs['max_memory_gib']:g} GiB")
    for key, label in (("zero", "ZeRO"), ("recompute", "recompute"), ("schedules", "schedules")):
        if inputs.get(key) is not None and tuple(inputs[key]) != (getattr(default, key) or ()):
            parts.append(f"{label} {'/'.join(map(str, inputs[key])) or 'none'}")
    if inputs.get("sp") not in (None, "any"):
        parts.append(f"sequence parallel {inputs['sp']}")
    return ", ".join(parts)


def current_state(problem_inputs: dict[str, Any]) -> DashboardState:
    ss = st.session_state
    compare = tuple(ss.get("compare") or ())
    return DashboardState(**{**{k: v for k, v in problem_inputs.items() if v is not None},
                             "seq_len": problem_inputs["seq_len"], "tokens": (problem_inputs["tokens"] or "").strip()
                             or None, "price": problem_inputs["price"], "tp": problem_inputs["tp"],
                             "pp": problem_inputs["pp"], "max_memory_gib": problem_inputs["max_memory_gib"] or None,
                             "model_spec": ss.get("_model_spec") if ss.get("model_from") == "upload" else None,
                             "cluster_spec": ss.get("_cluster_spec") if ss.get("cluster_from") == "upload" else None,
                             "plan": ss.get("plan"), "compare": compare, "whatif": ss.get("whatif"),
                             "view": ss.get("view") or VIEWS[0]})


def write_url(state: DashboardState) -> None:
    """The URL names the state (a link reproduces the page; a reload keeps it)."""
    wanted = to_query(state)
    if wanted != st.query_params.to_dict():
        st.query_params.from_dict(wanted)


# ---- search result and selection ------------------------------------------------------------------------------


@dataclass
class Result:
    """The search's plans (its order is the ranking) and the Pareto plans it did not rank."""

    raw: dict[str, Any]
    codes: list[str]  # ranked, then Pareto-only
    entries: dict[str, tuple[Plan, dict[str, Any], str]]  # code -> (plan, prediction, "#3" or "Pareto")

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Result:
        entries: dict[str, tuple[Plan, dict[str, Any], str]] = {}
        for i, (p, pr) in enumerate(zip(raw["plans"], raw["predictions"], strict=True)):
            entries.setdefault(plan_code(p), (p, pr, f"#{i + 1}"))
        for p, pr in raw["pareto"]:
            entries.setdefault(plan_code(p), (p, pr, "Pareto"))
        return cls(raw, list(entries), entries)

    @property
    def best(self) -> str:
        return self.codes[0]

    def label(self, code: str) -> str:
        _, pr, where = self.entries[code]
        return f"{where} {code}  ({pr['step_time_s']:.4g} s, {pr['memory_gib_per_gpu']:.1f} GiB)"

    def doc(self, code: str, problem: Problem) -> PlanDocument:
        p, pr, _ = self.entries[code]
        return PlanDocument(plan=p, model=problem.model, cluster=problem.cluster, prediction=pr)


def select_plan(code: str | None) -> None:
    """Make `code` the selected plan (None: the best); what-if starts again from it."""
    st.session_state["plan"] = code
    st.session_state["whatif"] = None


def on_pick(result: Result) -> None:
    code = st.session_state.get("pick")
    select_plan(None if code == result.best else code)


def on_chart_select(result: Result) -> None:
    """A click on a Pareto point selects that plan."""
    event = st.session_state.get("pareto_chart")
    points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, dict) else \
        getattr(getattr(event, "selection", None), "points", [])
    for pt in points:
        code = pt.get("customdata") if isinstance(pt, dict) else None
        if isinstance(code, list):
            code = code[0] if code else None
        if code in result.entries:
            select_plan(None if code == result.best else code)
            return


def on_table_select(result: Result) -> None:
    event = st.session_state.get("plans_table")
    rows = getattr(getattr(event, "selection", None), "rows", None)
    if rows is None and isinstance(event, dict):
        rows = event.get("selection", {}).get("rows", [])
    ranked = result.codes[:len(result.raw["plans"])]
    if rows and 0 <= rows[0] < len(ranked):
        select_plan(None if rows[0] == 0 else ranked[rows[0]])


def resolve_selection(result: Result) -> str:
    """The selected plan's code: the state's when it is among this result's plans, else the best."""
    ss = st.session_state
    code = ss.get("plan")
    if code is not None and code not in result.entries:
        if ss.pop("_check_plan", False):
            ss["_url_warnings"] = [*ss.get("_url_warnings", []),
                                   f"the linked plan {code} is not among this problem's plans; showing the best"]
        ss["plan"] = code = None
    ss.pop("_check_plan", None)
    ss["compare"] = [c for c in ss.get("compare") or [] if c in result.entries]
    return code or result.best


# ---- views -------------------------------------------------------------------------------------------------------


def plans_frame(result: Result, problem: Problem) -> pd.DataFrame:
    rows = []
    for i, (p, pr) in enumerate(zip(result.raw["plans"], result.raw["predictions"], strict=True)):
        step = pr["step_time_s"]
        c = problem.cost(pr)
        sim = result.raw["simulations"][i]
        rows.append({"rank": i + 1, "plan": plan_code(p), "step s": step,
                     "simulated s": sim["step_time_s"] if sim else None,
                     "tokens/s/GPU": pr["tokens_per_s_per_gpu"], "MFU %": pr["mfu"] * 100,
                     "mem GiB": pr["memory_gib_per_gpu"], "bubble %": pr["time"]["bubble"] / step * 100,
                     "exposed comm %": pr["time"]["exposed"] / step * 100,
                     "days": c.days, "GPU-hours": c.gpu_hours, "cost $": c.usd, "micro-batch": p.micro_batch,
                     "ZeRO": p.zero_stage, "recompute": p.recompute, "schedule": p.schedule})
    return pd.DataFrame(rows)


PLAN_COLUMNS = {
    "rank": st.column_config.NumberColumn("#", width="small"),
    "plan": st.column_config.TextColumn("plan", help="see 'How to read plan codes'"),
    "step s": st.column_config.NumberColumn("step time (s)", format="%.3f", help="closed-form prediction"),
    "simulated s": st.column_config.NumberColumn("simulated (s)", format="%.3f",
                                                 help="step simulation of the schedule: orders the best plans"),
    "tokens/s/GPU": st.column_config.NumberColumn("tokens/s per GPU", format="%.0f"),
    "MFU %": st.column_config.NumberColumn("MFU (%)", format="%.1f", help="model FLOPs utilisation"),
    "mem GiB": st.column_config.NumberColumn("memory per GPU (GiB)", format="%.1f"),
    "bubble %": st.column_config.NumberColumn("bubble (% of step)", format="%.1f"),
    "exposed comm %": st.column_config.NumberColumn("exposed comm (% of step)", format="%.1f"),
    "days": st.column_config.NumberColumn("days to train", format="%.1f"),
    "GPU-hours": st.column_config.NumberColumn("GPU-hours", format="compact"),
    "cost $": st.column_config.NumberColumn("cost (USD)", format="dollar"),
    "micro-batch": st.column_config.NumberColumn("micro-batch", format="%d"),
}


def legend_expander() -> None:
    with st.expander("How to read plan codes, e.g. tp4 pp4 dp16 cp2 v4 mb1 sp z1 [tp>dp>cp>pp]", key="legend_box",
                     on_change="rerun") as box:
        if box.open:
            st.table(pd.DataFrame(LEGEND, columns=["code", "meaning"]).set_index("code"))


def cost_line(problem: Problem, c: TrainingCost) -> str:
    usd = f", {money(c.usd)}" if c.usd is not None else ""
    per = f" ({money(c.usd_per_million_tokens)} per million tokens)" if c.usd_per_million_tokens is not None else ""
    what = "default: " if problem.tokens_default else ""
    return (f"Training {format_tokens(problem.tokens)} tokens ({what}{TOKENS_PER_PARAM} per parameter)"
            if problem.tokens_default else f"Training {format_tokens(problem.tokens)} tokens") + \
        f": {c.days:,.1f} days, {count(c.gpu_hours, 'GPU-hours')}{usd}{per}"


def show_plans(result: Result, problem: Problem, selected: str) -> None:
    """Headline numbers and the ranked table (click a row to select)."""
    best = result.raw["predictions"][0]
    c = problem.cost(best)
    cols = st.columns(5)
    cols[0].metric("Best step time", seconds(best["step_time_s"]))
    cols[1].metric("Tokens/s", count(best["tokens_per_s"]))
    cols[2].metric("MFU", f"{best['mfu'] * 100:.1f}%")
    cols[3].metric("Memory per GPU", f"{best['memory_gib_per_gpu']:.1f} GiB")
    if problem.objective == "cost" and c.usd_per_million_tokens is not None:
        cols[4].metric("Cost per million tokens", money(c.usd_per_million_tokens))
    elif c.usd is not None:
        cols[4].metric("Training cost", money(c.usd))
    else:
        cols[4].metric("GPU-hours to train", count(c.gpu_hours))
    r = result.raw
    st.caption(md_escape(f"{problem.model.name} on {problem.cluster.num_gpus} x {problem.cluster.gpu.name}, "
                         f"global batch {problem.global_batch} x seq {problem.model.seq_len}: searched "
                         f"{r['space']:,} plans in {r['seconds']:.2f} s, {r['fitting']:,} fit in memory"
                         + (f"; the best {r['reranked']} re-ranked by simulating their schedules"
                            if r["reranked"] else "") + ". " + cost_line(problem, c) + "."))
    legend_expander()
    frame = plans_frame(result, problem)
    if problem.price is None:
        frame = frame.drop(columns=["cost $"])
    st.dataframe(frame, hide_index=True, column_config=PLAN_COLUMNS, key="plans_table",
                 on_select=lambda: on_table_select(result), selection_mode="single-row")
    st.caption("The Pareto front view plots step time against memory per GPU (the plans no other plan "
               "beats on both); click a point there to select its plan.")
    if r["pruned"]:
        with st.expander("Why other plans were pruned", key="pruned_box", on_change="rerun") as box:
            if box.open:
                st.dataframe(pd.DataFrame(sorted(r["pruned"].items(), key=lambda kv: -kv[1]),
                                          columns=["reason", "plans"]), hide_index=True)


def show_pareto(result: Result, selected: str) -> None:
    """The Pareto chart (click a point to select its plan). A view of its own: plotly's script, loaded
    only when a chart is drawn, would hold the first table back by about half a second."""
    r = result.raw
    ranked = list(zip(r["plans"], r["predictions"], strict=True))
    sel = result.entries[selected][0]
    chart = charts.pareto_figure(ranked, r["pareto"], sel, r["predictions"][0]["memory_limit_gib"])
    st.plotly_chart(chart.figure, key="pareto_chart", on_select=lambda: on_chart_select(result),
                    selection_mode="points", config={"displaylogo": False})
    notes = ["Circles: the ranked plans; diamonds: plans on the Pareto front (no other plan is both faster and "
             "smaller); the star: the selected plan. Click a point to select it."]
    if chart.off_scale:
        notes.append(f"{chart.off_scale} Pareto plan(s) slower than {chart.axis_max_s:.3g} s are drawn as triangles "
                     "at the top edge (hover for their time; zoom out with the autoscale button).")
    st.caption(" ".join(md_escape(n) for n in notes))


def show_downloads(doc: PlanDocument, key: str) -> None:
    """Plan JSON, and the exporters / predicted trace when those modules import (built on click)."""
    name = doc.plan.describe().replace(" ", "_")
    cols = st.columns(len(EXPORT_FORMATS) + 2)
    cols[0].download_button("Plan JSON", dumps(doc.to_json()) + "\n", file_name=f"plan_{name}.json",
                            mime="application/json", key=f"dl_plan:{key}")
    export_plan = optional("planner.export", "export_plan")
    notes: list[str] = []
    if export_plan is not None:
        file_names = optional("planner.export", "FILE_NAMES") or {}
        warnings = optional("planner.export", "export_warnings")
        for i, (fmt, ext) in enumerate(EXPORT_FORMATS.items(), start=1):
            try:
                text = export_plan(doc, fmt)
                notes += [f"{fmt}: {w}" for w in (warnings(doc, fmt) if warnings else [])]
            except PlannerError as exc:
                cols[i].caption(md_escape(f"{fmt}: {exc}"))
                continue
            file_name = (file_names.get(fmt) or (f"{fmt}.{ext}",))[0]
            cols[i].download_button(fmt, text, file_name=file_name, key=f"dl_{fmt}:{key}",
                                    help=f"{fmt} launch settings for this plan")
    predicted_trace = optional("planner.trace", "predicted_trace")
    if predicted_trace is not None:
        cols[-1].download_button("Perfetto trace", lambda: dumps(predicted_trace(doc)), file_name=f"trace_{name}.json",
                                mime="application/json", key=f"dl_trace:{key}",
                                help="predicted step as a Chrome/Perfetto trace (ui.perfetto.dev); built on click")
    if notes:
        with st.expander(f"Export notes ({len(notes)})"):
            st.markdown("\n".join(f"- {md_escape(n)}" for n in notes))


def describe(p: Plan) -> str:
    return (f"tp {p.tp} x cp {p.cp} x dp {p.dp} x pp {p.pp} (ep {p.ep}, {p.vpp} virtual stage(s) per pipeline GPU); "
            f"micro-batch {p.micro_batch}, {p.grad_accum} micro-batches per step; {p.schedule}; recompute "
            f"{p.recompute}; sequence parallel {'on' if p.sequence_parallel else 'off'}; ZeRO {p.zero_stage}; "
            f"{p.dtype}; placement {' > '.join(p.placement)} (innermost first)")


def show_selected(doc: PlanDocument, problem: Problem) -> None:
    pred = doc.prediction or {}
    st.subheader(plan_code(doc.plan))
    st.caption(md_escape(describe(doc.plan)))
    c = problem.cost(pred)
    cols = st.columns(6)
    cols[0].metric("Step time", seconds(pred["step_time_s"]))
    cols[1].metric("Tokens/s", count(pred["tokens_per_s"]))
    cols[2].metric("MFU", f"{pred['mfu'] * 100:.1f}%")
    cols[3].metric("Days to train", f"{c.days:,.1f}")
    cols[4].metric("GPU-hours", count(c.gpu_hours))
    cols[5].metric("Cost", money(c.usd) if c.usd is not None else "-")
    st.caption(md_escape(cost_line(problem, c) + f". Price: {problem.price_note}."))
    left, right = st.columns([1, 2])
    left.plotly_chart(charts.memory_figure(pred, doc.cluster.gpu.memory_bytes / GIB), key="memory")
    right.plotly_chart(charts.time_figure(pred), key="time")
    show_downloads(doc, plan_hash(doc.to_json()))


SETTINGS = (("tp", "tensor parallel (tp)"), ("pp", "pipeline stages (pp)"), ("dp", "data parallel (dp)"),
            ("cp", "context parallel (cp)"), ("ep", "expert parallel (ep)"), ("vpp", "virtual stages (vpp)"),
            ("micro_batch", "micro-batch"), ("grad_accum", "micro-batches per step"), ("schedule", "schedule"),
            ("recompute", "recompute"), ("sequence_parallel", "sequence parallel"), ("zero_stage", "ZeRO stage"),
            ("placement", "placement (innermost first)"))


def show_compare(result: Result, problem: Problem, selected: str) -> None:
    """Two or three plans side by side: numbers, a diff of their settings, time and memory breakdowns."""
    ss = st.session_state
    default = [selected, *[c for c in result.codes if c != selected][:1]]
    ss["compare_pick"] = ss.get("compare") or default
    picked = st.multiselect("Plans to compare (two or three)", result.codes, key="compare_pick", max_selections=3,
                            format_func=result.label,
                            on_change=lambda: ss.__setitem__("compare", list(ss["compare_pick"])))
    if len(picked) < 2:
        st.info("Choose at least two plans.")
        return
    preds = [result.entries[c][1] for c in picked]
    plans = [result.entries[c][0] for c in picked]
    costs = [problem.cost(pr) for pr in preds]
    names = [f"{result.entries[c][2]} {c}" for c in picked]
    def column(pr: dict[str, Any], c: TrainingCost) -> list[str]:
        step = pr["step_time_s"]
        return [seconds(step), count(pr["tokens_per_s"]), f"{pr['mfu'] * 100:.1f}%",
                f"{pr['memory_gib_per_gpu']:.1f} GiB", f"{pr['time']['bubble'] / step * 100:.1f}%",
                f"{pr['time']['exposed'] / step * 100:.1f}%", f"{c.days:,.1f}", count(c.gpu_hours), money(c.usd)]

    metrics = pd.DataFrame({"": ["step time", "tokens/s", "MFU", "memory per GPU", "bubble (of step)",
                                 "exposed communication (of step)", "days to train", "GPU-hours", "cost"],
                            **{n: column(pr, c) for n, pr, c in zip(names, preds, costs, strict=True)}})
    st.dataframe(metrics, hide_index=True)
    rows = []
    for key, label in SETTINGS:
        values = [getattr(p, key) for p in plans]
        shown = [" > ".join(v) if isinstance(v, tuple) else ("on" if v is True else "off" if v is False else str(v))
                 for v in values]
        rows.append({"setting": label, **dict(zip(names, shown, strict=True)), "differs": len(set(shown)) > 1})
    diff = pd.DataFrame(rows)
    st.markdown("**Settings that differ**")
    st.dataframe(diff[diff["differs"]].drop(columns=["differs"]), hide_index=True)
    with st.expander("Settings they share"):
        st.dataframe(diff[~diff["differs"]].drop(columns=["differs"]), hide_index=True)
    short = [f"plan {n.split(' ')[0]}" for n in names]
    left, right = st.columns(2)
    left.plotly_chart(charts.compare_bars(short, preds, "time"), key="cmp_time")
    right.plotly_chart(charts.compare_bars(short, preds, "memory"), key="cmp_memory")


@st.fragment
def show_schedule(doc: PlanDocument) -> None:
    """The simulated step: every operation when they fit, else an overview plus a zoomed time window."""
    sim = cached_simulation(spec_key(doc.model), spec_key(doc.cluster), json.dumps(doc.plan.to_dict()))
    p, events = doc.plan, sim["events"]
    closed = (doc.prediction or {}).get("step_time_s")
    head = (f"Discrete-event simulation of {plan_code(p)}: step {sim['step_time_s']:.4g} s, pipeline "
            f"{sim['pipeline_s']:.4g} s" + (f" (closed form {closed:.4g} s)" if closed else "") + ". ")
    if not charts.needs_overview(events, p.pp):
        st.plotly_chart(charts.schedule_figure(events, p.pp, p.grad_accum, sim["step_time_s"], sim["pipeline_s"]),
                        key="schedule")
        st.caption(md_escape(head + "Every forward and backward of every stage is drawn; numbers on the bars are "
                                    "micro-batch indices (.chunk for interleaved virtual stages) where they fit."))
        return
    overview = st.container()
    _, width = charts.default_window(events, p.pp, sim["pipeline_s"])
    steps = max(1, round(sim["pipeline_s"] / width * 4))
    starts = [round(sim["pipeline_s"] * i / steps, 9) for i in range(steps)]
    start = st.select_slider("Zoom: window start (s)", starts, key=f"schedule_window:{plan_code(p)}",
                             format_func=lambda s: f"{s:.3g}")
    window = (start, min(sim["pipeline_s"], start + width))
    overview.plotly_chart(charts.schedule_overview(events, p.pp, p.grad_accum, sim["pipeline_s"], window),
                          key="schedule_overview")
    st.plotly_chart(charts.schedule_figure(events, p.pp, p.grad_accum, sim["step_time_s"], sim["pipeline_s"], window),
                    key="schedule")
    st.caption(md_escape(head + f"{len(events):,} operations. The overview shows the whole step (busy share per "
                                f"stage and {sim['pipeline_s'] / 240:.3g} s slice); the detail below it draws every "
                                f"operation in {window[0]:.4g}-{window[1]:.4g} s (move the slider to go along the "
                                "step); numbers are micro-batch indices where they fit."))


# ---- what-if --------------------------------------------------------------------------------------------------

WHATIF_LABELS = {"tp": "Tensor parallel (tp)", "pp": "Pipeline stages (pp)", "cp": "Context parallel (cp)",
                 "ep": "Expert parallel (ep)", "vpp": "Virtual stages per GPU (vpp)", "micro_batch": "Micro-batch",
                 "schedule": "Schedule", "recompute": "Recompute", "zero_stage": "ZeRO stage",
                 "sequence_parallel": "Sequence parallel"}


def whatif_plan(doc: PlanDocument) -> Plan:
    """The selected plan with the state's what-if changes; the selected plan itself when there are
    none or they make an illegal plan (a linked one then adds a warning naming the rule it breaks)."""
    ss = st.session_state
    text = ss.get("whatif")
    if text:
        try:
            changes = parse_whatif(text)
            gpus = changes.pop("gpus", doc.plan.world_size)
            plan = vary(doc.plan, gpus, **changes)
            check_plan(doc.model, load_cluster(doc.cluster, gpus=plan.world_size), plan)
            return plan
        except (PlannerError, ValueError, TypeError) as exc:
            ss["_url_warnings"] = [*ss.get("_url_warnings", []), f"ignoring ?whatif={text}: {exc}"]
            ss["whatif"] = None
    return doc.plan


def whatif_changes(base: Plan, plan: Plan) -> str | None:
    """The `whatif` state naming `plan` as changes to `base` (None when they are the same plan)."""
    return format_whatif(changes(base, plan))


def on_whatif(doc: PlanDocument, knob: str) -> None:
    """A what-if control moved: vary the what-if plan by that knob (dp follows the GPU count)."""
    ss = st.session_state
    plan = whatif_plan(doc)
    value = ss[f"wi_{knob}"]
    try:
        new = vary(plan, int(value)) if knob == "gpus" else vary(plan, plan.world_size, **{knob: value})
    except PlannerError:
        return
    ss["whatif"] = whatif_changes(doc.plan, new)


def breakdown_table(pred: dict[str, Any], old: dict[str, Any]) -> pd.DataFrame:
    """The what-if plan's step and memory by component beside the selected plan's, with units."""
    rows = []
    for label, key in charts.TIME_PARTS:
        new_v, old_v = pred["time"].get(key, 0.0), (old.get("time") or {}).get(key)
        rows.append((f"time: {label}", seconds(new_v), seconds(old_v), delta(new_v, old_v, "s") or ""))
    for kind, gib in pred["memory"].items():
        old_v = (old.get("memory") or {}).get(kind)
        rows.append((f"memory: {kind}", f"{gib:.2f} GiB", "-" if old_v is None else f"{old_v:.2f} GiB",
                     delta(gib, old_v, "GiB") or ""))
    return pd.DataFrame(rows, columns=["component", "what-if", "selected plan", "change"]).set_index("component")


@st.fragment
def show_whatif(doc: PlanDocument, problem: Problem) -> None:
    """Controls offering only legal values; each step re-scores one plan with planner.cost.estimate."""
    with timing("what-if"):
        whatif_view(doc, problem)


def whatif_view(doc: PlanDocument, problem: Problem) -> None:
    ss = st.session_state
    plan = whatif_plan(doc)
    cluster = load_cluster(doc.cluster, gpus=plan.world_size)
    model = doc.model
    controls: list[tuple[str, list[Any]]] = [("gpus", legal_gpu_counts(model, cluster, plan))]
    controls += [(k, legal_values(model, cluster, plan, k)) for k in KNOBS]
    cols = st.columns(3)
    for i, (knob, options) in enumerate(controls):
        value = plan.world_size if knob == "gpus" else getattr(plan, knob)
        key = f"wi_{knob}"
        col = cols[i % 3]
        if len(options) < 2:
            col.caption(md_escape(f"{WHATIF_LABELS.get(knob, 'GPUs')}: {value} (the only legal value here)"))
            continue
        ss[key] = value
        label = "GPUs (dp follows)" if knob == "gpus" else WHATIF_LABELS[knob]
        if knob == "sequence_parallel":
            col.toggle(label, key=key, on_change=on_whatif, args=(doc, knob))
        elif knob in ("schedule", "recompute"):
            col.segmented_control(label, options, key=key, on_change=on_whatif, args=(doc, knob))
        else:
            col.select_slider(label, options, key=key, on_change=on_whatif, args=(doc, knob))
    pred = cached_estimate(spec_key(model), spec_key(cluster), json.dumps(plan.to_dict()))
    old = doc.prediction or {}
    changed = plan != doc.plan
    head = f"**{md_escape(plan_code(plan))}**" + (" (the selected plan)" if not changed else
                                                  f" (dp {plan.dp}, {plan.grad_accum} micro-batches per step)")
    top = st.columns([4, 1])
    top[0].container(key="wi_head").markdown(head)
    top[1].button("Reset to the selected plan", key="wi_reset", disabled=not changed,
                  on_click=lambda: ss.__setitem__("whatif", None))
    c_new, c_old = problem.cost(pred, plan.world_size), problem.cost(old) if old else None
    cols = st.columns(6)
    cols[0].metric("Step time", seconds(pred["step_time_s"]), delta(pred["step_time_s"], old.get("step_time_s"), "s"),
                   delta_color="inverse")
    cols[1].metric("Tokens/s", count(pred["tokens_per_s"]), delta(pred["tokens_per_s"], old.get("tokens_per_s"),
                                                                  "tokens/s"))
    cols[2].metric("MFU", f"{pred['mfu'] * 100:.1f}%", delta(pred["mfu"], old.get("mfu"), "pp", 100))
    cols[3].metric("Memory per GPU", f"{pred['memory_gib_per_gpu']:.1f} GiB",
                   delta(pred["memory_gib_per_gpu"], old.get("memory_gib_per_gpu"), "GiB"), delta_color="inverse")
    cols[4].metric("Days to train", f"{c_new.days:,.1f}", delta(c_new.days, c_old.days if c_old else None, "days"),
                   delta_color="inverse")
    if c_new.usd is not None:
        cols[5].metric("Cost", money(c_new.usd), None if c_old is None or c_old.usd is None or c_new.usd == c_old.usd
                       else f"{'+' if c_new.usd > c_old.usd else '-'}{money(abs(c_new.usd - c_old.usd))} "
                            f"({(c_new.usd - c_old.usd) / c_old.usd * 100:+.1f}%)", delta_color="inverse")
    else:
        cols[5].metric("GPU-hours", count(c_new.gpu_hours), delta(c_new.gpu_hours, c_old.gpu_hours if c_old else None,
                                                                  "GPU-hours"), delta_color="inverse")
    if not pred["fits"]:
        st.warning(md_escape(f"Does not fit: {pred['memory_gib_per_gpu']:.1f} GiB per GPU, "
                             f"{pred['memory_limit_gib']:.1f} GiB usable."))
    st.table(breakdown_table(pred, old))
    with st.expander("Memory and time charts", key="wi_charts", on_change="rerun") as box:
        if box.open:
            left, right = st.columns([1, 2])
            left.plotly_chart(charts.memory_figure(pred, cluster.gpu.memory_bytes / GIB), key="wi_memory")
            right.plotly_chart(charts.time_figure(pred), key="wi_time")
    wdoc = PlanDocument(plan=plan, model=model, cluster=cluster, prediction=pred)
    st.download_button("What-if plan JSON", lambda: dumps(wdoc.to_json()) + "\n",
                       file_name=f"plan_{plan.describe().replace(' ', '_')}.json", mime="application/json",
                       key="dl_whatif")
    want = whatif_changes(doc.plan, plan)
    if st.query_params.get("whatif") != want:  # the fragment keeps the URL in step without a page rerun
        if want is None:
            del st.query_params["whatif"]
        else:
            st.query_params["whatif"] = want


# ---- measured ----------------------------------------------------------------------------------------------------


RUN_COLUMNS = {
    "predicted step ms": st.column_config.NumberColumn("predicted step (ms)", format="%.1f"),
    "measured step ms": st.column_config.NumberColumn("measured step (ms)", format="%.1f"),
    "p10 ms": st.column_config.NumberColumn("p10 (ms)", format="%.1f"),
    "p90 ms": st.column_config.NumberColumn("p90 (ms)", format="%.1f"),
    "step error %": st.column_config.NumberColumn("step error (%)", format="%+.1f"),
    "predicted GiB": st.column_config.NumberColumn("predicted memory (GiB)", format="%.3f"),
    "measured GiB": st.column_config.NumberColumn("measured memory (GiB)", format="%.3f"),
    "memory error %": st.column_config.NumberColumn("memory error (%)", format="%+.1f"),
    "predicted": st.column_config.NumberColumn("predicted", format="%.4g"),
    "measured": st.column_config.NumberColumn("measured", format="%.4g"),
    "error %": st.column_config.NumberColumn("error (%)", format="%+.1f"),
}


def _pct(v: float | None) -> float | None:
    return None if v is None else v * 100


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1e3


def show_validation(n: int, source: str, report: Any) -> None:
    s = validation_summary(report)
    st.subheader(md_escape(f"Validation report: {source}"))
    where = ", ".join(x for x in (s.model, s.cluster, f"{s.ranks} ranks" if s.ranks else None) if x)
    cols = st.columns(5)
    cols[0].metric("Plans measured", "-" if s.n_plans is None else f"{s.n_plans}")
    cols[1].metric("Step-time MAPE", "-" if s.mape is None else f"{s.mape * 100:.1f}%",
                   help="mean absolute percentage error of the predicted step time")
    cols[2].metric("Spearman", "-" if s.spearman is None else f"{s.spearman:.2f}",
                   help="rank correlation of predicted and measured step times (1: same order)")
    cols[3].metric("Worst error", "-" if s.worst is None else f"{s.worst * 100:.1f}%", help=s.worst_plan)
    cols[4].metric("Memory MAPE", "-" if s.memory_mape is None else f"{s.memory_mape * 100:.1f}%")
    extra = []
    if s.worst_plan:
        extra.append(f"worst plan: {s.worst_plan}")
    if s.pairs_separated is not None:
        extra.append(f"{s.pairs_misordered} of {s.pairs_separated} plan pairs the model separates by more than 25% "
                     "are misordered")
    if s.predicted_best_in_measured_fastest_two is not None:
        extra.append(f"the predicted best ({s.predicted_best}) "
                     f"{'is' if s.predicted_best_in_measured_fastest_two else 'is not'} among the measured fastest two")
    st.caption(md_escape("; ".join([where, *extra]) if where else "; ".join(extra)))
    points = validation_points(report)
    if any(p.measured_s for p in points):
        st.plotly_chart(charts.predicted_vs_measured(
            [p.name for p in points], [p.predicted_s or 0 for p in points], [p.measured_s or 0 for p in points],
            [p.launch_min_s for p in points], [p.launch_max_s for p in points],
            "Step time: predicted vs measured (median over launches; bars: fastest to slowest launch)"),
            key=f"validation_chart:{n}")
    frame = pd.DataFrame([{"plan": p.name, "layout": p.plan, "predicted step ms": _ms(p.predicted_s),
                           "measured step ms": _ms(p.measured_s), "step error %": _pct(p.error),
                           "predicted GiB": p.predicted_memory_gib, "measured GiB": p.measured_memory_gib}
                          for p in points])
    if len(frame):
        st.dataframe(frame, hide_index=True, column_config=RUN_COLUMNS)


def show_measured() -> None:
    """Predicted vs measured from uploaded files or a folder of runs."""
    st.markdown("Load `measured.json` files written by `planner run`, `validation.json` from "
                "`planner validate`, and the plan files they ran (matched by plan hash).")
    files = st.file_uploader("measured.json / validation.json / plan JSON", type=["json"],
                             accept_multiple_files=True, key="measured_files")
    folder = st.text_input("...or a folder to scan (on this machine)", key="measured_folder",
                           placeholder="e.g. runs/  (reads *.json up to 4 levels deep)", persist_state="session")
    ev = Evidence()
    for f in files or []:
        ev.add_bytes(f.getvalue(), f.name)
    if folder.strip():
        scan_folder(folder.strip(), ev)
    runs = compare_runs(ev) if ev.measured else []
    for msg in ev.problems:
        st.error(md_escape(msg))
    if ev.skipped:
        with st.expander(f"{len(ev.skipped)} other JSON file(s) in the folder were skipped"):
            st.markdown("\n".join(f"- {md_escape(msg)}" for msg in ev.skipped))
    if not ev.measured and not ev.validations:
        st.info("No measurements loaded yet.")
        return
    if runs:
        st.subheader("Per run")
        table = []
        for rc in runs:
            step, mem = rc.row("step_time_s"), rc.row("memory_gib_per_gpu")
            table.append({"plan": rc.plan, "run": rc.run, "status": rc.status, "prediction from": rc.prediction_from,
                          "predicted step ms": _ms(step.predicted), "measured step ms": _ms(step.measured),
                          "p10 ms": _ms(step.measured_p10), "p90 ms": _ms(step.measured_p90),
                          "step error %": _pct(step.error), "predicted GiB": mem.predicted,
                          "measured GiB": mem.measured, "memory error %": _pct(mem.error),
                          **({"error": rc.error} if rc.error else {})})
        st.dataframe(pd.DataFrame(table), hide_index=True, column_config=RUN_COLUMNS)
        steps = [rc.row("step_time_s") for rc in runs]
        st.plotly_chart(charts.predicted_vs_measured(
            [rc.plan for rc in runs], [s.predicted or 0 for s in steps], [s.measured or 0 for s in steps],
            [s.measured_p10 for s in steps], [s.measured_p90 for s in steps],
            "Step time: predicted vs measured (median, p10-p90)"), key="measured_chart")
        st.subheader("Per component")
        choice = st.selectbox("Run", [rc.run for rc in runs], key="measured_run")
        rc = next(r for r in runs if r.run == choice)
        giga = {"FLOP/s", "B/s"}  # the speed probe's rates, in G units beside seconds and GiB
        parts = [{"component": r.label, "unit": f"G{r.unit}" if r.unit in giga else r.unit,
                  "predicted": r.predicted / 1e9 if r.unit in giga and r.predicted else r.predicted,
                  "measured": r.measured / 1e9 if r.unit in giga and r.measured else r.measured,
                  "error %": _pct(r.error)} for r in rc.rows if r.metric != "tokens_per_s"]
        st.dataframe(pd.DataFrame(parts), hide_index=True, column_config=RUN_COLUMNS)
    for n, (source, obj) in enumerate(ev.validations):
        show_validation(n, source, obj)


# ---- the page ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def timing(what: str) -> Iterator[None]:
    """With PLANNER_DASHBOARD_TIMING set, one stderr line per script or fragment run with its duration
    (benchmarks/bench_dashboard.py sets it to split a wait into server time and browser time)."""
    if not os.environ.get("PLANNER_DASHBOARD_TIMING"):
        yield
        return
    start = time.perf_counter()
    try:
        yield
    finally:
        print(f"dashboard-timing {what} {time.perf_counter() - start:.4f}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def guard(where: str) -> Iterator[None]:
    """Show a failure inside one part of the page as a message, as the CLI does (the rest renders).

    Input errors (PlannerError) show their message; an internal error shows one line, or its
    traceback when PLANNER_DEBUG is set.
    """
    try:
        yield
    except PlannerError as exc:
        st.error(md_escape(exc))
    except Exception as exc:
        if os.environ.get("PLANNER_DEBUG"):
            raise
        st.error(md_escape(f"{where}: internal error: {type(exc).__name__}: {exc} "
                           "(set PLANNER_DEBUG=1 for a traceback)"))


def use_alternative(alt: dict[str, Any]) -> None:
    """Switch the inputs to a nearby problem that has a plan."""
    ss = st.session_state
    ss["global_batch"], ss["gpus"] = alt["global_batch"], alt["gpus"]
    if alt["relaxed"]:
        ss["fix_tp"] = ss["fix_pp"] = "any"
        ss["max_mem"] = None
        default = DashboardState()
        ss["zero"], ss["recompute"] = list(default.zero), None  # None: the framework's policies again
        ss["schedules"], ss["sp"] = list(default.schedules), default.sp
    select_plan(None)


def show_no_plan(message: str, problem: Problem) -> None:
    """The search's message verbatim, and the nearest problems that have a plan."""
    st.error(md_escape(message))
    alts = cached_alternatives(spec_key(problem.model), spec_key(problem.cluster), problem.global_batch,
                               problem.objective, constraints_key(problem.constraints), problem.framework)
    if not alts:
        st.info("No nearby problem (other global batch, GPU count or no constraints) has a plan either.")
        return
    st.markdown("**Nearest problems with a plan**")
    for i, a in enumerate(alts):
        cols = st.columns([3, 1])
        pr = a["prediction"]
        cols[0].markdown(md_escape(f"{a['change']}: best plan {plan_code(a['plan'])}, step "
                                   f"{pr['step_time_s']:.4g} s, {pr['memory_gib_per_gpu']:.1f} GiB per GPU"))
        cols[1].button("Use this", key=f"alt:{i}", on_click=use_alternative, args=(a,))


def problem_signature(inputs: dict[str, Any]) -> str:
    ss = st.session_state
    keyed = {k: inputs.get(k) for k in PROBLEM_FIELDS if k in inputs}
    keyed |= {"model_spec": ss.get("_model_spec"), "cluster_spec": ss.get("_cluster_spec"),
              "model_from": ss.get("model_from"), "cluster_from": ss.get("cluster_from")}
    return json.dumps(keyed, sort_keys=True, default=str)


def main() -> None:
    st.set_page_config(page_title="Parallelism planner", layout="wide")
    with timing("page"):
        page()


def page() -> None:
    init_from_url()
    restore_widget_defaults()
    ss = st.session_state
    st.title("Parallelism planner")
    warning_box = st.empty()
    problem = res = None
    with guard("inputs"):
        problem = sidebar_problem()
    inputs = widget_state()
    signature = problem_signature(inputs)
    if ss.get("_problem") not in (None, signature):  # a new problem: selection, comparison and what-if restart
        ss["plan"], ss["compare"], ss["whatif"], ss["_url_warnings"] = None, [], None, []
    ss["_problem"] = signature
    selected = doc = None
    if problem is not None:
        with guard("search"):
            raw = cached_search(spec_key(problem.model), spec_key(problem.cluster), problem.global_batch,
                                problem.objective, constraints_key(problem.constraints), problem.top_k,
                                problem.framework)
            if "error" in raw:
                show_no_plan(raw["error"], problem)
            else:
                res = Result.of(raw)
                selected = resolve_selection(res)
                doc = res.doc(selected, problem)
                ss["pick"] = selected
                whatif_plan(doc)  # a linked what-if plan that is illegal warns before the page draws
                st.selectbox("Plan to inspect", res.codes, key="pick", format_func=res.label,
                             on_change=on_pick, args=(res,),
                             help="one of the ranked plans or of the Pareto front; also: click a table row or a "
                                  "point of the Pareto chart")
    if ss.get("_url_warnings"):
        warning_box.warning("\n\n".join(md_escape(w) for w in ss["_url_warnings"]))
    if ss.get("view") not in VIEWS:
        ss["view"] = VIEWS[0]
    tabs = dict(zip(VIEWS, st.tabs(list(VIEWS), key="view", on_change="rerun"), strict=True))
    if tabs["Measured"].open:
        with tabs["Measured"], guard("measured"):
            show_measured()
    if problem is None:
        tabs["Plans"].info("Fix the inputs in the sidebar to search.")
    if problem is not None and res is not None and doc is not None and selected is not None:
        for view, run in (("Plans", lambda: show_plans(res, problem, selected)),
                          ("Pareto front", lambda: show_pareto(res, selected)),
                          ("Selected plan", lambda: show_selected(doc, problem)),
                          ("Compare", lambda: show_compare(res, problem, selected)),
                          ("Pipeline schedule", lambda: show_schedule(doc)),
                          ("What-if", lambda: show_whatif(doc, problem))):
            if tabs[view].open:
                with tabs[view], guard(view.lower()):
                    run()
    elif problem is not None:
        for view in VIEWS[1:-1]:
            if tabs[view].open:
                tabs[view].info("No plan to show: see the Plans view.")
    write_url(current_state(inputs))


if __name__ == "__main__":
    main()
