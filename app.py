"""Streamlit dashboard over the planner library: search, inspect, what-if, predicted vs measured.

Run with `streamlit run app.py` (served on 127.0.0.1: see `.streamlit/config.toml`).

A view only: every number comes from `planner.search`, `planner.cost.estimate` and
`planner.simulate`; this file validates inputs, formats tables and draws charts. The upload and
comparison helpers at the top are plain functions (bytes in, specs or tables out) so that tests can
call them without a browser.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from planner.compare import MEMORY_COMPONENTS
from planner.cost import estimate
from planner.errors import PlannerError
from planner.evidence import Evidence, compare_runs, scan_folder, validation_points
from planner.io import dumps
from planner.plan import (
    DEFAULT_PLACEMENT,
    RECOMPUTE,
    SCHEDULES,
    Plan,
    PlanDocument,
    plan_hash,
)
from planner.search import OBJECTIVES, Constraints, divisors, search
from planner.simulate import simulate_plan
from planner.specs.catalog import cluster_names, load_cluster, load_model, model_names
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec
from planner.uploads import cluster_from_upload, model_from_upload
from planner.whatif import vary

DEFAULT_MODEL, DEFAULT_CLUSTER, DEFAULT_GPUS, DEFAULT_BATCH = "llama3-8b", "dgx-h100", 64, 512
EXPORT_FORMATS = {"megatron": "args", "torchtitan": "toml", "deepspeed": "json"}  # fallback suffixes
MAX_TIMELINE_EVENTS = 3000  # beyond this the schedule view shows the first micro-batches only
GIB = 2**30
COLORS = {"F": "#4C78A8", "B": "#F58518", "idle": "#D3D3D3"}


# ---- evidence tables (rows from planner.evidence / planner.compare) --------------------------------


def compare(ev: Evidence) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Predicted vs measured per run and per component (step time and its busy / waiting split where
    measured, memory by kind), as tables."""
    runs, parts = [], []
    for rc in compare_runs(ev):
        by = {r.metric: r for r in rc.rows}
        step, tok, mem = by["step_time_s"], by["tokens_per_s"], by["memory_gib_per_gpu"]
        run = {"plan": rc.plan, "run": rc.run, "status": rc.status, "prediction from": rc.prediction_from,
               "predicted step s": step.predicted, "measured step s": step.measured,
               "p10 s": step.measured_p10, "p90 s": step.measured_p90,
               "predicted mem GiB": mem.predicted, "measured mem GiB": mem.measured,
               "predicted tokens/s": tok.predicted, "measured tokens/s": tok.measured,
               "step error %": None if step.error is None else step.error * 100,
               "mem error %": None if mem.error is None else mem.error * 100}
        if rc.error is not None:
            run["error"] = rc.error[:200]
        runs.append(run)
        shown = [step, *(r for r in rc.rows if r.metric.startswith("time.")),
                 *(by[f"memory.{name}"] for name, _ in MEMORY_COMPONENTS), mem]
        for r in shown:
            name = {"step_time_s": "step time (median)", "memory_gib_per_gpu": "memory: total"}.get(
                r.metric, f"{r.metric.split('.')[0]}: {r.label}")
            parts.append({"plan": rc.plan, "run": rc.run, "component": name, "unit": r.unit,
                          "predicted": r.predicted, "measured": r.measured,
                          "error %": None if r.error is None else r.error * 100})
    return pd.DataFrame(runs), pd.DataFrame(parts)


def validation_runs(obj: Any) -> pd.DataFrame:
    """Predicted vs measured step time per plan of a `planner validate` report (for the chart)."""
    rows = [{"plan": v.name, "predicted step s": v.predicted_s, "measured step s": v.measured_s,
             "p10 s": v.launch_min_s, "p90 s": v.launch_max_s} for v in validation_points(obj)]
    return pd.DataFrame(rows, columns=["plan", "predicted step s", "measured step s", "p10 s", "p90 s"])


def validation_tables(obj: Any) -> list[tuple[str, pd.DataFrame]]:
    """The tabular parts of a validation report: lists of records, per-key records, flat summaries."""
    out = []
    items = obj.items() if isinstance(obj, dict) else [("rows", obj)]
    for key, value in items:
        if isinstance(value, list) and value and all(isinstance(r, dict) for r in value):
            out.append((str(key), pd.json_normalize(value)))
        elif isinstance(value, dict) and value and all(isinstance(r, dict) for r in value.values()):
            out.append((str(key), pd.DataFrame.from_dict(value, orient="index")))
        elif isinstance(value, dict) and value and not any(isinstance(r, (dict, list)) for r in value.values()):
            out.append((str(key), pd.DataFrame({"metric": [str(k) for k in value],
                                                "value": [str(v) for v in value.values()]})))
    return out


# ---- library calls, cached by their (JSON) inputs -------------------------------------------------


def _spec_key(spec: ModelSpec | ClusterSpec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)


@st.cache_data(max_entries=32, show_spinner="Searching the plan space...")
def cached_search(model_json: str, cluster_json: str, global_batch: int, objective: str,
                  constraints: tuple[tuple[str, Any], ...], top_k: int) -> dict[str, Any]:
    """planner.search on a problem given as JSON text; a PlannerError is returned (and cached)."""
    model = ModelSpec.from_dict(json.loads(model_json))
    cluster = ClusterSpec.from_dict(json.loads(cluster_json))
    try:
        r = search(model, cluster, global_batch, constraints=Constraints(**dict(constraints)),
                   objective=objective, top_k=top_k)
    except PlannerError as exc:
        return {"error": str(exc)}
    return {"plans": r.plans, "predictions": r.predictions, "pareto": r.pareto, "space": r.space,
            "fitting": r.fitting, "pruned": r.pruned, "seconds": r.seconds}


@st.cache_data(max_entries=64, show_spinner=False)
def cached_simulation(model_json: str, cluster_json: str, plan_json: str) -> dict[str, Any]:
    """planner.simulate.simulate_plan: events as (rank, kind, micro-batch, stage, start, end)."""
    model = ModelSpec.from_dict(json.loads(model_json))
    cluster = ClusterSpec.from_dict(json.loads(cluster_json))
    plan = Plan.from_dict(json.loads(plan_json))
    sim = simulate_plan(model, cluster, plan)
    return {"step_time_s": sim.step_time_s, "pipeline_s": sim.pipeline_s,
            "events": [(e.rank, e.kind, e.micro_batch, e.stage, e.start, e.end) for e in sim.events]}


def optional(module: str, name: str) -> Any:
    """An attribute of a module that may be missing or broken (exporters, trace); None then."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name, None)
    except Exception:  # missing or broken: the dashboard works without it
        return None


# ---- formatting and charts -----------------------------------------------------------------------


def label(plan: Plan) -> str:
    note = "" if plan.placement == DEFAULT_PLACEMENT else " [" + ">".join(plan.placement) + "]"
    return plan.describe() + note


def layout(plan: Plan) -> str:
    parts = [f"tp{plan.tp}", f"pp{plan.pp}", f"dp{plan.dp}"]
    parts += [f"{k}{getattr(plan, k)}" for k in ("cp", "ep") if getattr(plan, k) > 1]
    return "·".join(parts)


def plans_frame(plans: list[Plan], preds: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for i, (p, pr) in enumerate(zip(plans, preds, strict=True)):
        step = pr["step_time_s"]
        rows.append({"rank": i + 1, "plan": label(p), "layout": layout(p), "step s": step,
                     "tokens/s/GPU": pr["tokens_per_s_per_gpu"], "MFU %": pr["mfu"] * 100,
                     "mem GiB": pr["memory_gib_per_gpu"], "bubble %": pr["time"]["bubble"] / step * 100,
                     "exposed comm %": pr["time"]["exposed"] / step * 100, "micro-batch": p.micro_batch,
                     "ZeRO": p.zero_stage, "recompute": p.recompute, "schedule": p.schedule})
    return pd.DataFrame(rows)


def _hover(p: Plan, pr: dict[str, Any]) -> str:
    return (f"<b>{label(p)}</b><br>step {pr['step_time_s']:.4g} s, {pr['memory_gib_per_gpu']:.1f} GiB/GPU"
            f"<br>MFU {pr['mfu'] * 100:.1f}%, {pr['tokens_per_s_per_gpu']:,.0f} tok/s/GPU"
            f"<br>{p.schedule}, recompute {p.recompute}, ZeRO {p.zero_stage}")


def _rule(axis: str, at: float, text: str, color: str, dash: str) -> dict[str, list[dict[str, Any]]]:
    """A labelled vertical (axis "x") or horizontal ("y") line, as layout shapes (cheaper than add_vline)."""
    other = "y" if axis == "x" else "x"
    line = {"type": "line", f"{axis}0": at, f"{axis}1": at, f"{other}0": 0, f"{other}1": 1,
            "xref": "x" if axis == "x" else "paper", "yref": "y" if axis == "y" else "paper",
            "line": {"color": color, "dash": dash}}
    note = {axis: at, other: 1, "xref": line["xref"], "yref": line["yref"], "text": text, "showarrow": False,
            "xanchor": "left" if axis == "x" else "right", "yanchor": "bottom" if axis == "y" else "top",
            "font": {"color": color}}
    return {"shapes": [line], "annotations": [note]}


def pareto_figure(points: list[tuple[Plan, dict[str, Any]]], front: list[tuple[Plan, dict[str, Any]]],
                  selected: Plan | None, limit_gib: float) -> go.Figure:
    """Step time vs memory per GPU: ranked plans and the Pareto front, coloured by layout."""
    fig = go.Figure()
    groups: dict[str, list[tuple[Plan, dict[str, Any], bool]]] = {}
    on_front = {(p, pr["step_time_s"]) for p, pr in front}
    for p, pr in [*points, *front]:
        groups.setdefault(layout(p), []).append((p, pr, (p, pr["step_time_s"]) in on_front))
    for name, items in sorted(groups.items()):
        fig.add_trace(go.Scatter(
            x=[pr["memory_gib_per_gpu"] for _, pr, _ in items], y=[pr["step_time_s"] for _, pr, _ in items],
            mode="markers", name=name, hovertext=[_hover(p, pr) for p, pr, _ in items], hoverinfo="text",
            marker={"size": [11 if f else 8 for _, _, f in items], "opacity": 0.85,
                    "symbol": ["diamond" if f else "circle" for _, _, f in items]}))
    fs = sorted(front, key=lambda e: e[1]["memory_gib_per_gpu"])
    fig.add_trace(go.Scatter(x=[pr["memory_gib_per_gpu"] for _, pr in fs],
                             y=[pr["step_time_s"] for _, pr in fs], mode="lines", name="Pareto front",
                             hoverinfo="skip", line={"color": "black", "dash": "dot", "shape": "hv"}))
    if selected is not None:
        sel = [pr for p, pr in [*points, *front] if p == selected][:1]
        if sel:
            fig.add_trace(go.Scatter(x=[sel[0]["memory_gib_per_gpu"]], y=[sel[0]["step_time_s"]],
                                     mode="markers", name="selected", hoverinfo="skip",
                                     marker={"size": 18, "symbol": "star", "color": "gold",
                                             "line": {"color": "black", "width": 1}}))
    fig.update_layout(**_rule("x", limit_gib, "usable memory", "red", "dash"),
                      title="Pareto front: step time vs memory per GPU", height=460,
                      xaxis_title="memory per GPU (GiB)", yaxis_title="predicted step time (s)",
                      yaxis_type="log", legend_title="layout", margin={"t": 50, "b": 40})
    return fig


def memory_figure(pred: dict[str, Any], hbm_gib: float) -> go.Figure:
    """Stacked memory per GPU by kind, against the device memory and the usable limit."""
    fig = go.Figure()
    for kind, gib in pred["memory"].items():
        fig.add_trace(go.Bar(x=["per GPU"], y=[gib], name=kind, hovertemplate=f"{kind}: %{{y:.2f}} GiB"))
    hbm = _rule("y", hbm_gib, f"HBM {hbm_gib:.0f} GiB", "red", "solid")
    usable = _rule("y", pred["memory_limit_gib"], "usable", "orange", "dash")
    fig.update_layout(shapes=hbm["shapes"] + usable["shapes"],
                      annotations=hbm["annotations"] + usable["annotations"])
    verdict = "fits" if pred["fits"] else "DOES NOT FIT"
    fig.update_layout(barmode="stack",
                      title=f"Memory per GPU: {pred['memory_gib_per_gpu']:.1f} GiB ({verdict})",
                      yaxis_title="GiB", height=420, margin={"t": 50, "b": 30})
    return fig


TIME_PARTS = (("compute", "compute"), ("exposed communication", "exposed"), ("bubble", "bubble"),
              ("optimizer", "optimizer"))
COMM_PARTS = (("TP", "tp_comm"), ("PP", "pp_comm"), ("DP", "dp_comm"), ("CP", "cp_comm"), ("EP", "ep_comm"))


def time_figure(pred: dict[str, Any]) -> go.Figure:
    """The step split into compute / exposed communication / bubble / optimizer, and every
    communication kind's total time (hidden behind compute or not)."""
    t = pred["time"]
    fig = go.Figure()
    for name, key in TIME_PARTS:
        fig.add_trace(go.Bar(y=["step time"], x=[t.get(key, 0.0)], name=name, orientation="h",
                             hovertemplate=f"{name}: %{{x:.4g}} s"))
    for name, key in COMM_PARTS:
        fig.add_trace(go.Bar(y=["communication by kind<br>(hidden + exposed)"], x=[t.get(key, 0.0)],
                             name=f"{name} comm", orientation="h", hovertemplate=f"{name}: %{{x:.4g}} s"))
    fig.update_layout(barmode="stack", title=f"Step time: {pred['step_time_s']:.4g} s", xaxis_title="seconds",
                      height=320, margin={"t": 50, "b": 30}, legend={"orientation": "h", "y": -0.3})
    return fig


def schedule_figure(sim: dict[str, Any], pp: int, m: int) -> tuple[go.Figure, str]:
    """Timeline of the simulated step: stages x micro-batches, forward/backward, idle gaps."""
    events = sim["events"]
    note = ""
    if len(events) > MAX_TIMELINE_EVENTS:
        keep = max(1, MAX_TIMELINE_EVENTS * m // len(events))
        events = [e for e in events if e[2] < keep]
        note = f"showing micro-batches 0-{keep - 1} of {m} (idle gaps not drawn)"
    bars: dict[str, dict[str, list[Any]]] = {k: {"y": [], "base": [], "x": [], "text": []} for k in COLORS}
    labelled = len(events) <= 64 * pp  # micro-batch numbers only where the bars can hold them
    for rank, kind, mb, stage, start, end in events:
        b = bars[kind]
        b["y"].append(f"stage {rank}")
        b["base"].append(start)
        b["x"].append(end - start)
        b["text"].append(f"{mb}" if stage < pp else f"{mb}.{stage // pp}")
    mode = "inside" if labelled else "none"
    if not note:
        for r in range(pp):
            t = 0.0
            for _, _, _, _, start, end in sorted((e for e in events if e[0] == r), key=lambda e: e[4]):
                if start - t > 1e-12:
                    for key, val in (("y", f"stage {r}"), ("base", t), ("x", start - t), ("text", "")):
                        bars["idle"][key].append(val)
                t = max(t, end)
            gap = sim["pipeline_s"] - t
            if gap > 1e-12:
                for key, val in (("y", f"stage {r}"), ("base", t), ("x", gap), ("text", "")):
                    bars["idle"][key].append(val)
    names = {"F": "forward", "B": "backward", "idle": "idle (bubble)"}
    fig = go.Figure()
    for kind, b in bars.items():
        if b["x"]:
            fig.add_trace(go.Bar(y=b["y"], base=b["base"], x=b["x"], text=b["text"], orientation="h",
                                 name=names[kind], marker_color=COLORS[kind], textposition=mode,
                                 insidetextanchor="middle",
                                 hovertemplate=f"{names[kind]} mb %{{text}}<br>"
                                               "%{base:.4g} s + %{x:.4g} s"))
    fig.update_layout(**_rule("x", sim["step_time_s"], "step end", "black", "dash"), barmode="overlay",
                      title=f"Predicted pipeline schedule ({pp} stages, {m} micro-batches)",
                      xaxis_title="seconds", height=140 + 40 * pp, yaxis={"autorange": "reversed"},
                      margin={"t": 50, "b": 30}, bargap=0.15)
    return fig, note


def compare_figure(runs: pd.DataFrame) -> go.Figure:
    """Predicted vs measured median step time per run, p10-p90 as error bars, y = x line."""
    ok = runs.dropna(subset=["predicted step s", "measured step s"])
    fig = go.Figure()
    if len(ok):
        lo = float(min(ok["predicted step s"].min(), ok["p10 s"].fillna(ok["measured step s"]).min()))
        hi = float(max(ok["predicted step s"].max(), ok["p90 s"].fillna(ok["measured step s"]).max()))
        fig.add_trace(go.Scatter(x=[lo * 0.8, hi * 1.25], y=[lo * 0.8, hi * 1.25], mode="lines",
                                 name="predicted = measured", line={"dash": "dot", "color": "grey"}))
        fig.add_trace(go.Scatter(
            x=ok["measured step s"], y=ok["predicted step s"], mode="markers", name="runs",
            text=ok["plan"], hovertemplate="%{text}<br>measured %{x:.4g} s<br>predicted %{y:.4g} s",
            error_x={"type": "data", "symmetric": False,
                     "array": (ok["p90 s"] - ok["measured step s"]).fillna(0),
                     "arrayminus": (ok["measured step s"] - ok["p10 s"]).fillna(0)},
            marker={"size": 10}))
    fig.update_layout(title="Step time: predicted vs measured (median, p10-p90)", height=420,
                      xaxis_title="measured (s)", yaxis_title="predicted (s)", xaxis_type="log",
                      yaxis_type="log")
    return fig


# ---- the page --------------------------------------------------------------------------------------


@dataclass
class Problem:
    model: ModelSpec
    cluster: ClusterSpec
    global_batch: int
    objective: str
    constraints: Constraints
    top_k: int


def _fail(where: Any, exc: Exception) -> None:
    where.error(str(exc))


def _query_default(name: str, fallback: Any, choices: list[Any] | None = None) -> Any:
    """Initial value of an input from the page URL (`?model=llama2-70b&gpus=128`), else `fallback`."""
    raw = st.query_params.get(name)
    if raw is None:
        return fallback
    if choices is not None:
        for choice in choices:
            if raw == str(choice):
                return choice
    elif raw.isdigit() and 0 < int(raw) <= 1 << 20:
        return int(raw)
    st.sidebar.warning(f"ignoring ?{name}={raw[:40]}: not a known preset or a positive integer")
    return fallback


def sidebar_problem() -> Problem | None:
    """The inputs; every bad value is shown as an error next to it (None: nothing to search).

    Initial values may come from the URL: ?model=, ?cluster=, ?gpus=, ?global_batch=, ?tp=, ?pp=,
    ?schedules=1f1b,gpipe.
    """
    sb = st.sidebar
    sb.header("Model")
    model: ModelSpec | None = None
    if sb.radio("Model from", ["preset", "upload"], horizontal=True, key="model_from") == "preset":
        names = model_names()
        first = _query_default("model", DEFAULT_MODEL, names)
        name = sb.selectbox("Model preset", names, index=names.index(first), key="model")
        model = load_model(name)
    else:
        up = sb.file_uploader("Hugging Face config.json or ModelSpec JSON", type=["json"], key="model_file")
        if up is None:
            sb.info("Upload a config.json (GPT-2, GPT-NeoX, Llama, Mistral, Mixtral, Qwen2, BERT).")
        else:
            try:
                model = model_from_upload(up.getvalue(), up.name)
                sb.caption(f"{model.name}: {model.num_layers} layers, hidden {model.hidden}, "
                           f"{model.num_heads} heads ({model.num_kv_heads} kv)")
            except PlannerError as exc:
                _fail(sb, exc)
    if model is not None:
        seq = sb.number_input("Sequence length", min_value=1, max_value=1 << 20, value=model.seq_len,
                              step=256, key=f"seq_len:{model.name}")
        try:
            model = load_model(model, seq_len=int(seq))
        except PlannerError as exc:
            _fail(sb, exc)
            model = None

    sb.header("Cluster")
    base: ClusterSpec | None = None
    if sb.radio("Cluster from", ["preset", "upload"], horizontal=True, key="cluster_from") == "preset":
        names = cluster_names()
        first = _query_default("cluster", DEFAULT_CLUSTER, names)
        base = load_cluster(sb.selectbox("Cluster preset", names, index=names.index(first), key="cluster"))
    else:
        up = sb.file_uploader("Cluster profile JSON (planner calibrate)", type=["json"], key="cluster_file")
        if up is None:
            sb.info("Upload a cluster profile written by `planner calibrate` or a ClusterSpec JSON.")
        else:
            try:
                base = cluster_from_upload(up.getvalue(), up.name)
            except PlannerError as exc:
                _fail(sb, exc)
    gpus = int(sb.number_input("Number of GPUs", min_value=1, max_value=1 << 20,
                               value=_query_default("gpus", DEFAULT_GPUS), key="gpus"))
    cluster = None
    if base is not None:
        try:
            cluster = load_cluster(base, gpus=gpus)
            sb.caption(f"{cluster.num_nodes} x {cluster.gpus_per_node} {cluster.gpu.name}")
        except PlannerError as exc:
            _fail(sb, exc)

    sb.header("Training")
    batch = int(sb.number_input("Global batch (sequences)", min_value=1, max_value=1 << 24,
                                value=_query_default("global_batch", DEFAULT_BATCH), key="global_batch"))
    objective = sb.selectbox("Objective", OBJECTIVES, key="objective",
                             help="time: step time; throughput: tokens/s per GPU; "
                                  "cost: GPU-seconds per token")
    top_k = int(sb.slider("Plans to rank", min_value=5, max_value=50, value=20, key="top_k"))

    with sb.expander("Constraints", expanded=False):
        options = ["any", *divisors(gpus)]
        tp = st.selectbox("Fix tp", options, key="fix_tp",
                          index=options.index(_query_default("tp", "any", options[1:])))
        pp = st.selectbox("Fix pp", options, key="fix_pp",
                          index=options.index(_query_default("pp", "any", options[1:])))
        max_mem = st.number_input("Max memory per GPU (GiB, 0 = device limit)", min_value=0.0,
                                  max_value=1e6, value=0.0, step=8.0, key="max_mem")
        zero = st.multiselect("Allowed ZeRO stages", [0, 1, 2, 3], default=[0, 1, 2, 3], key="zero")
        rc = st.multiselect("Allowed recompute", list(RECOMPUTE), default=list(RECOMPUTE), key="recompute")
        wanted = [x for x in st.query_params.get("schedules", "").split(",") if x in SCHEDULES]
        scheds = st.multiselect("Allowed pipeline schedules", list(SCHEDULES),
                                default=wanted or list(SCHEDULES), key="schedules")
        sp = st.selectbox("Sequence parallel", ["any", "on", "off"], key="sp")
    bad = [m for m, ok in (("choose at least one ZeRO stage", zero),
                           ("choose at least one recompute mode", rc),
                           ("choose at least one pipeline schedule", scheds)) if not ok]
    for msg in bad:
        sb.error(msg)
    if model is None or cluster is None or bad:
        return None
    constraints = Constraints(tp=None if tp == "any" else int(tp), pp=None if pp == "any" else int(pp),
                              max_memory_gib=float(max_mem) or None, zero_stages=tuple(sorted(zero)),
                              recompute=tuple(r for r in RECOMPUTE if r in rc),
                              schedules=tuple(s for s in SCHEDULES if s in scheds),
                              sequence_parallel=None if sp == "any" else sp == "on")
    return Problem(model, cluster, batch, objective, constraints, top_k)


def _constraints_key(c: Constraints) -> tuple[tuple[str, Any], ...]:
    return tuple((f.name, getattr(c, f.name)) for f in dataclasses.fields(c))


def show_plans(res: dict[str, Any], problem: Problem, selected: Plan) -> None:
    """Ranked table (sortable) and the Pareto chart."""
    best = res["predictions"][0]
    cols = st.columns(4)
    cols[0].metric("Best step time", f"{best['step_time_s']:.4g} s")
    cols[1].metric("Tokens/s", f"{best['tokens_per_s']:,.0f}")
    cols[2].metric("MFU", f"{best['mfu'] * 100:.1f}%")
    cols[3].metric("Memory per GPU", f"{best['memory_gib_per_gpu']:.1f} GiB")
    st.caption(f"{problem.model.name} on {problem.cluster.num_gpus} x {problem.cluster.gpu.name}, "
               f"global batch {problem.global_batch} x seq {problem.model.seq_len}: searched "
               f"{res['space']:,} plans in {res['seconds']:.2f} s, {res['fitting']:,} fit in memory.")
    st.dataframe(plans_frame(res["plans"], res["predictions"]), hide_index=True,
                 column_config={k: st.column_config.NumberColumn(format=f) for k, f in (
                     ("step s", "%.4g"), ("tokens/s/GPU", "%.0f"), ("MFU %", "%.1f"), ("mem GiB", "%.2f"),
                     ("bubble %", "%.1f"), ("exposed comm %", "%.1f"))})
    points = list(zip(res["plans"], res["predictions"], strict=True))
    st.plotly_chart(pareto_figure(points, res["pareto"], selected, best["memory_limit_gib"]), key="pareto")
    if res["pruned"]:
        with st.expander("Why other plans were pruned"):
            st.dataframe(pd.DataFrame(sorted(res["pruned"].items(), key=lambda kv: -kv[1]),
                                      columns=["reason", "plans"]), hide_index=True)


def show_downloads(doc: PlanDocument, key: str) -> None:
    """Plan JSON, and the exporters / predicted trace when those modules import."""
    name = doc.plan.describe().replace(" ", "_")
    cols = st.columns(5)
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
                cols[i].caption(f"{fmt}: {exc}")
                continue
            file_name = (file_names.get(fmt) or (f"{fmt}.{ext}",))[0]
            cols[i].download_button(fmt, text, file_name=file_name, key=f"dl_{fmt}:{key}",
                                    help=f"{fmt} launch settings for this plan")
    predicted_trace = optional("planner.trace", "predicted_trace")
    if predicted_trace is not None:
        try:
            data = dumps(predicted_trace(doc))
            cols[4].download_button("Perfetto trace", data, file_name=f"trace_{name}.json",
                                    mime="application/json", key=f"dl_trace:{key}",
                                    help="predicted step as a Chrome/Perfetto trace (ui.perfetto.dev)")
        except PlannerError as exc:
            cols[4].caption(f"trace: {exc}")
    if notes:
        with st.expander(f"Export notes ({len(notes)})"):
            st.markdown("\n".join(f"- {n}" for n in notes))


def show_selected(doc: PlanDocument) -> None:
    pred = doc.prediction or {}
    st.subheader(label(doc.plan))
    p = doc.plan
    st.caption(f"tp {p.tp} x cp {p.cp} x dp {p.dp} x pp {p.pp} (ep {p.ep}, vpp {p.vpp}); micro-batch "
               f"{p.micro_batch}, {p.grad_accum} micro-batches per step; {p.schedule}; recompute "
               f"{p.recompute}; sequence parallel {'on' if p.sequence_parallel else 'off'}; "
               f"ZeRO {p.zero_stage}; {p.dtype}; placement {' > '.join(p.placement)} (innermost first)")
    left, right = st.columns([1, 2])
    left.plotly_chart(memory_figure(pred, doc.cluster.gpu.memory_bytes / GIB),
                      key="memory")
    right.plotly_chart(time_figure(pred), key="time")
    show_downloads(doc, plan_hash(doc.to_json()))


def show_schedule(doc: PlanDocument) -> None:
    sim = cached_simulation(_spec_key(doc.model), _spec_key(doc.cluster), json.dumps(doc.plan.to_dict()))
    fig, note = schedule_figure(sim, doc.plan.pp, doc.plan.grad_accum)
    st.plotly_chart(fig, key="schedule")
    closed = (doc.prediction or {}).get("step_time_s")
    st.caption(f"Discrete-event simulation: step {sim['step_time_s']:.4g} s, "
               f"pipeline {sim['pipeline_s']:.4g} s" + (f" (closed form {closed:.4g} s)" if closed else "")
               + ". Numbers on the bars are micro-batch indices (.chunk for interleaved stages). " + note)


def show_whatif(doc: PlanDocument) -> None:
    """Sliders that re-score a modified plan with planner.cost.estimate."""
    base, model, n = doc.plan, doc.model, doc.cluster.num_gpus
    key = plan_hash(doc.to_json())
    c1, c2 = st.columns(2)
    mb = c1.select_slider("Micro-batch", divisors(base.global_batch), value=base.micro_batch,
                          key=f"wi_mb:{key}")
    tp = c1.select_slider("Tensor parallel (tp)", divisors(n), value=base.tp, key=f"wi_tp:{key}")
    pp = c1.select_slider("Pipeline parallel (pp)", divisors(n), value=base.pp, key=f"wi_pp:{key}")
    vpp = c2.select_slider("Virtual stages per rank (vpp)", divisors(model.num_layers), value=base.vpp,
                           key=f"wi_vpp:{key}")
    rc = c2.select_slider("Recompute", list(RECOMPUTE), value=base.recompute, key=f"wi_rc:{key}")
    zero = c2.select_slider("ZeRO stage", [0, 1, 2, 3], value=base.zero_stage, key=f"wi_zero:{key}")
    sp = c2.checkbox("Sequence parallel", value=base.sequence_parallel, key=f"wi_sp:{key}")
    try:
        plan = vary(base, n, tp=tp, pp=pp, micro_batch=mb, vpp=vpp, sequence_parallel=sp, recompute=rc,
                    zero_stage=zero)
        pred = estimate(model, doc.cluster, plan)
    except PlannerError as exc:
        st.error(f"Illegal plan: {exc}")
        return
    old = doc.prediction or {}
    st.markdown(f"**{label(plan)}** (dp {plan.dp}, {plan.grad_accum} micro-batches)")
    cols = st.columns(4)
    for col, title, k, fmt, scale in ((cols[0], "Step time", "step_time_s", "{:.4g} s", 1),
                                      (cols[1], "Tokens/s", "tokens_per_s", "{:,.0f}", 1),
                                      (cols[2], "MFU", "mfu", "{:.1f}%", 100),
                                      (cols[3], "Memory per GPU", "memory_gib_per_gpu", "{:.1f} GiB", 1)):
        changed = k in old and abs(pred[k] - old[k]) > 1e-9 * abs(old[k])
        delta = (pred[k] - old[k]) * scale if changed else None
        col.metric(title, fmt.format(pred[k] * scale), None if delta is None else f"{delta:+.3g}",
                   delta_color="inverse" if k in ("step_time_s", "memory_gib_per_gpu") else "normal")
    if not pred["fits"]:
        st.warning(f"Does not fit: {pred['memory_gib_per_gpu']:.1f} GiB per GPU, "
                   f"{pred['memory_limit_gib']:.1f} GiB usable.")
    left, right = st.columns([1, 2])
    left.plotly_chart(memory_figure(pred, doc.cluster.gpu.memory_bytes / GIB),
                      key="wi_memory")
    right.plotly_chart(time_figure(pred), key="wi_time")
    wdoc = PlanDocument(plan=plan, model=model, cluster=doc.cluster, prediction=pred)
    st.download_button("What-if plan JSON", dumps(wdoc.to_json()) + "\n",
                       file_name=f"plan_{plan.describe().replace(' ', '_')}.json", mime="application/json",
                       key="dl_whatif")


def show_measured() -> None:
    """Predicted vs measured from uploaded files or a folder of runs."""
    st.markdown("Load `measured.json` files written by `planner run`, `validation.json` from "
                "`planner validate`, and the plan files they ran (matched by plan hash).")
    files = st.file_uploader("measured.json / validation.json / plan JSON", type=["json"],
                             accept_multiple_files=True, key="measured_files")
    folder = st.text_input("...or a folder to scan (on this machine)", key="measured_folder",
                           placeholder="e.g. runs/  (reads *.json up to 4 levels deep)")
    ev = Evidence()
    for f in files or []:
        ev.add_bytes(f.getvalue(), f.name)
    if folder.strip():
        scan_folder(folder.strip(), ev)
    runs, parts = compare(ev) if ev.measured else (pd.DataFrame(), pd.DataFrame())
    for msg in ev.problems:
        st.error(msg)
    if ev.skipped:
        with st.expander(f"{len(ev.skipped)} other JSON file(s) in the folder were skipped"):
            st.markdown("\n".join(f"- {msg}" for msg in ev.skipped))
    if not ev.measured and not ev.validations:
        st.info("No measurements loaded yet.")
        return
    if len(runs):
        st.subheader("Per run")
        st.dataframe(runs, hide_index=True)
        st.plotly_chart(compare_figure(runs), key="measured_chart")
        st.subheader("Per component")
        choice = st.selectbox("Run", list(runs["run"]), key="measured_run")
        sub = parts[parts["run"] == choice]
        st.dataframe(sub.drop(columns=["run"]), hide_index=True)
        mem = sub[sub["unit"] == "GiB"]
        fig = go.Figure([go.Bar(x=mem["component"], y=mem["predicted"], name="predicted"),
                         go.Bar(x=mem["component"], y=mem["measured"], name="measured")])
        fig.update_layout(barmode="group", title="Memory per GPU: predicted vs measured", yaxis_title="GiB",
                          height=380)
        st.plotly_chart(fig, key="measured_memory")
    for n, (source, obj) in enumerate(ev.validations):
        st.subheader(f"Validation report: {source}")
        if isinstance(obj, dict):
            st.caption(", ".join(f"{k}: {v}" for k, v in obj.items() if not isinstance(v, (dict, list))))
        runs = validation_runs(obj)
        if runs["measured step s"].notna().any():
            fig = compare_figure(runs)
            fig.update_layout(title="Step time: predicted vs measured (median over launches, min-max)")
            st.plotly_chart(fig, key=f"validation_chart:{n}")
        tables = validation_tables(obj)
        for name, frame in tables:
            st.markdown(f"**{name}**")
            st.dataframe(frame, hide_index=True)
        if not tables:
            st.json(obj, expanded=False)


@contextlib.contextmanager
def guard(where: str) -> Iterator[None]:
    """Show a failure inside one part of the page as a message, as the CLI does (the rest renders).

    Input errors (PlannerError) show their message; an internal error shows one line, or its
    traceback when PLANNER_DEBUG is set.
    """
    try:
        yield
    except PlannerError as exc:
        st.error(str(exc))
    except Exception as exc:
        if os.environ.get("PLANNER_DEBUG"):
            raise
        st.error(f"{where}: internal error: {type(exc).__name__}: {exc} "
                 "(set PLANNER_DEBUG=1 for a traceback)")


def choose_plan(res: dict[str, Any], problem: Problem) -> PlanDocument:
    """The plan to inspect: one of the ranked plans or of the Pareto front."""
    choices = list(zip(res["plans"], res["predictions"], strict=True))
    names = [f"#{i + 1} {label(p)}  ({pr['step_time_s']:.4g} s, {pr['memory_gib_per_gpu']:.1f} GiB)"
             for i, (p, pr) in enumerate(choices)]
    for p, pr in res["pareto"]:
        if p not in res["plans"]:
            choices.append((p, pr))
            names.append(f"Pareto: {label(p)}  ({pr['step_time_s']:.4g} s, {pr['memory_gib_per_gpu']:.1f} GiB)")
    pick = st.selectbox("Plan to inspect", range(len(names)), format_func=lambda i: names[i], key="selected")
    plan, pred = choices[min(pick or 0, len(choices) - 1)]
    return PlanDocument(plan=plan, model=problem.model, cluster=problem.cluster, prediction=pred)


def main() -> None:
    st.set_page_config(page_title="Parallelism planner", layout="wide")
    st.title("Parallelism planner")
    problem, res, doc = None, None, None
    with guard("inputs"):
        problem = sidebar_problem()
    if problem is not None:
        with guard("search"):
            res = cached_search(_spec_key(problem.model), _spec_key(problem.cluster), problem.global_batch,
                                problem.objective, _constraints_key(problem.constraints), problem.top_k)
            if "error" in res:
                st.error(res["error"])
            else:
                doc = choose_plan(res, problem)
    tabs = st.tabs(["Plans", "Selected plan", "Pipeline schedule", "What-if", "Measured"])
    with tabs[4], guard("measured"):
        show_measured()
    if problem is None:
        tabs[0].info("Fix the inputs in the sidebar to search.")
    if problem is None or res is None or doc is None:
        return
    with tabs[0], guard("plans"):
        show_plans(res, problem, doc.plan)
    with tabs[1], guard("selected plan"):
        show_selected(doc)
    with tabs[2], guard("schedule"):
        show_schedule(doc)
    with tabs[3], guard("what-if"):
        show_whatif(doc)


if __name__ == "__main__":
    main()
