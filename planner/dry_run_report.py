"""The executor's dry run set against the cost model, rank by rank (`planner run --dry-run`).

Model state (weights, gradients, optimizer state) of every dry-run rank is compared with
`planner.cost.model_state.model_state_bytes` and must agree within 0.5%; the communication of one
step of a first-stage rank (the rank traffic.py describes) with `planner.cost.traffic.comm_terms`,
within 5% per family (tp, pp, dp gradient reductions, dp weight gathers, the tied-embedding pair, ep).

Where the executor knowingly departs from the implementation the cost model prices (Megatron-LM's
mixed precision, ZeRO and collectives), the difference is a named `Departure`, never a tolerance:
- exact departures are computed from the plan and the model spec alone (e.g. fp32 parameters under
  autocast, FSDP2 padding its shards, the logits all-gather instead of a vocabulary-parallel loss);
- attributed departures are named causes whose size depends on code the model does not describe
  (e.g. the order in which torch.distributed.pipelining re-gathers FSDP2 weights): they take what
  remains of their family, but only within a stated bound.
What remains after both is the residual; a family whose residual exceeds the tolerance disagrees.

The dry run executes the CPU recipe (fp32 activations and gathers, executor/dry_run.py), so the
communication is compared with the plan priced in fp32; model state with the plan as written.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from planner.cost.memory import MATMUL_POLICIES, OPTIMIZER_BYTES, WEIGHT_BYTES
from planner.cost.model_state import model_state_bytes
from planner.errors import PlannerError
from planner.plan import Plan, PlanDocument
from planner.report import table
from planner.specs.model import ModelSpec

MEMORY_RTOL = 0.005
COMM_RTOL = 0.05
MEMORY_FAMILIES = ("weights", "grads", "optimizer")
COMM_FAMILIES = ("tp", "pp", "dp.grads", "dp.weights", "dp.tied", "ep")
FP32 = 4  # bytes of the executor's parameters, gradients and (in the dry run) activations
ADAM_STATE = 8  # AdamW's exp_avg and exp_avg_sq in the parameters' dtype (fp32)
GIB, MIB = 2**30, 2**20


@dataclass(frozen=True)
class Departure:
    """A named difference between the executor and the modelled implementation (bytes, executor - model)."""

    name: str
    family: str
    bytes: float
    exact: bool = True  # False: attributed (what remains of the family, within `bound`)
    bound: float = 0.0  # attributed only: the largest magnitude the cause can explain


@dataclass(frozen=True)
class Row:
    """One family of one rank: measured, predicted, the departures and what remains."""

    family: str
    measured: float
    predicted: float
    departures: tuple[Departure, ...]
    residual: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return abs(self.residual) <= self.tolerance * max(abs(self.measured), 1.0)


@dataclass(frozen=True)
class RankComparison:
    rank: int
    pp_rank: int
    memory: tuple[Row, ...]
    comm: tuple[Row, ...]  # empty for ranks outside the first stage (traffic.py models the first)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in (*self.memory, *self.comm))

    def to_dict(self) -> dict[str, Any]:
        def row(r: Row) -> dict[str, Any]:
            return {"family": r.family, "measured_bytes": r.measured, "predicted_bytes": r.predicted,
                    "departures": [dataclasses.asdict(d) for d in r.departures],
                    "residual_bytes": r.residual, "tolerance": r.tolerance, "ok": r.ok}

        return {"rank": self.rank, "pp_rank": self.pp_rank, "ok": self.ok,
                "memory": [row(r) for r in self.memory], "comm": [row(r) for r in self.comm]}


def _settle(family: str, measured: float, predicted: float, departures: list[Departure], rtol: float) -> Row:
    """Apply the exact departures, then let the attributed ones take what remains within their bounds."""
    mine = [d for d in departures if d.family == family]
    exact = [d for d in mine if d.exact]
    residual = measured - predicted - sum(d.bytes for d in exact)
    settled = list(exact)
    for d in (d for d in mine if not d.exact):
        take = max(-d.bound, min(d.bound, residual))
        settled.append(dataclasses.replace(d, bytes=take))
        residual -= take
    return Row(family, measured, predicted, tuple(settled), residual, rtol)


# ---- what the executor holds that differs from the model's layout --------------------------------------


def _dp_kind(plan: Plan) -> str:
    if plan.dp * plan.cp == 1:  # gradients are averaged over dp x cp ranks
        return "none"
    from executor.data_parallel import dp_kind

    return dp_kind(plan.zero_stage, plan.tp, plan.pp, plan.hybrid)


def _replicated_tables(model: ModelSpec, plan: Plan, pp_rank: int) -> list[tuple[str, float]]:
    """(name, extra parameters per GPU) the executor keeps replicated over tp where the graph splits
    them: the learned position / token-type tables (Megatron-LM keeps them replicated too), and the
    embedding / LM head when the vocabulary does not divide by tp (Megatron-LM pads it instead)."""
    t = plan.tp
    if t == 1:
        return []
    first, last = pp_rank == 0, pp_rank == plan.pp - 1
    out = []
    extra = (model.max_position if model.position == "learned" else 0) + model.type_vocab_size
    if first and extra:
        out.append(("position / token-type tables replicated over tp (the graph splits them by tp)",
                    extra * model.hidden * (1 - 1 / t)))
    if model.vocab_size % t:
        copies = int(first) + int(last and (plan.pp > 1 or not model.tied_embeddings))
        out.append((f"vocabulary {model.vocab_size} not divisible by tp {t}: embedding / LM head replicated "
                    "(Megatron-LM pads the vocabulary)", copies * model.vocab_size * model.hidden * (1 - 1 / t)))
    return out


def _expert_bias(model: ModelSpec, plan: Plan) -> float:
    """Expert down-projection biases per GPU that the executor keeps replicated (dense) over ep."""
    if not (model.is_moe and model.bias and plan.ep > 1):
        return 0.0
    return model.num_layers / plan.pp * model.num_experts * model.hidden * (1 - 1 / plan.ep)


def _fsdp_shards(report: Any, plan: Plan, trained_only: bool = False) -> tuple[float, float]:
    """(elements this rank holds beyond an even 1/dp share, elements the collectives carry beyond the
    unpadded tensors) over its FSDP2-sharded (trained) parameters. FSDP2 splits dim 0 of each (tensor-parallel
    local) tensor in dp chunks of ceil(rows / dp), the last ones shorter or empty, and pads every chunk
    to that length for its all-gathers and reduce-scatters."""
    # The shard group is dp x cp (executor.trainer.grad_mesh flattens the two in mesh order).
    c = report.coords
    dp = plan.dp * plan.cp
    me = c.get("dp", 0) * plan.cp + c.get("cp", 0) if plan.placement.index("dp") > plan.placement.index("cp") \
        else c.get("cp", 0) * plan.dp + c.get("dp", 0)
    uneven = padding = 0.0
    for p in report.params:
        if not re.search(r"\bdp(_cp)?:", p.placements) or (trained_only and not p.trainable):
            continue
        rows = p.global_shape[0] if p.global_shape else 1
        if plan.tp > 1 and re.search(r"tp:(_Strided)?Shard\(dim=0", p.placements):
            rows //= plan.tp
        other = math.prod(p.local_shape[1:])
        chunk = math.ceil(rows / dp)
        mine = max(0, min(chunk, rows - me * chunk))
        uneven += (mine - rows / dp) * other
        padding += (dp * chunk - rows) * other
    return uneven, padding


# ---- model state --------------------------------------------------------------------------------------


def memory_rows(doc: PlanDocument, report: Any) -> tuple[Row, ...]:
    model, plan = doc.model, doc.plan
    ms = model_state_bytes(model, plan, report.pp_rank)
    kind = _dp_kind(plan)
    dt = plan.dtype
    dp, edp = plan.dp * plan.cp, plan.dp // plan.ep * plan.cp
    if plan.hybrid:  # ZeRO and FSDP2's (replicate, shard) mesh both shard over the shard group
        dp = plan.shard_group
    deps: list[Departure] = []

    # Precision: the executor keeps fp32 parameters (autocast computes in bf16 on CUDA), so there is
    # no separate fp32 master copy: 4 B weights, AdamW's m and v at 4 B each, 4 B gradients.
    if WEIGHT_BYTES[dt] != FP32:
        deps.append(Departure(f"fp32 parameters under autocast ({FP32} B/param, the model has {WEIGHT_BYTES[dt]})",
                              "weights", ms.weight_params * (FP32 - WEIGHT_BYTES[dt])))
    if OPTIMIZER_BYTES[dt] != ADAM_STATE:
        deps.append(Departure(f"no fp32 master copy: AdamW state {ADAM_STATE} B/param (the model has "
                              f"{OPTIMIZER_BYTES[dt]})", "optimizer",
                              ms.optimizer_params * (ADAM_STATE - OPTIMIZER_BYTES[dt])))

    # Sharding: dense parameters over dp as the wrapper does it; expert parameters never (they stay
    # outside FSDP2 / ZeroRedundancyOptimizer, averaged by the executor's own edp all-reduce).
    exec_div = {"fsdp": (dp, dp, dp), "ddp": (1, 1, dp if plan.zero_stage == 1 else 1)}.get(kind, (1, 1, 1))
    per_param = {"weights": FP32, "grads": FP32, "optimizer": ADAM_STATE}
    # Gradients and optimizer state exist for trained parameters only (LoRA freezes the base weights).
    dense = {"weights": ms.dense_params, "grads": ms.trained_dense_params, "optimizer": ms.trained_dense_params}
    expert = {"weights": ms.expert_params, "grads": ms.trained_expert_params, "optimizer": ms.trained_expert_params}
    for i, (family, stage) in enumerate((("weights", 3), ("grads", 2), ("optimizer", 1))):
        model_div = dp if plan.zero_stage >= stage and dp > 1 else 1
        if exec_div[i] != model_div:
            why = {("fsdp", 1): "ZeRO-1 runs as FSDP2 (tp > 1, pp > 1 or hybrid sharding): weights and gradients "
                               "sharded too",
                   ("fsdp", 2): "FSDP2 keeps ZeRO-2 weights sharded between steps (gathered per use)"}.get(
                (kind, plan.zero_stage), f"{kind} shards {family} over {exec_div[i]}")
            deps.append(Departure(why, family, dense[family] * (1 / exec_div[i] - 1 / model_div) * per_param[family]))
        expert_div = edp if plan.zero_stage >= stage and edp > 1 else 1
        if expert[family] and expert_div > 1 and plan.ep > 1:  # (ep = 1: the experts are dense weights to FSDP2)
            deps.append(Departure("expert weights outside ZeRO / FSDP2 (replicated over the expert-data-parallel "
                                  "group)", family, expert[family] * (1 - 1 / expert_div) * per_param[family]))
        for name, extra in _replicated_tables(model, plan, report.pp_rank):
            deps.append(Departure(name, family, extra / exec_div[i] * per_param[family]))
        bias = _expert_bias(model, plan)
        if bias:
            deps.append(Departure("expert down-projection biases replicated over ep", family,
                                  bias / exec_div[i] * per_param[family]))
    if kind == "fsdp":
        uneven = {"weights": _fsdp_shards(report, plan)[0]}
        uneven["grads"] = uneven["optimizer"] = _fsdp_shards(report, plan, trained_only=True)[0]
        for family in MEMORY_FAMILIES:
            if uneven[family]:
                deps.append(Departure("FSDP2 splits dim 0 in ceil(rows / dp) chunks (uneven shards)", family,
                                      uneven[family] * per_param[family]))
    if report.optimizer_tensors:
        deps.append(Departure("AdamW step count (one fp32 scalar per parameter tensor)", "optimizer",
                              FP32 * report.optimizer_tensors))
    if kind == "ddp" and plan.zero_stage == 1:
        largest = max((math.prod(p.local_shape) for p in report.params), default=0)
        deps.append(Departure("ZeroRedundancyOptimizer gives each rank whole tensors (greedy, uneven)",
                              "optimizer", 0.0, exact=False, bound=largest * ADAM_STATE))
    measured = {"weights": report.weight_bytes, "grads": report.grad_bytes, "optimizer": report.optimizer_bytes}
    predicted = {"weights": ms.weights, "grads": ms.grads, "optimizer": ms.optimizer}
    return tuple(_settle(f, measured[f], predicted[f], deps, MEMORY_RTOL) for f in MEMORY_FAMILIES)


# ---- communication of a first-stage rank ----------------------------------------------------------------


def _family(kind: str, op: str) -> str:
    if kind == "dp":
        return "dp.weights" if op in ("all_gather", "broadcast") else "dp.grads"
    return {"edp": "dp.grads", "tied": "dp.tied"}.get(kind, kind)


def _model_family(term: str) -> str:
    kind = term.split(".", 1)[0]
    if kind != "dp":
        return kind
    for fam in ("dp.grads", "dp.weights", "dp.tied"):
        if term.startswith(fam):
            return fam
    return "dp.other"


def comm_rows(doc: PlanDocument, report: Any) -> tuple[Row, ...]:
    """Families of one first-stage rank (pp_rank 0); traffic.py describes no other rank."""
    from planner.cost.traffic import comm_terms

    model, plan = doc.model, doc.plan
    # The departures below are listed against Megatron-LM's implementation (traffic.py's default profile),
    # whichever framework the plan names: its profile may count some of them already.
    plan32 = dataclasses.replace(plan, dtype="fp32", framework=None)
    terms = comm_terms(model, plan32)
    predicted: dict[str, float] = defaultdict(float)
    for name, value in terms.items():
        predicted[_model_family(name)] += value
    measured: dict[str, float] = defaultdict(float)
    for c in report.collectives:
        if c.op != "recv":
            measured[_family(c.kind, c.op)] += c.bytes

    t, p, v, m = plan.tp, plan.pp, plan.vpp, plan.grad_accum
    sp = plan.sequence_parallel and t > 1
    tokens = plan.micro_batch * model.seq_len // plan.cp
    act = tokens * model.hidden * FP32
    layers = model.num_layers / p
    head = p == 1
    deps: list[Departure] = []

    def model_only(term: str, why: str) -> None:
        if term in terms:
            deps.append(Departure(why, _model_family(term), -terms[term]))

    if t > 1:
        vocab_split = model.vocab_size % t == 0
        if head and vocab_split:
            deps.append(Departure("LM head all-gathers the fp32 logits (no vocabulary-parallel loss)", "tp",
                                  m * tokens * model.vocab_size * FP32))
        if head:
            model_only("tp.loss", "vocabulary-parallel cross-entropy's all-reduces (not run: logits gathered)")
        if not sp:
            mlp_linears = 1 if model.is_moe or model.activation != "swiglu" else 2
            extra = 3 + mlp_linears - 2
            deps.append(Departure(f"q, k, v{', gate, up' if mlp_linears == 2 else ''} are separate column-parallel "
                                  "linears: each all-reduces its input gradient", "tp", m * layers * extra * act))
        model_only("tp.regather", "column-parallel linears keep the gathered input (no backward re-gather)")
        if plan.recompute == "full":
            deps.append(Departure("checkpointed recompute stops before a layer's last collective", "tp",
                                  -m * layers * act))
        if plan.recompute in MATMUL_POLICIES:
            # The per-op policy saves no collective outputs (torchtitan's saves the reduce-scatters), so
            # recomputing a block re-runs its forward collectives but the last, as full recompute does.
            sync = 2 * act if sp else act
            deps.append(Departure("per-op selective recompute re-runs a layer's forward collectives but the last "
                                  "(its policy saves no collective output)", "tp", m * layers * (2 * sync - act)))
        if p > 1 and not sp:
            model_only("tp.pp_gather", "pipelining sends whole activations (no scatter / gather over tp)")
            deps.append(Departure("every tp rank sends the whole activation", "pp",
                                  m * (2 * v - 1) * act * (1 - 1 / t)))
        if model.is_moe:
            # Expert TP (ep = 1): the experts' output all-reduce and input-gradient all-reduce carry the
            # routed tokens (top_k rows per token, dropless), where traffic.py counts one activation.
            deps.append(Departure("expert tensor parallelism all-reduces the routed tokens (top_k x the activation)",
                                  "tp", m * layers * 2 * (model.top_k - 1) * act))
        if sp:
            deps.append(Departure("AdamW's update reads a sequence-parallel (Partial) gradient up to three times and "
                                  "each read all-reduces it", "tp", 0.0, exact=False,
                                  bound=2 * sum(v for k, v in terms.items() if k.startswith("tp.sp_grads"))))
        if not vocab_split:
            deps.append(Departure("embedding / LM head replicated (vocabulary not divisible by tp)", "tp", 0.0,
                                  exact=False, bound=2 * m * (act + tokens * model.vocab_size * FP32)))
    ms = model_state_bytes(model, plan32, 0)
    kind = _dp_kind(plan)
    if plan.dp * plan.cp > 1:
        extra = sum(x for _, x in _replicated_tables(model, plan, 0)) + _expert_bias(model, plan)
        dense = ms.dense_params + extra  # what the data-parallel wrapper reduces and gathers
        z = plan.zero_stage
        model_rs = 1 if z <= 1 else m
        model_ag = {0: 0, 1: 1, 2: 1, 3: 2 * m}[z]
        pad = _fsdp_shards(report, plan)[1] if kind == "fsdp" else 0.0
        trained_pad = _fsdp_shards(report, plan, trained_only=True)[1] if kind == "fsdp" else 0.0
        trained = ms.trained_dense_params
        frozen = ms.dense_params - trained
        if kind == "fsdp":
            exec_rs = m if p == 1 else 1
            if exec_rs != model_rs:
                why = ("FSDP2 reduce-scatters every micro-batch (ZeRO-1 reduces once per step)" if z == 1 else
                       "torch.distributed.pipelining defers FSDP2's reduce-scatter to the last micro-batch")
                deps.append(Departure(why, "dp.grads", (exec_rs - model_rs) * trained * FP32))
            # Exact where the order is simple: outside a pipeline (every micro-batch), and ZeRO-1/2 under a
            # one-chunk schedule (gathered once: nothing reshards). The interleaved schedule reshards the
            # chunks it is not running (its UNSHARD / RESHARD actions), and ZeRO-3 reshards after forward.
            if p == 1 or (z < 3 and v == 1):
                exec_ag = 2 * m if z == 3 else (m if p == 1 else 1)
                if exec_ag != model_ag:
                    deps.append(Departure("FSDP2 re-gathers the weights every micro-batch (resharded after backward)",
                                          "dp.weights", (exec_ag - model_ag) * trained * FP32))
                if frozen and exec_ag and z < 3:
                    deps.append(Departure("FSDP2 shards and gathers the frozen base weights too (ZeRO-1/2 gather "
                                          "only what the optimizer updated)", "dp.weights", exec_ag * frozen * FP32))
            else:
                exec_ag = 0
                gathers = measured["dp.weights"] / ((dense + pad) * FP32)
                deps.append(Departure(f"torch.distributed.pipelining re-gathers FSDP2 weights in its schedule's order "
                                      f"(chunks resharded when idle{', and after each forward' if z == 3 else ''}): "
                                      f"{gathers:.2f} gathers of the stage per step, the model counts {model_ag}",
                                      "dp.weights", 0.0, exact=False, bound=2 * m * (dense + pad) * FP32))
            if extra:
                deps.append(Departure("replicated tables reduced with the rest", "dp.grads", exec_rs * extra * FP32))
                if exec_ag:
                    deps.append(Departure("replicated tables gathered with the rest", "dp.weights",
                                          exec_ag * extra * FP32))
            if pad:
                deps.append(Departure("FSDP2 pads every shard to the longest chunk", "dp.grads",
                                      exec_rs * trained_pad * FP32))
                if exec_ag:
                    deps.append(Departure("FSDP2 pads every shard to the longest chunk", "dp.weights",
                                          exec_ag * pad * FP32))
        elif extra:
            deps.append(Departure("replicated tables reduced with the rest", "dp.grads", extra * FP32))
            if z == 1:
                deps.append(Departure("replicated tables broadcast with the rest", "dp.weights", extra * FP32))
        if ms.expert_params and plan.ep > 1:
            if plan.dp // plan.ep * plan.cp > 1:
                deps.append(Departure("expert gradients all-reduced once per step over the expert-data-parallel "
                                      "group", "dp.grads", (1 - model_rs) * ms.trained_expert_params * FP32))
            else:  # an expert shard has no replica (dp / ep x cp = 1): nothing to reduce
                deps.append(Departure("expert gradients have no replica to reduce with (dp / ep x cp = 1); "
                                      "traffic.py's dp.grads counts them", "dp.grads",
                                      -model_rs * ms.trained_expert_params * FP32))
            if model_ag:
                deps.append(Departure("expert weights are not sharded, so never gathered", "dp.weights",
                                      -model_ag * ms.expert_params * FP32))
    if p > 1 and model.tied_embeddings:
        emb = next((x for x in report.params if x.name == "embed.tok.weight"), None)
        if emb is not None:
            full = model.vocab_size * model.hidden / t
            deps.append(Departure("the tied pair all-reduces this rank's shard of the embedding gradient", "dp.tied",
                                  (math.prod(emb.local_shape) - full) * FP32))
    if plan.cp > 1 and "cp.ring" in terms:
        deps.append(Departure("ring attention: cp - 1 sends of the local K/V chunk (or its gradient) per pass, "
                              "(cp - 1)/cp of the all-gather buffer traffic.py counts", "cp",
                              -terms["cp.ring"] / plan.cp))
    if plan.ep > 1 and model.is_moe:
        deps.append(Departure("token counts exchanged before each dispatch (int64 per expert)", "ep",
                              m * layers * model.num_experts * 8))
        if model.capacity_factor != 1:
            deps.append(Departure("dropless routing: no capacity padding", "ep",
                                  -predicted["ep"] * (1 - 1 / model.capacity_factor)))
        if sp:
            # The executor's MoE runs on the sequence gathered over tp, so every tp rank dispatches every
            # token; Megatron-Core dispatches each rank's sequence shard and gathers within the expert-TP
            # group after the all-to-all (traffic.py's act / t).
            deps.append(Departure("with SP every tp rank dispatches the whole gathered sequence", "ep",
                                  predicted["ep"] / model.capacity_factor * (t - 1)))
    families = [f for f in COMM_FAMILIES if measured.get(f) or predicted.get(f)]
    families += sorted(f for f in set(measured) | set(predicted) if f not in COMM_FAMILIES)
    return tuple(_settle(f, measured.get(f, 0.0), predicted.get(f, 0.0), deps, COMM_RTOL) for f in families)


def compare(doc: PlanDocument, report: Any) -> RankComparison:
    comm = comm_rows(doc, report) if report.pp_rank == 0 else ()
    return RankComparison(rank=report.rank, pp_rank=report.pp_rank, memory=memory_rows(doc, report), comm=comm)


# ---- the command: planner run PLAN --dry-run --------------------------------------------------------------


def _size(nbytes: float) -> str:
    """Bytes as B / KiB / MiB / GiB, signed."""
    for unit, scale in (("GiB", GIB), ("MiB", MIB), ("KiB", 1024)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:,.2f} {unit}"
    return f"{nbytes:,.0f} B"


def _parameter_lines(report: Any) -> list[str]:
    from executor.dry_run import layer_pattern

    groups: dict[tuple[Any, ...], int] = defaultdict(int)
    for p in report.params:
        groups[(layer_pattern(p.name), p.global_shape, p.local_shape, p.placements, p.dtype)] += 1
    rows = [[name, f"x{n}" if n > 1 else "", list(g), list(loc), placements or "(plain tensor)", dtype]
            for (name, g, loc, placements, dtype), n in groups.items()]
    return table(["parameter", "", "global", "local", "placements", "dtype"], rows, align="lrllll").splitlines()


def _rows_table(rows: tuple[Row, ...]) -> list[str]:
    lines = table(["", "executor", "predicted", "departures", "residual", "agrees"],
                  [[r.family, _size(r.measured), _size(r.predicted), _size(sum(d.bytes for d in r.departures)),
                    f"{_size(r.residual)} ({100 * r.residual / max(abs(r.measured), 1):+.2f}%)",
                    "yes" if r.ok else f"NO (> {100 * r.tolerance:g}%)"] for r in rows],
                  align="lrrrrl").splitlines()
    for r in rows:
        for d in r.departures:
            if d.bytes or not d.exact:
                lines.append(f"  {r.family:10s} {_size(d.bytes):>14s}  {d.name}"
                             + ("" if d.exact else f" (attributed, up to {_size(d.bound)})"))
    return lines


def format_rank(doc: PlanDocument, report: Any, comparison: RankComparison) -> str:
    coords = " ".join(f"{k}{v}" for k, v in report.coords.items())
    chunks = ", ".join(
        f"{s.stage} (layers {s.layers[0]}-{s.layers[-1]}" if len(s.layers) > 1 else
        f"{s.stage} (layer {s.layers[0]}" if s.layers else f"{s.stage} (no layers" for s in report.stages)
    extras = [name for name, held in (("embedding", any(s.embedding for s in report.stages)),
                                      ("LM head", any(s.head for s in report.stages))) if held]
    out = [f"rank {report.rank}: {coords}; pipeline rank {report.pp_rank} holds stage chunks {chunks})"
           + (f"; with the {' and '.join(extras)}" if extras else ""),
           f"  data parallel: {report.data_parallel}",
           f"  built in {report.build_s:.1f} s, one step in {report.step_s:.1f} s", ""]
    out += ["  " + line for line in _parameter_lines(report)]
    out += ["", "  model state (bytes this rank holds after one step vs planner.cost.model_state):"]
    out += ["  " + line for line in _rows_table(comparison.memory)]
    calls = [[c.kind, c.op, "backward" if c.phase == "bwd" else "forward / other", c.calls, _size(c.bytes)]
             for c in report.collectives]
    out += ["", "  collectives of one step (buffer bytes; recv not counted as traffic):"]
    out += ["  " + line for line in table(["group", "op", "phase", "calls", "bytes"], calls,
                                          align="lllrr").splitlines()]
    if comparison.comm:
        out += ["", "  communication per step by family vs planner.cost.traffic (the plan priced in fp32):"]
        out += ["  " + line for line in _rows_table(comparison.comm)]
    else:
        out += ["", "  (communication is compared on first-stage ranks: traffic.py describes pipeline rank 0)"]
    return "\n".join(out)


def parse_ranks(text: str) -> list[int]:
    try:
        ranks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise PlannerError(f"--ranks takes comma-separated integers, got {text!r}", field="ranks") from None
    if not ranks:
        raise PlannerError("--ranks is empty", field="ranks")
    return ranks


def add_dry_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The `planner run --dry-run` flags (added to the run subcommand)."""
    parser.add_argument("--dry-run", action="store_true",
                        help="build the chosen ranks of the full-size job in this process (fake process group, "
                             "meta tensors), run one step, and compare with the cost model; nothing is launched")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--ranks", default=None, help="with --dry-run: comma-separated global ranks "
                       "(default: the first, the last and the first of every pipeline stage)")
    which.add_argument("--all-ranks", action="store_true", help="with --dry-run: every rank (slow at scale)")
    parser.add_argument("--jobs", type=int, default=1, help="with --dry-run: ranks built at once (default 1)")
    parser.add_argument("--json", action="store_true", help="with --dry-run: print JSON")


def dry_run_command(args: argparse.Namespace) -> int:
    """`planner run PLAN --dry-run`: 0 every rank agrees, 1 a disagreement or a rank failed to build,
    2 bad input (one line on stderr)."""
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10d's warnings about the fake group's backends
    from executor.dry_run import DryRunFailed, dry_run
    from planner.plan import load_plan

    try:
        if args.jobs < 1:
            raise PlannerError(f"must be >= 1, got {args.jobs}", field="jobs")
        doc = load_plan(args.plan)
        ranks = list(range(doc.plan.world_size)) if args.all_ranks else \
            parse_ranks(args.ranks) if args.ranks else None
        start = time.perf_counter()
        reports = dry_run(doc, ranks, jobs=args.jobs)
    except PlannerError as exc:
        print(f"planner run: error: {exc}", file=sys.stderr)
        return 2
    except DryRunFailed as exc:
        print(f"planner run --dry-run: the executor failed to build or step {exc}", file=sys.stderr)
        return 1
    comparisons = [compare(doc, r) for r in reports]
    wall = time.perf_counter() - start
    ok = all(c.ok for c in comparisons)
    if args.json:
        from planner.io import dumps

        print(dumps({"plan": doc.plan.to_dict(), "model": doc.model.name, "world_size": doc.plan.world_size,
                     "ok": ok, "wall_s": wall,
                     "ranks": [{**r.to_dict(), "comparison": c.to_dict()} for r, c in zip(reports, comparisons,
                                                                                         strict=True)]}))
    else:
        print(f"dry run of {doc.model.name}, {doc.plan.describe()} on {doc.plan.world_size:,} ranks: "
              f"{len(reports)} rank(s) built and stepped in {wall:.1f} s (fake process group, meta tensors)\n")
        for r, c in zip(reports, comparisons, strict=True):
            print(format_rank(doc, r, c))
            print()
        print("every rank agrees with the cost model" if ok else
              "DISAGREEMENT: " + "; ".join(f"rank {c.rank} {row.family}" for c in comparisons
                                            for row in (*c.memory, *c.comm) if not row.ok))
    return 0 if ok else 1


# ---- planner validate --dry-run ----------------------------------------------------------------------------


@dataclass(frozen=True)
class DryRunCase:
    """A search problem whose best plan is dry-run: a preset model and cluster at a size, and constraints."""

    label: str
    model: str
    cluster: str
    gpus: int
    global_batch: int
    constraints: dict[str, Any]


VALIDATE_CASES = (  # batches keep a few micro-batches per step: the dry run executes every one of them
    DryRunCase("dense", "llama3-70b", "dgx-h100", 512, 256, {"cp": 1}),
    DryRunCase("dense, 4,096 ranks", "gpt3-175b", "dgx-a100-80gb", 4096, 512, {"cp": 1}),
    DryRunCase("MoE with EP", "mixtral-8x7b", "dgx-h100", 256, 512, {"cp": 1, "tp": 1, "ep": 8}),
    DryRunCase("interleaved 1F1B", "llama3-70b", "dgx-h100", 1024, 512,
               {"cp": 1, "schedules": ("interleaved-1f1b",)}),
    DryRunCase("ZeRO-3", "llama3-8b", "dgx-h100", 64, 256, {"cp": 1, "zero_stages": (3,)}),
    DryRunCase("context parallel", "llama3-405b", "dgx-h100", 2048, 1024, {"cp": 2}),
)


def best_buildable_plan(model: ModelSpec, cluster: Any, global_batch: int, constraints: dict[str, Any],
                        candidates: int = 50) -> tuple[PlanDocument, list[str]]:
    """The search's best plan that the executor can build, and why each better plan cannot be built
    (the search also prices options the executor does not implement, e.g. uneven pipeline stages)."""
    from executor.errors import UnsupportedPlan
    from executor.run import check_executable
    from planner.search import Constraints, search

    result = search(model, cluster, global_batch, constraints=Constraints(**constraints), top_k=candidates)
    skipped = []
    for plan, prediction in zip(result.plans, result.predictions, strict=True):
        doc = PlanDocument(plan=plan, model=model, cluster=cluster, prediction=prediction)
        try:
            check_executable(doc)
        except UnsupportedPlan as exc:
            skipped.append(f"{plan.describe()}: {exc}")
            continue
        return doc, skipped
    if result.plans:  # none buildable: the best, to be reported as not built
        return PlanDocument(plan=result.plans[0], model=model, cluster=cluster,
                            prediction=result.predictions[0]), skipped
    raise PlannerError(f"no plan of {model.name} fits {cluster.num_gpus} GPUs")


def _best_plan(case: DryRunCase) -> tuple[PlanDocument, list[str]]:
    from planner.specs.catalog import load_cluster, load_model

    model, cluster = load_model(case.model), load_cluster(case.cluster, gpus=case.gpus)
    # The executor's recompute modes (none / selective / full); the search also prices others.
    return best_buildable_plan(model, cluster, case.global_batch,
                               {"recompute": ("none", "selective", "full"), **case.constraints})


def _worst(rows: list[Row]) -> str:
    if not rows:
        return "-"
    r = max(rows, key=lambda r: abs(r.residual) / max(abs(r.measured), 1.0))
    return f"{100 * r.residual / max(abs(r.measured), 1.0):+.2f}% ({r.family})"


def validate_dry_run(args: argparse.Namespace, cases: tuple[DryRunCase, ...] = VALIDATE_CASES) -> int:
    """`planner validate --dry-run`: the search's best plan of each case, dry-run on its default ranks
    (first, last, first of every pipeline stage) and compared; a table, or JSON with --json."""
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    from executor.dry_run import DryRunFailed, dry_run
    from executor.errors import UnsupportedPlan

    jobs = max(1, min(4, os.cpu_count() or 1))
    rows, records, ok = [], [], True
    for case in cases:
        doc, skipped = _best_plan(case)
        start = time.perf_counter()
        record: dict[str, Any] = {"case": case.label, "model": case.model, "cluster": case.cluster,
                                  "gpus": case.gpus, "plan": doc.plan.to_dict(), "describe": doc.plan.describe(),
                                  "better_plans_not_buildable": skipped}
        try:
            reports = dry_run(doc, jobs=jobs)
        except UnsupportedPlan as exc:
            record["not_built"] = str(exc)
            rows.append([case.label, case.model, case.gpus, doc.plan.describe(), 0, "-", "-", "-",
                         f"not built: {exc}", "-"])
            records.append(record)
            continue
        except DryRunFailed as exc:
            ok = False
            record["failed"] = str(exc)
            rows.append([case.label, case.model, case.gpus, doc.plan.describe(), 0, "-", "-", "-",
                         f"FAILED: {exc}", "-"])
            records.append(record)
            continue
        comparisons = [compare(doc, r) for r in reports]
        wall = time.perf_counter() - start
        memory = [row for c in comparisons for row in c.memory]
        comm = [row for c in comparisons for row in c.comm]
        named = sorted({d.name.split(":")[0].split(" (")[0] for row in (*memory, *comm) for d in row.departures
                        if d.bytes})
        agree = all(c.ok for c in comparisons)
        ok &= agree
        record.update(ranks=[r.rank for r in reports], ok=agree, wall_s=wall, departures=named,
                      comparisons=[c.to_dict() for c in comparisons])
        records.append(record)
        rows.append([case.label, case.model, case.gpus, doc.plan.describe(), len(reports), _worst(memory),
                     _worst(comm), len(named), "yes" if agree else "NO", f"{wall:.0f}"])
    if args.json:
        from planner.io import dumps

        print(dumps({"ok": ok, "cases": records}))
    else:
        print(table(["case", "model", "GPUs", "search's best plan", "ranks", "model state, worst residual",
                     "comm (first stage), worst residual", "named departures", "agrees", "wall s"], rows,
                    align="llrlrllrll"))
        names = sorted({n for rec in records for n in rec.get("departures", [])})
        if names:
            print("\nnamed departures of the executor from the modelled implementation:")
            for n in names:
                print(f"  - {n}")
    return 0 if ok else 1
