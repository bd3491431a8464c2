"""The predicted Chrome / Perfetto trace: valid trace-event JSON, laid out by the step simulation
(same micro-batch ops, same step end), one process per pipeline stage, explicit bubbles."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from planner.cli import main
from planner.cost import estimate
from planner.plan import Plan, PlanDocument, save_plan
from planner.simulate import simulate_plan
from planner.specs.catalog import load_cluster, model_preset
from planner.trace import COMPUTE, DP, P2P, predicted_trace


def doc_for(model: str, gpus: int, **plan: object) -> PlanDocument:
    m, c = model_preset(model), load_cluster("dgx-h100", gpus=gpus)
    p = Plan(**plan)  # type: ignore[arg-type]
    return PlanDocument(plan=p, model=m, cluster=c, prediction=estimate(m, c, p))


CASES = {
    "1f1b-z1": doc_for("llama3-8b", 32, tp=2, pp=4, dp=4, micro_batch=1, global_batch=32, zero_stage=1,
                       sequence_parallel=True),
    "interleaved-z0": doc_for("llama3-8b", 16, tp=2, pp=4, dp=2, vpp=2, schedule="interleaved-1f1b",
                              micro_batch=1, global_batch=16),
    "gpipe-tied": doc_for("gpt2-large", 8, pp=4, dp=2, schedule="gpipe", micro_batch=2, global_batch=16),
    "no-pp-z3": doc_for("llama3-8b", 8, tp=2, dp=4, micro_batch=1, global_batch=16, zero_stage=3),
    "z2": doc_for("llama3-8b", 8, tp=2, pp=2, dp=2, micro_batch=1, global_batch=8, zero_stage=2),
    "single-gpu": doc_for("gpt2", 1, micro_batch=4, global_batch=8),
}


def spans(trace: dict) -> list[dict]:
    return [e for e in trace["traceEvents"] if e["ph"] == "X"]


@pytest.mark.parametrize("name", list(CASES))
def test_trace_is_valid_trace_event_json(name: str) -> None:
    trace = json.loads(json.dumps(predicted_trace(CASES[name]), allow_nan=False))
    assert isinstance(trace["traceEvents"], list) and trace["displayTimeUnit"] == "ms"
    for e in trace["traceEvents"]:
        assert e["ph"] in ("X", "M") and isinstance(e["pid"], int) and isinstance(e["name"], str)
        if e["ph"] == "X":
            assert e["dur"] > 0 and e["ts"] >= 0 and isinstance(e["tid"], int) and e["cat"]
    # every thread that has events is named; no two events on a thread overlap (no broken nesting)
    named = {(e["pid"], e["tid"]) for e in trace["traceEvents"] if e["name"] == "thread_name"}
    by_thread: dict[tuple[int, int], list[tuple[float, float]]] = defaultdict(list)
    for e in spans(trace):
        by_thread[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
    assert set(by_thread) <= named
    for intervals in by_thread.values():
        intervals.sort()
        for (_, end), (start, _) in itertools.pairwise(intervals):
            assert start >= end - 1e-3


@pytest.mark.parametrize("name", list(CASES))
def test_trace_follows_the_simulation(name: str) -> None:
    doc = CASES[name]
    p = doc.plan
    sim = simulate_plan(doc.model, doc.cluster, p)
    trace = predicted_trace(doc)
    ev = spans(trace)
    # one process per pipeline stage; each runs F and B of every micro-batch of each of its chunks
    assert {e["pid"] for e in ev} == set(range(p.pp))
    ops = Counter((e["pid"], e["name"]) for e in ev if e["cat"] in ("forward", "backward"))
    expect = Counter((s.rank, f"{s.kind} mb{s.micro_batch} chunk{s.stage // p.pp}") for s in sim.events)
    assert ops == expect and all(n == 1 for n in ops.values())
    # the op starts are the simulation's (microseconds)
    starts = {(e["pid"], e["name"]): e["ts"] for e in ev if e["cat"] in ("forward", "backward")}
    for s in sim.events:
        assert starts[(s.rank, f"{s.kind} mb{s.micro_batch} chunk{s.stage // p.pp}")] == pytest.approx(
            s.start * 1e6, abs=1e-3)
    # the step ends where the simulation ends it: with the optimizer step on every stage
    end = max(e["ts"] + e["dur"] for e in ev)
    assert end == pytest.approx(sim.step_time_s * 1e6, rel=1e-9, abs=1e-2)
    assert trace["otherData"]["step_time_s"] == sim.step_time_s
    assert sum(e["name"] == "optimizer step" for e in ev) == p.pp
    # each stage's compute thread is busy or an explicit bubble from 0 to the end of its last backward
    for r in range(p.pp):
        compute = sorted((e["ts"], e["ts"] + e["dur"]) for e in ev if e["pid"] == r and e["tid"] in (COMPUTE, P2P)
                         and e["cat"] in ("forward", "backward", "bubble", "p2p"))
        last_b = max(s.end for s in sim.events if s.rank == r)
        covered = sum(b - a for a, b in compute if b <= last_b * 1e6 + 1e-3)
        assert covered == pytest.approx(last_b * 1e6, rel=1e-6)


def test_pipeline_sends_bubbles_and_dp_tracks() -> None:
    ev = spans(predicted_trace(CASES["1f1b-z1"]))
    sends = [e for e in ev if e["tid"] == P2P]
    m = CASES["1f1b-z1"].plan.grad_accum
    # middle stages send activations forward and gradients backward for every micro-batch
    assert sum(e["pid"] == 1 for e in sends) == 2 * m and sum(e["pid"] == 0 for e in sends) == m
    assert any(e["name"] == "bubble" for e in ev if e["pid"] == 0)  # pipeline fill / drain
    assert all(any(e["name"] == "grad reduce-scatter" and e["tid"] == DP for e in ev if e["pid"] == r)
               for r in range(4))
    names = {e["name"] for e in ev}
    assert "F mb3 chunk0" in names and "B mb0 chunk0" in names


def test_interleaved_names_chunks_and_tied_embeddings() -> None:
    names = {e["name"] for e in spans(predicted_trace(CASES["interleaved-z0"]))}
    assert {"F mb3 chunk1", "B mb0 chunk0", "grad all-reduce"} <= names
    gp = spans(predicted_trace(CASES["gpipe-tied"]))  # gpt2: tied embeddings over first + last stage
    assert {e["pid"] for e in gp if e["name"] == "tied-embedding grad all-reduce"} == {0, 3}


def test_zero_collectives_per_micro_batch() -> None:
    ev = spans(predicted_trace(CASES["no-pp-z3"]))
    m = CASES["no-pp-z3"].plan.grad_accum
    assert sum(e["name"].startswith("param all-gather mb") for e in ev) == m
    assert sum(e["name"].startswith("param all-gather + grad reduce-scatter") for e in ev) == m
    ev2 = spans(predicted_trace(CASES["z2"]))
    assert any(e["name"].startswith("grad reduce-scatter mb") for e in ev2)


def test_cli_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = save_plan(tmp_path / "plan.json", CASES["1f1b-z1"])
    out = tmp_path / "predicted_trace.json"
    assert main(["trace", str(plan), "--out", str(out)]) == 0
    trace = json.loads(out.read_text())
    assert trace["otherData"]["plan_hash"] == CASES["1f1b-z1"].hash
    assert main(["trace", str(plan)]) == 0
    assert json.loads(capsys.readouterr().out)["traceEvents"]
    assert main(["trace", str(tmp_path / "nope.json")]) == 2
