"""`planner serve`: search serving plans for a model, cluster and request stream under latency limits.

    planner serve --model llama3-70b --cluster dgx-h100 --gpus 64 --isl 1024 --osl 256 \\
        --ttft-ms 1000 --tpot-ms 30 [--concurrency K | --request-rate R] [--disaggregated] [--json]

Any size flag (--tp, --pp, --ep, --attention-dp, --max-batch, --chunk-size, --replicas) fixes that
dimension. A table on a terminal (the ranked plans meeting the SLOs, then the Pareto front of
tokens/s per user against tokens/s per GPU); `--json` prints the ranked plan documents; `--out`
writes the best one (a `kind: "serve"` plan that `planner run` serves for real).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from planner.io import dumps
from planner.precision import PRECISIONS
from planner.report import table
from planner.serve.kv import KV_DTYPES
from planner.serve.plan import ARRIVALS, PERCENTILES, SLO, ServeDocument, Workload, save_serve_plan
from planner.serve.search import DEFAULT_RERANK, ServeConstraints, search_serving
from planner.specs.catalog import load_cluster, load_model


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if not 1 <= v <= 1 << 30:
        raise argparse.ArgumentTypeError(f"expected a positive integer up to {1 << 30}, got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < v < 1e12:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}")
    return v


def _latency(p: dict[str, Any], key: str) -> str:
    d = p[key]
    return f"{d['p50']:.1f} / {d['p90']:.1f} / {d['p99']:.1f}"


def plans_rows(docs: list[ServeDocument]) -> list[list[Any]]:
    rows = []
    for i, d in enumerate(docs, 1):
        p = d.prediction or {}
        rows.append([i, d.plan.describe(), f"{p['tokens_per_s_per_gpu']:,.0f}", f"{p['tokens_per_s_per_user']:.1f}",
                     _latency(p, "ttft_ms"), _latency(p, "tpot_ms"), f"{p['kv_cache_gib_per_gpu']:.1f}",
                     p["max_concurrency"], f"{p['memory_gib_per_gpu']:.1f}"])
    return rows


HEADERS = ["#", "plan", "tok/s/GPU", "tok/s/user", "TTFT ms p50/p90/p99", "TPOT ms p50/p90/p99", "KV GiB/GPU",
           "max conc", "mem GiB/GPU"]


def cmd_serve(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    cluster = load_cluster(args.cluster, gpus=args.gpus)
    dtype = args.dtype or ("fp32" if cluster.device == "cpu" else "bf16")
    kv_dtype = args.kv_dtype or ("fp32" if dtype == "fp32" else "bf16" if dtype not in ("fp16",) else "fp16")
    workload = Workload(isl=args.isl, osl=args.osl, concurrency=args.concurrency, request_rate=args.request_rate,
                        arrivals=args.arrivals, num_requests=args.num_requests, seed=args.seed)
    slo = SLO(ttft_ms=args.ttft_ms, tpot_ms=args.tpot_ms, percentile=args.slo_percentile)
    cons = ServeConstraints(tp=args.tp, pp=args.pp, ep=args.ep, attention_dp=args.attention_dp,
                            max_batch=args.max_batch, chunk_size=args.chunk_size, replicas=args.replicas)
    if args.out:  # checked before the search: a bad path is not found after the work is done
        from pathlib import Path

        out = Path(args.out)
        if out.is_dir():
            from planner.errors import PlanError

            raise PlanError(f"{out} is a directory", field="out")
    result = search_serving(model, cluster, workload, slo, dtype=dtype, kv_dtype=kv_dtype,
                            disaggregated=args.disaggregated, constraints=cons, top_k=args.top,
                            rerank=args.simulate_top, memory_utilization=args.memory_utilization,
                            block_size=args.block_size)
    print(f"searched {result.space:,} serving plans in {result.seconds:.2f} s: {result.fitting:,} fit, "
          f"{result.screened:,} passed the screen, {result.simulated} simulated request by request",
          file=sys.stderr)
    docs = result.documents
    if args.out:
        save_serve_plan(args.out, docs[0])
        print(f"wrote the best plan to {args.out}", file=sys.stderr)
    if args.json:
        sys.stdout.write(dumps([d.to_json() for d in docs]) + "\n")
        return 0
    mode = "disaggregated" if args.disaggregated else "aggregated"
    print(f"{model.name} on {cluster.num_gpus} x {cluster.gpu.name} ({cluster.name}), {mode}, {workload.describe()}, "
          f"{dtype} weights, {kv_dtype} KV cache; {slo.describe()}")
    print(table(HEADERS, plans_rows(docs), align="llrrrrrrr"))
    print("\nPareto front (tokens/s per user vs tokens/s per GPU, every simulated plan):")
    print(table(HEADERS, plans_rows(result.pareto), align="llrrrrrrr"))
    if result.pruned:
        print("\npruned: " + "; ".join(f"{k}: {v:,}" for k, v in sorted(result.pruned.items(), key=lambda kv: -kv[1])
                                       if v))
    return 0


def register(sub: Any) -> None:
    """Add `planner serve` to the CLI's subcommands."""
    p = sub.add_parser("serve", help="search serving plans (TTFT / TPOT under load, KV cache, TP/PP/EP)")
    p.add_argument("--model", required=True, help="preset name, ModelSpec JSON or Hugging Face config.json")
    p.add_argument("--cluster", required=True, help="preset name or cluster profile JSON")
    p.add_argument("--gpus", type=_positive_int, required=True, help="total GPUs")
    p.add_argument("--isl", type=_positive_int, required=True, help="input (prompt) tokens per request")
    p.add_argument("--osl", type=_positive_int, required=True, help="output tokens per request")
    p.add_argument("--ttft-ms", type=_positive_float, help="time-to-first-token limit (ms)")
    p.add_argument("--tpot-ms", type=_positive_float, help="time-per-output-token limit (ms)")
    p.add_argument("--slo-percentile", type=int, choices=PERCENTILES, default=90,
                   help="percentile of requests the limits apply to (default 90)")
    load = p.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=_positive_int, help="closed loop of this many users")
    load.add_argument("--request-rate", type=_positive_float, help="open stream of this many requests per second")
    p.add_argument("--arrivals", choices=ARRIVALS, default="poisson", help="open stream arrivals (default poisson)")
    p.add_argument("--num-requests", type=_positive_int, help="requests simulated per scheduler (default: enough "
                                                              "for a stable p99)")
    p.add_argument("--seed", type=int, default=0, help="arrival seed (default 0)")
    p.add_argument("--dtype", choices=PRECISIONS, help="weights and GEMMs (default bf16; fp32 on CPU clusters)")
    p.add_argument("--kv-dtype", choices=KV_DTYPES, help="KV cache precision (default: the activations')")
    p.add_argument("--disaggregated", action="store_true", help="separate prefill and decode pools")
    for flag in ("tp", "pp", "ep", "attention-dp", "max-batch", "chunk-size", "replicas"):
        p.add_argument(f"--{flag}", type=_positive_int, help=f"fix the {flag.replace('-', ' ')}")
    p.add_argument("--memory-utilization", type=_fraction, default=0.9,
                   help="fraction of device memory for weights, activations and KV cache (vLLM's default 0.9)")
    p.add_argument("--block-size", type=_positive_int, default=16, help="tokens per KV block (default 16)")
    p.add_argument("--top", type=_positive_int, default=5, help="plans to show (default 5)")
    p.add_argument("--simulate-top", type=int, default=DEFAULT_RERANK,
                   help=f"candidates simulated beyond the shown ones (default {DEFAULT_RERANK})")
    p.add_argument("--json", action="store_true", help="print the ranked plans as JSON")
    p.add_argument("--out", help="write the best plan to this file")
    p.set_defaults(func=cmd_serve)
