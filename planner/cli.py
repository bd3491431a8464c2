"""The `planner` command line (contract: subcommands, flags, exit status 0 / 2 bad input / 1 failure)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from planner.cost import DEFAULT_HEADROOM, estimate
from planner.errors import PlannerError
from planner.framework import framework_names
from planner.graph import build_graph, key_positions
from planner.io import dumps
from planner.plan import (
    DEFAULT_PLACEMENT,
    FINETUNE,
    LORA_TARGETS,
    RECOMPUTE,
    SCHEDULES,
    Plan,
    PlanDocument,
    load_plan,
    save_plan,
)
from planner.precision import PRECISIONS
from planner.report import explain, plans_table, seconds, table, track_record_line
from planner.search import DEFAULT_RERANK
from planner.specs.catalog import (
    cluster_names,
    cluster_preset,
    load_cluster,
    load_model,
    model_catalog,
    model_preset,
    supported_precisions,
)
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (exit 2) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if v > 1 << 40:
        raise argparse.ArgumentTypeError(f"{text} is beyond any real cluster")
    return v


MAX_GLOBAL_BATCH = 1 << 22  # sequences: 4.2 M, some 500x the largest published step (Llama 3 405B's 16 M
# tokens, Dubey et al. 2024) at 2k tokens; beyond it the step simulation's per-micro-batch arrays explode


def _global_batch(text: str) -> int:
    v = _positive_int(text)
    if v > MAX_GLOBAL_BATCH:
        raise argparse.ArgumentTypeError(f"{text} sequences per step is beyond any published training step "
                                         f"(the limit is {MAX_GLOBAL_BATCH:,})")
    return v


def _layers(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a layer count, got {text!r}") from None
    if not 0 <= v <= 100_000:
        raise argparse.ArgumentTypeError(f"expected a layer count in 0..100000, got {text!r}")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if not 0 <= v <= 1 << 20:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer up to {1 << 20}, got {text!r}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not 0 < v < 1e12:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return v


def _placement(text: str) -> tuple[str, ...]:
    dims = tuple(d.strip() for d in text.split(","))
    if sorted(dims) != sorted(DEFAULT_PLACEMENT):
        raise argparse.ArgumentTypeError(f"expected an ordering of tp,cp,dp,pp, got {text!r}")
    return dims


def _emit_json(obj: Any) -> None:
    sys.stdout.write(dumps(obj) + "\n")


def _problem(args: argparse.Namespace) -> tuple[ModelSpec, ClusterSpec]:
    model = load_model(args.model, seq_len=args.seq_len, packed_samples=args.packed_samples)
    cluster = load_cluster(args.cluster, gpus=args.gpus)
    return model, cluster


def _dtype(args: argparse.Namespace, model: ModelSpec, cluster: ClusterSpec) -> str:
    if args.dtype:
        return args.dtype
    return "fp32" if cluster.device == "cpu" else model.dtype


# ---- plan -----------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace) -> int:
    from planner.search import Constraints, search

    model, cluster = _problem(args)
    cons = Constraints(
        tp=args.tp, pp=args.pp, dp=args.dp, cp=args.cp, ep=args.ep, vpp=args.vpp,
        micro_batch=args.micro_batch,
        recompute=tuple(args.recompute) if args.recompute else None,
        sequence_parallel=args.sequence_parallel,
        zero_stages=tuple(args.zero) if args.zero is not None else (0, 1, 2, 3),
        max_memory_gib=args.max_memory_gib, placements=not args.no_placement_search,
        first_stage_layers=args.first_stage_layers, last_stage_layers=args.last_stage_layers,
        recompute_every=args.recompute_every, shard_group=args.shard_group, etp=args.etp,
    )
    progress = _progress_printer() if sys.stderr.isatty() else None
    ft = _finetune(args)
    lora = (ft.get("lora_rank", Plan.OPTIONAL["lora_rank"]), ft.get("lora_targets", LORA_TARGETS)) if ft else None
    result = search(model, cluster, args.global_batch, dtype=_dtype(args, model, cluster),
                    flash=not args.no_flash_attention, constraints=cons, objective=args.objective,
                    top_k=args.top, headroom=args.headroom, rerank=args.simulate_top, lora=lora,
                    framework=args.framework, progress=progress)
    if progress:
        sys.stderr.write("\r" + " " * 70 + "\r")
    rate = result.scored / max(result.seconds, 1e-9)
    print(f"searched {result.space:,} plans in {result.seconds:.2f} s ({rate:,.0f} plans/s); "
          f"{result.fitting:,} fit in memory; re-ranked the best {result.reranked} by simulation in "
          f"{result.rerank_seconds:.2f} s", file=sys.stderr)

    plans, preds, sims = result.plans, result.predictions, result.simulations
    docs = []
    for p, pr, sim in zip(plans, preds, sims, strict=True):
        doc = PlanDocument(plan=p, model=model, cluster=cluster, prediction=pr)
        if sim is not None:
            doc.extra["simulation"] = sim
        docs.append(doc)
    if args.out:
        save_plan(args.out, docs[0])
        print(f"wrote the best plan to {args.out}", file=sys.stderr)
    if args.json:
        _emit_json([d.to_json() for d in docs])
        return 0
    print(f"{model.name} on {cluster.num_gpus} x {cluster.gpu.name} ({cluster.name}), global batch "
          f"{args.global_batch} x seq {model.seq_len}, objective: {args.objective}")
    print(plans_table(plans, preds, sims if args.simulate_top else None))
    if docs:
        print("\nplan 1 " + track_record_line(docs[0].to_json()))
    if args.pareto:
        print("\nPareto front (step time vs memory per GPU):")
        pf = result.pareto
        print(table(["plan", "step s", "mem GiB"],
                    [[p.describe(), pr["step_time_s"], pr["memory_gib_per_gpu"]] for p, pr in pf]))
    if result.pruned:
        print("\npruned: " + "; ".join(f"{k}: {v:,}" for k, v in
                                       sorted(result.pruned.items(), key=lambda kv: -kv[1])))
    return 0


def _progress_printer() -> Callable[[int, int], None]:
    start = time.perf_counter()

    def show(scored: int, fitting: int) -> None:
        if time.perf_counter() - start > 1.0:
            sys.stderr.write(f"\rsearching: {scored:,} plans scored, {fitting:,} fit...")
            sys.stderr.flush()

    return show


# ---- estimate -------------------------------------------------------------------------------


def plan_from_args(args: argparse.Namespace, model: ModelSpec, cluster: ClusterSpec) -> Plan:
    """The plan `planner estimate` scores, from its flags (planner.whatif.build_plan: dp from the GPU
    count unless given, the schedule from vpp unless given)."""
    from planner.whatif import build_plan

    plan = build_plan(cluster.num_gpus, args.global_batch, tp=args.tp or 1, pp=args.pp or 1, cp=args.cp or 1,
                      dp=args.dp, ep=args.ep or 1, vpp=args.vpp or 1, micro_batch=args.micro_batch or 1,
                      schedule=args.schedule, recompute=args.recompute[0] if args.recompute else "none",
                      sequence_parallel=bool(args.sequence_parallel), zero_stage=args.zero[0] if args.zero else 0,
                      dtype=_dtype(args, model, cluster), placement=args.placement or DEFAULT_PLACEMENT,
                      flash_attention=not args.no_flash_attention)
    return dataclasses.replace(plan, first_stage_layers=args.first_stage_layers,
                               last_stage_layers=args.last_stage_layers, embedding_in_split=args.embedding_in_split,
                               loss_in_split=args.loss_in_split, recompute_every=args.recompute_every,
                               framework=args.framework, shard_group=args.shard_group,
                               etp=None if args.etp == plan.tp else args.etp, **_finetune(args))


def _finetune(args: argparse.Namespace) -> dict[str, Any]:
    """Plan fields of `--finetune lora --lora-rank R --lora-targets ...` (none for full training)."""
    if args.finetune != "lora":
        if args.lora_rank is not None or args.lora_targets is not None:
            raise PlannerError("--lora-rank / --lora-targets need --finetune lora", field="finetune")
        return {}
    out: dict[str, Any] = {"finetune": "lora"}
    if args.lora_rank is not None:
        out["lora_rank"] = args.lora_rank
    if args.lora_targets is not None:
        out["lora_targets"] = tuple(args.lora_targets)
    return out


def cmd_estimate(args: argparse.Namespace) -> int:
    model, cluster = _problem(args)
    plan = plan_from_args(args, model, cluster)
    pred = estimate(model, cluster, plan, headroom=args.headroom)
    doc = PlanDocument(plan=plan, model=model, cluster=cluster, prediction=pred)
    if args.out:
        save_plan(args.out, doc)
    if args.json:
        _emit_json(pred)
    else:
        print(explain(doc.to_json()))
    return 0


# ---- explain / simulate ---------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    from planner.plan import refresh_prediction

    doc = load_plan(args.plan)
    stale = refresh_prediction(doc)
    if stale:
        print(f"planner explain: warning: {stale}", file=sys.stderr)
    out = doc.to_json()
    if args.json:
        _emit_json(out)
    else:
        print(explain(out))
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from planner.simulate import simulate_plan

    doc = load_plan(args.plan)
    sim = simulate_plan(doc.model, doc.cluster, doc.plan)
    closed = estimate(doc.model, doc.cluster, doc.plan)
    if args.json:
        _emit_json({**sim.summary(), "closed_form_step_time_s": closed["step_time_s"]})
        return 0
    print(f"{doc.plan.describe()}: simulated step {seconds(sim.step_time_s)} "
          f"(pipeline {seconds(sim.pipeline_s)}; closed form {seconds(closed['step_time_s'])})")
    rows = [[s["rank"], ",".join(map(str, s["virtual_stages"])), s["busy_s"], s["idle_s"],
             f"{s['idle_s'] / max(sim.pipeline_s, 1e-12) * 100:.1f}%"] for s in sim.per_stage]
    print(table(["pp rank", "virtual stages", "busy s", "idle s", "idle"], rows))
    return 0


# ---- calibrate ------------------------------------------------------------------------------


def _default_ranks(device: str) -> int:
    """One rank per GPU on a GPU node (unless --device cpu), else one per CPU core (at least 2)."""
    if device != "cpu":
        import torch

        if torch.cuda.is_available() and torch.cuda.device_count():
            return torch.cuda.device_count()
    return os.cpu_count() or 2


def cmd_calibrate(args: argparse.Namespace) -> int:
    from planner.calibrate import build_profile, run_calibration, write_profile

    extra = None
    if args.nnodes > 1:
        if not args.rdzv_endpoint:
            raise PlannerError("multi-node calibration needs --rdzv-endpoint host:port", field="rdzv_endpoint")
        extra = ["--nnodes", str(args.nnodes), "--rdzv-backend", "c10d", "--rdzv-endpoint", args.rdzv_endpoint,
                 "--rdzv-id", args.rdzv_id]
    start = time.perf_counter()
    if args.nproc_per_node is None:
        args.nproc_per_node = _default_ranks(args.device)
    raw = run_calibration(args.nproc_per_node, quick=args.quick, device=args.device, extra_torchrun=extra)
    profile = build_profile(raw, name=args.name)
    write_profile(args.out, profile, raw)
    if args.json:
        _emit_json(profile.to_dict())
        return 0
    g = profile.gpu
    print(f"wrote {args.out} ({time.perf_counter() - start:.0f} s): {profile.num_gpus} ranks on "
          f"{profile.num_nodes} node(s), {raw['env']['device']}")
    print(table(["GEMM FLOPs", "achieved GFLOP/s", "efficiency"],
                [[f"{f:.3g}", e * max(g.peak_flops.values()) / 1e9, f"{e * 100:.0f}%"] for f, e in g.gemm_curve]))
    print(f"memory bandwidth {g.memory_bandwidth / 1e9:.1f} GB/s, small-op overhead "
          f"{g.kernel_overhead_s * 1e6:.1f} us, overlap slowdown {profile.overlap_slowdown:.2f}")
    if g.cache_bytes:
        print(f"last-level cache {g.cache_bytes / 1e6:.1f} MB per rank at {g.cache_bandwidth / 1e9:.1f} GB/s "
              f"(beyond it, memory at {g.memory_bandwidth / 1e9:.1f} GB/s)")
    if profile.num_gpus > 1 and profile.device == "cpu":
        print(f"host time per layer {profile.host_layer_overhead_s * 1e3:.2f} ms, per tensor-parallel layer "
              f"{profile.tp_layer_overhead_s * 1e3:.2f} ms more; the optimizer "
              f"{profile.dtensor_optimizer_tensor_s * 1e6:.0f} us more per DTensor parameter")
    rows = [[tier, op, r["group"], r["alpha"] * 1e3, r["busbw"] / 1e9]
            for tier, link in (("intra", profile.intra_node), ("inter", profile.inter_node))
            for op, rs in link.collectives.items() for r in rs]
    if profile.num_nodes == 1:
        rows = [r for r in rows if r[0] == "intra"]
    print(table(["tier", "collective", "ranks", "alpha ms", "busbw GB/s"], rows))
    return 0


# ---- demo -----------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Calibrate this machine (once), plan a small GPT for its CPU ranks, run the plan, compare."""
    from pathlib import Path

    from executor.launch import add_run_arguments, run_command

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profile = out / "cluster-profile.json"
    n = args.nproc_per_node
    if args.recalibrate or not profile.exists():
        print(f"== 1/3 calibrating this machine with {n} ranks (planner calibrate --quick) ==", flush=True)
        rc = main(["calibrate", "--nproc-per-node", str(n), "--quick", "--out", str(profile)])
        if rc:
            return rc
    else:
        print(f"== 1/3 using the calibration in {profile} (--recalibrate to measure again) ==", flush=True)
    print(f"\n== 2/3 planning {args.model} for {n} CPU ranks (planner plan) ==", flush=True)
    plan = out / "plan.json"
    # --cp 1: the demo stays on layouts `planner validate` has measured on CPU ranks (context parallelism
    # runs, tests/test_context_parallel.py, but its CPU ring attention is not calibrated yet).
    rc = main(["plan", "--model", args.model, "--cluster", str(profile), "--gpus", str(n), "--global-batch",
               str(args.global_batch), "--top", "5", "--cp", "1", "--out", str(plan)])
    if rc:
        return rc
    print(f"\n== 3/3 running the best plan with torchrun (planner run {plan} --nproc-per-node {n}) ==",
          flush=True)
    run_parser = argparse.ArgumentParser()
    add_run_arguments(run_parser)
    run_args = run_parser.parse_args([str(plan), "--nproc-per-node", str(n), "--steps", str(args.steps),
                                      "--warmup", "3"])
    return run_command(run_args)


# ---- validate -------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    if args.serve:
        from planner.serve.validate import run_serve_validation

        return run_serve_validation(args)
    if args.published:
        return _validate_published(args)
    if args.dry_run:
        from planner.dry_run_report import validate_dry_run

        return validate_dry_run(args)
    from planner.validate import run_validation

    return run_validation(args)


def _validate_published(args: argparse.Namespace) -> int:
    from planner.published import published_rows, summarize

    rows = published_rows()
    summary = summarize(rows)
    if args.json:
        _emit_json({"cluster": "dgx-a100-80gb", "rows": [r.to_json() for r in rows], "summary": summary})
        return 0
    print("Predicted vs published (Korthikanti et al. 2022, Megatron-LM on DGX A100 80GB)")
    print(table(["row", "metric", "published", "predicted", "error", "fit"],
                [[r.name, r.metric, r.published, r.predicted, f"{r.error * 100:+.1f}%",
                  "fit" if r.fit else ""] for r in rows], align="llrrrl"))
    print()
    print(table(["metric", "rows", "MAPE", "worst", "worst row", "used for fit"],
                [[k, v["n_rows"], f"{v['mape'] * 100:.1f}%", f"{v['worst'] * 100:.1f}%", v["worst_row"],
                  v["used_for_fit"]] for k, v in summary.items()], align="lrrrlr"))
    return 0


# ---- catalogs -------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    rows = []
    for name in model_catalog():
        m = model_preset(name)
        g = build_graph(m)
        rows.append({"name": name, "params": g.total_params, "active_params": g.active_params,
                     "num_layers": m.num_layers, "hidden": m.hidden, "num_heads": m.num_heads,
                     "num_kv_heads": m.num_kv_heads, "ffn_hidden": m.ffn_hidden, "vocab_size": m.vocab_size,
                     "seq_len": m.seq_len, "num_experts": m.num_experts, "source": m.source})
    if args.json:
        _emit_json(rows)
        return 0
    print(table(["name", "params", "layers", "hidden", "heads", "kv", "ffn", "vocab", "seq"],
                [[r["name"], f"{r['params'] / 1e9:.3g}B" + (f" ({r['active_params'] / 1e9:.3g}B active)"
                                                            if r["num_experts"] else ""),
                  r["num_layers"], r["hidden"], r["num_heads"], r["num_kv_heads"], r["ffn_hidden"],
                  r["vocab_size"], r["seq_len"]] for r in rows], align="lrrrrrrrr"))
    return 0


def cmd_clusters(args: argparse.Namespace) -> int:
    rows = []
    for name in cluster_names():
        c = cluster_preset(name)
        rows.append({"name": name, "gpu": c.gpu.name, "gpus_per_node": c.gpus_per_node,
                     "nvlink_domain": c.nvlink_domain,
                     "peak_tflops": {k: v / 1e12 for k, v in c.gpu.peak_flops.items()},
                     "precisions": list(supported_precisions(c.gpu)),
                     "memory_gib": c.gpu.memory_bytes / 2**30,
                     "memory_bandwidth_gbs": c.gpu.memory_bandwidth / 1e9,
                     "intra_node_gbs": c.intra_node.bandwidth / 1e9,
                     # NVLink SHARP: an all-reduce's buffer bytes per second in the switch (None: no NVLS)
                     "nvls_all_reduce_gbs": c.intra_node.nvls_bandwidth / 1e9 if c.intra_node.nvls_efficiency else None,
                     "inter_node_gbs": c.inter_node.bandwidth / 1e9, "device": c.device,
                     "topology": c.topology.to_dict() if c.topology is not None else None, "source": c.source})
    if args.json:
        _emit_json(rows)
        return 0
    print(table(["name", "gpu", "per node", "NVLink domain", "bf16 TFLOP/s", "low precision", "mem GiB", "HBM GB/s",
                 "intra GB/s", "NVLS all-reduce GB/s", "inter GB/s"],
                [[r["name"], r["gpu"], r["gpus_per_node"] if r["device"] == "cuda" else "host cores",
                  r["nvlink_domain"] if r["device"] == "cuda" else "-", r["peak_tflops"].get("bf16", 0.0),
                  " ".join(p for p in r["precisions"] if p not in ("fp32", "fp16", "bf16")) or "-",
                  r["memory_gib"], r["memory_bandwidth_gbs"], r["intra_node_gbs"],
                  r["nvls_all_reduce_gbs"] if r["nvls_all_reduce_gbs"] is not None else "-", r["inter_node_gbs"]]
                 for r in rows], align="llrrrlrrrrr"))
    return 0


def cmd_frameworks(args: argparse.Namespace) -> int:
    from planner.framework import Framework, framework

    rows = [framework(n) for n in framework_names()]
    if args.json:
        _emit_json([{"name": f.name, "description": f.description, "tp_overlap": f.tp_overlap,
                     "dp_overlap": f.dp_overlap, "param_gather_overlap": f.param_gather_overlap,
                     "pp_overlap": f.pp_overlap, "optimizer_launches_per_tensor": f.optimizer_launches_per_tensor,
                     "optimizer_step_bytes": dict(f.optimizer_step_bytes_by_dtype) or f.optimizer_step_bytes,
                     "recompute": list(f.recompute), "attention_kernel": f.attention_kernel or "default",
                     "grad_reduce_in_fp32": f.grad_reduce_in_fp32, "fp8_param_gather": f.fp8_param_gather,
                     "fused_norm": f.fused_norm, "quantized_saved_inputs": f.quantized_saved_inputs,
                     "compiled": f.compiled,
                     "composite_rms_norm": f.composite_rms_norm, "cross_entropy": f.cross_entropy,
                     "pipeline_unsharded_grads": f.pipeline_unsharded_grads,
                     "reduction_bucket_after_backward": f.reduction_bucket_after_backward,
                     "dp_bucket_params": f.dp_bucket_params,
                     "cp_rotation": f.cp_rotation, "cp_grads_fp32": f.cp_grads_fp32,
                     "sp_keeps_gathered_input": f.sp_keeps_gathered_input,
                     "recompute_skips_last_collective": f.recompute_skips_last_collective,
                     "overlap_slowdown": f.overlap_slowdown,
                     "gradients": {dtype: dataclasses.asdict(path) for dtype, path in f.gradients},
                     "quantise_bytes": {dtype: dataclasses.asdict(t) for dtype, t in f.quantise_bytes},
                     "source": f.source} for f in rows])
        return 0

    def memory(f: Framework) -> str:
        """What the profile keeps: gradient precision, FP8 primary weights, fused norms, the precision of
        the linear layers' saved inputs, its loss."""
        parts = ["fp32 grads" if f.grad_reduce_in_fp32 else "16-bit grads"]
        if f.gradients:  # the profile's own path per dtype: its buffer and per-micro-batch accumulation
            parts = [f"{dtype} grads {path.buffer_bytes:g} B + {path.accumulation_bytes:g} B/micro-batch"
                     + f" (reduced in {path.reduce_bytes:g} B through a cast of the whole buffer)"
                     * path.reduction_casts_buffer for dtype, path in f.gradients]
        return ", ".join(parts + ["unsharded under pp"] * f.pipeline_unsharded_grads + ["fp8 weights"]
                         * f.fp8_param_gather + ["fused norms"] * f.fused_norm
                         + ["low-precision saved inputs"] * f.quantized_saved_inputs + [f"loss {f.cross_entropy}"]
                         + [f"{f.dp_bucket_params:.0e}-element reduction bucket after the backward"]
                         * f.reduction_bucket_after_backward)

    def optimizer(f: Framework) -> str:
        """Bytes per parameter one optimizer step streams: the profile's own count, else a fused AdamW's."""
        if f.optimizer_step_bytes_by_dtype:
            return ", ".join(f"{dtype} {b:g} B" for dtype, b in f.optimizer_step_bytes_by_dtype)
        return f"{f.optimizer_step_bytes:g} B" if f.optimizer_step_bytes else "fused"

    def elementwise(f: Framework) -> str:
        """How norms and RoPE run: fused kernels, or eager PyTorch's (with the composite RMSNorm); and the
        low-precision recipes whose quantisation the profile counts itself."""
        text = "fused" if f.compiled else "eager" + (", composite norm" if f.composite_rms_norm else "")
        return text + (f", own {'/'.join(d for d, _ in f.quantise_bytes)} casts" if f.quantise_bytes else "")

    print(table(["name", "TP overlap", "DP overlap", "gather overlap", "p2p overlap", "overlap slowdown",
                 "attention", "elementwise", "recompute", "optimizer step", "memory", "what"],
                [[f.name, f.tp_overlap, "yes" if f.dp_overlap else "no", "yes" if f.param_gather_overlap else "no",
                  "yes" if f.pp_overlap else "no",
                  "cluster's" if f.overlap_slowdown is None else f"{f.overlap_slowdown:.2f}",
                  f.attention_kernel or "default", elementwise(f),
                  " ".join(f.recompute), optimizer(f), memory(f), f.description] for f in rows],
                align="llllllllllll"))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    model = load_model(args.model, seq_len=args.seq_len)
    g = build_graph(model)
    s = model.seq_len

    def rows(ops: tuple) -> list[dict]:
        return [{"op": op.name, "kind": op.kind, "tp": op.tp, "params": op.params,
                 "forward_flops_per_token": op.flops + op.flops_s * key_positions(op, s),
                 "saved_bytes_per_token": op.saved + op.saved_s * key_positions(op, s)} for op in ops]

    kinds = [{"kind": k.name, "layers": [i for i, p in enumerate(g.pattern) if p == n], "ops": rows(k.ops)}
             for n, k in enumerate(g.kinds)]
    info = {**model.to_dict(), "params": g.total_params, "active_params": g.active_params,
            "layer_params": g.layer_params, "forward_flops_per_token": g.forward_flops(1, s) / s,
            "layer_kinds": kinds, "post_ops": rows(g.post_ops)}
    if len(kinds) == 1:
        info["layer_ops"] = kinds[0]["ops"]
    if args.json:
        _emit_json(info)
        return 0
    print(f"{model.name}: {g.total_params:,} parameters ({g.active_params:,} active per token), "
          f"{g.forward_flops(1, s) / s / 1e9:.3f} GFLOP forward per token at seq {s}")
    fields = model.to_dict()
    print("  " + ", ".join(f"{k}={v}" for k, v in fields.items() if k not in ("source", "name")))
    print(f"  source: {model.source}")
    header = ["op", "kind", "tp", "params", "fwd FLOP/token", "saved B/token"]
    for k in kinds:
        layers = k["layers"]
        print(f"\nper layer of kind {k['kind']} (x{len(layers)}: layers {_ranges(layers)}):")
        print(table(header, [[o["op"], o["kind"], o["tp"], o["params"], o["forward_flops_per_token"],
                              o["saved_bytes_per_token"]] for o in k["ops"]], align="lllrrr"))
    print("\nhead (last stage):")
    print(table(header, [[o["op"], o["kind"], o["tp"], o["params"], o["forward_flops_per_token"],
                          o["saved_bytes_per_token"]] for o in info["post_ops"]], align="lllrrr"))
    return 0


def _ranges(indices: list[int]) -> str:
    """0-2, 5, 7-9: layer indices as runs."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


# ---- parser -----------------------------------------------------------------------------------


def _add_problem(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="preset name, ModelSpec JSON or Hugging Face config.json")
    p.add_argument("--cluster", required=True, help="preset name or cluster profile JSON")
    p.add_argument("--gpus", type=_positive_int, required=True, help="total GPUs (ranks)")
    p.add_argument("--global-batch", type=_global_batch, required=True, help="sequences per step")
    p.add_argument("--seq-len", type=_positive_int, help="sequence length (default: the model's)")
    p.add_argument("--packed-samples", type=_positive_int, metavar="TOKENS",
                   help="each sequence packs whole samples of about TOKENS tokens and attention stays within a "
                        "sample (fine-tuning on short examples); default: one sample per sequence")
    p.add_argument("--dtype", choices=PRECISIONS,
                   help="training precision: bf16 / fp16 / fp32, or a low-precision recipe (fp8, fp8-rowwise, mxfp8, "
                        "nvfp4: "
                        "linear layers in 8 / 4 bits, the rest bf16); default: the model's, fp32 on CPU clusters")
    p.add_argument("--no-flash-attention", action="store_true",
                   help="unfused attention that stores the s^2 softmax (Megatron-LM 2022)")
    p.add_argument("--framework", choices=framework_names(),
                   help="the framework that runs the plan: what it overlaps and fuses (default: megatron-lm on "
                        "GPUs, this project's executor ('this') on CPU hosts; planner frameworks lists them)")
    p.add_argument("--headroom", type=_fraction, default=DEFAULT_HEADROOM,
                   help=f"fraction of device memory kept free (default {DEFAULT_HEADROOM})")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _add_sizes(p: argparse.ArgumentParser, search: bool) -> None:
    what = "fix" if search else "set"
    for flag in ("tp", "pp", "dp", "cp", "ep", "vpp"):
        p.add_argument(f"--{flag}", type=_positive_int, help=f"{what} the {flag} degree")
    p.add_argument("--micro-batch", type=_positive_int, help=f"{what} the micro-batch size")
    p.add_argument("--first-stage-layers", type=_layers,
                   help="layers of the first pipeline rank (uneven split; Megatron-LM's "
                        "--decoder-first-pipeline-num-layers)")
    p.add_argument("--last-stage-layers", type=_layers, help="layers of the last pipeline rank (uneven split)")
    if not search:
        p.add_argument("--embedding-in-split", action="store_true",
                       help="count the embedding as a layer in the pipeline split (Megatron-LM's "
                            "--account-for-embedding-in-pipeline-split)")
        p.add_argument("--loss-in-split", action="store_true",
                       help="count the loss as a layer in the pipeline split")
    p.add_argument("--recompute-every", type=_positive_int, default=1,
                   help="with full recompute: recompute 1 of every k layers (default 1: all)")
    p.add_argument("--etp", type=_positive_int,
                   help=f"{what} the experts' tensor-parallel size, a divisor of tp (MoE parallel folding: the freed "
                        "tensor-parallel ranks hold other experts; Megatron-Core's --expert-tensor-parallel-size; "
                        "default: tp)")
    p.add_argument("--shard-group", type=_positive_int,
                   help="hybrid sharding (HSDP): ZeRO shards over groups of this many data-parallel (dp x cp) "
                        "ranks and replicates across them (default: one group of all)")
    p.add_argument("--finetune", choices=FINETUNE, default="full",
                   help="full training, or LoRA adapters on frozen base weights")
    p.add_argument("--lora-rank", type=_positive_int, help="LoRA rank (default 16)")
    p.add_argument("--lora-targets", nargs="+", choices=LORA_TARGETS,
                   help=f"linear layers LoRA adapts (default: {' '.join(LORA_TARGETS)})")
    if search:
        p.add_argument("--recompute", nargs="+", choices=RECOMPUTE,
                       help="allowed recompute modes (default: the framework's policies)")
        p.add_argument("--zero", nargs="+", type=int, choices=(0, 1, 2, 3), help="allowed ZeRO stages")
        p.add_argument("--sequence-parallel", action=argparse.BooleanOptionalAction, default=None,
                       help="fix sequence parallelism on or off")
    else:
        p.add_argument("--recompute", nargs=1, choices=RECOMPUTE, help="recompute mode (default none)")
        p.add_argument("--zero", nargs=1, type=int, choices=(0, 1, 2, 3), help="ZeRO stage (default 0)")
        p.add_argument("--sequence-parallel", action="store_true", help="turn on sequence parallelism")
        p.add_argument("--schedule", choices=SCHEDULES, help="pipeline schedule")
        p.add_argument("--placement", type=_placement,
                       help="rank order, innermost first (default tp,cp,dp,pp)")


CORE_COMMANDS = ("plan", "estimate", "frameworks", "explain", "simulate", "models", "clusters", "inspect", "demo",
                 "calibrate", "validate")


def build_parser(core_only: bool = False) -> argparse.ArgumentParser:
    """The whole CLI; `core_only` leaves out the commands defined in other modules (fit, export, trace,
    compare, dashboard, serve, run), whose imports cost a fifth of a second, when one of these runs."""
    parser = _Parser(prog="planner", description="Plan, predict and run parallel Transformer training.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("plan", help="search the plan space and print / write the best plans")
    _add_problem(p)
    _add_sizes(p, search=True)
    p.add_argument("--top", type=_positive_int, default=10, help="plans to show (default 10)")
    p.add_argument("--out", help="write the best plan (one JSON object) to this file")
    p.add_argument("--objective", choices=("time", "throughput", "cost"), default="time")
    p.add_argument("--max-memory-gib", type=_positive_float, help="memory cap per GPU")
    p.add_argument("--simulate-top", type=_count, default=DEFAULT_RERANK,
                   help=f"re-rank this many best plans with the step simulation (0: off; default {DEFAULT_RERANK})")
    p.add_argument("--no-placement-search", action="store_true", help="keep ranks in tp,cp,dp,pp order")
    p.add_argument("--pareto", action="store_true", help="also print the time/memory Pareto front")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("estimate", help="score one fixed plan")
    _add_problem(p)
    _add_sizes(p, search=False)
    p.add_argument("--out", help="also write the plan document to this file")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("frameworks", help="list the framework profiles (what each overlaps and fuses)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_frameworks)

    p = sub.add_parser("explain", help="explain a plan file's prediction")
    p.add_argument("plan")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("simulate", help="discrete-event simulation of one step of a plan")
    p.add_argument("plan")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("models", help="list model presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("clusters", help="list cluster presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_clusters)

    p = sub.add_parser("inspect", help="show one model: fields, parameters, per-layer FLOPs and bytes")
    p.add_argument("model")
    p.add_argument("--seq-len", type=_positive_int)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("demo", help="calibrate, plan a small GPT for this machine's CPU ranks, run it, compare")
    p.add_argument("--nproc-per-node", type=_positive_int, default=2, help="CPU ranks (default 2)")
    p.add_argument("--model", default="tiny", help="model (default tiny)")
    p.add_argument("--global-batch", type=_global_batch, default=8)
    p.add_argument("--steps", type=_positive_int, default=10)
    p.add_argument("--out-dir", default="demo", help="where the profile, plan and measurements go")
    p.add_argument("--recalibrate", action="store_true")
    p.set_defaults(func=cmd_demo)

    if not core_only:
        from planner import fit_cmd

        fit_cmd.add_parser(sub)

    p = sub.add_parser("calibrate", help="measure this machine and write a cluster profile JSON")
    p.add_argument("--nproc-per-node", type=_positive_int, default=None,
                   help="ranks per node (default: the GPUs of a GPU node with --device auto / cuda, else CPU cores)")
    p.add_argument("--out", default="cluster-profile.json", help="profile path (default cluster-profile.json)")
    p.add_argument("--quick", action="store_true",
                   help="shorter timings and fewer message sizes (about 29 s on 2 CPU ranks, against 55 s)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--name", help="cluster name in the profile (default: <host>-calibrated)")
    p.add_argument("--nnodes", type=_positive_int, default=1)
    p.add_argument("--rdzv-endpoint", help="host:port of the c10d rendezvous (multi-node)")
    p.add_argument("--rdzv-id", default="planner-calibrate")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("validate", help="predicted vs measured: local runs, or --published measurements")
    p.add_argument("--published", action="store_true",
                   help="predict the shipped published Megatron-LM measurements instead of running plans")
    p.add_argument("--serve", action="store_true",
                   help="serve a set of serving plans (batch, context, tp 1/2, load) and compare TTFT / TPOT")
    p.add_argument("--dry-run", action="store_true",
                   help="dry-run the search's best plans of several presets at 64-4,096 ranks and compare every "
                        "built rank with the cost model (planner run --dry-run); nothing is launched")
    p.add_argument("--cluster", default=None,
                   help="cluster profile to predict with (default: calibrate this machine first, into "
                        "OUT_DIR/cluster-profile.json)")
    p.add_argument("--nproc-per-node", type=_positive_int, default=2, help="ranks (default 2)")
    p.add_argument("--model", default="tiny", help="model to train (default tiny)")
    p.add_argument("--seq-len", type=_positive_int)
    p.add_argument("--global-batch", type=_global_batch, default=8, help="sequences per step (default 8)")
    p.add_argument("--plans", type=_positive_int, default=12, help="number of plans (default 12)")
    p.add_argument("--launches", type=_positive_int, default=3,
                   help="torchrun launches per plan; the median is used (default 3)")
    p.add_argument("--steps", type=_positive_int, help="timed steps per launch (default 10; 5 with --quick)")
    p.add_argument("--warmup", type=int, help="warm-up steps per launch (default 2)")
    p.add_argument("--quick", action="store_true", help="one launch per plan, fewer steps")
    p.add_argument("--out-dir", default="validation", help="where plans, measurements and reports go")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_validate)

    if not core_only:
        _add_optional_commands(sub)
    return parser


def _add_optional_commands(sub: Any) -> None:
    """Commands whose implementation lives in other modules (each exposes `register(sub)`)."""
    import importlib

    for name in ("planner.export", "planner.trace", "planner.compare", "planner.dashboard_cmd", "planner.serve.cli"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    try:
        from executor.launch import add_run_arguments, run_command
    except ImportError:  # pragma: no cover - executor always ships with the planner
        return
    from planner.dry_run_report import add_dry_run_arguments

    p = sub.add_parser("run", help="execute a plan with torchrun and compare with its prediction (or --dry-run: "
                                   "build its ranks at full size in this process)")
    add_run_arguments(p)
    add_dry_run_arguments(p)
    p.set_defaults(func=lambda a: _run_serve(a) if _is_serve_plan(a.plan) else
                   _dry_run(a) if a.dry_run else run_command(a))


def _is_serve_plan(path: str) -> bool:
    """Whether `path` holds a serving plan (kind "serve"); unreadable files go to the training path,
    which reports them."""
    from planner.io import load_json
    from planner.serve.plan import is_serve_document

    try:
        return is_serve_document(load_json(path))
    except PlannerError:
        return False


def _run_serve(args: argparse.Namespace) -> int:
    from executor.serve_launch import run_serve_command

    return run_serve_command(args)


def _dry_run(args: argparse.Namespace) -> int:
    from planner.dry_run_report import dry_run_command

    return dry_run_command(args)


INPUT_ARGUMENTS = ("plan", "measured", "model", "cluster", "data", "profile")
OUTPUT_KINDS = {"plan": {"plan"}, "estimate": {"plan"}, "serve": {"serve"}, "fit": {"fit"},
                "run": {"measured", "measured-serve", "serve-calibration"}}
"""The planner documents each command's --out may replace; any other command's outputs (traces,
exports, cluster profiles) replace none, so `--out plan.json` on the wrong command loses nothing."""


def _check_outputs(args: argparse.Namespace) -> None:
    """Refuse an output path that must not be written (planner.io.output_target) before any work starts."""
    from planner.io import output_target

    inputs = tuple(v for name in INPUT_ARGUMENTS for v in [getattr(args, name, None)]
                   if isinstance(v, str) and os.path.isfile(v))
    for name in ("out", "profile_out"):
        value = getattr(args, name, None)
        if isinstance(value, str):
            kinds = OUTPUT_KINDS.get(args.command, set()) if name == "out" else set()
            output_target(value, name.replace("_", "-"), inputs, replaces=frozenset(kinds))


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(core_only=bool(words) and words[0] in CORE_COMMANDS)
    args = parser.parse_args(words)
    try:
        _check_outputs(args)
        return int(args.func(args) or 0)
    except PlannerError as exc:
        print(f"planner: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("planner: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # an internal failure: one line unless debugging
        if os.environ.get("PLANNER_DEBUG"):
            raise
        print(f"planner: internal error: {type(exc).__name__}: {exc} (set PLANNER_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
