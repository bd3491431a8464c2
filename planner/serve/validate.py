"""`planner validate --serve`: serve a set of plans for real on local ranks and compare with the prediction.

The set varies what the serving model must get right: batch (1 to 8 running sequences), context
(128- and 384-token prompts), tensor parallelism (1 and 2 ranks), and load (one user, a closed loop
at the batch limit, more users than slots so requests queue, an open Poisson stream). The model is a
small GQA decoder (`VALIDATION_MODEL`, ~27M parameters, 107 MB in fp32), served in fp32.

Steps: (1) a cluster profile (`--cluster`, or `planner calibrate` now): GEMM efficiency curve, memory
bandwidth, collectives; (2) the serving measurements (planner/serve/calibrate.py): forward-only GEMM
efficiency and weight-streaming bandwidth, and the host overheads fitted from the executor's decode
steps of separate calibration models; (3) every plan predicted with that profile
and served `--launches` times, round robin (the median of each metric over launches is compared, as
this VM's speed drifts 5-10% between minutes); (4) MAPE of TPOT p50, TTFT p50 (and p90) and output
tokens/s over the plans, written to OUT_DIR/serve/serve-validation.json with every plan and launch;
(5) every measured engine step against the step model's time for its own batch (`step_errors`), by
kind (decode-only steps, steps that run a prefill chunk): whether the step model or the request-level
simulation (batching, queueing) is off, and which steps moved when a run drifts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from planner.errors import PlannerError
from planner.io import atomic_write_json, dumps
from planner.report import table
from planner.serve.calibrate import fit_overheads, with_kernels, with_overheads
from planner.serve.plan import SLO, ServeDocument, ServePlan, ServePool, Workload, save_serve_plan
from planner.serve.predict import pool_model, predict
from planner.serve.step import overheads_for
from planner.specs.catalog import load_cluster
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

VALIDATION_MODEL = ModelSpec(
    name="serve-small", num_layers=8, hidden=512, num_heads=8, num_kv_heads=2, ffn_hidden=1408, vocab_size=4096,
    seq_len=1024, activation="swiglu", norm="rmsnorm", position="rope", tied_embeddings=False, bias=False,
    dtype="fp32", source="this project: a Llama-style GQA decoder small enough to serve on two CPU cores")

# (name, tp, isl, osl, max_batch, chunk, concurrency, request rate as a fraction of the no-load capacity)
CASES: tuple[tuple[str, int, int, int, int, int, int | None, float | None], ...] = (
    ("1 user", 1, 128, 32, 1, 128, 1, None),
    ("4 users, batch 4", 1, 128, 32, 4, 256, 4, None),
    ("4 users, 384-token prompts", 1, 384, 32, 4, 512, 4, None),
    ("8 users, batch 4 (queueing)", 1, 128, 32, 4, 128, 8, None),
    ("Poisson, batch 4", 1, 128, 32, 4, 256, None, 0.5),
)


def measured_requests(users: int | None) -> int:
    """Requests per run: the simulation's warm-up and drain of a closed loop (users each) plus 8."""
    return 2 * users + 8 if users else 24


def validation_documents(cluster1: ClusterSpec, cluster2: ClusterSpec, tps: tuple[int, ...]) -> list[tuple[str,
                                                                                                             ServeDocument]]:
    """The plans of the set (see the module docstring), each with its prediction."""
    out = []
    for tp in tps:
        cluster = cluster1 if tp == 1 else cluster2
        for name, _, isl, osl, batch, chunk, users, load in CASES:
            plan = ServePlan(pools=(ServePool(tp=tp, max_batch=batch, chunk_size=chunk),), dtype="fp32",
                             kv_dtype="fp32")
            rate = None
            if load is not None:  # a fraction of what one request at a time sustains (no-load latency)
                probe = predict(VALIDATION_MODEL, cluster, plan, Workload(isl, osl, concurrency=1,
                                                                          num_requests=10))
                rate = round(load * batch / (probe["e2e_ms"]["mean"] / 1e3), 3)
            w = Workload(isl=isl, osl=osl, concurrency=users, request_rate=rate,
                         num_requests=measured_requests(users), seed=tp)
            doc = ServeDocument(plan=plan, model=VALIDATION_MODEL, cluster=cluster, workload=w, slo=SLO())
            doc.prediction = predict(VALIDATION_MODEL, cluster, plan, w)
            doc.extra["name"] = f"tp{tp} {name}"
            out.append((f"tp{tp} {name}", doc))
    return out


def _err(pred: float, meas: float) -> float | None:
    return None if not meas else (pred - meas) / meas


def _mape(errors: list[float | None]) -> float | None:
    xs = [abs(e) for e in errors if e is not None]
    return sum(xs) / len(xs) if xs else None


STEP_KINDS = ("decode", "prefill")  # steps with no prompt tokens; steps that run a prefill chunk


def step_errors(doc: ServeDocument, steps: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Each measured engine step (executor.serve's `steps`: columns and rows) against the step model's time
    for its own batch (tokens, sampled sequences, decoding sequences and their context, prefill tokens and
    query-key pairs), grouped by kind: {kind: {steps, measured_ms, predicted_ms (medians), error (median
    of predicted / measured - 1)}}. A kind with no steps is left out."""
    pool = doc.plan.pools[0]
    cost = pool_model(doc.model, doc.cluster, doc.plan, pool, doc.workload, overheads_for(doc.cluster)).cost
    cols = steps["columns"]
    rows = np.array(steps["rows"], dtype=np.float64).reshape(-1, len(cols))
    col = {name: rows[:, i] for i, name in enumerate(cols)}
    pred = np.asarray(cost.step_time(col["tokens"], col["sampled"], col["decode"], col["decode_ctx"],
                                     col["prefill_tokens"], col["prefill_pairs"]), dtype=np.float64).reshape(-1)
    out: dict[str, dict[str, float]] = {}
    for kind, mask in zip(STEP_KINDS, (col["prefill_tokens"] == 0, col["prefill_tokens"] > 0), strict=True):
        if not mask.any():
            continue
        meas = col["seconds"][mask]
        out[kind] = {"steps": int(mask.sum()), "measured_ms": float(np.median(meas)) * 1e3,
                     "predicted_ms": float(np.median(pred[mask])) * 1e3,
                     "error": float(np.median(pred[mask] / meas - 1.0))}
    return out


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover
        return float("nan")


def run_serve_validation(args: argparse.Namespace) -> int:
    """The `planner validate --serve` command."""
    from executor.serve import calibration_spec
    from executor.serve_launch import ServeRunFailed, run_serve, run_serve_calibration

    nproc = args.nproc_per_node
    tps = (1, 2) if nproc >= 2 else (1,)
    out_dir = Path(args.out_dir) / "serve"
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if args.cluster is None:
        from planner.calibrate import build_profile, run_calibration, write_profile

        print(f"calibrating this machine with {max(nproc, 2)} ranks first (planner calibrate"
              f"{' --quick' if args.quick else ''})", file=sys.stderr)
        raw = run_calibration(max(nproc, 2), quick=args.quick)
        args.cluster = str(write_profile(out_dir / "cluster-profile.json", build_profile(raw), raw))
    base = load_cluster(args.cluster)
    print("fitting the serving host overheads (executor.serve --calibrate on 1 and 2 ranks)", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    kernels = None
    for tp in tps:
        cal = run_serve_calibration(tp, out_dir / f"serve-calibration-tp{tp}.json")
        rows += cal["rows"]
        kernels = kernels or cal.get("kernels")
    base = with_kernels(base, kernels)
    overheads = fit_overheads(base, rows, calibration_spec)
    profile = with_overheads(base, overheads, rows)
    atomic_write_json(out_dir / "serve-profile.json", profile.to_dict())
    print("overheads: " + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in overheads.to_dict().items()
                                    if isinstance(v, float)), file=sys.stderr)
    docs = validation_documents(profile.with_gpus(1), profile.with_gpus(2) if 2 in tps else profile.with_gpus(1),
                                tps)
    launches = 1 if args.quick else args.launches
    paths = []
    for i, (_, doc) in enumerate(docs):
        path = out_dir / f"plan{i:02d}.json"
        save_serve_plan(path, doc)
        paths.append(path)
    measured: list[list[dict[str, Any]]] = [[] for _ in docs]
    for launch in range(launches):
        for i, ((name, doc), path) in enumerate(zip(docs, paths, strict=True)):
            print(f"[launch {launch + 1}/{launches}] {name}: serving {doc.workload.describe()}", file=sys.stderr)
            load_before = _load()
            try:
                m = run_serve(path, None, out_dir / f"plan{i:02d}.launch{launch}.measured.json")
            except (ServeRunFailed, PlannerError) as exc:
                print(f"  failed: {str(exc).splitlines()[0]}", file=sys.stderr)
                continue
            m["load_average"] = [load_before, _load()]
            measured[i].append(m)
    results = []
    for (name, doc), ms in zip(docs, measured, strict=True):
        if not ms:
            continue
        pred = doc.prediction or {}

        def med(key: str, q: str | None = None, ms: list[dict[str, Any]] = ms) -> float:
            return statistics.median(m[key][q] if q else m[key] for m in ms)

        row = {"name": name, "plan": doc.plan.describe(), "workload": doc.workload.to_dict(), "launches": len(ms),
               "predicted": {"ttft_ms": pred["ttft_ms"], "tpot_ms": pred["tpot_ms"],
                             "tokens_per_s": pred["tokens_per_s"]},
               "measured": {"ttft_ms": {q: med("ttft_ms", q) for q in ("p50", "p90", "p99", "mean")},
                            "tpot_ms": {q: med("tpot_ms", q) for q in ("p50", "p90", "p99", "mean")},
                            "tokens_per_s": med("tokens_per_s")},
               "load_average": [m["load_average"] for m in ms],
               "steps": step_errors(doc, {"columns": ms[0]["steps"]["columns"],
                                          "rows": [r for m in ms for r in m["steps"]["rows"]]})}
        row["error"] = {"ttft_p50": _err(pred["ttft_ms"]["p50"], row["measured"]["ttft_ms"]["p50"]),
                        "ttft_p90": _err(pred["ttft_ms"]["p90"], row["measured"]["ttft_ms"]["p90"]),
                        "tpot_p50": _err(pred["tpot_ms"]["p50"], row["measured"]["tpot_ms"]["p50"]),
                        "tpot_p90": _err(pred["tpot_ms"]["p90"], row["measured"]["tpot_ms"]["p90"]),
                        "tokens_per_s": _err(pred["tokens_per_s"], row["measured"]["tokens_per_s"])}
        results.append(row)
    summary = {k: _mape([r["error"][k] for r in results])
               for k in ("tpot_p50", "tpot_p90", "ttft_p50", "ttft_p90", "tokens_per_s")}
    for kind in STEP_KINDS:
        summary[f"{kind}_steps"] = _mape([r["steps"][kind]["error"] for r in results if kind in r["steps"]])
    summary.update(n_plans=len(results), launches=launches, wall_s=time.time() - start,
                   targets={"tpot_p50": 0.10, "ttft_p50": 0.15},
                   met={"tpot": summary["tpot_p50"] is not None and summary["tpot_p50"] <= 0.10,
                        "ttft_p50": summary["ttft_p50"] is not None and summary["ttft_p50"] <= 0.15})
    report = {"kind": "serve-validation", "model": VALIDATION_MODEL.to_dict(), "cluster": args.cluster,
              "overheads": overheads.to_dict(), "calibration": rows, "plans": results, "summary": summary}
    atomic_write_json(out_dir / "serve-validation.json", report)
    if args.json:
        sys.stdout.write(dumps(report) + "\n")
        return 0

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x * 100:+.1f}%"

    print(table(["plan", "TTFT p50 ms pred / meas", "err", "TPOT p50 ms pred / meas", "err", "tok/s pred / meas",
                 "err"],
                [[r["name"], f"{r['predicted']['ttft_ms']['p50']:.0f} / {r['measured']['ttft_ms']['p50']:.0f}",
                  pct(r["error"]["ttft_p50"]),
                  f"{r['predicted']['tpot_ms']['p50']:.1f} / {r['measured']['tpot_ms']['p50']:.1f}",
                  pct(r["error"]["tpot_p50"]),
                  f"{r['predicted']['tokens_per_s']:.1f} / {r['measured']['tokens_per_s']:.1f}",
                  pct(r["error"]["tokens_per_s"])] for r in results], align="lrrrrrr"))

    def kind_cells(r: dict[str, Any], kind: str) -> list[str]:
        s = r["steps"].get(kind)
        return [f"{s['predicted_ms']:.1f} / {s['measured_ms']:.1f}", str(s["steps"]), pct(s["error"])] if s \
            else ["-", "0", "-"]

    print("\nEngine steps, each against the step model for its own batch (medians over the plan's launches):")
    print(table(["plan", "decode-only ms pred / meas", "steps", "err", "with prefill ms pred / meas", "steps", "err"],
                [[r["name"], *kind_cells(r, "decode"), *kind_cells(r, "prefill")] for r in results],
                align="lrrrrrr"))
    print(f"step MAPE: decode-only {pct(summary['decode_steps'])[1:]}, "
          f"with prefill {pct(summary['prefill_steps'])[1:]}")
    print(f"\n{len(results)} plans x {launches} launch(es): TPOT p50 MAPE {pct(summary['tpot_p50'])[1:]}, "
          f"TTFT p50 MAPE {pct(summary['ttft_p50'])[1:]}, TTFT p90 MAPE {pct(summary['ttft_p90'])[1:]}, "
          f"tokens/s MAPE {pct(summary['tokens_per_s'])[1:]} (targets: TPOT <= 10%, TTFT p50 <= 15%); "
          f"wrote {out_dir / 'serve-validation.json'} ({summary['wall_s']:.0f} s)")
    return 0

