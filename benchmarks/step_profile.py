"""Where a CPU rank's busy time goes: each class of a step's ops as the cost model prices it against
what torch.profiler measures of the same plan run by the executor (docs/cost-model.md §2).

    python benchmarks/step_profile.py PLAN.json [--steps 10] [--warmup 3] [--out-dir DIR]
    python benchmarks/step_profile.py demo/plan.json      # the plan ./scripts/demo.sh wrote and ran

PLAN is a plan whose cluster is a calibrated CPU profile (`planner plan --cluster profile.json`, as
`planner validate` writes them), with one pipeline stage and no tensor or context parallelism (whose
DTensor ops issue their collectives from inside the ops they belong to) and no recompute (every op then
runs once forward and once backward per micro-batch). The plan runs under `planner run
--profile`; from the busiest rank's trace each outermost aten op or autograd node is counted, with
everything it calls, in one class:

- gemm: linear layers (mm / addmm / bmm, their bias copies and bias-gradient sums) forward and backward;
- attention: the fused attention kernel forward and backward;
- elementwise: norms, activations, residual adds, embedding and loss;
- optimizer: everything inside `Optimizer.step` and `zero_grad`, and DDP's reducer (its gradient copies
  into and out of its buckets, which the model's optimizer term holds: `Framework.dp_grad_passes`);
- host: the rest of the busy time: Python, module calls and the dispatcher between those ops, and
  ops of no class above;
- communication: the data-parallel collectives' calls, whose wall time is mostly waiting, which the
  busy time (the training thread's CPU time) leaves out: printed, not compared.

Under FSDP2 its copies beside the collectives run as aten ops (elementwise here) where the model prices
them in the layer's compute (host here): compare those plans by the busy total.

The model's side is the per-op costs `planner.cost.compute` gives the plan's layer graph (the same the
step time sums), times layers and micro-batches, and its optimizer term (`planner explain`). The
profiler slows the step it watches, most for the classes of many small ops, so read the ratios per class,
not the sum; the plan also runs once without the profiler, whose busy time and step are printed beside,
with a warning where the profiled step ran more than PROFILER_DISTORTS times as long.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from executor.launch import run_plan
from planner.cost import batch_from_plans, estimate
from planner.cost.compute import ops_times
from planner.cost.terms import TRAINING_RESIDENT, cost_terms
from planner.errors import PlannerError
from planner.plan import PlanDocument, load_plan

CLASSES = ("gemm", "attention", "elementwise", "optimizer", "host")  # the busy time's classes
# A profiled step this much longer than the same plan's unprofiled step is not read per class: on the
# 2-vCPU VM (2026-12-07) `tiny` dp2 mb4 ran 260-268 ms profiled against 161 unprofiled, its loss and
# GELU ops 10x their unprofiled share, while the demo's dp2 mb1 plan ran within the run-to-run noise
PROFILER_DISTORTS = 1.25
PROFILER_WARNING = (" - more than the profiler's usual cost: the per-class times above are distorted (compare "
                    "the busy totals, or profile a plan with smaller micro-batches)")
COLLECTIVES = ("c10d::", "c10d_functional", "gloo", "nccl", "FSDP::", "all_gather", "reduce_scatter", "allreduce",
               "all_reduce", "broadcast", "wait_tensor", "barrier")
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul", "aten::baddbmm")
GEMM_NODES = ("AddmmBackward", "MmBackward", "BmmBackward", "LinearBackward")
# ops and autograd nodes that move no data (views, allocation, gradient accumulation's bookkeeping)
VIEWS = ("view", "_unsafe_view", "t", "transpose", "reshape", "permute", "expand", "unsqueeze", "squeeze",
         "slice", "select", "split", "as_strided", "alias", "detach", "empty", "empty_strided", "unflatten",
         "flatten", "chunk", "narrow")
VIEW_NODES = (*("".join(w.capitalize() for w in v.strip("_").split("_")) + "Backward" for v in VIEWS),
              "TBackward", "torch::autograd::AccumulateGrad")


def op_class(name: str) -> str | None:
    """The class of an op, autograd node or record-function frame `name` that no counted frame encloses;
    None for frames that only contain other ops (a module's forward, the step's own frames)."""
    if name.startswith("Optimizer.") or "reducer" in name:
        return "optimizer"
    if any(c in name for c in COLLECTIVES):
        return "communication"
    if name.startswith("autograd::engine::evaluate_function: "):
        node = name.split(": ", 1)[1]
        if node.startswith(GEMM_NODES):
            return "gemm"
        if "Attention" in node:
            return "attention"
        return "host" if node.startswith(VIEW_NODES) else "elementwise"
    if not name.startswith("aten::"):
        return None
    if name in GEMM_OPS:
        return "gemm"
    if name.removeprefix("aten::") in VIEWS:
        return "host"
    if "attention" in name:
        return "attention"
    return "elementwise"


def measured_classes(trace: Path, steps: int) -> tuple[dict[str, float], int]:
    """Seconds per step of each class on the trace's busiest thread, and its outermost ops per step."""
    events = [e for e in json.loads(trace.read_text())["traceEvents"]
              if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation")]
    by_thread: dict[Any, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in events:
        by_thread[e["tid"]].append(e)
    main = max(by_thread.values(), key=lambda es: sum(e["dur"] for e in es if e["cat"] == "cpu_op"))
    main.sort(key=lambda e: (e["ts"], -e["dur"]))
    seconds: dict[str, float] = collections.Counter()
    stack: list[tuple[dict[str, Any], str | None]] = []  # open frames and the class counted for them
    outermost = 0
    for e in main:
        while stack and stack[-1][0]["ts"] + stack[-1][0]["dur"] <= e["ts"]:
            stack.pop()
        if any(c is not None for _, c in stack):  # inside a counted op: its time is already counted
            stack.append((e, None))
            continue
        cls = op_class(e["name"])
        if cls is not None:
            seconds[cls] += e["dur"] * 1e-6
            outermost += 1
        stack.append((e, cls))
    return {k: v / steps for k, v in seconds.items()}, outermost // steps


def predicted_classes(doc: PlanDocument, time: dict[str, float]) -> dict[str, float]:
    """Seconds per step of each class as the cost model prices the plan's ops on one rank: each op of the
    layer graph the model priced, through the model's own per-op costs (`planner.cost.compute.ops_times`);
    `time`: the prediction's time components (`estimate(...)["time"]`)."""
    p, m = doc.plan, doc.model
    if p.pp != 1 or p.tp != 1 or p.cp != 1 or p.recompute != "none":
        raise PlannerError("step_profile compares plans with one pipeline stage, no tensor or context "
                           f"parallelism and no recompute; this one has pp {p.pp}, tp {p.tp}, cp {p.cp}, "
                           f"recompute {p.recompute}", field="plan")
    terms = cost_terms(m, doc.cluster, batch_from_plans([p]))
    lg, fw = terms.graph, terms.framework
    microbatches = p.global_batch // (p.micro_batch * p.dp)
    tokens, seq = np.array([float(p.micro_batch * m.seq_len)]), np.array([float(m.seq_len)])
    tp, sp, ep = np.array([1.0]), np.array([p.sequence_parallel]), np.array([1.0])
    out: dict[str, float] = collections.Counter()
    for ops, count in ((lg.pre_ops, 1), (lg.layer_ops, m.num_layers), (lg.post_ops, 1)):
        for op in ops:
            t = ops_times([op], lg, doc.cluster.gpu, p.dtype, p.flash_attention, tokens, seq, tp, sp, ep,
                          fw.attention_kernel, None, TRAINING_RESIDENT, fw.quantise_traffic(p.dtype))
            cls = op.kind if op.kind in ("gemm", "attention") else "elementwise"
            out[cls] += count * microbatches * float(t.fwd[0] + t.bwd[0])
    out["optimizer"] = float(time["optimizer"])
    # busy as `planner run` compares it (planner.compare): compute + optimizer; what the ops above leave of
    # compute is the host time the model adds per layer and micro-batch
    out["host"] = max(0.0, float(time["compute"]) - sum(v for k, v in out.items() if k != "optimizer"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("plan", help="plan JSON on a calibrated CPU cluster profile")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out-dir", help="where the measured.json and traces go (default: a temporary folder)")
    args = ap.parse_args(argv)
    try:
        doc = load_plan(args.plan)
        if doc.cluster.device != "cpu":
            raise PlannerError("step_profile reads CPU ranks' traces; this plan's cluster is not a CPU profile",
                               field="cluster")
        prediction = estimate(doc.model, doc.cluster, doc.plan)
        predicted = predicted_classes(doc, prediction["time"])
        with tempfile.TemporaryDirectory() as tmp:
            out_dir = Path(args.out_dir or tmp)
            out_dir.mkdir(parents=True, exist_ok=True)
            out = out_dir / "measured.json"
            print(f"running {args.plan} with --profile ({args.warmup} warm-up + {args.steps} steps) ...",
                  file=sys.stderr)
            measured = run_plan(args.plan, steps=args.steps, warmup=args.warmup, out=out, profile=True)
            traces = sorted(out_dir.glob("measured.trace.rank*.json"))
            per_rank = [measured_classes(t, args.steps) for t in traces]
            print("running it again without the profiler ...", file=sys.stderr)
            plain = run_plan(args.plan, steps=args.steps, warmup=args.warmup, out=out_dir / "unprofiled.json")
    except PlannerError as exc:
        print(f"step_profile: {exc}", file=sys.stderr)
        return 2
    busiest, ops = max(per_rank, key=lambda r: sum(r[0].values()))
    busy = float(np.median(measured["busy_times_s"]))
    comm = busiest.pop("communication", 0.0)
    busiest["host"] = max(0.0, busy - sum(v for k, v in busiest.items() if k != "host"))  # views and the rest
    print(f"\n{doc.model.name}, {doc.plan.describe()} on "
          f"{doc.cluster.name}: busy {busy * 1e3:.1f} ms a step measured with the profiler on, "
          f"{ops} outermost ops a step; step {measured['step_time_s']['median'] * 1e3:.1f} ms measured, "
          f"{prediction['step_time_s'] * 1e3:.1f} predicted\n")
    print(f"{'class':18s} {'predicted ms':>13s} {'measured ms':>12s} {'measured / predicted':>21s}")
    for cls in CLASSES:
        p, m = predicted.get(cls, 0.0), busiest.get(cls, 0.0)
        ratio = f"{m / p:.2f}" if p > 0 else "-"
        print(f"{cls:18s} {p * 1e3:13.1f} {m * 1e3:12.1f} {ratio:>21s}")
    predicted_busy = sum(predicted.values())
    plain_busy = float(np.median(plain["busy_times_s"]))
    for label, measured_busy in (("busy", busy), ("busy, no profiler", plain_busy)):
        print(f"{label:18s} {predicted_busy * 1e3:13.1f} {measured_busy * 1e3:12.1f} "
              f"{measured_busy / predicted_busy:21.2f}")
    print(f"\ncommunication calls: {comm * 1e3:.1f} ms of wall time a step (mostly waiting: not in busy)")
    inflation = measured["step_time_s"]["median"] / plain["step_time_s"]["median"]
    print(f"without the profiler the step took {plain['step_time_s']['median'] * 1e3:.1f} ms: the profiler made it "
          f"{inflation:.2f}x as long" + (PROFILER_WARNING if inflation > PROFILER_DISTORTS else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
