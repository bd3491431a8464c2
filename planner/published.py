"""Predict published Megatron-LM measurements (`planner validate --published`).

Data: Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models"),
copied with provenance into planner/data/validation/ (see SOURCES.md there): Table 5 iteration
times, Table 4 per-layer forward/backward times, Figure 1 memory and Figure 7 activation memory.
Every row is predicted with the catalog `dgx-a100-80gb` and the row's exact configuration; the
hardware efficiencies are one set for A100 (planner/data/gpus.json). Which rows were used to fit
them is recorded per row (`fit`), and the summary reports fitted and held-out rows separately.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from typing import Any

from planner.cost import cost_terms, estimate, evaluate
from planner.cost.batch import batch_from_plans
from planner.plan import Plan
from planner.specs.catalog import load_cluster
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

CLUSTER = "dgx-a100-80gb"
# Rows whose values were used to fit the A100 efficiencies (benchmarks/fit_a100.py); all others
# are held out.
FIT_SOURCES = ("table4",)
METRICS = ("iteration_time_s", "layer_forward_ms", "layer_backward_ms", "activation_memory_gib",
           "weights_optimizer_memory_gib", "activation_memory_pct")


@dataclass
class Row:
    name: str
    metric: str
    published: float
    predicted: float
    source: str
    unit: str

    @property
    def error(self) -> float:
        return self.predicted / self.published - 1.0

    @property
    def fit(self) -> bool:
        return self.source in FIT_SOURCES

    def to_json(self) -> dict[str, Any]:
        return {"row": self.name, "metric": self.metric, "published": self.published,
                "predicted": self.predicted, "error": self.error, "unit": self.unit,
                "source": self.source, "used_for_fit": self.fit}


def _csv(name: str) -> list[dict[str, str]]:
    text = resources.files("planner.data").joinpath("validation", name).read_text(encoding="utf-8")
    return list(csv.DictReader(io.StringIO(text)))


def _model(name: str, heads: int, hidden: int, layers: int, vocab: int = 51200, seq: int = 2048) -> ModelSpec:
    """A Megatron-LM GPT as in the paper: learned positions, GELU, LayerNorm, tied, dropout 0.1."""
    return ModelSpec(name=f"megatron-{name}", num_layers=layers, hidden=hidden, num_heads=heads,
                     ffn_hidden=4 * hidden, vocab_size=vocab, seq_len=seq, dropout=0.1,
                     source="Korthikanti et al. 2022 Table 3")


def _plan(row: dict[str, str], recompute: str, sp: bool) -> Plan:
    tp, pp = int(row["tensor_parallel_size"]), int(row["pipeline_parallel_size"])
    v = int(row["pipeline_interleave_stages"] or 1)
    return Plan(tp=tp, pp=pp, dp=int(row["data_parallel_size"] or 1), vpp=v,
                micro_batch=int(row["microbatch_size"]), global_batch=int(row["global_batch_size"]),
                schedule="interleaved-1f1b" if v > 1 else "1f1b", recompute=recompute,
                sequence_parallel=sp, dtype="bf16", flash_attention=False)


MODES = {  # Figure 7 / Figure 1 labels -> (recompute, sequence parallel)
    "tensor-parallel baseline": ("none", False),
    "tensor-parallel baseline, no recompute": ("none", False),
    "sequence parallel": ("none", True),
    "selective recompute": ("selective", False),
    "selective + sequence parallel": ("selective", True),
    "sequence parallel + selective recompute": ("selective", True),
    "full recompute": ("full", False),
}


def published_rows(cluster: ClusterSpec | None = None,
                   sources: tuple[str, ...] = ("table5", "table4", "figure1", "figure7")) -> list[Row]:
    """Predict every shipped published value (optionally on another cluster / a subset of sources)."""
    base = cluster or load_cluster(CLUSTER)
    configs = [r for r in _csv("korthikanti_2022.csv") if r["iter_time_s_full_recompute"]]
    models = {r["model"]: _model(r["model"], int(r["attention_heads"]), int(r["hidden_size"]),
                                 int(r["num_layers"]), int(r["vocab_size"]), int(r["seq_len"]))
              for r in configs}
    rows: list[Row] = []

    # Table 5: iteration time, full recompute vs selective + sequence parallel.
    for r in configs if "table5" in sources else []:
        model = models[r["model"]]
        cluster = base.with_gpus(int(r["num_gpus"]))
        for label, rc, sp, key in (("full recompute", "full", False, "iter_time_s_full_recompute"),
                                   ("selective + SP", "selective", True,
                                    "iter_time_s_selective_plus_seqpar")):
            pred = estimate(model, cluster, _plan(r, rc, sp))
            rows.append(Row(f"{r['model']} {label}", "iteration_time_s", float(r[key]),
                            pred["step_time_s"], "table5", "s"))

    # Table 4: one 22B layer, forward and backward, per micro-batch.
    m22 = models["22B"]
    c22 = base.with_gpus(8)
    for r in _csv("korthikanti_2022_table4_layer_times.csv") if "table4" in sources else []:
        exp = r["experiment"].lower()
        rc = "full" if "full" in exp else ("selective" if "selective" in exp else "none")
        sp = "sequence" in exp
        plan = Plan(tp=int(r["tensor_parallel_size"]), micro_batch=int(r["microbatch_size"]),
                    global_batch=int(r["microbatch_size"]), recompute=rc, sequence_parallel=sp,
                    dtype="bf16", flash_attention=False)
        terms = cost_terms(m22, c22, batch_from_plans([plan]))
        rows.append(Row(f"22B layer {r['experiment']}", "layer_forward_ms", float(r["forward_ms"]),
                        float(terms.layer_fwd[0, 0]) * 1e3, "table4", "ms"))
        rows.append(Row(f"22B layer {r['experiment']}", "layer_backward_ms", float(r["backward_ms"]),
                        float(terms.layer_bwd[0, 0]) * 1e3, "table4", "ms"))

    # Figures 1 and 7: memory per GPU of the first pipeline stage.
    by_name = {r["model"]: r for r in configs}
    baseline: dict[str, float] = {}
    mem_rows = _csv("korthikanti_2022_memory.csv")
    for r in mem_rows:
        if ("figure1" if "relative" not in r["quantity"] else "figure7") not in sources:
            continue
        cfg = by_name[r["model"]]
        rc, sp = MODES[r["mode"]]
        cluster = base.with_gpus(int(cfg["num_gpus"]))
        layer_act, states = _first_stage_gib(models[r["model"]], cluster, _plan(cfg, rc, sp))
        if r["quantity"].startswith("activation memory per GPU"):
            rows.append(Row(f"{r['model']} {r['mode']}", "activation_memory_gib", float(r["value"]), layer_act,
                            "figure1", "GiB"))
        elif r["quantity"].startswith("parameters+optimizer"):
            rows.append(Row(f"{r['model']} {r['mode']}", "weights_optimizer_memory_gib", float(r["value"]), states,
                            "figure1", "GiB"))
        elif r["quantity"].startswith("activation memory relative"):
            if r["mode"] == "tensor-parallel baseline":
                baseline[r["model"]] = layer_act
                continue  # 100% by definition
            if r["model"] not in baseline:
                rc0, sp0 = MODES["tensor-parallel baseline"]
                baseline[r["model"]] = _first_stage_gib(models[r["model"]], cluster, _plan(cfg, rc0, sp0))[0]
            rows.append(Row(f"{r['model']} {r['mode']}", "activation_memory_pct", float(r["value"]),
                            100.0 * layer_act / baseline[r["model"]], "figure7", "%"))
    return rows


def _first_stage_gib(model: ModelSpec, cluster: ClusterSpec, plan: Plan) -> tuple[float, float]:
    """(activations of the transformer layers, weights + gradients + optimizer state) of the first stage's
    GPU, GiB: what the paper's Figures 1 and 7 plot (its Eq. 5 and Table 2 count the layers alone; the
    embedding's dropout mask, Sec. 4.3, is left out there)."""
    scores = evaluate(model, cluster, batch_from_plans([plan]))
    states = scores.mem_weights[0] + scores.mem_grads[0] + scores.mem_optimizer[0]
    return float(scores.mem_layer_activations[0]) / 2**30, float(states) / 2**30


def summarize(rows: list[Row]) -> dict[str, Any]:
    """Per metric: n_rows, MAPE (fraction), worst |error| and its row; fitted and held-out apart."""
    out: dict[str, Any] = {}
    for metric in METRICS:
        sel = [r for r in rows if r.metric == metric]
        if not sel:
            continue
        worst = max(sel, key=lambda r: abs(r.error))
        entry = {"n_rows": len(sel), "mape": sum(abs(r.error) for r in sel) / len(sel),
                 "worst": abs(worst.error), "worst_row": worst.name}
        held = [r for r in sel if not r.fit]
        entry["used_for_fit"] = len(sel) - len(held)
        if held and len(held) < len(sel):
            entry["held_out_mape"] = sum(abs(r.error) for r in held) / len(held)
        out[metric] = entry
    return out
