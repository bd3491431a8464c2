"""A serving plan (*how* a model is served) and its `kind: "serve"` JSON document.

A serving deployment is one or more **pools** of identical engine replicas. Aggregated serving has one
pool (role ``both``: every replica prefills and decodes, continuous batching with chunked prefill);
disaggregated serving (DistServe, Zhong et al. 2024; Splitwise, Patel et al. 2024) has a ``prefill``
pool and a ``decode`` pool with their own parallelism, the KV cache moving from one to the other.

Inside one replica: ``tp`` tensor-parallel ranks per attention group, ``attention_dp`` attention groups
(data-parallel attention, each with its own requests and KV cache, as SGLang's ``--enable-dp-attention``
and vLLM's ``--data-parallel-size`` run MoE models), ``pp`` pipeline stages, and for MoE layers ``ep``
expert-parallel ranks among the ``tp x attention_dp`` GPUs of a stage (the remaining factor splits
each expert by tensor parallelism). A replica has ``tp x attention_dp x pp`` GPUs.

**Contract**: the document shares the training plan's schema file and version
(planner/data/plan.schema.json, `SCHEMA_VERSION`), distinguished by ``"kind": "serve"``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.errors import PlanError
from planner.io import atomic_write_json, load_json
from planner.plan import SCHEMA_VERSION, plan_hash, validate_document
from planner.precision import PRECISIONS, RECIPES
from planner.serve.kv import DEFAULT_BLOCK_SIZE, KV_DTYPES
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

ROLES = ("both", "prefill", "decode")
ARRIVALS = ("poisson", "fixed")
PERCENTILES = (50, 90, 99)
# vLLM's default --gpu-memory-utilization: the fraction of device memory the engine may use for
# weights, activations and the KV cache together.
DEFAULT_MEMORY_UTILIZATION = 0.9


def _positive_int(name: str, value: Any, limit: int = 1 << 40) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"must be a positive integer, got {value!r}", field=name)
    if value > limit:
        raise PlanError(f"{value} is beyond any real deployment (limit {limit})", field=name)
    return value


@dataclass(frozen=True)
class ServePool:
    """One pool of identical engine replicas."""

    role: str = "both"
    tp: int = 1
    pp: int = 1
    ep: int = 1
    attention_dp: int = 1
    replicas: int = 1
    max_batch: int = 256  # running sequences per scheduler (vLLM --max-num-seqs)
    chunk_size: int = 2048  # tokens per engine step (vLLM --max-num-batched-tokens)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise PlanError(f"must be one of {', '.join(ROLES)}, got {self.role!r}", field="role")
        for f in ("tp", "pp", "ep", "attention_dp", "replicas", "max_batch", "chunk_size"):
            _positive_int(f, getattr(self, f))
        if (self.tp * self.attention_dp) % self.ep:
            raise PlanError(f"ep {self.ep} must divide tp x attention_dp = {self.tp * self.attention_dp} "
                            "(experts are spread over the GPUs of a pipeline stage)", field="ep")

    @property
    def stage_gpus(self) -> int:
        """GPUs of one pipeline stage of a replica."""
        return self.tp * self.attention_dp

    @property
    def expert_tp(self) -> int:
        """Tensor-parallel split of each expert: the stage's GPUs not used by expert parallelism."""
        return self.stage_gpus // self.ep

    @property
    def replica_gpus(self) -> int:
        return self.tp * self.attention_dp * self.pp

    @property
    def gpus(self) -> int:
        return self.replica_gpus * self.replicas

    @property
    def schedulers(self) -> int:
        """Independent request schedulers: replicas x pipeline virtual engines x attention groups."""
        return self.replicas * self.pp * self.attention_dp

    def describe(self) -> str:
        parts = [f"tp{self.tp}"]
        if self.pp > 1:
            parts.append(f"pp{self.pp}")
        if self.attention_dp > 1:
            parts.append(f"adp{self.attention_dp}")
        if self.ep > 1:
            parts.append(f"ep{self.ep}")
        parts.append(f"x{self.replicas}")
        parts.append(f"b{self.max_batch}")
        if self.role != "decode":
            parts.append(f"c{self.chunk_size}")
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServePool:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class ServePlan:
    """Pools plus the precision and KV-cache settings they share."""

    pools: tuple[ServePool, ...]
    dtype: str = "bf16"
    kv_dtype: str = "bf16"
    block_size: int = DEFAULT_BLOCK_SIZE
    memory_utilization: float = DEFAULT_MEMORY_UTILIZATION

    def __post_init__(self) -> None:
        pools = tuple(self.pools)
        object.__setattr__(self, "pools", pools)
        roles = tuple(p.role for p in pools)
        if roles not in (("both",), ("prefill", "decode")):
            raise PlanError(f"pools must be one 'both' pool or a 'prefill' and a 'decode' pool, got {roles}",
                            field="pools")
        if self.dtype not in PRECISIONS:
            raise PlanError(f"must be one of {', '.join(PRECISIONS)}, got {self.dtype!r}", field="dtype")
        if self.kv_dtype not in KV_DTYPES:
            raise PlanError(f"must be one of {', '.join(KV_DTYPES)}, got {self.kv_dtype!r}", field="kv_dtype")
        _positive_int("block_size", self.block_size, 1 << 16)
        if not 0 < self.memory_utilization <= 1:
            raise PlanError(f"must be in (0, 1], got {self.memory_utilization!r}", field="memory_utilization")

    @property
    def disaggregated(self) -> bool:
        return len(self.pools) == 2

    @property
    def num_gpus(self) -> int:
        return sum(p.gpus for p in self.pools)

    def pool(self, role: str) -> ServePool:
        for p in self.pools:
            if p.role == role:
                return p
        raise KeyError(role)

    def describe(self) -> str:
        if not self.disaggregated:
            return self.pools[0].describe()
        return " | ".join(f"{p.role} {p.describe()}" for p in self.pools)


@dataclass(frozen=True)
class Workload:
    """The request stream: fixed prompt (isl) and output (osl) lengths, and either a closed loop of
    `concurrency` users (each sends its next request when the last one finishes) or an open stream
    of `request_rate` requests per second (Poisson or evenly spaced arrivals). Neither: saturated, every
    scheduler kept at its max batch (the throughput-per-GPU operating point)."""

    isl: int
    osl: int
    concurrency: int | None = None
    request_rate: float | None = None
    arrivals: str = "poisson"
    num_requests: int | None = None  # per simulated scheduler; None: enough for stable percentiles
    seed: int = 0

    def __post_init__(self) -> None:
        _positive_int("isl", self.isl, 1 << 26)
        _positive_int("osl", self.osl, 1 << 26)
        if self.concurrency is not None:
            _positive_int("concurrency", self.concurrency, 1 << 30)
        rate = self.request_rate
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1e9):
            raise PlanError(f"must be a positive number, got {self.request_rate!r}", field="request_rate")
        if self.concurrency is not None and self.request_rate is not None:
            raise PlanError("give a concurrency or a request rate, not both", field="request_rate")
        if self.arrivals not in ARRIVALS:
            raise PlanError(f"must be one of {', '.join(ARRIVALS)}, got {self.arrivals!r}", field="arrivals")
        if self.num_requests is not None:
            _positive_int("num_requests", self.num_requests, 1 << 24)

    @property
    def mode(self) -> str:
        if self.concurrency is not None:
            return "closed"
        if self.request_rate is not None:
            return "open"
        return "saturated"

    def describe(self) -> str:
        if self.mode == "closed":
            load = f"concurrency {self.concurrency}"
        elif self.mode == "open":
            load = f"{self.request_rate:g} req/s ({self.arrivals})"
        else:
            load = "saturated"

        return f"isl {self.isl}, osl {self.osl}, {load}"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Workload:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class SLO:
    """Latency limits on a percentile of requests (DistServe's SLO attainment: p90 by default)."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    percentile: int = 90

    def __post_init__(self) -> None:
        for f in ("ttft_ms", "tpot_ms"):
            v = getattr(self, f)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1e12):
                raise PlanError(f"must be a positive number, got {v!r}", field=f)
        if self.percentile not in PERCENTILES:
            raise PlanError(f"must be one of {PERCENTILES}, got {self.percentile!r}", field="percentile")

    def met(self, prediction: dict[str, Any]) -> bool:
        key = f"p{self.percentile}"
        ok = self.ttft_ms is None or prediction["ttft_ms"][key] <= self.ttft_ms
        return ok and (self.tpot_ms is None or prediction["tpot_ms"][key] <= self.tpot_ms)

    def describe(self) -> str:
        parts = []
        if self.ttft_ms is not None:
            parts.append(f"TTFT p{self.percentile} <= {self.ttft_ms:g} ms")
        if self.tpot_ms is not None:
            parts.append(f"TPOT p{self.percentile} <= {self.tpot_ms:g} ms")
        return " and ".join(parts) or "no latency limit"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass
class ServeDocument:
    """A self-contained serving plan: plan, model, cluster, workload, SLO and (optionally) prediction."""

    plan: ServePlan
    model: ModelSpec
    cluster: ClusterSpec
    workload: Workload
    slo: SLO = field(default_factory=SLO)
    prediction: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kind": "serve"}
        d["pools"] = [p.to_dict() for p in self.plan.pools]
        d["dtype"] = self.plan.dtype
        d["kv_dtype"] = self.plan.kv_dtype
        d["block_size"] = self.plan.block_size
        d["memory_utilization"] = self.plan.memory_utilization
        d["workload"] = self.workload.to_dict()
        d["slo"] = self.slo.to_dict()
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


def check_serve_plan(model: ModelSpec, cluster: ClusterSpec, plan: ServePlan) -> None:
    """Raise PlanError naming the first rule a serving plan breaks (sizes against model and cluster)."""
    if plan.num_gpus > cluster.num_gpus:
        raise PlanError(f"the pools need {plan.num_gpus} GPUs but the cluster has {cluster.num_gpus}",
                        field="num_gpus")
    for p in plan.pools:
        if model.num_heads % p.tp:
            raise PlanError(f"num_heads {model.num_heads} is not divisible by tp {p.tp}", field="tp")
        kv = model.num_kv_heads
        if kv % p.tp and p.tp % kv:
            raise PlanError(f"num_kv_heads {kv} and tp {p.tp}: one must divide the other", field="tp")
        if model.ffn_hidden % p.tp:
            raise PlanError(f"ffn_hidden {model.ffn_hidden} is not divisible by tp {p.tp}", field="tp")
        if p.pp > model.num_layers:
            raise PlanError(f"pp {p.pp} exceeds the {model.num_layers} layers", field="pp")
        if p.ep > 1 and not model.is_moe:
            raise PlanError("expert parallelism needs a mixture-of-experts model", field="ep")
        if p.ep > 1 and model.num_experts % p.ep:
            raise PlanError(f"num_experts {model.num_experts} is not divisible by ep {p.ep}", field="ep")
        if model.is_moe and model.ffn_hidden % p.expert_tp:
            raise PlanError(f"ffn_hidden {model.ffn_hidden} is not divisible by the expert TP split "
                            f"{p.expert_tp}", field="ep")
        if p.attention_dp > 1 and not model.is_moe:
            raise PlanError("attention data parallelism is for MoE models (dense models use replicas)",
                            field="attention_dp")
        if p.role != "decode" and p.chunk_size < p.max_batch:
            raise PlanError(f"chunk_size {p.chunk_size} must be >= max_batch {p.max_batch} (every running "
                            "sequence decodes one token per step)", field="chunk_size")
    if RECIPES[plan.dtype].low_precision:
        from planner.precision import check_precision

        check_precision(plan.dtype, cluster)


def serve_document_from_json(doc: Any, source: str = "plan") -> ServeDocument:
    """Validate (schema, specs, legality) and build a ServeDocument from a `kind: "serve"` object."""
    validate_document(doc, source)
    if doc.get("kind") != "serve":
        raise PlanError(f"{source}: is a training plan (kind {doc.get('kind')!r}), not a serving plan",
                        field="kind")
    if doc["schema_version"] > SCHEMA_VERSION:
        raise PlanError(f"{source}: schema_version {doc['schema_version']} is newer than this planner "
                        f"({SCHEMA_VERSION}); upgrade the planner", field="schema_version")
    model = ModelSpec.from_dict(doc["model"], source=f"{source}.model")
    cluster = ClusterSpec.from_dict(doc["cluster"], where=f"{source}.cluster")
    plan = ServePlan(pools=tuple(ServePool.from_dict(p) for p in doc["pools"]), dtype=doc["dtype"],
                     kv_dtype=doc["kv_dtype"], block_size=doc.get("block_size", DEFAULT_BLOCK_SIZE),
                     memory_utilization=doc.get("memory_utilization", DEFAULT_MEMORY_UTILIZATION))
    if doc.get("num_gpus", cluster.num_gpus) != cluster.num_gpus:
        raise PlanError(f"{source}: num_gpus {doc['num_gpus']} differs from the cluster's {cluster.num_gpus}",
                        field="num_gpus")
    check_serve_plan(model, cluster, plan)
    workload = Workload.from_dict(doc["workload"])
    slo = SLO(**doc.get("slo", {}))
    extra = {k: v for k, v in doc.items() if k in ("name", "simulation")}
    return ServeDocument(plan=plan, model=model, cluster=cluster, workload=workload, slo=slo,
                         prediction=doc.get("prediction"), extra=extra)


def is_serve_document(data: Any) -> bool:
    """Whether a loaded JSON value (an object, or a `--json` list) is a serving plan."""
    if isinstance(data, list) and data:
        data = data[0]
    return isinstance(data, dict) and data.get("kind") == "serve"


def load_serve_plan(path: str | Path) -> ServeDocument:
    """Read a serving plan file (one object, or the first of a `planner serve --json` list)."""
    data = load_json(path)
    if isinstance(data, list):
        if not data:
            raise PlanError(f"{path}: empty list of plans")
        data = data[0]
    return serve_document_from_json(data, source=Path(path).name)


def save_serve_plan(path: str | Path, document: ServeDocument) -> Path:
    doc = document.to_json()
    validate_document(doc, "serving plan being written")
    return atomic_write_json(path, doc)
