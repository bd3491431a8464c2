"""The parallel plan (*how* a model is trained) and its versioned, self-contained JSON document.

**Contract**: the JSON layout written here is read by the executor, the dashboard, the exporters and
users' scripts. Its JSON Schema ships as `planner/data/plan.schema.json`; change both together and bump
`SCHEMA_VERSION` on any incompatible change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from planner.errors import PlanError
from planner.framework import framework_names
from planner.io import atomic_write_json, load_json
from planner.precision import PRECISIONS, check_precision
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

SCHEMA_VERSION = 1
SCHEDULES = ("1f1b", "interleaved-1f1b", "gpipe")
# none; selective: Megatron-LM's (the attention core, Korthikanti et al. 2022); full: every layer's
# forward (or 1 of every `recompute_every` layers); op-selective: torchtitan's per-op policy (saves the
# attention output and every other matmul's output, recomputes the rest); save-matmuls,
# save-matmuls-but-mlp-up, save-attn-proj: the JAX checkpoint policies of MaxText / PaxML (keep every
# matmul output, all but the MLP's input projections, the attention projections alone). The last four
# keep chosen matmul outputs (planner.cost.memory.MATMUL_POLICIES, in that order).
RECOMPUTE = ("none", "selective", "full", "op-selective", "save-matmuls", "save-matmuls-but-mlp-up",
             "save-attn-proj")
FINETUNE = ("full", "lora")
LORA_TARGETS = ("qkv", "proj", "up", "down")  # the linear layers LoRA adapters attach to
DIMS = ("tp", "cp", "dp", "pp")
DEFAULT_PLACEMENT = ("tp", "cp", "dp", "pp")  # innermost (consecutive ranks) first, as Megatron-LM

SIZE_KEYS = ("tp", "pp", "dp", "cp", "ep", "vpp", "micro_batch", "global_batch")


@dataclass(frozen=True)
class Plan:
    """Parallel sizes and training knobs. World size = tp x cp x dp x pp; ep divides dp."""

    tp: int = 1
    pp: int = 1
    dp: int = 1
    cp: int = 1
    ep: int = 1
    vpp: int = 1  # virtual pipeline stages (model chunks) per pipeline rank
    micro_batch: int = 1
    global_batch: int = 1
    schedule: str = "1f1b"
    recompute: str = "none"
    sequence_parallel: bool = False
    zero_stage: int = 0
    dtype: str = "bf16"
    placement: tuple[str, ...] = DEFAULT_PLACEMENT
    flash_attention: bool = True  # fused attention kernel (no s^2 activations)
    # Uneven pipelines: the first / last pipeline rank's layer count (Megatron-LM's
    # --decoder-first/last-pipeline-num-layers); None: every rank holds the same.
    first_stage_layers: int | None = None
    last_stage_layers: int | None = None
    # ... or the embedding / the loss counted as one layer each in an even split over the virtual
    # stages (Megatron-LM's --account-for-embedding-in-pipeline-split / -loss-in-pipeline-split)
    embedding_in_split: bool = False
    loss_in_split: bool = False
    recompute_every: int = 1  # with recompute "full": recompute 1 of every k layers (torchtitan's int option)
    finetune: str = "full"  # full training, or LoRA adapters on frozen base weights
    lora_rank: int = 16
    lora_targets: tuple[str, ...] = LORA_TARGETS
    # the framework that runs the plan (planner/data/frameworks.json); None: the cluster's default
    # (this project's executor on CPU hosts, Megatron-LM on GPUs)
    framework: str | None = None
    # Hybrid sharding (HSDP; MaxText's fsdp axis inside data parallelism; Megatron's distributed-optimizer
    # instances): ZeRO shards over groups of `shard_group` of the dp x cp gradient ranks (the nearest in
    # rank order) and replicates over the dp x cp / shard_group groups. None: one group of all of them.
    shard_group: int | None = None
    # Expert tensor parallelism (Megatron-Core's --expert-tensor-parallel-size, "MoE parallel folding"):
    # the experts are tensor-parallel over `etp` ranks, a divisor of tp, and the TP ranks that frees fold
    # into expert parallelism (ep divides tp / etp x dp). None: the experts use tp like the rest.
    etp: int | None = None

    # Fields written to JSON only when they differ from these defaults (so plans written before
    # they existed keep their hash).
    OPTIONAL: ClassVar[dict[str, Any]] = {"first_stage_layers": None, "last_stage_layers": None,
                                          "embedding_in_split": False, "loss_in_split": False, "recompute_every": 1,
                "finetune": "full", "lora_rank": 16, "lora_targets": LORA_TARGETS,
                "framework": None, "shard_group": None, "etp": None}

    def __post_init__(self) -> None:
        for k in SIZE_KEYS:
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise PlanError(f"must be a positive integer, got {v!r}", field=k)
            if v > 1 << 40:
                raise PlanError(f"{v} is beyond any real cluster", field=k)
        if self.schedule not in SCHEDULES:
            raise PlanError(f"must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}", field="schedule")
        if self.recompute not in RECOMPUTE:
            raise PlanError(f"must be one of {', '.join(RECOMPUTE)}, got {self.recompute!r}", field="recompute")
        if self.zero_stage not in (0, 1, 2, 3) or isinstance(self.zero_stage, bool):
            raise PlanError(f"must be 0, 1, 2 or 3, got {self.zero_stage!r}", field="zero_stage")
        if self.dtype not in PRECISIONS:
            raise PlanError(f"must be one of {', '.join(PRECISIONS)}, got {self.dtype!r}", field="dtype")
        for f in ("sequence_parallel", "flash_attention", "embedding_in_split", "loss_in_split"):
            if not isinstance(getattr(self, f), bool):
                raise PlanError(f"must be true or false, got {getattr(self, f)!r}", field=f)
        placement = tuple(self.placement) if isinstance(self.placement, (list, tuple)) else None
        if placement is None or sorted(placement) != sorted(DIMS):
            raise PlanError(f"must be an ordering of {', '.join(DIMS)}, got {self.placement!r}",
                            field="placement")
        object.__setattr__(self, "placement", placement)
        for f in ("first_stage_layers", "last_stage_layers"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100_000):
                raise PlanError(f"must be a layer count (0-100000) or null, got {v!r}", field=f)
        for f, hi in (("recompute_every", 100_000), ("lora_rank", 1 << 16)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
                raise PlanError(f"must be an integer in 1..{hi}, got {v!r}", field=f)
        if self.recompute_every > 1 and self.recompute != "full":
            raise PlanError("recompute_every > 1 needs recompute 'full'", field="recompute_every")
        if self.finetune not in FINETUNE:
            raise PlanError(f"must be one of {', '.join(FINETUNE)}, got {self.finetune!r}", field="finetune")
        targets = tuple(self.lora_targets) if isinstance(self.lora_targets, (list, tuple)) else None
        if not targets or any(t not in LORA_TARGETS for t in targets) or len(set(targets)) != len(targets):
            raise PlanError(f"must be a non-empty subset of {', '.join(LORA_TARGETS)}, got {self.lora_targets!r}",
                            field="lora_targets")
        object.__setattr__(self, "lora_targets", targets)
        v = self.shard_group
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1 << 40):
            raise PlanError(f"must be a positive integer or null, got {v!r}", field="shard_group")
        v = self.etp
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1 << 40):
            raise PlanError(f"must be a positive integer or null, got {v!r}", field="etp")
        if self.framework is not None and self.framework not in framework_names():
            raise PlanError(f"must be one of {', '.join(framework_names())}, got {self.framework!r}", field="framework")

    @property
    def uneven(self) -> bool:
        return self.first_stage_layers is not None or self.last_stage_layers is not None or self.account > 0

    @property
    def account(self) -> int:
        """Bit mask of the units counted as layers in the pipeline split (planner.cost.stages)."""
        return (1 if self.embedding_in_split else 0) | (2 if self.loss_in_split else 0)

    @property
    def world_size(self) -> int:
        return self.tp * self.cp * self.dp * self.pp

    @property
    def hybrid(self) -> bool:
        """ZeRO shards over part of the dp x cp gradient group and replicates over the rest (HSDP)."""
        return self.shard_group is not None and self.shard_group < self.dp * self.cp

    @property
    def expert_tp(self) -> int:
        """Tensor-parallel ranks each expert's weights are split over (etp, or tp when not set)."""
        return self.tp if self.etp is None else self.etp

    @property
    def folded(self) -> bool:
        """Experts narrower in tensor parallelism than the rest, the freed ranks folded into ep."""
        return self.expert_tp != self.tp

    @property
    def grad_accum(self) -> int:
        """Micro-batches per step on each data-parallel replica (m in the pipeline formulas)."""
        return self.global_batch // (self.dp * self.micro_batch)

    def describe(self) -> str:
        parts = [f"tp{self.tp}", f"pp{self.pp}", f"dp{self.dp}"]
        if self.cp > 1:
            parts.append(f"cp{self.cp}")
        if self.ep > 1:
            parts.append(f"ep{self.ep}")
        if self.folded:
            parts.append(f"etp{self.expert_tp}")
        if self.vpp > 1:
            parts.append(f"v{self.vpp}")
        parts.append(f"mb{self.micro_batch}")
        if self.sequence_parallel:
            parts.append("sp")
        if self.recompute != "none":
            parts.append(f"rc-{self.recompute}" + (f"/{self.recompute_every}" if self.recompute_every > 1 else ""))
        if self.zero_stage:
            parts.append(f"z{self.zero_stage}" + (f"/hs{self.shard_group}" if self.hybrid else ""))
        if self.pp > 1 and self.schedule == "gpipe":
            parts.append("gpipe")
        if self.first_stage_layers is not None:
            parts.append(f"first{self.first_stage_layers}")
        if self.last_stage_layers is not None:
            parts.append(f"last{self.last_stage_layers}")
        if self.account:
            units = ("+emb" if self.embedding_in_split else "") + ("+loss" if self.loss_in_split else "")
            parts.append(f"split{units}")
        if self.finetune == "lora":
            parts.append(f"lora{self.lora_rank}")
        if self.framework is not None:
            parts.append(f"@{self.framework}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["placement"] = list(self.placement)
        d["lora_targets"] = list(self.lora_targets)
        for k, default in self.OPTIONAL.items():
            if getattr(self, k) == default:
                d.pop(k)
        d["grad_accum"] = self.grad_accum
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def check_plan(model: ModelSpec, cluster: ClusterSpec, plan: Plan) -> None:
    """Raise PlanError naming the first violated rule; return None for a legal plan."""
    m, p = model, plan
    if p.world_size != cluster.num_gpus:
        raise PlanError(
            f"tp*cp*dp*pp = {p.tp}*{p.cp}*{p.dp}*{p.pp} = {p.world_size} but the cluster has "
            f"{cluster.num_gpus} GPUs", field="world_size")
    if m.num_heads % p.tp:
        raise PlanError(f"num_heads {m.num_heads} is not divisible by tp {p.tp}", field="tp")
    if m.num_kv_heads % p.tp:
        raise PlanError(f"num_kv_heads {m.num_kv_heads} is not divisible by tp {p.tp}", field="tp")
    if m.ffn_hidden % p.tp:
        raise PlanError(f"ffn_hidden {m.ffn_hidden} is not divisible by tp {p.tp}", field="tp")
    for name, size, key in (("moe_ffn_hidden", p.expert_tp, "etp" if p.folded else "tp"),
                            ("shared_ffn_hidden", p.tp, "tp")):
        width = getattr(m, name, 0)
        if width and width % size:
            raise PlanError(f"{name} {width} is not divisible by {key} {size}", field=key)
    if p.folded:
        if not m.is_moe:
            raise PlanError("expert tensor parallelism (etp) needs a mixture-of-experts model", field="etp")
        if p.tp % p.expert_tp:
            raise PlanError(f"etp {p.expert_tp} must divide tp {p.tp} (the experts' tensor-parallel ranks are "
                            "part of the layer's)", field="etp")
        if not p.sequence_parallel:
            raise PlanError("etp < tp needs sequence parallelism (each rank dispatches its own share of the "
                            "tokens to the experts, as Megatron-Core requires)", field="etp")
    if p.uneven:
        from planner.cost.stages import virtual_stage_sizes

        field = "embedding_in_split" if p.account else "first_stage_layers"
        try:
            sizes = virtual_stage_sizes(m.num_layers, p.pp, p.vpp, p.first_stage_layers, p.last_stage_layers,
                                        p.account)
        except ValueError as exc:
            raise PlanError(str(exc), field=field) from None
        per_rank = [sum(sizes[r::p.pp]) for r in range(p.pp)]
        if min(per_rank) == 0:
            raise PlanError(f"pipeline rank {per_rank.index(0)} would hold no layer (each rank needs a positive "
                            f"multiple of vpp = {p.vpp})", field=field)
    elif m.num_layers % (p.pp * p.vpp):
        raise PlanError(f"num_layers {m.num_layers} is not divisible by pp*vpp = {p.pp}*{p.vpp} (an uneven "
                        f"split needs first_stage_layers / last_stage_layers, or embedding_in_split / "
                        f"loss_in_split)", field="pp")
    if p.global_batch % (p.dp * p.micro_batch):
        raise PlanError(f"global_batch {p.global_batch} is not divisible by dp*micro_batch = "
                        f"{p.dp}*{p.micro_batch}", field="global_batch")
    if m.seq_len % p.cp:
        raise PlanError(f"seq_len {m.seq_len} is not divisible by cp {p.cp}", field="cp")
    if p.sequence_parallel and p.tp == 1:
        raise PlanError("sequence parallelism needs tp > 1", field="sequence_parallel")
    if p.sequence_parallel and (m.seq_len // p.cp) % p.tp:
        raise PlanError(f"sequence length per cp rank {m.seq_len // p.cp} is not divisible by tp {p.tp}",
                        field="sequence_parallel")
    if p.ep > 1:
        if not m.is_moe:
            raise PlanError("expert parallelism needs a mixture-of-experts model", field="ep")
        if m.num_experts % p.ep:
            raise PlanError(f"num_experts {m.num_experts} is not divisible by ep {p.ep}", field="ep")
        if p.folded and (p.tp // p.expert_tp * p.dp) % p.ep:
            raise PlanError(f"ep {p.ep} must divide tp/etp x dp = {p.tp // p.expert_tp} x {p.dp} (experts are "
                            "spread over the folded tensor- and data-parallel ranks)", field="ep")
        if not p.folded and p.dp % p.ep:
            raise PlanError(f"ep {p.ep} must divide dp {p.dp} (experts are spread over data-parallel ranks)",
                            field="ep")
    if p.shard_group is not None:
        group = p.dp * p.cp
        if group % p.shard_group:
            raise PlanError(f"shard_group {p.shard_group} must divide the gradient group dp*cp = {p.dp}*{p.cp}",
                            field="shard_group")
        if p.hybrid and p.zero_stage == 0:
            raise PlanError("hybrid sharding (shard_group < dp*cp) needs zero_stage 1, 2 or 3", field="shard_group")
        if p.hybrid and (p.ep > 1 or p.folded):
            raise PlanError("hybrid sharding with expert parallelism is not modelled yet (experts shard over "
                            "their own dp/ep x cp group)", field="shard_group")
    if p.vpp > 1 and p.schedule != "interleaved-1f1b":
        raise PlanError("vpp > 1 needs the interleaved-1f1b schedule", field="schedule")
    if p.schedule == "interleaved-1f1b":
        if p.pp == 1 or p.vpp == 1:
            raise PlanError("the interleaved-1f1b schedule needs pp > 1 and vpp > 1", field="schedule")
        if p.grad_accum % p.pp:
            raise PlanError(f"interleaved-1f1b needs the micro-batch count {p.grad_accum} to be a "
                            f"multiple of pp {p.pp}", field="global_batch")
    check_precision(p.dtype, cluster)


# ---- the JSON document ------------------------------------------------------------------------


@dataclass
class PlanDocument:
    """A self-contained plan: the plan, its model and cluster, and (optionally) its prediction."""

    plan: Plan
    model: ModelSpec
    cluster: ClusterSpec
    prediction: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": "plan"}
        d.update(self.plan.to_dict())
        d["seq_len"] = self.model.seq_len
        d["num_gpus"] = self.cluster.num_gpus
        d["model"] = self.model.to_dict()
        d["cluster"] = self.cluster.to_dict()
        if self.prediction is not None:
            d["prediction"] = self.prediction
        d.update(self.extra)
        return d

    @property
    def hash(self) -> str:
        return plan_hash(self.to_json())


def plan_hash(doc: dict[str, Any]) -> str:
    """Identity of a plan: sizes, knobs, model and cluster (not the prediction). 16 hex digits."""
    keep = {k: v for k, v in doc.items() if k not in ("prediction", "simulation")}
    if isinstance(keep.get("cluster"), dict):
        keep["cluster"] = {k: v for k, v in keep["cluster"].items() if k != "provenance"}
    text = json.dumps(keep, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def schema() -> dict[str, Any]:
    text = resources.files("planner.data").joinpath("plan.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def _non_finite(doc: Any) -> str | None:
    """Path of the first NaN or infinite number in `doc` (JSON Schema cannot say "finite")."""
    stack: list[tuple[Any, str]] = [(doc, "")]
    while stack:
        node, where = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return where or "(top level)"
        if isinstance(node, dict):
            stack.extend((v, f"{where}.{k}" if where else str(k)) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, f"{where}.{i}" if where else str(i)) for i, v in enumerate(node))
    return None


def validate_document(doc: Any, source: str = "plan") -> None:
    """Check a plan document against the shipped JSON Schema; PlanError names the failing field."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(x) for x in err.absolute_path) or "(top level)"
        raise PlanError(f"{source}: does not match the plan schema at {where}: {err.message}",
                        field=where)
    where = _non_finite(doc)
    if where is not None:
        raise PlanError(f"{source}: {where} is not a finite number", field=where)


def document_from_json(doc: Any, source: str = "plan") -> PlanDocument:
    """Validate (schema, then specs, then legality) and build a PlanDocument."""
    validate_document(doc, source)
    if doc.get("kind") == "serve":
        raise PlanError(f"{source}: is a serving plan (kind \"serve\"): `planner run` runs it, `planner serve` "
                        "makes one; training commands need a training plan", field="kind")
    if doc["schema_version"] > SCHEMA_VERSION:
        raise PlanError(f"{source}: schema_version {doc['schema_version']} is newer than this planner "
                        f"({SCHEMA_VERSION}); upgrade the planner", field="schema_version")
    model = ModelSpec.from_dict(doc["model"], source=f"{source}.model")
    cluster = ClusterSpec.from_dict(doc["cluster"], where=f"{source}.cluster")
    plan = Plan.from_dict(doc)
    if doc.get("seq_len", model.seq_len) != model.seq_len:
        raise PlanError(f"{source}: seq_len {doc['seq_len']} differs from model.seq_len {model.seq_len}",
                        field="seq_len")
    if doc.get("num_gpus", cluster.num_gpus) != cluster.num_gpus:
        raise PlanError(f"{source}: num_gpus {doc['num_gpus']} differs from the cluster's "
                        f"{cluster.num_gpus}", field="num_gpus")
    check_plan(model, cluster, plan)  # first: a wrong size is the cause, a stale grad_accum the symptom
    if "grad_accum" in doc and doc["grad_accum"] != plan.grad_accum:
        raise PlanError(f"{source}: grad_accum {doc['grad_accum']} != global_batch/(dp*micro_batch) = "
                        f"{plan.grad_accum}", field="grad_accum")
    extra = {k: v for k, v in doc.items() if k in ("simulation", "name")}
    return PlanDocument(plan=plan, model=model, cluster=cluster, prediction=doc.get("prediction"),
                        extra=extra)


def refresh_prediction(doc: PlanDocument) -> str | None:
    """Replace `doc.prediction` by the cost model's prediction of the plan's contents (model, cluster,
    sizes), so a hand-edited plan never shows the numbers of what it was before; returns a one-line
    note when the stored prediction differed (stale), else None."""
    from planner.cost import estimate

    stored, fresh = doc.prediction, estimate(doc.model, doc.cluster, doc.plan)
    doc.prediction = fresh
    if not isinstance(stored, dict):
        return None
    changed = []
    for name, key, unit in (("step", "step_time_s", "s"), ("memory", "memory_gib_per_gpu", "GiB")):
        old, new = stored.get(key), fresh[key]
        if isinstance(old, (int, float)) and abs(old - new) <= 1e-6 * max(abs(new), 1e-12):
            continue
        shown = f"{old:.4g}" if isinstance(old, (int, float)) else repr(old)
        changed.append(f"{name} {shown} {unit} stored, {new:.4g} {unit} from its contents")
    if not changed:
        return None
    return ("the plan file's stored prediction is stale (" + "; ".join(changed) + "): it was edited or made by "
            "another version; showing the prediction of what the file now says")


def load_plan(path: str | Path) -> PlanDocument:
    """Read a plan file (one plan object, or the first element of a `--json` array)."""
    data = load_json(path)
    if isinstance(data, list):
        if not data:
            raise PlanError(f"{path}: empty list of plans")
        data = data[0]
    return document_from_json(data, source=Path(path).name)


def save_plan(path: str | Path, document: PlanDocument) -> Path:
    doc = document.to_json()
    validate_document(doc, "plan being written")
    return atomic_write_json(path, doc)
