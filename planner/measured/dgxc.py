"""NVIDIA DGX Cloud benchmarking tables (dgxc_benchmarking_step_times.csv): NeMo, MaxText, PaxML.

What each table printed is in the row; what the benchmark's own configuration files fix and the table
does not print is stated here with its file (NVIDIA/dgxc-benchmarking, see SOURCES.md):
- NeMo (all Llama 3.1, Nemotron-4, Grok-1, GPT-3 tables): no activation recompute
  (`activations_checkpoint_*: null` in every YAML; NeMo 2 recipes set none), sequence parallelism with
  TP, Megatron's distributed optimizer (sharded optimizer state: ZeRO-1), interleaved 1F1B when VP > 1,
  Transformer Engine FP8 (E4M3 forward / E5M2 backward, per-tensor delayed scaling) for "FP8".
- NeMo 2 (v25.04.01 on) counts the embedding and the loss as pipeline layers when the layer count does
  not split evenly (`account_for_embedding/loss_in_pipeline_split`): 126 layers on PP 8 x VP 8 = 128
  slots, the first and last virtual stages one layer short.
- MaxText (`maxtext/configure.sh`): FSDP over all GPUs up to 64 nodes, then 16 nodes x 8 GPUs FSDP with
  DP across; remat policy `save_dot_except_mlpwi` (bf16) / `save_dot_except_mlp` (fp8).
- PaxML (`paxml/configure.sh`, `paxml_mod_configs.py`): GPT-5B FSDP 8 inside a node and DP across nodes,
  remat `SAVE_DOT_ONLY`; GPT-175B FSDP over 16 nodes (128 GPUs), remat `SAVE_QKV_OUT_PROJ`. configure.sh
  sets `ENABLE_TE=1`: the layers are Transformer Engine's, whose GEMMs a dot-based JAX policy does not see
  (TE_BLIND_DOT_POLICIES), while named policies work on them (TE names its tensors for PaxML's policies).
- Fine-tuning (v25.03 `llama3/finetuning`, NeMo `llama3_*` recipes, performance mode): packed sequences
  of 4096; LoRA on `linear_qkv` (rank 16, as NeMo's Llama recipes set `peft.dim`). The data is SQuAD
  (`llama3_finetune.py` imports NeMo's SquadDataModule and checks its pack metadata): whole question-
  answer samples packed into each 4096-token row, attention within each sample (SQUAD_SAMPLE_TOKENS).
"""

from __future__ import annotations

import re

from planner.measured.printed import PrintedRun, int_or, number, read_csv
from planner.measured.reasons import reason

FILE = "dgxc_benchmarking_step_times.csv"
# Praxis checkpoint policies that save the outputs of `dot_general` primitives
# (jax.checkpoint_policies.checkpoint_dots): under Transformer Engine's layers (PaxML with ENABLE_TE=1)
# they save nothing, so the whole layer is recomputed. NVIDIA/TransformerEngine#2003 (July 2025), which
# added TE-aware versions of these policies: "Previously, TE GEMM checkpoints would be ignored and would
# cause unnecessary rematted computations unless checkpoint names were listed explicitly"; named policies
# such as SAVE_QKV_OUT_PROJ work since TE named its tensors for PaxML (NVIDIA/TransformerEngine#542, 2023).
TE_BLIND_DOT_POLICIES = ("SAVE_DOT_ONLY",)
# Tokens of one packed SQuAD sample (context, question and answer), for its attention: TensorFlow
# Datasets lists squad/v1.1 at 94.06 MiB for its 87,599 + 10,570 examples, 1,005 bytes per example (each
# stores its context with its question, answer, id and title), and English text runs about 4 characters
# per token in the tiktoken vocabulary Llama 3's tokenizer extends (OpenAI's tokenizer help: "one token
# generally corresponds to ~4 characters of text for common English text"): about 250 tokens. The
# estimate moves little: attention over 250 keys or over 400 is 6% or 10% of a full 4096-token row's.
SQUAD_SAMPLE_TOKENS = 250
NEMO_REFINEMENTS = ("framework profile: NeMo (TP comm overlap, DP overlap, distributed optimizer)",)


def _family(title: str, release: str) -> tuple[str, str, int]:
    """(model key, framework, default sequence length) from a table title."""
    t = title.lower()
    if "grok" in t:
        return "grok1-314b-nemo", "nemo", 8192
    if "maxtext" in t:
        return ("llama2-70b", "maxtext", 4096) if "llama2" in t else ("llama3-70b", "maxtext", 8192)
    if "paxml" in t:
        return ("paxml-gpt5b", "paxml", 2048) if "gpt5b" in t else ("gpt3-175b", "paxml", 2048)
    if "nemo megatron" in t:
        return "gpt3-175b", "nemo", 2048
    if "nemotron" in t:
        return ("nemotron4-15b" if "15b" in t else "nemotron4-340b"), "nemo", 4096
    if "405b" in t:
        # The 24.09 / v25.03 YAML ran a 16-query-group, GPT-2-vocabulary variant; NeMo 2 recipes the real one.
        old = release.startswith(("v24.11", "v25.03"))
        return ("llama3.1-405b-dgxc2409" if old else "llama3-405b"), "nemo", 8192
    if "70b" in t:
        return "llama3-70b", "nemo", 8192
    if "8b" in t:
        return "llama3-8b", "nemo", 8192
    raise ValueError(f"{FILE}: unknown table {title!r}")


# Workloads whose benchmark scripts turn Transformer Engine's cuDNN fused attention off (NVTE_FUSED_ATTN=0),
# so TE runs FlashAttention-2: (table-title words, releases) from grok1/configure.sh, nemotron/configure.sh
# (340B; the 15B sets 1) and nemo_megatron/launch.sh (v24.11.1; its v25.02 configure.sh sets 1).
FLASH_ATTENTION_WORKLOADS = ((("grok",), ("v24.11.1", "v25.02", "v25.03")),
                             (("nemotron", "340b"), ("v24.11.1", "v25.02", "v25.03")),
                             (("nemo megatron",), ("v24.11.1",)))


def _nemo_profile(title: str, release: str) -> str:
    """The NeMo profile of a workload: with FlashAttention-2 where its scripts disable TE's fused attention."""
    t, rel = title.lower(), release.split(" ")[0]
    for words, releases in FLASH_ATTENTION_WORKLOADS:
        if all(w in t for w in words) and rel in releases:
            return "nemo-fa2"
    return ""


def _step_time(r: dict[str, str], seq: int, gbs: int, notes: list[str]) -> float | None:
    raw = r["step_time_s"]
    value = number(raw)
    if value is None and raw.strip():
        joined = number(re.sub(r"\s+", "", raw))
        tps = number(r["throughput_tokens_per_s_total"])
        implied = gbs * seq / tps if tps else None
        if joined and implied and abs(joined / implied - 1) < 0.02:
            notes.append(f"step time printed {raw!r}, read as {joined} (tokens/s implies {implied:.2f})")
            return joined
        notes.append(f"step time printed {raw!r} unreadable")
    return value


def _row(i: int, r: dict[str, str]) -> PrintedRun:
    model, framework, default_seq = _family(r["table_title"], r["release"])
    n = int(r["num_gpus"])
    notes: list[str] = []
    blockers: list[str] = []
    seq = int_or(r["seq_len"], 0)
    if not seq:
        seq = default_seq
        notes.append(f"seq_len not printed: {seq} (the family's README elsewhere; tokens/s implies "
                     f"{r['seq_len_implied_derived']})")
    tp, pp, cp = int_or(r["tp"], 1), int_or(r["pp"], 1), int_or(r["cp"], 1)
    if tp * pp * cp > n and "prints pp=1" in r["note"]:
        notes.append(f"PP={pp} printed in the title (typo); PP=1 from the v25.04.01 configuration table")
        pp = 1
    vpp = int_or(r["vp"], 1)
    ep = int_or(r["ep"], 1)
    etp = int_or(r["etp"], 0) or None
    gbs, mbs = int(r["gbs"]), int_or(r["mbs"], 1)
    if n % (tp * pp * cp):
        blockers.append(reason("sizes"))
    dp = n // (tp * pp * cp) if not blockers else 1
    if not blockers and gbs % (dp * mbs):
        blockers.append(reason("batch"))
    if r["dp"] and int_or(r["dp"], dp) != dp:
        notes.append(f"printed DP {r['dp']} differs from GPUs / (TP x PP x CP) = {dp}")
    layers = int_or(r["layers"], 0) or None
    title = r["table_title"].lower()
    kw: dict = {}
    refinements: tuple[str, ...] = NEMO_REFINEMENTS
    if framework == "nemo":
        kw.update(zero_stage=1, sequence_parallel=tp > 1,
                  schedule="interleaved-1f1b" if vpp > 1 and pp > 1 else "1f1b")
        if profile := _nemo_profile(r["table_title"], r["release"]):
            kw.update(profile=profile)
            notes.append("NVTE_FUSED_ATTN=0 in the workload's scripts: Transformer Engine's FlashAttention-2")
        full_layers = layers or {"llama3-405b": 126, "llama3.1-405b-dgxc2409": 126}.get(model)
        if full_layers and pp > 1 and full_layers % (pp * vpp) and (full_layers + 2) % (pp * vpp) == 0:
            per_rank = (full_layers + 2) // pp  # embedding and loss counted as layers (NeMo 2)
            kw.update(first_stage_layers=per_rank - 1, last_stage_layers=per_rank - 1, uneven_virtual=vpp > 1)
            notes.append(f"{full_layers} layers on PP {pp} x VP {vpp}: NeMo counts embedding and loss as layers")
    else:  # JAX FSDP (tp = pp = 1)
        fsdp = int_or(r["fsdp"], 0)
        if framework == "paxml":
            fsdp = 8 if model == "paxml-gpt5b" else min(n, 128)
            policy = "SAVE_DOT_ONLY" if model == "paxml-gpt5b" else "SAVE_QKV_OUT_PROJ"
        else:
            policy = "save_dot_except_mlp" if r["precision"] == "FP8" else "save_dot_except_mlpwi"
        recompute = f"remat:{policy}"
        if framework == "paxml" and policy in TE_BLIND_DOT_POLICIES:
            recompute = "full"
            notes.append(f"{policy} under Transformer Engine's layers (configure.sh: ENABLE_TE=1) saves none of "
                         "their GEMM outputs: each layer is recomputed whole")
        kw.update(fsdp=fsdp or n, zero_stage=3, recompute=recompute)
        refinements = (f"framework profile: {framework} (XLA latency-hiding scheduler)",)
    finetune = "sft" if "sft" in title else ("lora" if "lora" in title else "pretrain")
    if finetune == "lora":
        kw.update(lora_rank=16, lora_targets=("qkv",))
    if finetune != "pretrain":
        kw.update(packed_sample_tokens=SQUAD_SAMPLE_TOKENS)
        notes.append(f"fine-tuning on SQuAD samples of ~{SQUAD_SAMPLE_TOKENS} tokens packed into rows of {seq} "
                     "(NeMo performance recipe): attention within each sample")
    size = "x".join(str(d) for d in (tp, pp, cp, vpp))
    label = f"{r['release'].split(' ')[0]} {r['table_title'].split(' (')[0]} {n}x{r['gpu_type']} (tp.pp.cp.vp {size})"
    step = _step_time(r, seq, gbs, notes)
    return PrintedRun(
        source="dgxc", row=i, label=label, framework=framework, model=model,
        system="gb200-nvl72" if r["gpu_type"] == "GB200" else "dgx-h100", num_gpus=n, seq_len=seq,
        global_batch=gbs, micro_batch=mbs, num_layers=layers, tp=tp, pp=pp, cp=cp, ep=ep, etp=etp, vpp=vpp,
        precision={"BF16": "bf16", "FP8": "fp8"}[r["precision"]], finetune=finetune, refinements=refinements,
        step_time_s=step, step_time_how="printed seconds per step" if step else "",
        source_blockers=tuple(blockers), notes=tuple(notes), **kw)


def read(rows: list[dict[str, str]] | None = None) -> list[PrintedRun]:
    """Every row of the dgxc table, in file order (or of `rows`: a table in its columns read elsewhere)."""
    return [_row(i, r) for i, r in enumerate(read_csv(FILE) if rows is None else rows)]
