"""`PlanBatch`: many plans as a struct of numpy arrays, so the cost model scores them in one pass."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from planner.plan import DIMS, RECOMPUTE, SCHEDULES, Plan

INT_FIELDS = ("tp", "pp", "dp", "cp", "ep", "vpp", "mb", "gb", "sched", "rc", "zero")
# Plans equal in these fields share every structure-level cost term (sizes, SP, placement, the
# pipeline's layer split) ...
STRUCTURE_FIELDS = ("tp", "pp", "dp", "cp", "ep", "vpp", "mb", "gb", "sp",
                    "stride_tp", "stride_cp", "stride_dp", "stride_pp", "first", "last", "account", "shard", "etp")
# ... and in these every time term (the schedule changes only memory).
TIMING_FIELDS = (*STRUCTURE_FIELDS, "rc", "zero", "every")


@dataclass
class PlanBatch:
    """Column arrays (one entry per plan). `stride_*` are rank strides from the placement order.

    sched: index into SCHEDULES; rc: index into RECOMPUTE. `dtype` and `flash` are shared by the batch
    (they select the peak FLOP/s and the attention kernel's activation layout).
    """

    tp: np.ndarray
    pp: np.ndarray
    dp: np.ndarray
    cp: np.ndarray
    ep: np.ndarray
    vpp: np.ndarray
    mb: np.ndarray
    gb: np.ndarray
    sched: np.ndarray
    rc: np.ndarray
    sp: np.ndarray
    zero: np.ndarray
    stride_tp: np.ndarray
    stride_cp: np.ndarray
    stride_dp: np.ndarray
    stride_pp: np.ndarray
    placement: np.ndarray  # index into the batch's list of placement orders
    first: np.ndarray | None = None  # layers of the first pipeline rank (-1: even split)
    last: np.ndarray | None = None  # layers of the last pipeline rank (-1: even split)
    every: np.ndarray | None = None  # full recompute of 1 in `every` layers (1: all)
    account: np.ndarray | None = None  # embedding (1) / loss (2) counted as layers in the split
    shard: np.ndarray | None = None  # ZeRO's shard group (hybrid sharding; 0: the whole dp x cp group)
    etp: np.ndarray | None = None  # the experts' tensor-parallel size (default: tp)
    dtype: str = "bf16"
    flash: bool = True
    lora_rank: int = 0  # LoRA adapters of this rank on frozen base weights (0: full training)
    lora_targets: tuple[str, ...] = ()
    framework: str | None = None  # the training framework's profile (planner.framework); None: the cluster's default
    placements: tuple[tuple[str, ...], ...] = (("tp", "cp", "dp", "pp"),)
    # Optional precomputed grouping (first row of each group, inverse map), keyed by level:
    # "structure" (sizes, SP, placement) and "timing" (structure x recompute x ZeRO stage).
    groups: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    def __post_init__(self) -> None:
        n = len(self.tp)
        for name, fill in (("first", -1), ("last", -1), ("every", 1), ("account", 0), ("shard", 0)):
            if getattr(self, name) is None:
                setattr(self, name, np.full(n, fill, dtype=np.int64))
        if self.etp is None:
            self.etp = np.asarray(self.tp, dtype=np.int64).copy()

    def __len__(self) -> int:
        return len(self.tp)

    @property
    def lora(self) -> tuple[int, tuple[str, ...]] | None:
        """(rank, targets) of LoRA fine-tuning, or None for full training."""
        return (self.lora_rank, self.lora_targets) if self.lora_rank else None

    @property
    def m(self) -> np.ndarray:
        """Micro-batches per step per pipeline (gradient-accumulation steps)."""
        return self.gb // (self.dp * self.mb)

    def take(self, idx: np.ndarray) -> PlanBatch:
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            kw[f.name] = v[idx] if isinstance(v, np.ndarray) else v
        kw["groups"] = None
        return PlanBatch(**kw)

    def plan(self, i: int) -> Plan:
        """The i-th plan as a `Plan` object."""
        return Plan(
            tp=int(self.tp[i]), pp=int(self.pp[i]), dp=int(self.dp[i]), cp=int(self.cp[i]),
            ep=int(self.ep[i]), vpp=int(self.vpp[i]), micro_batch=int(self.mb[i]),
            global_batch=int(self.gb[i]), schedule=SCHEDULES[int(self.sched[i])],
            recompute=RECOMPUTE[int(self.rc[i])], sequence_parallel=bool(self.sp[i]),
            zero_stage=int(self.zero[i]), dtype=self.dtype,
            placement=self.placements[int(self.placement[i])], flash_attention=self.flash,
            first_stage_layers=None if self.first[i] < 0 else int(self.first[i]),
            last_stage_layers=None if self.last[i] < 0 else int(self.last[i]),
            recompute_every=int(self.every[i]), embedding_in_split=bool(self.account[i] & 1),
            loss_in_split=bool(self.account[i] & 2), shard_group=int(self.shard[i]) or None,
            etp=None if self.etp[i] == self.tp[i] else int(self.etp[i]),
            **({"finetune": "lora", "lora_rank": self.lora_rank, "lora_targets": self.lora_targets}
               if self.lora_rank else {}), framework=self.framework,
        )


def strides_for(order: tuple[str, ...], sizes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rank stride of each dimension when `order` lists dimensions innermost (consecutive) first."""
    out: dict[str, np.ndarray] = {}
    acc = np.ones_like(sizes["tp"])
    for d in order:
        out[d] = acc
        acc = acc * sizes[d]
    return out


def batch_from_plans(plans: list[Plan]) -> PlanBatch:
    """Pack `Plan` objects (same dtype, attention kernel and fine-tuning) into a PlanBatch."""
    if not plans:
        raise ValueError("no plans")
    p0 = plans[0]
    shared = (p0.dtype, p0.flash_attention, p0.finetune, p0.lora_rank, p0.lora_targets, p0.framework)
    if any((p.dtype, p.flash_attention, p.finetune, p.lora_rank, p.lora_targets, p.framework) != shared
           for p in plans):
        raise ValueError("a PlanBatch shares dtype, flash_attention, fine-tuning and framework; split the plans first")
    dtype, flash = p0.dtype, p0.flash_attention
    orders = sorted({p.placement for p in plans})
    col = {
        "tp": [p.tp for p in plans], "pp": [p.pp for p in plans], "dp": [p.dp for p in plans],
        "cp": [p.cp for p in plans], "ep": [p.ep for p in plans], "vpp": [p.vpp for p in plans],
        "mb": [p.micro_batch for p in plans], "gb": [p.global_batch for p in plans],
        "sched": [SCHEDULES.index(p.schedule) for p in plans],
        "rc": [RECOMPUTE.index(p.recompute) for p in plans],
        "zero": [p.zero_stage for p in plans],
    }
    arr = {k: np.asarray(v, dtype=np.int64) for k, v in col.items()}
    sp = np.asarray([p.sequence_parallel for p in plans], dtype=bool)
    placement = np.asarray([orders.index(p.placement) for p in plans], dtype=np.int64)
    strides = {d: np.zeros(len(plans), dtype=np.int64) for d in DIMS}
    for k, order in enumerate(orders):
        sel = placement == k
        st = strides_for(order, {d: arr[d] for d in DIMS})
        for d in DIMS:
            strides[d][sel] = st[d][sel]
    def col(values: list[int]) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)

    lora = p0.finetune == "lora"
    return PlanBatch(**arr, sp=sp, stride_tp=strides["tp"], stride_cp=strides["cp"],
                     stride_dp=strides["dp"], stride_pp=strides["pp"], placement=placement,
                     first=col([-1 if p.first_stage_layers is None else p.first_stage_layers for p in plans]),
                     last=col([-1 if p.last_stage_layers is None else p.last_stage_layers for p in plans]),
                     every=col([p.recompute_every for p in plans]), account=col([p.account for p in plans]),
                     shard=col([p.shard_group or 0 for p in plans]), etp=col([p.expert_tp for p in plans]),
                     dtype=dtype, flash=flash,
                     placements=tuple(orders), lora_rank=p0.lora_rank if lora else 0,
                     lora_targets=p0.lora_targets if lora else (), framework=p0.framework)


def group_index(batch: PlanBatch, level: str) -> tuple[np.ndarray, np.ndarray]:
    """(first row of each group, inverse map) of the plans equal in the fields of `level`.

    "structure" groups share every size, SP and placement; "timing" groups also share the recompute
    mode and ZeRO stage. Enumerators may precompute these (`PlanBatch.groups`).
    """
    if batch.groups and level in batch.groups:
        return batch.groups[level]
    names = STRUCTURE_FIELDS if level == "structure" else TIMING_FIELDS
    key = np.zeros(len(batch), dtype=np.uint64)
    for f in names:
        col = getattr(batch, f).astype(np.uint64)
        key = (key * np.uint64(1_000_003)) ^ (col + np.uint64(0x9E3779B97F4A7C15))
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)


def unique_inverse(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(x, return_inverse=True)` of an integer array, flattened. Counts instead of sorting when
    the values span a small range (the search's recompute, ZeRO and schedule columns): linear, where a
    sort of a million plans costs tens of milliseconds."""
    x = np.asarray(x).reshape(-1)
    if x.size:
        lo, hi = int(x.min()), int(x.max())
        if hi - lo <= max(1 << 12, x.size):
            shifted = x - lo
            present = np.bincount(shifted, minlength=hi - lo + 1) > 0
            rank = np.cumsum(present) - 1
            return (np.flatnonzero(present) + lo).astype(x.dtype), rank[shifted]
    values, inverse = np.unique(x, return_inverse=True)
    return values, inverse.reshape(-1)

