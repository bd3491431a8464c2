"""torchtitan's published benchmarks (torchtitan_benchmarks.csv): FSDP2 / TP / PP / CP on H100, A100,
H200 and Blackwell, as tokens per second per GPU plus memory.

Step time: torchtitan logs tokens/s per GPU = tokens of the local batch / (seconds x cp x tp x pp)
(`train.py` @ 9dec370: `ntokens_since_last_log / (time_delta * non_data_parallel_size)`), so one step of
the global batch takes global_batch x seq_len / (tokens/s per GPU x GPUs).
Memory: the logger's `max_reserved_gib` (torch's caching-allocator reserved peak), the maximum over GPUs.
Semantics at 9dec370 (see SOURCES.md): FSDP2 reshards after forward (ZeRO-3) except with PP (ZeRO-2);
TP applies SequenceParallel to the norms; PP runs `pp` micro-batches per step and splits layers so the
first and last stages hold one layer fewer when they do not divide; `selective` AC is per-op in the
Llama configs ('op'), the integer option defaults to every 2nd layer.
"""

from __future__ import annotations

from planner.measured.printed import PrintedRun, int_or, number, read_csv
from planner.measured.reasons import reason

FILE = "torchtitan_benchmarks.csv"
MEMORY_DEFINITION = "reserved"  # torch caching allocator reserved peak (max over GPUs)


def _model(name: str) -> str:
    n = name.lower()
    if "qwen3" in n:
        return "qwen3-8b"
    if "llama 2" in n:
        return "llama2-13b" if "13b" in n else "llama2-70b"
    for size in ("405b", "70b", "8b"):
        if size in n:
            return f"llama3-{size}"
    raise ValueError(f"{FILE}: unknown model {name!r}")


def _system(hardware: str) -> str:
    h = hardware.lower()
    if "grand teton" in h or "lower tdp" in h:
        return "h100-96gb-500w"
    if "a100" in h:
        return "a100-80gb"
    if "h200" in h:
        return "h200"
    if "power-limited b200" in h:
        return "b200-power-limited"
    if "sku not stated" in h:
        return "blackwell-unknown"
    raise ValueError(f"{FILE}: unknown hardware {hardware!r}")


def _precision(f8: str) -> str:
    f = f8.lower()
    if f in ("no", "bf16") or f.startswith("none"):
        return "bf16"
    if "rowwise" in f:
        return "fp8-rowwise"
    if "mxfp8" in f:
        return "mxfp8"
    if "nvfp4" in f:
        return "nvfp4"
    if f == "yes" or "tensorwise" in f or f.startswith("float8"):
        return "fp8"  # torchao float8 with dynamic per-tensor scaling (the default recipe)
    raise ValueError(f"{FILE}: unknown float8 setting {f8!r}")


def _recompute(ac: str) -> tuple[str, int, str]:
    """(policy, every k, note) from the printed activation-checkpointing mode."""
    a = ac.lower()
    if not a:
        return "", 1, ""
    if a == "no":
        return "none", 1, ""
    if a == "full":
        return "full", 1, ""
    if "layer" in a:
        return "every-k", 2, "selective layer AC: every 2nd layer (torchtitan's default selective_ac_option)"
    if "op" in a or a == "selective":
        return "op-selective", 1, "" if "op" in a else "selective AC = per-op ('op' in the llama3 8B config)"
    raise ValueError(f"{FILE}: unknown activation checkpointing {ac!r}")


# Tables run before torchtitan compiled its loss with the model (pytorch/torchtitan#1033, April 2025):
# the December 2024 benchmarks (torchtitan 9dec370) and docs/performance.md (published by January 2025).
EAGER_LOSS_SOURCES = ("benchmarks/llama3_h100_202412_torchtitan.md", "docs/performance.md")


def _profile(r: dict[str, str]) -> str:
    """The profile a row ran under: async TP (which needs torch.compile), torch.compile, or eager PyTorch
    as of these runs (2024 to mid-2025: F.rms_norm still PyTorch's composite on the rows without compile);
    with compile, the releases before April 2025 left the loss eager."""
    if not r["torch_compile"].lower().startswith("yes"):
        return "torchtitan-2024"
    name = "torchtitan-async-tp" if r["async_tp"] == "yes" else "torchtitan-compile"
    return f"{name}-2024" if r["source_file"] in EAGER_LOSS_SOURCES else name


def _stage_layers(layers: int, pp: int, per_rank: int) -> list[int]:
    """Layers per pipeline rank under torchtitan's default split (pipelining_utils.generate_split_points)."""
    stages = pp * per_rank
    base, extra = divmod(layers, stages)
    counts = [base] + [base + 1 if i < extra else base for i in range(stages - 2)] + [0]
    counts[-1] = layers - sum(counts[:-1])
    return [sum(counts[r::pp]) for r in range(pp)]  # "loop" style: rank r holds stages r, r + pp, ...


def _row(i: int, r: dict[str, str]) -> PrintedRun:
    model = _model(r["model"])
    n = int(r["num_gpus"])
    tp, pp, cp = int_or(r["tp"], 1), int_or(r["pp"], 1), int_or(r["cp"], 1)
    fsdp = int_or(r["dp_shard_fsdp"], 1)
    seq = int(r["seq_len"])
    notes: list[str] = []
    blockers: list[str] = []
    if n % (tp * pp * cp):
        blockers.append(reason("sizes"))
    dp = max(1, n // (tp * pp * cp))
    local = int(r["local_batch_size"])
    gbs = int_or(r["global_batch_size"], 0) or local * dp
    if gbs != local * dp:
        notes.append(f"printed global batch {gbs} != local batch x data-parallel ranks {local * dp}")
    policy, every, ac_note = _recompute(r["activation_checkpointing"])
    if not policy:
        blockers.append(reason("recompute_unknown"))
    notes += [x for x in (ac_note,) if x]
    kw: dict = {}
    if pp > 1:
        interleaved = "interleaved" in r["pp_schedule"].lower()
        vpp = 2 if interleaved else 1
        kw.update(vpp=vpp, schedule="interleaved-1f1b" if interleaved else "1f1b", micro_batch=local // pp)
        counts = _stage_layers({"llama3-405b": 126, "llama3-70b": 80, "llama3-8b": 32}[model], pp, vpp)
        if len(set(counts)) > 1:
            kw.update(first_stage_layers=counts[0], last_stage_layers=counts[-1], uneven_virtual=vpp > 1)
            notes.append(f"torchtitan's default split: {counts[0]} layers on the first and last ranks, "
                         f"{counts[1]} on the others")
        notes.append(f"{pp} micro-batches of {local // pp} (torchtitan's default: the PP degree)")
    else:
        kw.update(micro_batch=local)
    refinements = ["framework profile: torchtitan (FSDP2 prefetch, per-layer all-gather)"]
    if r["torch_compile"].lower().startswith("yes"):
        refinements.append("torch.compile")
    if r["async_tp"] == "yes":
        refinements.append("async TP")
    if "all-gather" in r["float8"]:
        refinements.append("FP8 FSDP all-gather")
    tps = number(r["tokens_per_sec_per_gpu"])
    step = gbs * seq / (tps * n) if tps else None
    mem = number((r["memory_as_printed"] or "").split(" ")[0])
    label = (f"{r['source_file'].rsplit('/', 1)[-1].removesuffix('.md')} {r['table']}: {r['model'].split(' (')[0]} "
             f"{n} GPUs {r['row_label_as_printed']}")
    return PrintedRun(
        source="torchtitan", row=i, label=label, framework="torchtitan", profile=_profile(r), model=model,
        system=_system(r["hardware"]),
        num_gpus=n, seq_len=seq, global_batch=gbs, tp=tp, pp=pp, cp=cp, ep=int_or(r["ep"], 1), fsdp=fsdp * cp,
        zero_stage=2 if pp > 1 else 3, sequence_parallel=tp > 1, precision=_precision(r["float8"]),
        recompute=policy, recompute_every=every, refinements=tuple(refinements), step_time_s=step,
        step_time_how="global batch x seq_len / (tokens/s per GPU x GPUs)" if step else "",
        memory_gib=mem, memory_definition=MEMORY_DEFINITION if mem is not None else "",
        source_blockers=tuple(blockers), notes=tuple(notes), **kw)


def read(rows: list[dict[str, str]] | None = None) -> list[PrintedRun]:
    """Every row of the torchtitan table, in file order (or of `rows`: a table in its columns read elsewhere)."""
    return [_row(i, r) for i, r in enumerate(read_csv(FILE) if rows is None else rows)]
