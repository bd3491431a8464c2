"""BLOOM-176B prequel topology benchmarks (bloom_176b_prequel_topology_benchmarks_a100.csv).

Megatron-DeepSpeed (Feb 2022) on Jean Zay, seconds per iteration (the 2nd iteration) and memory read with
`nvidia-smi` (whole process, the maximum over GPUs). What the tables do not print, from the same file and
the run script the prequel converged to (bigscience tr11-176B-ml, see SOURCES.md):
- full activation recompute (`--checkpoint-activations`), no flash attention (2022: fused softmax), no
  sequence parallelism, DeepSpeed's 1F1B pipeline, ZeRO stage 1 unless the row says otherwise;
- fp16 before the "Rebalancing layers" section (its text: "compared to fp16"), bf16 in it and in the
  "Best TFLOPs / bf16" table (the same peak on A100);
- "Rebalancing layers" and the `partition_method='type:transformer|embed'` table give each embedding a
  layer's slot (`2 + nlayers` over PP): the first and last stages hold one transformer layer fewer;
- otherwise DeepSpeed gives the last stage the remainder ("78/12=6.5 - so the last stage has 1 block,
  while the rest have 7", section "Re-do");
- NHEADS = 64 where a table of "48 node contenders" / "Final round comparison" does not print it ("all
  NHEADS=64 (above too)").
Every row is checked against its own printed TFLOPs with the formula Megatron-DeepSpeed prints
(Narayanan et al. 2021, with recompute: 96 B s l h^2 (1 + s/6h + V/16lh) per iteration): where the GBS
column and the text above the table disagree, the GBS that reproduces the printed TFLOPs is used.
"""

from __future__ import annotations

import re

from planner.measured.printed import PrintedRun, int_or, number, read_csv
from planner.measured.reasons import reason

FILE = "bloom_176b_prequel_topology_benchmarks_a100.csv"
MEMORY_DEFINITION = "device"  # nvidia-smi: everything the process holds, CUDA context included
HEADS_64 = ("48 node contenders", "Final round comparison")


def _shape_value(text: str, key: str) -> int | None:
    m = re.search(rf"(?<![A-Z]){key}=(\d+)", text)
    return int(m.group(1)) if m else None


def _shape(r: dict[str, str]) -> tuple[int | None, int | None, int | None]:
    """(hidden, layers, heads) of a row: its own columns first, then the text above its table."""
    text = r["model_shape_text_preceding_table"]
    parts = [p for p in text.split(";") if p.strip().startswith(f"{r['size_as_printed']} model:")]
    text = parts[0] if parts else text
    hidden = int_or(r["nhidden_col"], 0) or _shape_value(text, "NHIDDEN") or _shape_value(text, "HIDDEN")
    layers = int_or(r["layers_col"], 0) or _shape_value(text, "NLAYERS")
    heads = int_or(r["nheads"], 0) or _shape_value(text, "NHEADS")
    if heads is None and r["section"] in HEADS_64:
        heads = 64
    return hidden, layers, heads


def implied_tflops(hidden: int, layers: int, gbs: int, seconds: float, gpus: int, seq: int = 2048,
                   vocab: int = 250880) -> float:
    """TFLOP/s per GPU as Megatron-DeepSpeed prints it (Narayanan et al. 2021 eq. 3, recompute on)."""
    flops = 96 * gbs * seq * layers * hidden**2 * (1 + seq / (6 * hidden) + vocab / (16 * layers * hidden))
    return flops / (seconds * gpus) / 1e12


def _check_gbs(r: dict[str, str], hidden: int, layers: int, gbs: int, gpus: int, notes: list[str]) -> int:
    """The global batch that agrees with the printed TFLOPs (the column's unless only the text's does)."""
    sec, tflops = number(r["sec_per_iter"]), number(r["tflops_per_gpu"])
    if not (sec and tflops and gpus):
        return gbs
    if abs(implied_tflops(hidden, layers, gbs, sec, gpus) / tflops - 1) <= 0.1:
        return gbs
    text_gbs = _shape_value(r["model_shape_text_preceding_table"], "GBS")
    if text_gbs and abs(implied_tflops(hidden, layers, text_gbs, sec, gpus) / tflops - 1) <= 0.1:
        notes.append(f"GBS column {gbs} contradicts the printed TFLOPs; GBS={text_gbs} from the text above "
                     f"the table reproduces them")
        return text_gbs
    notes.append("printed TFLOPs do not follow from the printed configuration")
    return gbs


def _row(i: int, r: dict[str, str]) -> PrintedRun:
    hidden, layers, heads = _shape(r)
    blockers: list[str] = []
    notes: list[str] = []
    n = int_or(r["gpus"], 0)
    tp, pp = int_or(r["tp"], 0), int_or(r["pp"], 0)
    shape = f"h{hidden or '?'} l{layers or '?'} a{heads or '?'}"
    if not (hidden and layers and heads and tp and pp):
        blockers.append(reason("shape"))
        hidden, layers, heads, tp, pp = hidden or 1, layers or 1, heads or 1, tp or 1, pp or 1
    dp = int_or(r["dp"], 0) or max(1, n // (tp * pp))
    if dp * tp * pp != n:
        blockers.append(reason("sizes"))
    mbs = int_or(r["mbs"], 1)
    gbs = int_or(r["gbs"], 0) or _shape_value(r["model_shape_text_preceding_table"], "GBS") or 2048
    if not blockers:
        gbs = _check_gbs(r, hidden, layers, gbs, n, notes)
    if gbs % (dp * mbs):
        blockers.append(reason("batch"))
    section = r["section"]
    rebalanced = section == "Rebalancing layers" or "partition_method" in r["model_shape_text_preceding_table"]
    kw: dict = {}
    if blockers:
        pass  # the stage layout of an undefined model is undefined
    elif rebalanced and pp > 1 and (layers + 2) % pp == 0:
        kw.update(first_stage_layers=(layers + 2) // pp - 1, last_stage_layers=(layers + 2) // pp - 1)
        notes.append("embeddings partitioned as layers ('type:transformer|embedding')")
    elif pp > 1 and layers % pp:
        per = -(-layers // pp)
        kw.update(last_stage_layers=layers - per * (pp - 1))
        notes.append(f"{layers} layers on PP {pp}: {per} per stage, the remainder on the last (DeepSpeed)")
    bf16 = section == "Rebalancing layers" or section.endswith("bf16")
    mem_text = (r["mem_as_printed"] or "").strip()
    mem = number(mem_text.removesuffix("GB"))
    step = number(r["sec_per_iter"])
    label = (f"{section}: {r['size_as_printed']} {shape} "
             f"dp{dp} tp{tp} pp{pp} mbs{mbs} gbs{gbs}" + (f" zs{r['zero_stage']}" if r["zero_stage"] else ""))
    return PrintedRun(
        source="bloom", row=i, label=label, framework="megatron-deepspeed",
        model="bloom:unknown" if reason("shape") in blockers else f"bloom:{hidden}:{layers}:{heads}",
        system="jean-zay-a100", num_gpus=n or dp * tp * pp, seq_len=2048, global_batch=gbs, micro_batch=mbs,
        tp=tp, pp=pp, zero_stage=int_or(r["zero_stage"], 1), precision="bf16" if bf16 else "fp16",
        recompute="full", flash_attention=False,
        refinements=("framework profile: Megatron-DeepSpeed 2022 (no TP comm overlap, fused softmax)",),
        step_time_s=step, step_time_how="printed seconds per iteration (2nd iteration)" if step else "",
        memory_gib=mem, memory_definition=MEMORY_DEFINITION if mem is not None else "", oom=mem_text == "OOM",
        source_blockers=tuple(dict.fromkeys(blockers)), notes=tuple(notes), **kw)


def read(rows: list[dict[str, str]] | None = None) -> list[PrintedRun]:
    """Every row of the BLOOM prequel table, in file order (or of `rows`: a table in its columns read elsewhere)."""
    return [_row(i, r) for i, r in enumerate(read_csv(FILE) if rows is None else rows)]
