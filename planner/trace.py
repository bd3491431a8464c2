"""The predicted training step as a Chrome / Perfetto trace (trace-event JSON).

Why: the step simulation (planner/simulate) is the planner's most detailed prediction; drawn as a
trace it can be opened in Perfetto (ui.perfetto.dev) or chrome://tracing next to the executor's
`--profile` trace of the same plan (a torch.profiler Chrome trace) to see where reality departs from
the model: which stage waits, how long the bubbles are, whether the gradient reduction is hidden.

Layout: one process per pipeline stage (every tensor / context / data-parallel rank of a stage runs
the same predicted timeline), each with three threads:

- compute: forward (`F mb3 chunk1`) and backward (`B mb3 chunk1`) per micro-batch and model chunk,
  tensor / context / expert-parallel collectives included (they run on the compute stream), idle
  gaps as explicit `bubble` events, exposed data-parallel time, the optimizer step;
- p2p: the blocking send of activations (forward) or gradients (backward) to the neighbouring stage;
- data parallel: gradient reduction (all-reduce, or reduce-scatter and parameter all-gather for
  ZeRO), overlapping the backward; the tied-embedding all-reduce between the first and last stage.

Timestamps and durations are microseconds from the start of the step, as trace-event JSON requires.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from planner.plan import PlanDocument, load_plan

COMPUTE, P2P, DP = 0, 1, 2
THREADS = {COMPUTE: "compute stream (F/B with TP/CP/EP collectives)", P2P: "pipeline p2p sends",
           DP: "data-parallel collectives"}


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


class _Trace:
    """Collects trace events; zero-length events are dropped (they draw nothing)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def span(self, name: str, cat: str, pid: int, tid: int, start: float, end: float,
             args: dict[str, Any] | None = None) -> None:
        ts, te = _us(start), _us(end)
        if te - ts <= 0:
            return
        event: dict[str, Any] = {"name": name, "cat": cat, "ph": "X", "ts": ts, "dur": round(te - ts, 3),
                                 "pid": pid, "tid": tid}
        if args:
            event["args"] = args
        self.events.append(event)

    def meta(self, name: str, pid: int, tid: int | None, args: dict[str, Any]) -> None:
        event: dict[str, Any] = {"name": name, "ph": "M", "pid": pid, "args": args}
        if tid is not None:
            event["tid"] = tid
        self.events.append(event)


def predicted_trace(doc: PlanDocument) -> dict[str, Any]:
    """Chrome trace-event JSON of the simulated step of `doc` (why: compare with a measured trace).

    Every time comes from the simulation (`planner.simulate.StepSimulation`); this module only draws.
    """
    from planner.simulate import simulate_plan

    p, m = doc.plan, doc.model
    sim = simulate_plan(doc.model, doc.cluster, p)
    pp, vpp = p.pp, p.vpp
    n_virtual = pp * vpp
    p2p = sim.p2p_s if pp > 1 else 0.0
    zero = sim.zero_stage
    tr = _Trace()

    for r in range(pp):
        chunks = [c * pp + r for c in range(vpp)]
        tr.meta("process_name", r, None, {"name": f"PP stage {r} (virtual stages {chunks})"})
        tr.meta("process_sort_index", r, None, {"sort_index": r})
        for tid, label in THREADS.items():
            if tid == P2P and pp == 1:
                continue
            tr.meta("thread_name", r, tid, {"name": label})
            tr.meta("thread_sort_index", r, tid, {"sort_index": tid})

    by_rank: dict[int, list[Any]] = {r: [] for r in range(pp)}
    for e in sim.events:
        by_rank[e.rank].append(e)
    dp_free = [0.0] * pp
    for r, events in by_rank.items():
        stage = sim.per_stage[r]
        events.sort(key=lambda e: e.start)
        clock = 0.0
        for e in events:
            chunk = e.stage // pp
            if e.start > clock:
                tr.span("bubble", "bubble", r, COMPUTE, clock, e.start, {"idle_s": e.start - clock})
            sends = (e.kind == "F" and e.stage < n_virtual - 1) or (e.kind == "B" and e.stage > 0)
            send = p2p if sends else 0.0
            first, last = sim.stage_layers[e.stage]
            extra = (["embedding"] if e.stage == 0 else []) + (["lm head + loss"] if e.stage == n_virtual - 1
                                                               else [])
            args = {"micro_batch": e.micro_batch, "chunk": chunk, "virtual_stage": e.stage,
                    "layers": f"{first}-{last}" + "".join(f" + {x}" for x in extra),
                    "duration_s": e.end - e.start - send}
            name = f"{e.kind} mb{e.micro_batch} chunk{chunk}"
            tr.span(name, "forward" if e.kind == "F" else "backward", r, COMPUTE, e.start, e.end - send, args)
            if send:
                to = e.stage + 1 if e.kind == "F" else e.stage - 1
                what = "activations" if e.kind == "F" else "activation gradients"
                tr.span(f"send {what} mb{e.micro_batch} -> virtual stage {to}", "p2p", r, P2P,
                        e.end - send, e.end, {"micro_batch": e.micro_batch, "to_virtual_stage": to})
            if zero >= 2:  # per-micro-batch ZeRO-2/3 collectives on the DP stream
                dur = stage["zero_fwd_s"][chunk] if e.kind == "F" else stage["zero_bwd_s"][chunk]
                if dur > 0:  # ZeRO-2 gathers before forward only where its framework reshards after backward
                    start = max(e.start, dp_free[r])
                    label = "param all-gather" if e.kind == "F" else (
                        "param all-gather + grad reduce-scatter" if zero == 3 else "grad reduce-scatter")
                    tr.span(f"{label} mb{e.micro_batch} chunk{chunk}", "dp", r, DP, start, start + dur,
                            {"zero_stage": zero})
                    dp_free[r] = start + dur
            clock = e.end

    # After the pipeline: the data-parallel synchronisation the simulation accounted for.
    for r in range(pp):
        st = sim.per_stage[r]
        end_r, finish = st["end_s"], st["finish_s"]
        if zero >= 2:
            tr.span(f"exposed ZeRO-{zero} collectives", "dp", r, COMPUTE, end_r, finish,
                    {"note": "per-micro-batch collectives not hidden behind compute"})
            if zero == 2 and st["param_gather_s"] > 0:
                start = max(dp_free[r], end_r)
                tr.span("param all-gather", "dp", r, DP, start, start + st["param_gather_s"], {"zero_stage": 2})
        else:
            start = st["last_backward_start_s"]
            label = "grad all-reduce" if zero == 0 else "grad reduce-scatter"
            tr.span(label, "dp", r, DP, start, start + st["grad_sync_s"],
                    {"note": "overlaps the last backward", "zero_stage": zero})
            tr.span("wait for gradient reduction", "dp", r, COMPUTE, end_r, st["sync_end_s"],
                    {"note": "exposed part of the reduction, incl. the overlap slowdown"})
            tr.span("param all-gather (exposed)", "dp", r, DP, st["sync_end_s"], finish, {"zero_stage": zero})
    sync = sim.sync_s
    emb_end = sync + sim.emb_sync_s
    step_end = emb_end + sim.optimizer_s
    for r in range(pp):
        tr.span("idle (waiting for other stages)", "bubble", r, COMPUTE, sim.per_stage[r]["finish_s"], sync)
        if r in (0, pp - 1) and pp > 1:
            tr.span("tied-embedding grad all-reduce", "dp", r, DP, sync, emb_end, {"group": "first + last stage"})
        else:
            tr.span("idle (embedding all-reduce)", "bubble", r, COMPUTE, sync, emb_end)
        tr.span("optimizer step", "optimizer", r, COMPUTE, emb_end, step_end)

    return {
        "traceEvents": tr.events,
        "displayTimeUnit": "ms",
        "otherData": {
            "source": "planner predicted step (planner/simulate step simulation)",
            "plan_hash": doc.hash,
            "plan": p.describe(),
            "model": m.name,
            "cluster": f"{doc.cluster.num_gpus} x {doc.cluster.gpu.name} ({doc.cluster.name})",
            "step_time_s": sim.step_time_s,
            "pipeline_s": sim.pipeline_s,
            "trace_end_s": step_end,
            "layout": "one process per pipeline stage; threads: compute, p2p, data parallel",
        },
    }


def cmd_trace(args: argparse.Namespace) -> int:
    """`planner trace`: write (or print) the predicted trace of a plan file."""
    from planner.io import atomic_write_json, dumps

    trace = predicted_trace(load_plan(args.plan))
    if args.out:
        atomic_write_json(args.out, trace)
        n = sum(1 for e in trace["traceEvents"] if e["ph"] == "X")
        print(f"wrote {args.out} ({n} events, step {trace['otherData']['step_time_s']:.4g} s); open it in "
              f"https://ui.perfetto.dev or chrome://tracing", file=sys.stderr)
    else:
        sys.stdout.write(dumps(trace, indent=None) + "\n")
    return 0


def register(sub: Any) -> None:
    """Add `planner trace` to the CLI's subcommands."""
    p = sub.add_parser("trace", help="write the predicted step as a Chrome / Perfetto trace")
    p.add_argument("plan", help="plan JSON")
    p.add_argument("--out", help="trace file to write (default: print)")
    p.set_defaults(func=cmd_trace)
