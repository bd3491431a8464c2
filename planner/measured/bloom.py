"""BLOOM-176B prequel topology benchmarks (bloom_176b_prequel_topology_benchmarks_a100.csv).

Megatron-DeepSpeed (Feb 2022) on Jean Zay, seconds per iteration (the 2nd iteration) and memory read with
`nvidia-smi` (whole process, the maximum over GPUs). What the tables do not print, from the same file and
the run script the prequel converged to (bigscience tr11-176B-ml, see SOURCES.md):
- full activation recompute (`--checkpoint-activations`), no flash attention (2022: fused softmax), no
  sequence parallelism, DeepSpeed's 1F1B pipeline, ZeRO stage 1 unless the row says otherwise;
- fp16 before the "Rebalancing layers" section (its text: "compared to fp16"), bf16 in it and in the
  "Best TFLOPs / bf16" table (the same peak on A100); the latter before the BF16_Optimizer "that was just
  written" for "Rebalancing layers", so through the ZeRO-1 optimizer as fp16 (`deepspeed-zero-bf16`);
- "Rebalancing layers" and the `partition_method='type:transformer|embed'` table give each embedding a
  layer's slot (`2 + nlayers` over PP): the first and last stages hold one transformer layer fewer;
- otherwise DeepSpeed gives the last stage the remainder ("78/12=6.5 - so the last stage has 1 block,
  while the rest have 7", section "Re-do");
- NHEADS = 64 where a table of "48 node contenders" / "Final round comparison" does not print it ("all
  NHEADS=64 (above too)");
- a size the document states a whole shape for elsewhere ("200B model: ... NLAYERS=80, NHIDDEN=14400,
  NHEADS=96"; "NHIDDEN=13824 / NLAYERS=80", 187B) has that shape where a table prints the size alone; in
  "Choosing the fastest 3D Topology" ("the number of layers had to be tweaked to fit PP and NHIDDEN was
  fixed") the other sizes have NHIDDEN 14400 and the multiple of PP nearest the printed size by the
  document's own size formula. Every such row's printed TFLOPs follow from its layer count with the
  calculator of the time (96 B s l h^2, before "TFLOPs calculation improved"), to 0.2 of a layer.
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
# Shapes the prequel states in full for a size it names, for tables that print only the size.
NAMED_SHAPES = {
    "200B": (14400, 80, 96),  # "Best TFLOPs": "200B model: TP=8, PP=10, NLAYERS=80, NHIDDEN=14400, NHEADS=96"
    "187B": (13824, 80, 64),  # "48 node contenders": "NHIDDEN=13824 / NLAYERS=80", 187B; "all NHEADS=64 (above too)"
}
# "the number of layers had to be tweaked to fit PP and NHIDDEN was fixed" (at the 200B model's width,
# with its heads).
FIXED_WIDTH_SECTION = "Choosing the fastest 3D Topology"
FIXED_WIDTH, _, FIXED_WIDTH_HEADS = NAMED_SHAPES["200B"]
# The "Best TFLOPs" tables print TFLOPs and memory, no seconds; the Megatron log line above each row
# prints its "elapsed time per iteration (s)" (the 2nd iteration), keyed here by (section, GPUs).
LOG_LINE_SECONDS = {
    ("Best TFLOPs / fp16", 8): 769.99, ("Best TFLOPs / fp16", 80): 844.81, ("Best TFLOPs / fp16", 160): 430.21,
    ("Best TFLOPs / bf16", 8): 777.09, ("Best TFLOPs / bf16", 80): 853.81, ("Best TFLOPs / bf16", 160): 434.14,
}


def _shape_value(text: str, key: str) -> int | None:
    m = re.search(rf"(?<![A-Z]){key}=(\d+)", text)
    return int(m.group(1)) if m else None


def prequel_size_b(hidden: int, layers: int, seq: int = 2048, vocab: int = 250_000) -> float:
    """A shape's size in billions as the prequel computes it ("## Size": l (12h^2 + 13h) + vh + sh + 2h, with
    its 200B model's VOCAB_LENGTH=250k)."""
    return (layers * (12 * hidden**2 + 13 * hidden) + vocab * hidden + seq * hidden + 2 * hidden) / 1e9


def layers_for_size(size_b: float, hidden: int, pp: int) -> int:
    """The layer count, a multiple of PP ("the number of layers had to be tweaked to fit PP"), whose size
    is nearest the printed one."""
    per_layer = prequel_size_b(hidden, 1) - prequel_size_b(hidden, 0)
    approx = max(1, round((size_b - prequel_size_b(hidden, 0)) / per_layer))
    candidates = [k * pp for k in (approx // pp, approx // pp + 1) if k]
    return min(candidates, key=lambda n: abs(prequel_size_b(hidden, n) - size_b))


def _shape(r: dict[str, str], notes: list[str]) -> tuple[int | None, int | None, int | None]:
    """(hidden, layers, heads) of a row: its own columns first, then the text above its table, then the
    shape the document states for the size the row names (NAMED_SHAPES), then, in the topology section
    whose NHIDDEN "was fixed", the layer count that gives the printed size at the 200B model's width."""
    text = r["model_shape_text_preceding_table"]
    size = r["size_as_printed"]
    parts = [p for p in text.split(";") if p.strip().startswith(f"{size} model:")]
    text = parts[0] if parts else text
    hidden = int_or(r["nhidden_col"], 0) or _shape_value(text, "NHIDDEN") or _shape_value(text, "HIDDEN")
    layers = int_or(r["layers_col"], 0) or _shape_value(text, "NLAYERS")
    heads = int_or(r["nheads"], 0) or _shape_value(text, "NHEADS")
    if heads is None and r["section"] in HEADS_64:
        heads = 64
    named = NAMED_SHAPES.get(size)
    if layers is None and named and hidden in (None, named[0]):
        hidden, layers, heads = named[0], named[1], heads or named[2]
        notes.append(f"{size}: h{hidden} l{layers} a{heads}, the shape the prequel states for {size}")
    pp, size_b = int_or(r["pp"], 0), number(size.removesuffix("B"))
    if layers is None and r["section"] == FIXED_WIDTH_SECTION and pp and size_b and hidden in (None, FIXED_WIDTH):
        hidden, heads = FIXED_WIDTH, heads or FIXED_WIDTH_HEADS
        layers = layers_for_size(size_b, hidden, pp)
        notes.append(f"{size} on PP {pp} at the fixed NHIDDEN {hidden}: {layers} layers, the multiple of PP "
                     f"nearest the printed size ({prequel_size_b(hidden, layers):.1f}B)")
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
    blockers: list[str] = []
    notes: list[str] = []
    hidden, layers, heads = _shape(r, notes)
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
    # "Best TFLOPs / bf16" (02-17) ran the ZeRO-1 optimizer as fp16 (the BF16_Optimizer came with "Rebalancing layers")
    profile = "deepspeed-zero-bf16" if section.endswith("bf16") else ""
    mem_text = (r["mem_as_printed"] or "").strip()
    mem = number(mem_text.removesuffix("GB"))
    step = number(r["sec_per_iter"])
    how = "printed seconds per iteration (2nd iteration)" if step else ""
    if step is None and (section, n) in LOG_LINE_SECONDS:
        step = LOG_LINE_SECONDS[(section, n)]
        how = "elapsed time per iteration printed in the log line above the table (2nd iteration)"
    label = (f"{section}: {r['size_as_printed']} {shape} "
             f"dp{dp} tp{tp} pp{pp} mbs{mbs} gbs{gbs}" + (f" zs{r['zero_stage']}" if r["zero_stage"] else ""))
    return PrintedRun(
        source="bloom", row=i, label=label, framework="megatron-deepspeed",
        model="bloom:unknown" if reason("shape") in blockers else f"bloom:{hidden}:{layers}:{heads}",
        system="jean-zay-a100", num_gpus=n or dp * tp * pp, seq_len=2048, global_batch=gbs, micro_batch=mbs,
        tp=tp, pp=pp, zero_stage=int_or(r["zero_stage"], 1), precision="bf16" if bf16 else "fp16",
        recompute="full", flash_attention=False,
        refinements=("framework profile: Megatron-DeepSpeed 2022 (no TP comm overlap, fused softmax)",),
        profile=profile,
        step_time_s=step, step_time_how=how,
        memory_gib=mem, memory_definition=MEMORY_DEFINITION if mem is not None else "", oom=mem_text == "OOM",
        source_blockers=tuple(dict.fromkeys(blockers)), notes=tuple(notes), **kw)


def read(rows: list[dict[str, str]] | None = None) -> list[PrintedRun]:
    """Every row of the BLOOM prequel table, in file order (or of `rows`: a table in its columns read elsewhere)."""
    return [_row(i, r) for i, r in enumerate(read_csv(FILE) if rows is None else rows)]
