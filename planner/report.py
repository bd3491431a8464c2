"""Human-readable tables and breakdowns for the CLI (plain text, no dependencies)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from planner.plan import Plan


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A plain fixed-width table; `align` is a string of 'l'/'r' per column (default: text left)."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    if align is None:
        align = "".join("r" if rows and isinstance(rows[0][i], (int, float)) else "l"
                        for i in range(len(headers)))

    def line(vals: Sequence[str]) -> str:
        out = []
        for v, w, a in zip(vals, widths, align, strict=True):
            out.append(v.rjust(w) if a == "r" else v.ljust(w))
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 100:
            return f"{v:.1f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def seconds(s: float) -> str:
    if s >= 1:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def plans_table(plans: Sequence[Plan], preds: Sequence[dict], sims: Sequence[dict | None] | None = None) -> str:
    headers = ["#", "plan", "step s", "tok/s/GPU", "MFU", "mem GiB", "bubble", "exposed comm"]
    if sims is not None:
        headers.insert(3, "simulated s")
    rows = []
    for i, (p, pr) in enumerate(zip(plans, preds, strict=True)):
        t = pr["time"]
        row: list[Any] = [i + 1, p.describe() + _placement_note(p), pr["step_time_s"],
                          pr["tokens_per_s_per_gpu"], f"{pr['mfu'] * 100:.1f}%",
                          pr["memory_gib_per_gpu"], f"{t['bubble'] / pr['step_time_s'] * 100:.1f}%",
                          f"{t['exposed'] / pr['step_time_s'] * 100:.1f}%"]
        if sims is not None:
            sim = sims[i]
            row.insert(3, sim["step_time_s"] if sim else "-")
        rows.append(row)
    return table(headers, rows)


def _placement_note(p: Plan) -> str:
    if p.placement == ("tp", "cp", "dp", "pp"):
        return ""
    return " [" + ">".join(p.placement) + "]"


def _misaligned_heads(doc: dict[str, Any]) -> str:
    """Why unfused attention is priced slow where a head is not a whole number of 16-byte vectors
    (planner.cost.compute.bmm_rate_dtype), with what would avoid it; "" where that does not apply."""
    from planner.cost.compute import TENSOR_CORE_ALIGNMENT_BYTES, bmm_rate_dtype, misaligned_head_width
    from planner.graph import DTYPE_BYTES
    from planner.precision import base_dtype
    from planner.specs.catalog import load_model
    from planner.specs.cluster import GPUSpec

    c = doc["cluster"]
    if doc.get("flash_attention", True) or not isinstance(c["gpu"], dict):
        return ""
    m, gpu, dtype = load_model(doc["model"]), GPUSpec.from_dict(c["gpu"]), doc.get("dtype", "bf16")
    head_dims = (m.qk_head_dim, m.head_dim)
    if bmm_rate_dtype(gpu, dtype, head_dims) == base_dtype(dtype):
        return ""
    b = DTYPE_BYTES[base_dtype(dtype)]
    width = misaligned_head_width(dtype, head_dims)
    return (f"unfused attention's BMMs priced at the fp32 CUDA-core peak: a head of {width} x {b} B is not a "
            f"multiple of {TENSOR_CORE_ALIGNMENT_BYTES} bytes, which tensor-core GEMMs need (docs/cost-model.md §2; "
            f"a head width that is a multiple of {TENSOR_CORE_ALIGNMENT_BYTES // b}, or fused attention, avoids it)")


def _framework_line(doc: dict[str, Any]) -> str:
    """What the plan's framework profile assumes (planner/data/frameworks.json), in one line."""

    from planner.framework import ATTENTION_KERNELS, CROSS_ENTROPY_KERNELS, framework
    from planner.specs.cluster import GPUSpec

    c = doc["cluster"]
    fw = framework(_framework_name(doc))
    gpu = GPUSpec.from_dict(c["gpu"]) if isinstance(c["gpu"], dict) else None
    eff = gpu.attention_fraction(fw.attention_kernel) if gpu else 0.0
    clock = f" at {gpu.clock_fraction:.2f} of the datasheet clock" if gpu and gpu.clock_fraction < 1 else ""
    attention = f"attention {ATTENTION_KERNELS[fw.attention_kernel]}" + (
        f" at {eff:.2f} of peak{clock}" if eff else " at the GEMM efficiency")
    return (f"framework {fw.name}{'' if doc.get('framework') else ' (default)'}: TP comm overlap {fw.tp_overlap}, "
            f"DP reduce overlap {'yes' if fw.dp_overlap else 'no'}, parameter gather overlap "
            f"{'yes' if fw.param_gather_overlap else 'no'}, p2p overlap {'yes' if fw.pp_overlap else 'no'}"
            + (f" (overlapped communication slows the compute beside it by {fw.overlap_slowdown:.2f} of its time)"
               if fw.overlap_slowdown is not None else "")
            + f", {attention}, norms and RoPE "
            + ("fused" if fw.compiled else "eager" + (" (composite RMSNorm)" if fw.composite_rms_norm else ""))
            + f", gradients {_gradients(fw, doc.get('dtype', 'bf16'))}"
            + _saved_inputs(fw, doc.get("dtype", "bf16")) + f", loss {CROSS_ENTROPY_KERNELS[fw.cross_entropy]}"
            + _context_parallel(fw, int(doc.get("cp", 1)))
            + _dtensor_tp(fw, int(doc["tp"]) > 1 and bool(doc.get("sequence_parallel")), doc.get("recompute", "none")))


def _dtensor_tp(fw: Any, sp: bool, recompute: str) -> str:
    """What the profile's tensor parallelism keeps and re-runs (a clause, empty where it is Megatron-LM's or
    the plan does not use it)."""
    parts = []
    if sp and fw.sp_keeps_gathered_input:
        parts.append("column-parallel linears keep the gathered input (no backward re-gather)")
    if recompute == "full" and fw.recompute_skips_last_collective:
        parts.append("recompute stops before a layer's last collective")
    return "".join(f", {p}" for p in parts)


def _framework_name(doc: dict[str, Any]) -> str:
    """The framework profile a plan document names, or its cluster's default."""
    from types import SimpleNamespace

    from planner.framework import default_framework

    return doc.get("framework") or default_framework(SimpleNamespace(device=doc["cluster"].get("device", "cuda")))


def track_record_line(doc: dict[str, Any]) -> str:
    """How close the model came on published runs like the plan document `doc` (planner.track_record)."""
    from planner.framework import framework_root
    from planner.track_record import RecordRow, load, summary_line

    c = doc["cluster"]
    gpu = c["gpu"]["name"] if isinstance(c["gpu"], dict) else str(c["gpu"])
    like = RecordRow(source="", label="", framework=framework_root(_framework_name(doc)), gpu=gpu,
                     dtype=doc.get("dtype", "bf16"),
                     tp=int(doc["tp"]), cp=int(doc.get("cp", 1)), seq_len=int(doc["model"]["seq_len"]), error=0.0)
    return summary_line(load(), like)


def _context_parallel(fw: Any, cp: int) -> str:
    """How the profile's context parallelism moves K and V (a clause, empty without context parallelism)."""
    from planner.framework import CP_ROTATIONS

    if cp <= 1:
        return ""
    grads = "dK / dV in fp32" if fw.cp_grads_fp32 else "dK / dV in the training dtype"
    return f", context parallelism: {CP_ROTATIONS[fw.cp_rotation]} ({fw.cp_rotation}), {grads}"


def _saved_inputs(fw: Any, dtype: str) -> str:
    """What the profile's low-precision linear layers keep of their input for the weight gradient (a
    clause, empty outside the low-precision recipes)."""
    from planner.precision import RECIPES

    recipe = RECIPES.get(dtype)
    if recipe is None or not recipe.low_precision:
        return ""
    kept = f"an {dtype} copy of their input" if fw.quantized_saved_inputs else f"their {recipe.base} input"
    own = fw.quantise_traffic(dtype)
    casts = "" if own is None else (
        f", its own {dtype} casts ({own.input_fwd + own.input_bwd:g} / {own.weight_fwd + own.weight_bwd:g} / "
        f"{own.grad_output_bwd:g} B per input / weight / output-gradient element)")
    return f", linear layers keep {kept} for the weight gradient" + casts


def _gradients(fw: Any, dtype: str) -> str:
    """How the profile keeps, accumulates and reduces gradients under `dtype` (planner.cost.memory)."""
    from planner.cost.memory import gradient_path

    g = gradient_path(fw, dtype)
    text = f"{g.buffer_bytes:g} B per parameter kept, reduced in {g.reduce_bytes:g} B"
    if g.reduce_op == "all_reduce":
        text += " (all-reduced under ZeRO-1)"
    if g.accumulation_bytes:
        text += f", accumulated outside the GEMMs ({g.accumulation_bytes:g} B per micro-batch)"
    return text


def explain(doc: dict[str, Any]) -> str:
    """The breakdown of a plan document: sizes, time and memory components, and the formulas."""
    m, c, pr = doc["model"], doc["cluster"], doc.get("prediction")
    lines = [
        f"model    {m['name']}: {m['num_layers']} layers, hidden {m['hidden']}, {m['num_heads']} heads "
        f"({m.get('num_kv_heads', m['num_heads'])} kv), ffn {m['ffn_hidden']}, vocab {m['vocab_size']}, "
        f"seq {m['seq_len']}",
        f"cluster  {c['name']}: {doc['num_gpus']} x {c['gpu']['name'] if isinstance(c['gpu'], dict) else c['gpu']}"
        f" ({c['gpus_per_node']} per node, {c['num_nodes']} nodes)",
        f"plan     tp {doc['tp']} x cp {doc['cp']} x dp {doc['dp']} x pp {doc['pp']} (ep {doc['ep']}, "
        + (f"experts' tp {doc['etp']}, " if doc.get("etp") not in (None, doc["tp"]) else "")
        + f"vpp {doc['vpp']}), micro-batch {doc['micro_batch']}, global batch {doc['global_batch']} "
        f"({doc['grad_accum']} micro-batches per step), schedule {doc['schedule']}, recompute "
        f"{doc['recompute']}, sequence parallel {'on' if doc['sequence_parallel'] else 'off'}, ZeRO "
        f"{doc['zero_stage']}, {doc['dtype']}, placement {' > '.join(doc['placement'])} (innermost first)",
    ]
    extras = []
    if doc.get("first_stage_layers") is not None or doc.get("last_stage_layers") is not None:
        extras.append(f"uneven pipeline: first rank {doc.get('first_stage_layers', 'even')} layers, last rank "
                      f"{doc.get('last_stage_layers', 'even')} layers, the others equal")
    if doc.get("recompute_every", 1) > 1:
        extras.append(f"full recompute of 1 in every {doc['recompute_every']} layers")
    group = doc["dp"] * doc["cp"]
    if doc.get("shard_group") and doc["shard_group"] < group and doc["zero_stage"]:
        extras.append(f"hybrid sharding: ZeRO over groups of {doc['shard_group']} of the {group} data-parallel "
                      f"ranks, replicated {group // doc['shard_group']} times")
    if doc.get("finetune") == "lora":
        extras.append(f"LoRA fine-tuning: rank {doc.get('lora_rank', 16)} adapters on "
                      f"{', '.join(doc.get('lora_targets', ('qkv', 'proj', 'up', 'down')))}; base weights frozen")
    gpu = c["gpu"] if isinstance(c["gpu"], dict) else {}
    if gpu.get("cache_bytes"):
        extras.append(f"host memory: the step streams from memory at {gpu['memory_bandwidth'] / 1e9:.1f} GB/s "
                      "(its data does not stay in cache between uses), an unfused optimizer's repeated passes from a "
                      f"{gpu['cache_bytes'] / 1e6:.1f} MB cache share at {gpu['cache_bandwidth'] / 1e9:.1f} GB/s "
                      "(docs/cost-model.md §2)")
    links = [c.get(tier) for tier in ("intra_node", "inter_node") if isinstance(c.get(tier), dict)]
    if any("burst_alpha" in r for link in links for rows in (link.get("collectives") or {}).values() for r in rows):
        extras.append("collectives: priced as calibrate timed them after 10 ms of compute on every rank (as a step "
                      "issues them; ZeroRedundancyOptimizer's per-tensor broadcasts after the first as timed back "
                      "to back) (docs/cost-model.md §8)")
    misaligned = _misaligned_heads(doc)
    if misaligned:
        extras.append(misaligned)
    if extras:
        lines.append("         " + "; ".join(extras))
    lines.append(_framework_line(doc))
    lines.append(track_record_line(doc))
    if pr is None:
        return "\n".join([*lines, "(no prediction in this file: run `planner estimate` to add one)"])
    t, mem = pr["time"], pr["memory"]
    step = pr["step_time_s"]
    lines += [
        "",
        f"step time {seconds(step)}   {pr['tokens_per_s']:,.0f} tokens/s   "
        f"{pr['tflops_per_gpu']:.1f} model TFLOP/s/GPU (MFU {pr['mfu'] * 100:.1f}%)   "
        f"{pr['hw_tflops_per_gpu']:.1f} hardware TFLOP/s/GPU",
        "",
        "time (critical pipeline stage, whole step)",
        table(["component", "seconds", "share", "meaning"], [
            ["compute", t["compute"], f"{t['compute'] / step * 100:.1f}%",
             "forward + backward (+ recompute) of every micro-batch"],
            ["exposed comm", t["exposed"], f"{t['exposed'] / step * 100:.1f}%",
             "communication not hidden behind compute"],
            ["bubble", t["bubble"], f"{t['bubble'] / step * 100:.1f}%",
             "pipeline fill and drain: (p-1)/(v m) of the stage time"],
            ["optimizer", t.get("optimizer", 0.0), f"{t.get('optimizer', 0.0) / step * 100:.1f}%",
             "AdamW step, memory bound"],
        ], align="lrrl"),
        "",
        "communication (total time of each kind, hidden or not)",
        table(["kind", "seconds", "what"], [
            ["tp_comm", t["tp_comm"], "all-reduce / all-gather + reduce-scatter, 2 per layer each way"],
            ["pp_comm", t["pp_comm"], "activations and gradients between stages"],
            ["dp_comm", t["dp_comm"], "gradient reduction (and parameter gathers for ZeRO)"],
            ["cp_comm", t["cp_comm"], "ring exchange of keys and values"],
            ["ep_comm", t["ep_comm"], "all-to-all token dispatch and combine"],
        ], align="lrl"),
        "",
        f"memory per GPU {pr['memory_gib_per_gpu']:.2f} GiB of {pr.get('memory_limit_gib', 0):.2f} GiB usable "
        f"-> {'fits' if pr['fits'] else 'DOES NOT FIT'}",
        table(["kind", "GiB"], [[k, v] for k, v in mem.items()], align="lr"),
    ]
    if doc.get("zero_stage", 0) >= 1 and mem.get("activations", 1.0) == 0.0:
        lines.append("(the peak is the optimizer step, activations freed: the framework copies the gradients of the "
                     "rank's ZeRO shard there, `grads` above; docs/cost-model.md §5)")
    reserved = pr.get("memory_reserved_gib_per_gpu")
    if reserved is not None and reserved > pr["memory_gib_per_gpu"] * (1 + 1e-9):
        lines.append(f"PyTorch's caching allocator reserves {reserved:.2f} GiB (what nvidia-smi shows): the optimizer "
                     "step's gradient copies take new segments on top of the backward's peak (docs/cost-model.md §5)")
    sim = doc.get("simulation")
    if sim:
        lines += ["", f"discrete-event simulation: step {seconds(sim['step_time_s'])} "
                  f"(closed form {seconds(step)})"]
    return "\n".join(lines)
