"""`ClusterSpec`: *where* a plan runs: a GPU type x GPUs per node x nodes x two link tiers, and optionally
the fabric as a graph (`planner.specs.topology`), which says how many GPUs share the fast (NVLink) tier.

Every hardware number is a physical quantity (peak FLOP/s, bytes, bytes/s, seconds) with its source;
the efficiencies are achieved fractions of those peaks, measured by microbenchmarks (`planner
calibrate` on the user's machines, or published benchmark results for the catalog entries).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from planner.errors import SpecError
from planner.framework import ATTENTION_KERNELS, Framework, framework_root
from planner.specs.model import show, show_key
from planner.specs.topology import LinkClass, Topology

COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "p2p")
# The same collectives issued through torch's functional collectives (what DTensor's tensor parallelism
# calls: an out-of-place result and a separate wait), which `planner calibrate` times on their own where
# they cost more than the in-place calls (gloo on CPU ranks); a profile without them prices both alike.
FUNCTIONAL = "_functional"
FUNCTIONAL_COLLECTIVES = tuple(op + FUNCTIONAL for op in ("all_reduce", "all_gather", "reduce_scatter"))
KNOWN_COLLECTIVES = COLLECTIVES + FUNCTIONAL_COLLECTIVES  # the names LinkSpec.collectives accepts
# A measured row: (alpha s, busbw B/s) of a call as a training step issues it (on CPU ranks: after compute),
# and optionally of a call issued right after another one (a burst; `planner calibrate` on CPU ranks).
MEASURED_ROW_KEYS = ("group", "alpha", "busbw", "burst_alpha", "burst_busbw")
DERIVED = "topology"  # a cluster file's intra_node / inter_node: derive the link from the topology graph


def _num(obj: str, name: str, value: Any, lo: float = 0.0, hi: float = math.inf,
         strict_lo: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SpecError(f"must be a number, got {show(value)}", field=f"{obj}.{name}")
    bound = f"> {lo}" if strict_lo else f">= {lo}"
    try:
        v = float(value)
    except OverflowError:  # an integer beyond the float range
        raise SpecError(f"must be {bound} and <= {hi:g}, got {show(value)}", field=f"{obj}.{name}") from None
    if not math.isfinite(v) or (v <= lo if strict_lo else v < lo) or v > hi:
        raise SpecError(f"must be {bound} and <= {hi:g}, got {show(value)}", field=f"{obj}.{name}")
    return v


def _name(obj: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise SpecError(f"must be a non-empty string, got {show(value)}", field=f"{obj}.name")


def _from_dict(cls: type, data: Any, where: str) -> dict[str, Any]:
    """Check keys of a JSON object against a dataclass; returns a copy to build it from."""
    if not isinstance(data, dict):
        raise SpecError(f"expected a JSON object, got {type(data).__name__}", field=where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(show_key(k) for k in data if k not in fields)
    if unknown:
        raise SpecError(f"unknown field(s) {', '.join(unknown)}", field=f"{where}.{unknown[0]}")
    for name, f in fields.items():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in data:
            raise SpecError("missing required field", field=f"{where}.{name}")
    return dict(data)


# The fields a part shares with the part of the same compute silicon its `efficiencies_of` names.
SHARED_EFFICIENCIES = ("gemm_efficiency", "gemm_efficiency_by_dtype", "gemm_overhead_s", "attention_efficiency",
                       "attention_efficiency_by_kernel")


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator (or, for `localhost-cpu`, one CPU core driving one rank).

    GEMM time model: t = F / (peak x gemm_efficiency) + gemm_overhead_s, i.e. a sustained fraction
    of peak plus a fixed per-kernel cost (launch, tile ramp-up and wave quantisation), which makes
    small GEMMs less efficient. `gemm_curve`, when measured by `planner calibrate`, replaces it with
    the measured efficiency as a function of GEMM FLOPs (interpolated in log FLOPs).
    Memory-bound kernels: t = bytes / (memory_bandwidth x memory_efficiency) + kernel_overhead_s.

    A host whose last-level cache `planner calibrate` measured (CPUs) has two levels: streaming over a
    working set that fits in `cache_bytes` runs at `cache_bandwidth`, over twice that or more at
    `memory_bandwidth` (`resident_fraction`, the shape of calibrate's sweep). A training step streams
    from memory (its data does not survive in cache between uses: docs/cost-model.md §2) but for an
    unfused optimizer's repeated passes over one tensor; a serving step re-streams the weights it just
    streamed (planner.serve.step.serving_gpu). A GPU has one level: its L2 is far smaller than a
    training step's working set and its datasheet bandwidth is the HBM's.
    """

    name: str
    peak_flops: dict[str, float] = field(hash=False)  # dense FLOP/s per dtype (bf16, fp16, fp32, ...)
    memory_bytes: float  # device memory (HBM) per GPU
    memory_bandwidth: float  # bytes/s, datasheet
    gemm_efficiency: float = 0.7  # sustained fraction of peak on large GEMMs
    # Sustained fraction of a low-precision peak (peak_flops key -> fraction: "fp8", "mxfp8", "nvfp4")
    # where it differs from gemm_efficiency: FP8 GEMMs run nearer their memory and quantisation bounds.
    gemm_efficiency_by_dtype: dict[str, float] = field(default_factory=dict, hash=False)
    gemm_overhead_s: float = 5e-6  # fixed time per GEMM kernel
    memory_efficiency: float = 0.85  # achieved fraction of memory bandwidth by streaming kernels
    kernel_overhead_s: float = 4e-6  # fixed time per memory-bound kernel launch
    gemm_curve: tuple[tuple[float, float], ...] = ()  # measured (FLOPs, efficiency) points
    num_sms: int = 0  # streaming multiprocessors (CUs); 0 disables wave quantisation (CPUs)
    gemm_tile: tuple[int, int] = (256, 128)  # output tile of one thread block of large GEMM kernels
    # Activation functions (GELU, SiLU) per second, when their arithmetic rather than memory bounds
    # them (CPUs); 0: memory bound (GPUs). Measured by `planner calibrate`.
    activation_rate: float = 0.0
    # Achieved fraction of peak of the fused (flash) attention kernel; 0: the GEMM efficiency curve.
    attention_efficiency: float = 0.0
    # The same for other attention kernels a framework may call instead ("fa2": FlashAttention-2),
    # where they are published for this GPU; a kernel not listed runs at attention_efficiency.
    attention_efficiency_by_kernel: dict[str, float] = field(default_factory=dict, hash=False)
    # Sustained compute clock over the datasheet's (boost) clock: a power-limited part runs the same
    # kernels at this fraction of their rate on the full-power part (GEMMs and attention; memory-bound
    # kernels keep the HBM's rate). Its efficiencies are then those of `efficiencies_of`, the full-power
    # part of the same silicon, and only the clock is fitted (planner.fit); a part with the same compute
    # silicon and clocks but other memory (H200: H100's GH100 with HBM3e) names it too, at clock 1.0.
    clock_fraction: float = 1.0
    efficiencies_of: str = ""
    # The last-level cache one rank effectively has (bytes) and its streaming rate (bytes/s), both
    # measured by `planner calibrate` on CPU hosts; 0: one memory level (memory_bandwidth).
    cache_bytes: float = 0.0
    cache_bandwidth: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        _name("gpu", self.name)
        w = f"gpu[{self.name}]"
        if not isinstance(self.source, str):
            raise SpecError("must be a string", field=f"{w}.source")
        if not isinstance(self.peak_flops, dict) or not self.peak_flops:
            raise SpecError("must map dtype names to FLOP/s", field=f"{w}.peak_flops")
        for k, v in self.peak_flops.items():
            if not isinstance(k, str) or show_key(k) != k:
                raise SpecError(f"dtype names must be short strings, got {show(k)}", field=f"{w}.peak_flops")
            _num(w, f"peak_flops.{k}", v, hi=1e18)
        _num(w, "memory_bytes", self.memory_bytes, hi=1e15)
        _num(w, "memory_bandwidth", self.memory_bandwidth, hi=1e15)
        _num(w, "gemm_efficiency", self.gemm_efficiency, hi=1.0)
        if not isinstance(self.gemm_efficiency_by_dtype, dict):
            raise SpecError("must map peak_flops keys to fractions of that peak", field=f"{w}.gemm_efficiency_by_dtype")
        for k, v in self.gemm_efficiency_by_dtype.items():
            if k not in self.peak_flops:
                raise SpecError(f"no peak_flops entry {show(k)} for this efficiency",
                                field=f"{w}.gemm_efficiency_by_dtype")
            _num(w, f"gemm_efficiency_by_dtype.{k}", v, hi=1.0)
        _num(w, "gemm_overhead_s", self.gemm_overhead_s, strict_lo=False, hi=1.0)
        _num(w, "memory_efficiency", self.memory_efficiency, hi=1.0)
        _num(w, "kernel_overhead_s", self.kernel_overhead_s, strict_lo=False, hi=1.0)
        _num(w, "activation_rate", self.activation_rate, strict_lo=False, hi=1e18)
        _num(w, "attention_efficiency", self.attention_efficiency, strict_lo=False, hi=1.0)
        if not isinstance(self.attention_efficiency_by_kernel, dict):
            raise SpecError("must map attention kernel names to fractions of the 16-bit peak",
                            field=f"{w}.attention_efficiency_by_kernel")
        named = [k for k in ATTENTION_KERNELS if k]
        for k, v in self.attention_efficiency_by_kernel.items():
            if k not in named:
                raise SpecError(f"unknown attention kernel {show(k)} (known: {', '.join(named)})",
                                field=f"{w}.attention_efficiency_by_kernel")
            _num(w, f"attention_efficiency_by_kernel.{k}", v, hi=1.0)
        _num(w, "clock_fraction", self.clock_fraction, hi=1.0)
        _num(w, "cache_bytes", self.cache_bytes, strict_lo=False, hi=1e15)
        _num(w, "cache_bandwidth", self.cache_bandwidth, strict_lo=False, hi=1e16)
        if bool(self.cache_bytes) != bool(self.cache_bandwidth):
            raise SpecError("a cache level needs both cache_bytes and cache_bandwidth (or neither)",
                            field=f"{w}.cache_bytes")
        if not isinstance(self.efficiencies_of, str):
            raise SpecError("must name the full-power GPU whose efficiencies this part shares",
                            field=f"{w}.efficiencies_of")
        if not isinstance(self.gemm_curve, (tuple, list)):
            raise SpecError("must be a list of [flops, efficiency]", field=f"{w}.gemm_curve")
        pts = tuple(tuple(p) if isinstance(p, (tuple, list)) else (p,) for p in self.gemm_curve)
        for i, p in enumerate(pts):
            if len(p) != 2:
                raise SpecError("points must be [flops, efficiency]", field=f"{w}.gemm_curve[{i}]")
            _num(w, f"gemm_curve[{i}].flops", p[0], hi=1e30)
            _num(w, f"gemm_curve[{i}].efficiency", p[1], hi=1.0)
        object.__setattr__(self, "gemm_curve", tuple(sorted(pts)))
        if isinstance(self.num_sms, bool) or not isinstance(self.num_sms, int) or not 0 <= self.num_sms < 1e6:
            raise SpecError(f"must be a non-negative integer, got {show(self.num_sms)}", field=f"{w}.num_sms")
        tile = tuple(self.gemm_tile) if isinstance(self.gemm_tile, (list, tuple)) else ()
        if len(tile) != 2 or not all(isinstance(x, int) and not isinstance(x, bool) and 0 < x < 1e5
                                     for x in tile):
            raise SpecError("must be two positive integers [rows, cols]", field=f"{w}.gemm_tile")
        object.__setattr__(self, "gemm_tile", tile)

    def peak(self, dtype: str) -> float:
        if dtype not in self.peak_flops:
            raise SpecError(f"no peak FLOP/s for dtype {dtype!r} (have {', '.join(self.peak_flops)})",
                            field=f"gpu[{self.name}].peak_flops")
        return self.peak_flops[dtype]

    def sustained_peak(self, dtype: str) -> float:
        """The datasheet peak at the part's sustained clock (`clock_fraction`): what its compute-bound
        kernels' efficiencies are fractions of. MFU stays against the datasheet peak (`peak`)."""
        return self.peak(dtype) * self.clock_fraction

    def wave_efficiency(self, rows: np.ndarray | float, cols: np.ndarray | float) -> np.ndarray:
        """Fraction of the last wave of output tiles that keeps the SMs busy (wave quantisation).

        A GEMM with an rows x cols output runs ceil(rows/tr)·ceil(cols/tc) tiles, one per SM at a
        time; the final partial wave leaves SMs idle.
        """
        r = np.asarray(rows, dtype=np.float64)
        c = np.asarray(cols, dtype=np.float64)
        if not self.num_sms:
            return np.ones(np.broadcast(r, c).shape)
        tiles = np.ceil(r / self.gemm_tile[0]) * np.ceil(c / self.gemm_tile[1])
        return tiles / (self.num_sms * np.ceil(tiles / self.num_sms))

    def gemm_time(self, flops: np.ndarray | float, dtype: str,
                  out_shape: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Compute-bound time of GEMMs of `flops` FLOPs each (vectorised).

        `out_shape` (rows, cols of the output) enables the wave-quantisation correction.
        """
        f = np.asarray(flops, dtype=np.float64)
        peak = self.sustained_peak(dtype)
        waves = self.wave_efficiency(*out_shape) if out_shape is not None else 1.0
        if self.gemm_curve:
            xs = np.log10([p[0] for p in self.gemm_curve])
            ys = np.array([p[1] for p in self.gemm_curve])
            eff = np.interp(np.log10(np.maximum(f, 1.0)), xs, ys)
            return np.where(f > 0, f / (peak * eff * waves), 0.0)
        eff = self.gemm_efficiency_by_dtype.get(dtype, self.gemm_efficiency)
        return np.where(f > 0, f / (peak * eff * waves) + self.gemm_overhead_s, 0.0)

    def attention_fraction(self, kernel: str = "") -> float:
        """Achieved fraction of the 16-bit peak of fused attention `kernel` ("" the default one); 0:
        price it on the GEMM efficiency."""
        return self.attention_efficiency_by_kernel.get(kernel, self.attention_efficiency)

    def resident_fraction(self, working_set: np.ndarray | float) -> np.ndarray:
        """Fraction of a streaming pass's traffic the cache serves, for passes cycling over `working_set`
        bytes: all of it up to `cache_bytes`, none from twice that on (a cyclic sweep evicts each line
        before its next use under LRU replacement), linear between: the shape of the streaming rate
        over working-set sizes that `planner calibrate` measures and fits (`fit_cache_level`). A
        training step's traffic is priced from memory (`planner.cost.terms.TRAINING_RESIDENT`)."""
        ws = np.asarray(working_set, dtype=np.float64)
        if not self.cache_bytes:
            return np.zeros_like(ws)
        return np.clip(2.0 - ws / self.cache_bytes, 0.0, 1.0)

    def memory_time(self, nbytes: np.ndarray | float, kernels: np.ndarray | float = 0,
                    resident: np.ndarray | float = 1.0) -> np.ndarray:
        """Time of memory-bound kernels moving `nbytes` bytes in `kernels` launches (vectorised), the
        `resident` fraction of them from the cache where the host has a cache level."""
        b = np.asarray(nbytes, dtype=np.float64)
        launches = np.asarray(kernels) * self.kernel_overhead_s
        rate = self.memory_bandwidth * self.memory_efficiency
        if not self.cache_bandwidth:
            return b / rate + launches
        r = np.asarray(resident, dtype=np.float64)
        return b * (r / self.cache_bandwidth + (1.0 - r) / rate) + launches

    @classmethod
    def from_dict(cls, data: Any, where: str = "gpu") -> GPUSpec:
        d = _from_dict(cls, data, where)
        if "gemm_curve" in d:
            if not isinstance(d["gemm_curve"], list):
                raise SpecError("must be a list of [flops, efficiency]", field=f"{where}.gemm_curve")
            d["gemm_curve"] = tuple(tuple(p) if isinstance(p, list) else p for p in d["gemm_curve"])
        if isinstance(d.get("gemm_tile"), list):
            d["gemm_tile"] = tuple(d["gemm_tile"])
        base = d.get("efficiencies_of")
        if base and isinstance(base, str):  # the same silicon: what it does not state, the named part's
            from planner.specs.catalog import gpu_preset

            try:
                full = gpu_preset(base)
            except SpecError as exc:
                raise SpecError(str(exc).split(": ", 1)[-1], field=f"{where}.efficiencies_of") from None
            d.update({k: getattr(full, k) for k in SHARED_EFFICIENCIES if k not in d})
        return cls(**d)


@dataclass(frozen=True)
class LinkSpec:
    """One link tier (intra-node or inter-node), per GPU.

    Collective time (Thakur, Rabenseifner & Gropp 2005; ring algorithms as NCCL uses them):
    t = alpha x steps + bytes x algorithmic_factor / bus_bandwidth, with bus bandwidth =
    `bandwidth` x `efficiency` unless `collectives` holds a measured (alpha, busbw) for the operation
    and group size (written by `planner calibrate`).

    `nvls_efficiency` > 0: the link's switch reduces in the network (NVLink SHARP, NCCL's NVLS
    algorithm), and an all-reduce inside the domain may run that way (`planner.cost.comm.nvls_all_reduce`):
    the buffer at this fraction of `bandwidth` (NVLS's algorithm bandwidth, measured).
    """

    name: str
    bandwidth: float  # bytes/s per GPU per direction (datasheet)
    latency: float  # seconds per algorithm step (alpha)
    efficiency: float = 0.8  # achieved bus bandwidth / link bandwidth for large messages
    collectives: dict[str, list[dict[str, float]]] = field(default_factory=dict, hash=False)
    source: str = ""
    nvls_efficiency: float = 0.0  # NVLS all-reduce: buffer bytes / time over `bandwidth`; 0: no in-switch reduction

    def __post_init__(self) -> None:
        _name("link", self.name)
        w = f"link[{self.name}]"
        if not isinstance(self.source, str):
            raise SpecError("must be a string", field=f"{w}.source")
        _num(w, "bandwidth", self.bandwidth, hi=1e15)
        _num(w, "latency", self.latency, strict_lo=False, hi=10.0)
        _num(w, "efficiency", self.efficiency, hi=1.0)
        _num(w, "nvls_efficiency", self.nvls_efficiency, strict_lo=False, hi=1.0)
        if not isinstance(self.collectives, dict):
            raise SpecError("must map collective names to measurements", field=f"{w}.collectives")
        for op, rows in self.collectives.items():
            if op not in KNOWN_COLLECTIVES:
                raise SpecError(f"unknown collective {op!r} (known: {', '.join(KNOWN_COLLECTIVES)})",
                                field=f"{w}.collectives")
            if not isinstance(rows, list) or not rows:
                raise SpecError("must be a non-empty list", field=f"{w}.collectives.{op}")
            for i, r in enumerate(rows):
                keys = set(r) if isinstance(r, dict) else set()
                if not {"group", "alpha", "busbw"} <= keys or keys - set(MEASURED_ROW_KEYS) \
                        or len(keys & {"burst_alpha", "burst_busbw"}) == 1:
                    raise SpecError("rows must be {group, alpha, busbw} (and optionally both burst_alpha and "
                                    "burst_busbw)", field=f"{w}.collectives.{op}[{i}]")
                _num(w, f"collectives.{op}[{i}].group", r["group"], lo=1, strict_lo=False, hi=1e7)
                _num(w, f"collectives.{op}[{i}].alpha", r["alpha"], strict_lo=False, hi=10.0)
                _num(w, f"collectives.{op}[{i}].busbw", r["busbw"], hi=1e15)
                if "burst_alpha" in r:
                    _num(w, f"collectives.{op}[{i}].burst_alpha", r["burst_alpha"], strict_lo=False, hi=10.0)
                    _num(w, f"collectives.{op}[{i}].burst_busbw", r["burst_busbw"], hi=1e15)

    @property
    def bus_bandwidth(self) -> float:
        return self.bandwidth * self.efficiency

    @property
    def nvls_bandwidth(self) -> float:
        """An NVLS all-reduce's buffer bytes per second through the switch (0: no in-switch reduction)."""
        return self.bandwidth * self.nvls_efficiency

    def measured(self, op: str, group: np.ndarray, burst: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
        """Measured (alpha, busbw) for `op` at each group size (nearest measured size), if any; `burst`:
        those of a call issued right after another collective, where the row has them."""
        rows = self.collectives.get(op)
        if not rows:
            return None
        sizes = np.array([r["group"] for r in rows], dtype=np.float64)
        alpha = np.array([r["burst_alpha"] if burst and "burst_alpha" in r else r["alpha"] for r in rows])
        busbw = np.array([r["burst_busbw"] if burst and "burst_busbw" in r else r["busbw"] for r in rows])
        g = np.asarray(group, dtype=np.float64)
        idx = np.abs(np.log(np.maximum(g, 1.0))[..., None] - np.log(sizes)).argmin(axis=-1)
        return alpha[idx], busbw[idx]

    @classmethod
    def from_dict(cls, data: Any, where: str = "link") -> LinkSpec:
        return cls(**_from_dict(cls, data, where))


@dataclass(frozen=True)
class ClusterSpec:
    """GPUs x nodes x links. `num_nodes` follows from the GPU count (`with_gpus`)."""

    name: str
    gpu: GPUSpec
    gpus_per_node: int
    intra_node: LinkSpec
    inter_node: LinkSpec
    num_nodes: int = 1
    # Cores' worth of compute the ranks of a node share (CPU hosts; may be fractional when calibration
    # finds hyper-threads sharing execution units); 0: every rank has its own device.
    compute_slots_per_node: float = 0
    reserved_memory_bytes: float = 2 * 2**30  # CUDA context, cuBLAS workspace, NCCL buffers
    # Fraction of compute throughput lost while a collective runs alongside it: communication
    # kernels occupy SMs and memory bandwidth (NCCL's 16 default channels hold ~15% of an A100's
    # 108 SMs). `planner calibrate` measures it on the user's machine.
    overlap_slowdown: float = 0.15
    # (framework, value) pairs: a framework's overlap slowdown on this cluster, fitted on runs measured on it
    # (`planner fit --overlaps --profile-out`); it wins over the framework's catalog fit and `overlap_slowdown`
    overlap_slowdown_by_framework: tuple[tuple[str, float], ...] = ()
    # Host time the tensor-parallel layer implementation adds per layer and micro-batch (forward +
    # backward): DTensor dispatch and redistribution. Measured by `planner calibrate` on CPU hosts,
    # where it is on the critical path; 0 for GPUs, whose host runs ahead of the device.
    tp_layer_overhead_s: float = 0.0
    tp_microbatch_overhead_s: float = 0.0  # the same for the vocabulary-parallel embedding, head and loss
    # What sequence parallelism adds to that per layer and micro-batch (its norms' and dropouts'
    # DTensor redistributions: sequence shards to replicas and back).
    sp_layer_overhead_s: float = 0.0
    # Host time of the framework itself (Python, autograd, dispatch) that the op costs do not cover:
    # per layer and micro-batch (forward + backward), and per micro-batch. Fitted by `planner
    # calibrate` on CPU hosts from the executor's steps; 0 for GPUs, whose host runs ahead.
    host_layer_overhead_s: float = 0.0
    host_microbatch_overhead_s: float = 0.0
    pp_microbatch_overhead_s: float = 0.0  # pipeline schedule's host time per micro-batch and stage
    fsdp_layer_overhead_s: float = 0.0  # FSDP (ZeRO-2/3) hooks' host time per layer and micro-batch
    # Host time per parameter tensor and optimizer step that a per-tensor optimizer (torch.optim's
    # AdamW loop) spends beyond a plain tensor's when the parameter is a DTensor (tensor parallelism,
    # FSDP2, `replicate`): each element-wise op passes through DTensor's dispatch. Measured by `planner
    # calibrate` on CPU hosts; 0 for GPUs, whose host runs ahead.
    dtensor_optimizer_tensor_s: float = 0.0
    device: str = "cuda"  # cuda | cpu
    backend: str = "nccl"  # nccl | gloo
    # The fabric as a graph (planner/specs/topology.py): GPUs, NVLink switches, NICs, leaf / spine switches.
    # None: the node is the fast domain. Resized with the cluster (`with_gpus`).
    topology: Topology | None = None
    source: str = ""
    provenance: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        _name("cluster", self.name)
        if not isinstance(self.source, str):
            raise SpecError("must be a string", field="source")
        if not isinstance(self.gpu, GPUSpec):
            raise SpecError(f"must be a GPUSpec, got {type(self.gpu).__name__}", field="gpu")
        for f in ("intra_node", "inter_node"):
            if not isinstance(getattr(self, f), LinkSpec):
                raise SpecError(f"must be a LinkSpec, got {type(getattr(self, f)).__name__}", field=f)
        if not isinstance(self.provenance, dict):
            raise SpecError("must be an object", field="provenance")
        for f in ("gpus_per_node", "num_nodes"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise SpecError(f"must be a positive integer, got {show(v)}", field=f)
            if v > 10_000_000:  # name the field that is absurd, not the product
                raise SpecError(f"{show(v)} is beyond any real cluster", field=f)
        if self.gpus_per_node * self.num_nodes > 10_000_000:
            raise SpecError(f"{self.gpus_per_node * self.num_nodes} GPUs is beyond any real cluster",
                            field="num_nodes")
        _num("cluster", "compute_slots_per_node", self.compute_slots_per_node, strict_lo=False, hi=1e7)
        _num("cluster", "reserved_memory_bytes", self.reserved_memory_bytes, strict_lo=False, hi=1e15)
        _num("cluster", "overlap_slowdown", self.overlap_slowdown, strict_lo=False, hi=1.0)
        where = "cluster.overlap_slowdown_by_framework"
        pairs = self.overlap_slowdown_by_framework
        if not isinstance(pairs, tuple) or not all(
                isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str)
                and isinstance(p[1], (int, float)) and not isinstance(p[1], bool) for p in pairs):
            raise SpecError(f"must map framework names to fractions in 0..1, got {show(pairs)}", field=where)
        for name, value in pairs:
            try:
                root = framework_root(name)
            except SpecError as exc:  # re-point the catalog's "unknown framework" at this key
                raise SpecError(str(exc).removeprefix(f"{exc.field}: "), field=where) from None
            if root != name:  # its releases share the framework's value
                raise SpecError(f"name the framework {root}, which {name} extends", field=where)
            _num("cluster", f"overlap_slowdown_by_framework.{name}", value, strict_lo=False, hi=1.0)
        object.__setattr__(self, "overlap_slowdown_by_framework", tuple((k, float(v)) for k, v in pairs))
        _num("cluster", "tp_layer_overhead_s", self.tp_layer_overhead_s, strict_lo=False, hi=10.0)
        _num("cluster", "tp_microbatch_overhead_s", self.tp_microbatch_overhead_s, strict_lo=False, hi=10.0)
        _num("cluster", "sp_layer_overhead_s", self.sp_layer_overhead_s, strict_lo=False, hi=10.0)
        _num("cluster", "host_layer_overhead_s", self.host_layer_overhead_s, strict_lo=False, hi=10.0)
        _num("cluster", "host_microbatch_overhead_s", self.host_microbatch_overhead_s, strict_lo=False, hi=10.0)
        _num("cluster", "pp_microbatch_overhead_s", self.pp_microbatch_overhead_s, strict_lo=False, hi=10.0)
        _num("cluster", "fsdp_layer_overhead_s", self.fsdp_layer_overhead_s, strict_lo=False, hi=10.0)
        _num("cluster", "dtensor_optimizer_tensor_s", self.dtensor_optimizer_tensor_s, strict_lo=False, hi=10.0)
        if self.device not in ("cuda", "cpu"):
            raise SpecError(f"must be cuda or cpu, got {show(self.device)}", field="device")
        if self.backend not in ("nccl", "gloo"):
            raise SpecError(f"must be nccl or gloo, got {show(self.backend)}", field="backend")
        if self.reserved_memory_bytes >= self.gpu.memory_bytes:
            raise SpecError("reserved memory leaves nothing for training", field="reserved_memory_bytes")
        if self.topology is not None:
            if not isinstance(self.topology, Topology):
                raise SpecError(f"must be a Topology, got {type(self.topology).__name__}", field="topology")
            topo = self.topology.for_gpus(self.num_gpus)  # a job on n GPUs uses the fabric's first n ranks
            object.__setattr__(self, "topology", topo)
            if topo.gpus_per_host != self.gpus_per_node:
                raise SpecError(f"{self.gpus_per_node} GPUs per node, but the topology's hosts hold "
                                f"{topo.gpus_per_host}", field="gpus_per_node")

    @property
    def num_gpus(self) -> int:
        return self.gpus_per_node * self.num_nodes

    @property
    def nvlink_domain(self) -> int:
        """GPUs that share the fast link tier (`intra_node`): 8 on a DGX, 72 on a GB200 NVL72 rack, whose
        hosts (`gpus_per_node`, torchrun's --nproc-per-node) hold 4. Ranks r and q share it when
        r // nvlink_domain == q // nvlink_domain (also when the job has fewer GPUs than a domain holds): a
        group inside one such block runs on `intra_node`, beyond it on `inter_node`. Without a topology,
        the node is the domain."""
        return self.topology.nvlink_domain if self.topology is not None else self.gpus_per_node

    def overlap_slowdown_for(self, fw: Framework) -> float:
        """The fraction of an overlapped collective's time by which it slows the compute beside it when `fw`
        runs on this cluster: this cluster's value for the framework where it has one (fitted on runs
        measured here), else the framework's (fitted on the published runs), else the cluster's."""
        own = dict(self.overlap_slowdown_by_framework).get(framework_root(fw.name))
        return own if own is not None else fw.slowdown_beside(self.overlap_slowdown)

    @property
    def compute_slowdown(self) -> float:
        """Time-slicing factor when all of a node's ranks compute at once and outnumber its cores."""
        if self.compute_slots_per_node and self.gpus_per_node > self.compute_slots_per_node:
            return self.gpus_per_node / self.compute_slots_per_node
        return 1.0

    def with_gpus(self, n: int) -> ClusterSpec:
        """The same hardware with `n` GPUs in total: n / gpus_per_node full nodes (or one partial node)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SpecError(f"must be a positive integer, got {show(n)}", field="gpus")
        if n > 10_000_000:
            raise SpecError(f"{n} GPUs is beyond any real cluster", field="gpus")
        if n <= self.gpus_per_node:
            return dataclasses.replace(self, gpus_per_node=n, num_nodes=1)
        if n % self.gpus_per_node:
            raise SpecError(
                f"{n} GPUs is not a whole number of {self.gpus_per_node}-GPU nodes", field="gpus"
            )
        return dataclasses.replace(self, num_nodes=n // self.gpus_per_node)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["gpu"]["gemm_curve"] = [list(p) for p in self.gpu.gemm_curve]
        d["gpu"]["gemm_tile"] = list(self.gpu.gemm_tile)
        if not self.gpu.gemm_efficiency_by_dtype:
            d["gpu"].pop("gemm_efficiency_by_dtype")  # (files written before the field existed hash the same)
        if not self.gpu.attention_efficiency_by_kernel:
            d["gpu"].pop("attention_efficiency_by_kernel")
        if self.gpu.clock_fraction == 1.0 and not self.gpu.efficiencies_of:
            d["gpu"].pop("clock_fraction")  # (a full-power part's documents hash as before the field)
            d["gpu"].pop("efficiencies_of")
        if not self.gpu.cache_bytes:
            d["gpu"].pop("cache_bytes")  # (one-level devices' documents hash as before the cache level)
            d["gpu"].pop("cache_bandwidth")
        for tier in ("intra_node", "inter_node"):
            if not d[tier]["nvls_efficiency"]:
                d[tier].pop("nvls_efficiency")  # (links without in-switch reduction hash as before the field)
        if self.overlap_slowdown_by_framework:
            d["overlap_slowdown_by_framework"] = dict(self.overlap_slowdown_by_framework)
        else:
            d.pop("overlap_slowdown_by_framework")  # (documents without it hash as before the field)
        if not d["provenance"]:
            d.pop("provenance")
        if self.topology is None:
            d.pop("topology")
        else:
            d["topology"] = self.topology.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: Any, where: str = "cluster") -> ClusterSpec:
        """A cluster file. `intra_node` / `inter_node` name a link preset, give a link object, or say
        "topology": then they are derived from the cluster's `topology` graph (`links_from_topology`)."""
        from planner.specs.catalog import gpu_preset, link_names, link_preset

        def preset(lookup: Callable[[str], Any], name: str, key: str) -> Any:
            try:
                return lookup(name)
            except SpecError as exc:  # re-point the error at this file's key
                raise SpecError(str(exc).removeprefix(f"{exc.field}: "), field=f"{where}.{key}") from None

        if isinstance(data, dict):
            data = dict(data)
            topo = data.get("topology")
            if topo is not None and not isinstance(topo, Topology):
                topo = Topology.from_dict(topo, f"{where}.topology", resolve=lambda n: link_class(link_preset(n)))
                data["topology"] = topo
            for tier in ("intra_node", "inter_node"):
                if data.get(tier) == DERIVED:
                    if topo is None:
                        raise SpecError(f'"{DERIVED}" needs a topology to derive the link from',
                                        field=f"{where}.{tier}")
                    fast, net = links_from_topology(
                        topo, where, lambda n: link_preset(n).nvls_efficiency if n in link_names() else 0.0)
                    data[tier] = fast if tier == "intra_node" else net
        d = _from_dict(cls, data, where)
        by_fw = d.get("overlap_slowdown_by_framework")
        if isinstance(by_fw, dict):  # a file's mapping, in a canonical order (anything else: __post_init__ refuses)
            d["overlap_slowdown_by_framework"] = tuple(sorted(by_fw.items(), key=lambda kv: str(kv[0])))
        gpu = d["gpu"]  # a GPU preset name (gpus.json) or a full GPU object
        d["gpu"] = (preset(gpu_preset, gpu, "gpu") if isinstance(gpu, str)
                    else GPUSpec.from_dict(gpu, f"{where}.gpu"))
        for tier in ("intra_node", "inter_node"):  # a link preset name (clusters.json) or an object
            link = d[tier]
            if isinstance(link, LinkSpec):
                continue
            d[tier] = (preset(link_preset, link, tier) if isinstance(link, str)
                       else LinkSpec.from_dict(link, f"{where}.{tier}"))
        if "provenance" in d and not isinstance(d["provenance"], dict):
            raise SpecError("must be an object", field=f"{where}.provenance")
        return cls(**d)


def link_class(link: LinkSpec) -> LinkClass:
    """A link preset as the topology generators take it (per-GPU bandwidth, end-to-end latency)."""
    return LinkClass(link.name, link.bandwidth, link.latency, link.efficiency, link.source)


def links_from_topology(topology: Topology, where: str = "cluster",
                        nvls: Callable[[str], float] | None = None) -> tuple[LinkSpec, LinkSpec]:
    """(intra_node, inter_node) as the graph gives them (`Topology.tier_summary`): per-GPU bandwidth and
    per-step latency of a ring over one fast domain, and of a ring across fast domains; each tier's
    efficiency and source as the topology's tiers say, and the fast domain's in-switch reduction as
    `nvls(tier name)` says (the link preset of that name)."""
    fast, net = topology.tier_summary()
    if net is None:
        raise SpecError("the topology has a single fast domain, so the network tier cannot be derived: "
                        "give inter_node", field=f"{where}.inter_node")
    if fast.bandwidth == math.inf:  # every GPU its own fast domain: all traffic is network traffic
        fast = net

    def link(s: Any, what: str, nvls_efficiency: float = 0.0) -> LinkSpec:
        return LinkSpec(name=s.tier.name, bandwidth=s.bandwidth, latency=s.latency, efficiency=s.tier.efficiency,
                        source=f"from the topology graph: {what}, {s.hops} links per step"
                               + (f"; {s.tier.source}" if s.tier.source else ""), nvls_efficiency=nvls_efficiency)

    in_switch = nvls(fast.tier.name) if nvls is not None and fast is not net else 0.0
    return (link(fast, "a ring over one fast domain, every domain busy", in_switch),
            link(net, "a ring across fast domains, every position busy"))
