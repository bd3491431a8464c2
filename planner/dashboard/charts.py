"""Plotly figures of the dashboard: pure functions of plans, predictions and simulated events.

Figures are plain plotly JSON (`{"data": [...], "layout": {...}}`, which st.plotly_chart takes as
is): building `plotly.graph_objects` validates every property and costs ~0.1-0.3 s per chart, more
than the rest of a page run.

Readable at realistic sizes in light and dark themes: axes carry units, log axes are labelled at
1-2-5 steps or decades (never at every digit), plans far slower than the useful range are drawn at
its edge with a distinct marker instead of squashing it, legends are few and horizontal, and lines
use a mid grey that shows on white and on Streamlit's dark background alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from planner.dashboard.codes import plan_code
from planner.plan import Plan

NEUTRAL = "#8c8c8c"  # lines and reference marks: contrast >= 3:1 on white and on #0e1117
LIMIT = "#d62728"  # device memory / usable limit
# Tableau 10: distinct in both themes; one colour per pipeline depth
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac")
KIND_COLORS = {"F": "#4e79a7", "B": "#f28e2b", "idle": "#bab0ac"}
KIND_NAMES = {"F": "forward", "B": "backward", "idle": "idle (bubble)"}
OUTLIER_FACTOR = 3.0  # the Pareto chart's time axis ends at 3x the best step unless ranked plans need more
DETAIL_EVENTS_PER_STAGE = 64  # above this the schedule shows an overview plus a zoomed window
LEGEND_BELOW = {"orientation": "h", "yanchor": "top", "y": -0.22, "xanchor": "left", "x": 0}

Point = tuple[Plan, dict[str, Any]]


class Figure(dict):
    """Plotly JSON with the three `go.Figure` methods the builders use."""

    def __init__(self, *traces: dict[str, Any]) -> None:
        super().__init__(data=list(traces), layout={})

    @property
    def data(self) -> list[dict[str, Any]]:
        return self["data"]

    @property
    def layout(self) -> dict[str, Any]:
        return self["layout"]

    def add_trace(self, trace: dict[str, Any]) -> None:
        self["data"].append(trace)

    def update_layout(self, **layout: Any) -> None:
        self["layout"].update(layout)

    def add_shape(self, **shape: Any) -> None:
        self["layout"].setdefault("shapes", []).append(shape)


def _trace(kind: str, **props: Any) -> dict[str, Any]:
    if "marker_color" in props:
        props["marker"] = {**props.get("marker", {}), "color": props.pop("marker_color")}
    return {"type": kind, **props}


# ---- axes ------------------------------------------------------------------------------------------------


def tick_text(v: float) -> str:
    """A tick label without float noise: 0.05, 1, 20, 1500, 2e+06."""
    return f"{v:.6g}" if 1e-4 <= abs(v) < 1e6 else f"{v:.2g}"


def log_ticks(lo: float, hi: float, max_ticks: int = 9) -> list[float]:
    """Tick values for a log axis over [lo, hi]: decades, or 1-2-5 steps, or finer steps inside a
    narrow range; always at least two ticks and at most `max_ticks`."""
    if not (lo > 0 and hi > lo and math.isfinite(hi)):
        return [lo] if lo > 0 else []
    first, last = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    for mantissas in ((1,), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0**d for d in range(first, last + 1) for m in mantissas]
        ticks = [float(f"{t:.6g}") for t in ticks if lo <= t <= hi]
        if len(ticks) > max_ticks:
            return _thin(ticks, max_ticks)
        if len(ticks) >= 3:
            return ticks
    return ticks if len(ticks) >= 2 else [float(f"{lo:.3g}"), float(f"{hi:.3g}")]


def _thin(ticks: list[float], n: int) -> list[float]:
    step = math.ceil(len(ticks) / n)
    return ticks[::step]


def log_axis(lo: float, hi: float, title: str) -> dict[str, Any]:
    """Layout of a log axis over [lo, hi] with labelled ticks (plotly log ranges are in log10 units)."""
    ticks = log_ticks(lo, hi)
    return {"type": "log", "title": title, "range": [math.log10(lo), math.log10(hi)], "tickvals": ticks,
            "ticktext": [tick_text(t) for t in ticks], "showgrid": True}


def value_axis(lo: float, hi: float, title: str, log_if_ratio: float = 4.0) -> dict[str, Any]:
    """A log axis when the values span more than `log_if_ratio`, else a linear one (padded)."""
    if lo > 0 and hi / lo > log_if_ratio:
        return log_axis(lo / 1.15, hi * 1.15, title)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.1 or 1.0
    return {"type": "linear", "title": title, "range": [max(0.0, lo - pad) if lo >= 0 else lo - pad, hi + pad],
            "nticks": 8}


def _rule(axis: str, at: float, text: str, color: str, dash: str,
          side: str = "left") -> tuple[dict[str, Any], dict[str, Any]]:
    """A labelled vertical (axis "x") or horizontal ("y") line, as a layout shape and annotation
    (for a vertical line, `side` says on which side of it the label sits)."""
    other = "y" if axis == "x" else "x"
    line = {"type": "line", f"{axis}0": at, f"{axis}1": at, f"{other}0": 0, f"{other}1": 1,
            "xref": "x" if axis == "x" else "paper", "yref": "y" if axis == "y" else "paper",
            "line": {"color": color, "dash": dash, "width": 2}}
    note = {axis: at, other: 1, "xref": line["xref"], "yref": line["yref"], "text": text, "showarrow": False,
            "xanchor": side if axis == "x" else "right", "yanchor": "bottom" if axis == "y" else "top",
            "font": {"color": color}}
    return line, note


# ---- plans: Pareto chart ------------------------------------------------------------------------------


def _hover(p: Plan, pr: dict[str, Any]) -> str:
    return (f"<b>{plan_code(p)}</b><br>step {pr['step_time_s']:.4g} s, {pr['memory_gib_per_gpu']:.1f} GiB per GPU"
            f"<br>MFU {pr['mfu'] * 100:.1f}%, {pr['tokens_per_s_per_gpu']:,.0f} tokens/s per GPU"
            f"<br>{p.schedule}, recompute {p.recompute}, ZeRO {p.zero_stage}<br><i>click to inspect</i>")


@dataclass(frozen=True)
class ParetoChart:
    figure: Figure
    off_scale: int  # plans slower than the time axis shows, drawn at its top edge
    axis_max_s: float


def pareto_figure(ranked: Sequence[Point], front: Sequence[Point], selected: Plan | None,
                  limit_gib: float) -> ParetoChart:
    """Step time vs memory per GPU of the ranked plans and the Pareto front, coloured by pipeline depth;
    circles are ranked plans, diamonds Pareto-front plans, triangles plans beyond the time axis."""
    on_front = {plan_code(p) for p, _ in front}
    seen: dict[str, Point] = {}
    for p, pr in [*ranked, *front]:
        seen.setdefault(plan_code(p), (p, pr))
    times = [pr["step_time_s"] for _, pr in seen.values()]
    best = min(times)
    ranked_max = max(pr["step_time_s"] for _, pr in ranked) if ranked else best
    y_max = max(ranked_max * 1.1, min(max(times), best * OUTLIER_FACTOR))
    off = 0
    depths = sorted({p.pp for p, _ in seen.values()})
    colors = {pp: PALETTE[i % len(PALETTE)] for i, pp in enumerate(depths)}
    fig = Figure()
    for pp in depths:
        items = [(code, p, pr) for code, (p, pr) in seen.items() if p.pp == pp]
        ys, symbols, sizes = [], [], []
        for code, _, pr in items:
            beyond = pr["step_time_s"] > y_max
            off += beyond
            ys.append(y_max if beyond else pr["step_time_s"])
            symbols.append("triangle-up" if beyond else ("diamond" if code in on_front else "circle"))
            sizes.append(12 if code in on_front or beyond else 9)
        fig.add_trace(_trace("scatter",
            x=[pr["memory_gib_per_gpu"] for _, _, pr in items], y=ys, mode="markers", name=f"pp{pp}",
            customdata=[code for code, _, _ in items], hovertext=[_hover(p, pr) for _, p, pr in items],
            hoverinfo="text", legendgroup=f"pp{pp}", showlegend=False,
            marker={"color": colors[pp], "symbol": symbols, "size": sizes, "opacity": 0.9,
                    "line": {"width": 1, "color": NEUTRAL}}))
        fig.add_trace(_trace("scatter", x=[None], y=[None], mode="markers", name=f"pp{pp}", legendgroup=f"pp{pp}",
                                 legendgrouptitle={"text": "pipeline stages"} if pp == depths[0] else None,
                                 marker={"color": colors[pp], "symbol": "square", "size": 11}, hoverinfo="skip"))
    fs = sorted(front, key=lambda e: e[1]["memory_gib_per_gpu"])
    fig.add_trace(_trace("scatter", x=[pr["memory_gib_per_gpu"] for _, pr in fs],
                             y=[min(pr["step_time_s"], y_max) for _, pr in fs], mode="lines",
                             name="Pareto front", hoverinfo="skip", legendgroup="marks",
                             legendgrouptitle={"text": "marks"},
                             line={"color": NEUTRAL, "dash": "dot", "shape": "hv", "width": 2}))
    for name, symbol in (("ranked plan", "circle"), ("on the Pareto front", "diamond"),
                         ("slower than the axis", "triangle-up")):
        if symbol == "triangle-up" and not off:
            continue
        fig.add_trace(_trace("scatter", x=[None], y=[None], mode="markers", name=name, legendgroup="marks",
                                 marker={"symbol": symbol, "color": NEUTRAL, "size": 10}, hoverinfo="skip"))
    if selected is not None and plan_code(selected) in seen:
        _, pr = seen[plan_code(selected)]
        fig.add_trace(_trace("scatter", x=[pr["memory_gib_per_gpu"]], y=[min(pr["step_time_s"], y_max)], mode="markers",
                                 name="selected", hoverinfo="skip", legendgroup="marks",
                                 marker={"size": 20, "symbol": "star", "color": "#edc948",
                                         "line": {"color": NEUTRAL, "width": 1.5}}))
    mems = [pr["memory_gib_per_gpu"] for _, pr in seen.values()]
    line, note = _rule("x", limit_gib, "usable memory", LIMIT, "dash")
    fig.update_layout(
        title="Pareto front: step time vs memory per GPU", height=520, shapes=[line], annotations=[note],
        xaxis={"title": "memory per GPU (GiB)", "range": [0, max(max(mems), limit_gib) * 1.08]},
        yaxis=value_axis(best, y_max, "predicted step time (s)"), legend=LEGEND_BELOW,
        margin={"t": 50, "b": 40, "l": 60, "r": 20}, clickmode="event+select", dragmode="zoom")
    return ParetoChart(fig, off, y_max)


# ---- one plan: memory and time ------------------------------------------------------------------------


def memory_figure(pred: dict[str, Any], hbm_gib: float) -> Figure:
    """Stacked memory per GPU by kind, against the device memory and the usable limit."""
    fig = Figure()
    for i, (kind, gib) in enumerate(pred["memory"].items()):
        fig.add_trace(_trace("bar", x=["per GPU"], y=[gib], name=kind, marker_color=PALETTE[i % len(PALETTE)],
                             hovertemplate=f"{kind}: %{{y:.2f}} GiB<extra></extra>"))
    hbm = _rule("y", hbm_gib, f"device {hbm_gib:.0f} GiB", LIMIT, "solid")
    usable = _rule("y", pred["memory_limit_gib"], "usable", NEUTRAL, "dash")
    verdict = "fits" if pred["fits"] else "DOES NOT FIT"
    fig.update_layout(barmode="stack", shapes=[hbm[0], usable[0]], annotations=[hbm[1], usable[1]],
                      title=f"Memory per GPU: {pred['memory_gib_per_gpu']:.1f} GiB ({verdict})",
                      yaxis={"title": "GiB", "range": [0, max(hbm_gib, pred["memory_gib_per_gpu"]) * 1.1]},
                      height=440, margin={"t": 50, "b": 30}, legend=LEGEND_BELOW)
    return fig


TIME_PARTS = (("compute", "compute"), ("exposed communication", "exposed"), ("bubble", "bubble"),
              ("optimizer", "optimizer"))
COMM_PARTS = (("TP", "tp_comm"), ("PP", "pp_comm"), ("DP", "dp_comm"), ("CP", "cp_comm"), ("EP", "ep_comm"))


def time_figure(pred: dict[str, Any]) -> Figure:
    """The step split into compute / exposed communication / bubble / optimizer, and every
    communication kind's total time (hidden behind compute or not)."""
    t = pred["time"]
    fig = Figure()
    for i, (name, key) in enumerate(TIME_PARTS):
        fig.add_trace(_trace("bar", y=["step"], x=[t.get(key, 0.0)], name=name, orientation="h",
                             marker_color=PALETTE[i], hovertemplate=f"{name}: %{{x:.4g}} s<extra></extra>"))
    for i, (name, key) in enumerate(COMM_PARTS):
        fig.add_trace(_trace("bar", y=["communication<br>(hidden + exposed)"], x=[t.get(key, 0.0)], name=f"{name} comm",
                             orientation="h", marker_color=PALETTE[(i + 4) % len(PALETTE)],
                             hovertemplate=f"{name} communication: %{{x:.4g}} s<extra></extra>"))
    fig.update_layout(barmode="stack", title=f"Step time: {pred['step_time_s']:.4g} s",
                      xaxis={"title": "seconds"}, height=340, margin={"t": 50, "b": 30}, legend=LEGEND_BELOW)
    return fig


# ---- several plans side by side -------------------------------------------------------------------------


def compare_bars(names: Sequence[str], preds: Sequence[dict[str, Any]], what: str) -> Figure:
    """Stacked bars per plan: `what` = "time" (step breakdown, s) or "memory" (GiB per GPU)."""
    fig = Figure()
    if what == "time":
        parts = [(label, [pr["time"].get(key, 0.0) for pr in preds]) for label, key in TIME_PARTS]
        title, unit = "Step time breakdown", "s"
    else:
        kinds = list(dict.fromkeys(k for pr in preds for k in pr["memory"]))
        parts = [(k, [pr["memory"].get(k, 0.0) for pr in preds]) for k in kinds]
        title, unit = "Memory per GPU", "GiB"
    for i, (label, values) in enumerate(parts):
        fig.add_trace(_trace("bar", x=list(names), y=values, name=label, marker_color=PALETTE[i % len(PALETTE)],
                             hovertemplate=f"{label}: %{{y:.4g}} {unit}<extra></extra>"))
    fig.update_layout(barmode="stack", title=title, yaxis={"title": unit}, xaxis={"type": "category"},
                      height=420, legend=LEGEND_BELOW,
                      margin={"t": 50, "b": 30})
    return fig


# ---- pipeline schedule -----------------------------------------------------------------------------------

Event = tuple[int, str, int, int, float, float]  # rank, kind (F/B), micro-batch, stage, start, end


def needs_overview(events: Sequence[Event], pp: int) -> bool:
    """Too many operations per stage to draw each legibly: show an overview and a zoomed window."""
    return len(events) > DETAIL_EVENTS_PER_STAGE * max(pp, 1)


def default_window(events: Sequence[Event], pp: int, pipeline_s: float) -> tuple[float, float]:
    """A time window holding about DETAIL_EVENTS_PER_STAGE / 2 operations per stage, from the start."""
    per_stage = max(1.0, len(events) / max(pp, 1))
    width = pipeline_s * min(1.0, DETAIL_EVENTS_PER_STAGE / 2 / per_stage)
    return 0.0, width


def schedule_figure(events: Sequence[Event], pp: int, micro_batches: int, step_time_s: float, pipeline_s: float,
                    window: tuple[float, float] | None = None) -> Figure:
    """Every operation of every stage as a bar (micro-batch index where it fits; `.chunk` for
    interleaved virtual stages) and the idle gaps between them; `window` limits it to a time range."""
    lo, hi = window or (0.0, pipeline_s)
    bars: dict[str, dict[str, list[Any]]] = {k: {"y": [], "base": [], "x": [], "text": []} for k in KIND_COLORS}
    by_rank: dict[int, list[Event]] = {r: [] for r in range(pp)}
    for e in events:
        by_rank.setdefault(e[0], []).append(e)
    for rank, evs in by_rank.items():
        t = 0.0
        for _, kind, mb, stage, start, end in sorted(evs, key=lambda e: e[4]):
            if start - t > 1e-12:
                _add(bars["idle"], rank, t, start, "", lo, hi)
            _add(bars[kind], rank, start, end, f"{mb}" if stage < pp else f"{mb}.{stage // pp}", lo, hi)
            t = max(t, end)
        if pipeline_s - t > 1e-12:
            _add(bars["idle"], rank, t, pipeline_s, "", lo, hi)
    fig = Figure()
    for kind, b in bars.items():
        if b["x"]:
            fig.add_trace(_trace("bar", y=b["y"], base=b["base"], x=b["x"], text=b["text"], orientation="h",
                                 name=KIND_NAMES[kind], marker_color=KIND_COLORS[kind], textposition="inside",
                                 insidetextanchor="middle", textangle=0,
                                 hovertemplate=f"{KIND_NAMES[kind]} %{{text}}<br>from %{{base:.4g}} s, "
                                               "%{x:.4g} s<extra></extra>"))
    shapes, notes = [], []
    if lo <= step_time_s <= hi * 1.0001 or window is None:
        line, note = _rule("x", step_time_s, "step end", NEUTRAL, "dash", side="right")
        shapes, notes = [line], [note]
    span = "" if window is None else f", {lo:.4g}-{hi:.4g} s"
    fig.update_layout(barmode="overlay", shapes=shapes, annotations=notes, bargap=0.15,
                      title=f"Predicted pipeline schedule ({pp} stages, {micro_batches} micro-batches{span})",
                      xaxis={"title": "seconds", "range": [lo, max(hi, step_time_s * 1.01) if window is None else hi]},
                      yaxis={"autorange": "reversed", "title": "pipeline stage"}, height=170 + 42 * pp,
                      margin={"t": 50, "b": 30}, legend=LEGEND_BELOW,
                      uniformtext={"minsize": 9, "mode": "hide"})  # a number shows only where it fits
    return fig


def _add(bar: dict[str, list[Any]], rank: int, start: float, end: float, text: str, lo: float, hi: float) -> None:
    a, b = max(start, lo), min(end, hi)
    if b <= a:
        return
    bar["y"].append(f"stage {rank}")
    bar["base"].append(a)
    bar["x"].append(b - a)
    bar["text"].append(text)


def schedule_overview(events: Sequence[Event], pp: int, micro_batches: int, pipeline_s: float,
                      window: tuple[float, float] | None = None, bins: int = 240) -> Figure:
    """The whole step at once: per stage and time slice, the share of time spent computing (forward
    or backward) and idle. Bubbles show as the pale wedges at the start and end; `window` outlines
    the time range the detailed chart shows."""
    width = pipeline_s / bins
    fwd = [[0.0] * bins for _ in range(pp)]
    bwd = [[0.0] * bins for _ in range(pp)]
    for rank, kind, _, _, start, end in events:
        target = fwd if kind == "F" else bwd
        first, last = int(start / width), min(bins - 1, int(end / width))
        for i in range(first, last + 1):
            overlap = min(end, (i + 1) * width) - max(start, i * width)
            if overlap > 0:
                target[rank][i] += overlap / width
    busy = [[min(1.0, f + b) for f, b in zip(fr, br, strict=True)] for fr, br in zip(fwd, bwd, strict=True)]
    text = [[f"forward {f * 100:.0f}%, backward {b * 100:.0f}%, idle {max(0.0, 1 - f - b) * 100:.0f}%"
             for f, b in zip(fr, br, strict=True)] for fr, br in zip(fwd, bwd, strict=True)]
    fig = Figure(_trace("heatmap",
        z=busy, x=[(i + 0.5) * width for i in range(bins)], y=[f"stage {r}" for r in range(pp)], text=text,
        zmin=0, zmax=1, colorscale=[[0, "#bab0ac"], [1, "#4e79a7"]],
        colorbar={"title": "busy", "tickvals": [0, 0.5, 1], "ticktext": ["idle", "50%", "busy"], "len": 0.8},
        hovertemplate="stage %{y}, t = %{x:.4g} s<br>%{text}<extra></extra>"))
    if window is not None:
        fig.add_shape(type="rect", x0=window[0], x1=window[1], y0=-0.5, y1=pp - 0.5, xref="x", yref="y",
                      line={"color": LIMIT, "width": 2})
    fig.update_layout(title=f"Whole step: busy share per stage ({pp} stages, {micro_batches} micro-batches)",
                      xaxis={"title": "seconds", "range": [0, pipeline_s]},
                      yaxis={"autorange": "reversed", "title": "pipeline stage"}, height=150 + 30 * pp,
                      margin={"t": 50, "b": 30})
    return fig


# ---- predicted vs measured ------------------------------------------------------------------------------


def predicted_vs_measured(names: Sequence[str], predicted: Sequence[float], measured: Sequence[float],
                          low: Sequence[float | None], high: Sequence[float | None], title: str) -> Figure:
    """Predicted vs measured step time per run (ms), min-max (or p10-p90) as error bars, y = x dotted."""
    pts = [(n, p * 1e3, m * 1e3, (lo or m) * 1e3, (hi or m) * 1e3)
           for n, p, m, lo, hi in zip(names, predicted, measured, low, high, strict=True) if p and m]
    fig = Figure()
    if pts:
        values = [v for _, p, m, lo, hi in pts for v in (p, m, lo, hi)]
        lo_v, hi_v = min(values), max(values)
        ax = value_axis(lo_v, hi_v, "")
        a, b = (10 ** ax["range"][0], 10 ** ax["range"][1]) if ax["type"] == "log" else tuple(ax["range"])
        fig.add_trace(_trace("scatter", x=[a, b], y=[a, b], mode="lines", name="predicted = measured",
                                 line={"dash": "dot", "color": NEUTRAL, "width": 2}, hoverinfo="skip"))
        fig.add_trace(_trace("scatter",
            x=[m for _, _, m, _, _ in pts], y=[p for _, p, _, _, _ in pts], mode="markers", name="runs",
            text=[n for n, *_ in pts], marker={"size": 10, "color": PALETTE[0]},
            hovertemplate="%{text}<br>measured %{x:.4g} ms<br>predicted %{y:.4g} ms<extra></extra>",
            error_x={"type": "data", "symmetric": False, "color": NEUTRAL,
                     "array": [hi - m for _, _, m, _, hi in pts], "arrayminus": [m - lo for _, _, m, lo, _ in pts]}))
        fig.update_layout(xaxis={**ax, "title": "measured step time (ms)"},
                          yaxis={**ax, "title": "predicted step time (ms)"})
    fig.update_layout(title=title, height=460, legend=LEGEND_BELOW, margin={"t": 50, "b": 30})
    return fig
