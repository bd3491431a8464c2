"""Fit the GPU efficiencies of the cost model to measured training runs, and cross-validate the fit.

The cost model prices a GEMM at `gemm_efficiency` of the GPU's datasheet peak (a low-precision GEMM at
`gemm_efficiency_by_dtype[key]` of that format's peak) and the fused attention kernel at
`attention_efficiency`; everything else is a datasheet number, a framework profile switch or a
microbenchmark result. Those three fractions are what measured runs teach: each is a property of one
GPU (and format) running the kernels the frameworks use, with a unit (achieved / peak FLOP/s) and a
physical range (0, 1]. A power-limited part (`GPUSpec.efficiencies_of`: the full-power part of the same
silicon) shares that part's efficiencies and teaches one parameter instead, its sustained clock
(`clock_fraction`, the fraction of the datasheet clock every compute-bound rate runs at). Nothing is fitted
per row, model, source or framework.

Method. A run's predicted step time t(x) depends on the parameters of its own GPU only, and is close
to affine in the inverse efficiencies (time = FLOPs / (peak x efficiency) + terms that do not depend
on them; overlap and `max` bend it a little). So each run's step time is tabulated once by the real
cost model (`planner.cost.estimate`) on a small grid of efficiencies (GRID, per parameter the run
depends on) and interpolated multilinearly in 1/efficiency; the fit minimises the mean absolute log
error, mean |log(t / measured)| (robust to the few rows a model feature misses by far), by a grid
search over the interpolated surfaces refined to STEP. Errors are reported from the real cost model
at the fitted values, never from the interpolation. A parameter is fitted only where at least
MIN_ROWS training runs depend on it; elsewhere the catalog's value stays.

Fabrics (`fabrics=True`, `planner fit --fabrics`): each cluster's collective efficiency per link tier
(`collective_efficiency[cluster:intra_node]`, `[cluster:inter_node]`: the achieved bus bandwidth over the
link's datasheet bandwidth for large NCCL collectives, as `LinkSpec.efficiency`), fitted jointly with the
GPU parameters of the cluster's GPU: a run counts for a tier where its step time moves by at least
FABRIC_SENSITIVITY across the grid (others cannot tell it); its time over that tier is tabulated on its own
and added to its GPU surface as a change (`JointSurface`), and the runs are tabulated again at the fitted
values until those stay put (at most ROUNDS times). Same grid, bounds and MIN_ROWS as the GPU parameters;
a slower fabric and slower GEMMs trade off, so fitting either alone would put the other's error in it.

Overlaps (`overlaps=True`, `planner fit --overlaps`): per framework (a profile and every release that
extends it, `planner.framework.framework_root`), the overlap slowdown, `overlap_slowdown[<framework>]`:
the fraction of an overlapped collective's time by which it slows the compute beside it under that
framework's overlap implementation (its kernels' share of SMs and memory bandwidth, and what its
chunking leaves unhidden), in [0, 1]. A run's step time is piecewise linear in it (each overlapped
collective exposes what exceeds its window plus this fraction of the rest), so each run is tabulated at
OVERLAP_GRID and interpolated linearly; a run counts where its step time moves by FABRIC_SENSITIVITY or
more between 0 and 1. A slower overlap and slower GEMMs trade off, so the overlap slowdowns and the GPU (and
fabric) parameters are fitted in turn on the interpolated surfaces until neither moves, each surface
shifted by what the other's change adds (`_fit_with_overlaps`); same objective, MIN_ROWS and step. A
value at 0 (every overlapped collective free) or 1 (none hidden at all) is not adopted: the model misses
something else on those runs.

Cross-validation: leave one group out (a source, a model family), fit on the rest, predict the group
(`cross_validate`): what a user gets on a framework release or a model the fit never saw.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from planner.cost import estimate
from planner.framework import default_framework, framework, framework_root, overlap_slowdowns
from planner.measured import MeasuredRun
from planner.precision import RECIPES, gemm_peak_key
from planner.specs.cluster import ClusterSpec, GPUSpec

GEMM = "gemm_efficiency"
ATTENTION = "attention_efficiency"
CLOCK = "clock_fraction"  # a power-limited part's sustained clock (GPUSpec.efficiencies_of names its full-power part)
FABRIC = "collective_efficiency"  # a cluster's link tier: collective_efficiency[<cluster>:<tier>]
TIERS = ("intra_node", "inter_node")
# A run informs a fabric's efficiency where its step time at GRID's lowest efficiency exceeds that at the
# highest by this fraction: below it the step barely waits on that tier (overlapped or unused collectives)
# and the fit would follow noise.
FABRIC_SENSITIVITY = 0.02
ROUNDS = 3  # tabulations of the joint GPU / fabric fit at most
OVERLAP = "overlap_slowdown"  # a framework's: overlap_slowdown[<framework root>]
OVERLAP_GRID = (0.0, 0.5, 1.0)  # tabulated overlap slowdowns (step time is piecewise linear in it)
OVERLAP_ITERATIONS = 60  # turns of the overlap / GPU coordinate descent at most (each a fit on the surfaces)
WIDE = 3  # parameters a search covers with its fine first grid (more: coarse to fine)
# Tabulated efficiencies, about evenly spaced in 1 / efficiency; their ends bound the fit: a training step
# sustaining more than 0.9 of peak in GEMMs or attention is beyond what published kernels reach, under 0.3
# far below them, so a value fitted at either end says the model misses something else on those runs.
GRID = (0.3, 0.45, 0.65, 0.9)
STEP = 0.01  # resolution of the fitted values
MIN_ROWS = 5  # training runs that must depend on a parameter for it to be fitted

# The catalog's value for a GPU no measured run has fitted (docs/cost-model.md section 6: H100-class and
# Blackwell GEMMs at 0.60 of peak, reproducing the ~47% MFU Megatron-LM reports on H100; attention and
# low-precision GEMMs at the same fraction). Cross-validation must start from it, not from a catalog
# already fitted on the runs it holds out.
ASSUMED_GEMM_EFFICIENCY = 0.60

MEANINGS = {
    GEMM: "sustained fraction of the 16-bit dense peak reached by the GEMMs of a training step",
    ATTENTION: "sustained fraction of the 16-bit dense peak reached by the fused (flash) attention kernel",
    CLOCK: "sustained compute clock of a power-limited part over the datasheet's: every GEMM and attention rate "
           "of its full-power part scaled by it",
}


def lowp_parameter(key: str) -> str:
    """The parameter name of the GEMM efficiency of a low-precision peak (`peak_flops` key)."""
    return f"{GEMM}[{key}]"


def fabric_parameter(cluster: str, tier: str) -> str:
    """The parameter name of the collective efficiency of `cluster`'s `tier` ("intra_node", "inter_node")."""
    return f"{FABRIC}[{cluster}:{tier}]"


def is_fabric(name: str) -> bool:
    return name.startswith(FABRIC + "[")


def overlap_parameter(root: str) -> str:
    """The parameter name of the overlap slowdown of framework `root` (a profile that extends none)."""
    return f"{OVERLAP}[{root}]"


def is_overlap(name: str) -> bool:
    return name.startswith(OVERLAP + "[")


def overlap_of(name: str) -> str:
    """The framework (root profile) of an overlap parameter name."""
    return name[len(OVERLAP) + 1:-1]


def _profile_name(run: MeasuredRun) -> str:
    return run.plan.framework or default_framework(run.cluster)


def run_framework(run: MeasuredRun) -> str:
    """The framework (root profile) whose overlap implementation a run's plan runs under."""
    return framework_root(_profile_name(run))


def _overlap_now(run: MeasuredRun) -> float:
    """The overlap slowdown the cost model prices `run` at today (`ClusterSpec.overlap_slowdown_for`)."""
    return run.cluster.overlap_slowdown_for(framework(_profile_name(run)))


def fabric_of(name: str) -> tuple[str, str]:
    """(cluster, tier) of a fabric parameter name."""
    cluster, _, tier = name[len(FABRIC) + 1:-1].rpartition(":")
    return cluster, tier


def meaning(name: str) -> str:
    if name in MEANINGS:
        return MEANINGS[name]
    if is_overlap(name):
        return (f"fraction of an overlapped collective's time by which it slows the compute beside it under "
                f"{overlap_of(name)}'s overlap implementation")
    if is_fabric(name):
        cluster, tier = fabric_of(name)
        where = "inside a node (NVLink domain)" if tier == "intra_node" else "across nodes"
        return (f"achieved bus bandwidth over the datasheet link bandwidth of large collectives {where} on "
                f"{cluster}")
    return f"sustained fraction of the dense {name[len(GEMM) + 1:-1]} peak reached by low-precision GEMMs"


def current_value(gpu: GPUSpec, name: str) -> float:
    """The value a GPU spec holds for a parameter (what the cost model uses today)."""
    if name == GEMM:
        return gpu.gemm_efficiency
    if name == ATTENTION:
        return gpu.attention_efficiency  # 0: the fused kernel priced at the GEMM efficiency
    if name == CLOCK:
        return gpu.clock_fraction
    key = name[len(GEMM) + 1:-1]
    return gpu.gemm_efficiency_by_dtype.get(key, gpu.gemm_efficiency)


def with_values(gpu: GPUSpec, values: dict[str, float]) -> GPUSpec:
    """`gpu` with the named parameters replaced (fabric parameters are the cluster's: `with_fabric`)."""
    by_dtype = dict(gpu.gemm_efficiency_by_dtype)
    kw: dict[str, object] = {}
    for name, v in values.items():
        if is_fabric(name):
            continue
        if name == GEMM:
            kw["gemm_efficiency"] = float(v)
        elif name == ATTENTION:
            kw["attention_efficiency"] = float(v)
        elif name == CLOCK:
            kw["clock_fraction"] = float(v)
        else:
            by_dtype[name[len(GEMM) + 1:-1]] = float(v)
    return dataclasses.replace(gpu, gemm_efficiency_by_dtype=by_dtype, **kw)


def with_fabric(cluster: ClusterSpec, values: dict[str, float]) -> ClusterSpec:
    """`cluster` with the collective efficiency of each of its link tiers that `values` names replaced."""
    kw = {}
    for tier in TIERS:
        v = values.get(fabric_parameter(cluster.name, tier))
        if v is not None:
            kw[tier] = dataclasses.replace(getattr(cluster, tier), efficiency=float(v))
    return dataclasses.replace(cluster, **kw) if kw else cluster


def fabric_value(cluster: ClusterSpec, name: str) -> float:
    """The collective efficiency a cluster's link tier holds today."""
    return float(getattr(cluster, fabric_of(name)[1]).efficiency)


def unfitted(gpu: GPUSpec, keep: Iterable[str] = ()) -> GPUSpec:
    """`gpu` with its fittable parameters back at the assumption (those named in `keep` left as they are)."""
    keep = set(keep)
    kw: dict[str, object] = {}
    if gpu.efficiencies_of:  # a power-limited part: its full-power part's efficiencies at the datasheet clock
        return dataclasses.replace(gpu, clock_fraction=gpu.clock_fraction if CLOCK in keep else 1.0)
    if GEMM not in keep:
        kw["gemm_efficiency"] = ASSUMED_GEMM_EFFICIENCY
    if ATTENTION not in keep:
        kw["attention_efficiency"] = 0.0
    by_dtype = {k: v for k, v in gpu.gemm_efficiency_by_dtype.items() if lowp_parameter(k) in keep}
    return dataclasses.replace(gpu, gemm_efficiency_by_dtype=by_dtype, **kw)


def is_evidence(run: MeasuredRun) -> bool:
    """Whether a run may inform the fit: not when its GEMMs run kernels that the parameter they are priced
    at does not describe (a recipe priced at another's efficiency by assumption, e.g. row-wise FP8 at the
    per-tensor FP8 rate); such runs are still predicted and reported."""
    return not RECIPES[run.plan.dtype].assumed_rate


def run_parameters(run: MeasuredRun) -> tuple[str, ...]:
    """The parameters a run's predicted step time depends on (a power-limited part's: its clock alone, every
    efficiency being its full-power part's)."""
    if run.cluster.gpu.efficiencies_of:
        return (CLOCK,)
    names = [GEMM]
    kernel = framework(_profile_name(run)).attention_kernel
    if run.plan.flash_attention and kernel not in run.cluster.gpu.attention_efficiency_by_kernel:
        names.append(ATTENTION)  # (a kernel the catalog cites a rate for, e.g. FlashAttention-2, does not)
    if RECIPES[run.plan.dtype].low_precision:
        names.append(lowp_parameter(gemm_peak_key(run.plan.dtype, run.cluster.gpu.peak_flops)))
    return tuple(names)


def step_time(run: MeasuredRun, values: dict[str, float], overlaps: dict[str, float] | None = None) -> float:
    """The cost model's step time of `run` with its GPU's parameters, and its cluster's fabric parameters,
    set to `values` (other clusters' fabric parameters ignored), and the frameworks' overlap slowdowns
    named in `overlaps` (framework root: value)."""
    cluster = with_fabric(dataclasses.replace(run.cluster, gpu=with_values(run.cluster.gpu, values)), values)
    with overlap_slowdowns(overlaps or {}):
        return float(estimate(run.model, cluster, run.plan)["step_time_s"])


@dataclass(frozen=True)
class Surface:
    """One run's step time tabulated over GRID for each parameter it depends on."""

    run: MeasuredRun
    names: tuple[str, ...]
    table: np.ndarray  # shape (len(GRID),) * len(names), seconds

    @property
    def gpu(self) -> str:
        return self.run.cluster.gpu.name

    @property
    def measured_s(self) -> float:
        return float(self.run.step_time_s or 0.0)

    def at(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """Interpolated step times at candidate values (arrays of one shape), multilinear in 1/efficiency."""
        inv_grid = 1.0 / np.asarray(GRID)[::-1]  # increasing
        idx, wts = [], []
        for name in self.names:
            x = 1.0 / np.clip(values[name], GRID[0], GRID[-1])
            j = np.clip(np.searchsorted(inv_grid, x) - 1, 0, len(GRID) - 2)
            w = (x - inv_grid[j]) / (inv_grid[j + 1] - inv_grid[j])
            # back to GRID's (decreasing 1/eff) index order
            idx.append(len(GRID) - 1 - j)
            wts.append(w)
        out = 0.0
        for corner in itertools.product((0, 1), repeat=len(self.names)):
            w = 1.0
            sub = []
            for d, c in enumerate(corner):
                w = w * (wts[d] if c else 1.0 - wts[d])
                sub.append(idx[d] - c)
            out = out + w * self.table[tuple(sub)]
        return np.asarray(out)


def tabulate(runs: Sequence[MeasuredRun], progress: Callable[[str], None] | None = None,
             fixed: dict[str, float] | None = None) -> list[Surface]:
    """Each run's step time on the efficiency grid (len(GRID) ** parameters cost-model calls per run), with
    the fabric values in `fixed` applied."""
    out = []
    fixed = fixed or {}
    for i, run in enumerate(runs):
        names = run_parameters(run)
        table = np.empty((len(GRID),) * len(names))
        for cell in itertools.product(range(len(GRID)), repeat=len(names)):
            table[cell] = step_time(run, {**fixed, **{n: GRID[c] for n, c in zip(names, cell, strict=True)}})
        out.append(Surface(run, names, table))
        if progress and (i + 1) % 25 == 0:
            progress(f"tabulated {i + 1}/{len(runs)} runs")
    return out


@dataclass(frozen=True)
class Fitted:
    """One fitted parameter."""

    gpu: str
    name: str
    value: float
    before: float  # the catalog's value
    rows: int  # training runs that depend on it
    adopted: bool = True  # False: at a bound or pinned; the catalog's value is used, `value` only reported

    @property
    def meaning(self) -> str:
        return meaning(self.name)

    @property
    def at_bound(self) -> bool:
        """Fitted at an end of the physical range: another mechanism the model lacks shapes these runs."""
        return _on_overlap_bound(self.value) if is_overlap(self.name) else _on_bound(self.value)


def _objective(surfaces: list[Surface], cand: dict[str, np.ndarray], fixed: dict[str, float | None]
               ) -> np.ndarray:
    """Mean |log(t / measured)| at each candidate. A parameter not searched takes its `fixed` value; None
    (attention efficiency 0 in the catalog) means the cost model prices attention at the GEMM efficiency,
    so it follows the GEMM candidate."""
    shape = next(iter(cand.values()))
    gemm = cand[GEMM] if GEMM in cand else np.full_like(shape, fixed[GEMM])

    def value(n: str) -> np.ndarray:
        if n in cand:
            return cand[n]
        return gemm if fixed[n] is None else np.full_like(shape, fixed[n])

    total = 0.0
    for s in surfaces:
        total = total + np.abs(np.log(s.at({n: value(n) for n in s.names}) / s.measured_s))
    return np.asarray(total) / max(1, len(surfaces))


def _search(surfaces: Sequence[Surface | JointSurface], names: list[str], fixed: dict[str, float | None]
            ) -> dict[str, float]:
    """Grid search on the interpolated surfaces: steps of 0.05 over GRID's range, then windows of +-0.05
    in steps of STEP around the best, moved until the best stays put (parameters trade off along valleys
    a single refinement would not leave). Over more than WIDE parameters (a joint GPU and fabric fit) the
    first grid steps by 0.1, then windows of +-0.1 in steps of 0.05, then +-0.02 in steps of STEP."""
    lo, hi = GRID[0], GRID[-1]

    def best_of(axes: list[np.ndarray]) -> dict[str, float]:
        mesh = np.meshgrid(*axes, indexing="ij")
        cand = {n: m.ravel() for n, m in zip(names, mesh, strict=True)}
        i = int(np.argmin(_objective(surfaces, cand, fixed)))
        return {n: float(cand[n][i]) for n in names}

    def settle(centre: dict[str, float], half: float, step: float) -> dict[str, float]:
        for _ in range(100):
            axes = [np.round(np.arange(max(lo, centre[n] - half), min(hi, centre[n] + half) + step / 2, step), 6)
                    for n in names]
            moved = best_of(axes)
            if moved == centre:
                break
            centre = moved
        return centre

    if len(names) <= WIDE:
        return settle(best_of([np.round(np.arange(lo, hi + 0.025, 0.05), 6) for _ in names]), 0.05, STEP)
    centre = best_of([np.round(np.arange(lo, hi + 0.05, 0.1), 6) for _ in names])
    return settle(settle(centre, 0.1, 0.05), 0.02, STEP)


def _held_value(rows: Sequence[Surface | JointSurface], gpu: GPUSpec, name: str) -> float:
    """What the cost model uses today for a parameter: the GPU's, or a fabric's link (its runs' cluster)."""
    if is_fabric(name):
        return fabric_value(next(s.run.cluster for s in rows if name in s.names), name)
    return current_value(gpu, name)


def fit(surfaces: Iterable[Surface | JointSurface], gpus: dict[str, GPUSpec],
        pinned: Iterable[tuple[str, str]] = ()) -> list[Fitted]:
    """Per GPU, the parameters at least MIN_ROWS of `surfaces` depend on, fitted jointly on that GPU's runs.

    A value that lands on an end of the range is not adopted (it says another mechanism shapes the
    runs): it is reported, keeps the catalog's value, and the GPU's other parameters are refitted without
    it. `pinned` (gpu, parameter) pairs keep the catalog's value too (one fitted to a published reference
    elsewhere); they are still fitted once, to report what these runs alone would give."""
    by_gpu: dict[str, list[Surface]] = {}
    for s in surfaces:
        by_gpu.setdefault(s.gpu, []).append(s)
    pins = set(pinned)
    out: list[Fitted] = []
    for gpu_name, rows in sorted(by_gpu.items()):
        gpu = gpus[gpu_name]
        counts: dict[str, int] = {}
        for s in rows:
            for n in s.names:
                counts[n] = counts.get(n, 0) + 1
        names = [n for n in counts if counts[n] >= MIN_ROWS]
        if not names:
            continue
        held_now = {n: _held_value(rows, gpu, n) for n in counts}
        catalog: dict[str, float | None] = {n: v or None for n, v in held_now.items()}
        catalog[GEMM] = gpu.gemm_efficiency
        alone = _search(rows, names, catalog)  # every parameter free: what these runs alone say
        held = {n for n in names if (gpu_name, n) in pins or _on_bound(alone[n])}
        best = dict(alone)
        while held and len(held) < len(names):
            free = [n for n in names if n not in held]
            found = _search(rows, free, catalog)
            best = {**found, **{n: catalog[n] or found.get(GEMM, gpu.gemm_efficiency) for n in held}}
            newly = {n for n in free if _on_bound(best[n])}
            if not newly:
                break
            held |= newly
        for n in names:
            adopted = n not in held
            out.append(Fitted(gpu_name, n, best[n] if adopted else alone[n], held_now[n], counts[n],
                              adopted=adopted))
    return out


def tabulate_fabrics(runs: Sequence[MeasuredRun], values: dict[str, dict[str, float]],
                     fabric: dict[str, float] | None = None) -> list[Surface]:
    """For each run and link tier whose collective efficiency moves the run's step time by at least
    FABRIC_SENSITIVITY across GRID, its step time over GRID for that tier (one-parameter surfaces), with
    its GPU at `values[gpu]` and the other fabric values in `fabric`."""
    out = []
    for run in runs:
        base = {**values.get(run.cluster.gpu.name, {}), **(fabric or {})}
        for tier in TIERS:
            name = fabric_parameter(run.cluster.name, tier)
            table = np.array([step_time(run, {**base, name: g}) for g in GRID])
            if table[0] >= table[-1] * (1.0 + FABRIC_SENSITIVITY):
                out.append(Surface(run, (name,), table))
    return out


class JointSurface:
    """A run's step time over its GPU parameters and the efficiencies of the link tiers it waits on: its GPU
    surface plus, per tier, the change its one-parameter fabric surface gives from the value both were
    tabulated at (an additive step, kept local by `fit_all` tabulating again where values move)."""

    def __init__(self, gpu: Surface, fabrics: Sequence[Surface], tabulated_at: dict[str, float]) -> None:
        self.run = gpu.run
        self.gpu_surface = gpu
        self.fabrics = tuple(fabrics)
        self.names = gpu.names + tuple(f.names[0] for f in self.fabrics)
        self.base = [np.array([tabulated_at.get(f.names[0], fabric_value(self.run.cluster, f.names[0]))])
                     for f in self.fabrics]

    @property
    def gpu(self) -> str:
        return self.gpu_surface.gpu

    @property
    def measured_s(self) -> float:
        return self.gpu_surface.measured_s

    def at(self, values: dict[str, np.ndarray]) -> np.ndarray:
        t = self.gpu_surface.at({n: values[n] for n in self.gpu_surface.names})
        for f, b in zip(self.fabrics, self.base, strict=True):
            n = f.names[0]
            t = t + f.at({n: values[n]}) - f.at({n: b})
        return t


def fit_all(surfaces: Sequence[Surface], gpus: dict[str, GPUSpec], pinned: Iterable[tuple[str, str]] = (),
            fabrics: bool = False, progress: Callable[[str], None] | None = None,
            overlaps: bool = False) -> list[Fitted]:
    """The GPU parameters (`fit`) and, with `fabrics`, the clusters' collective efficiencies, jointly per GPU
    (`JointSurface`): the fabric surfaces are tabulated at the GPU values fitted so far, the joint fit runs on
    the interpolated surfaces, and where its fabric values moved the runs are tabulated there again and
    the fit repeated (at most ROUNDS times). With `overlaps`, each framework's overlap slowdown jointly with
    them (`_fit_with_overlaps`)."""
    pinned = tuple(pinned)
    fitted, used = _fit_gpus_and_fabrics(surfaces, gpus, pinned, fabrics, progress)
    if not overlaps:
        return fitted
    if progress:
        progress("fitting each framework's overlap slowdown")
    return _fit_with_overlaps(used, gpus, pinned, fitted)


class _Shifted:
    """A run's GPU (or joint) surface moved by a constant number of seconds: what a change of its framework's
    overlap slowdown adds to its step time (`_fit_with_overlaps`)."""

    def __init__(self, base: Surface | JointSurface, shift: float) -> None:
        self.base, self.shift = base, shift
        self.run, self.names = base.run, base.names

    @property
    def gpu(self) -> str:
        return self.base.gpu

    @property
    def measured_s(self) -> float:
        return self.base.measured_s

    def at(self, values: dict[str, np.ndarray]) -> np.ndarray:
        return self.base.at(values) + self.shift


def _state_time(s: Surface | JointSurface, fitted: list[Fitted], gpus: dict[str, GPUSpec]) -> float:
    """A GPU (or joint) surface's interpolated step time at the fitted values (the catalog's where a value is
    not adopted; attention without a value follows the GEMM efficiency, as the cost model prices it)."""
    adopted = values_by_gpu(fitted).get(s.gpu, {})
    gpu = gpus[s.gpu]
    gemm = adopted.get(GEMM, gpu.gemm_efficiency)
    values = {n: adopted.get(n) or _held_value([s], gpu, n) or gemm for n in s.names}
    return float(np.asarray(s.at({n: np.array([v]) for n, v in values.items()})).reshape(-1)[0])


def _fit_with_overlaps(used: Sequence[Surface | JointSurface], gpus: dict[str, GPUSpec],
                       pinned: tuple[tuple[str, str], ...], fitted: list[Fitted]) -> list[Fitted]:
    """Each framework's overlap slowdown jointly with the GPU (and fabric) parameters, by coordinate descent
    on the interpolated surfaces under a first-order (additive) model: a run's step time is its GPU surface
    (tabulated at the overlap slowdown its framework has today) plus what its overlap surface (tabulated at
    the GPU values fitted first) changes from that slowdown, and its overlap surface plus what its GPU
    surface changes from those values. The overlap slowdowns and the GPU parameters are fitted in turn
    until neither moves by STEP (at most OVERLAP_ITERATIONS times)."""
    first = fitted
    overlap = tabulate_overlaps([s.run for s in used], values_by_gpu(first))
    if not overlap:
        return fitted
    by_run = {id(o.run): o for o in overlap}
    # the slowdown each GPU surface was tabulated at: what its framework has today
    today = {id(o.run): _overlap_now(o.run) for o in overlap}
    gpu_at_first = {id(s.run): _state_time(s, first, gpus) for s in used if id(s.run) in by_run}
    found: list[Fitted] = []
    for _ in range(OVERLAP_ITERATIONS):
        moved = {key: _state_time(s, fitted, gpus) - gpu_at_first[key]
                 for s in used if (key := id(s.run)) in by_run}
        found_now = fit_overlaps([dataclasses.replace(o, table=o.table + moved[id(o.run)]) for o in overlap])
        values = {f.name: f.value for f in found_now if f.adopted}
        shifted = [_Shifted(s, float(o.at(np.array(values[o.name])) - o.at(np.array(today[id(s.run)]))))
                   if (o := by_run.get(id(s.run))) is not None and o.name in values else s for s in used]
        refitted = fit(shifted, gpus, pinned)
        still = (_values(found_now) == _values(found)
                 and all(abs(a.value - b.value) < STEP / 2 for a, b in zip(refitted, fitted, strict=True)))
        fitted, found = refitted, found_now
        if still:
            break
    return fitted + found


def _values(fitted: Sequence[Fitted]) -> dict[str, float]:
    return {f.name: round(f.value, 6) for f in fitted}


def tabulate_overlaps(runs: Sequence[MeasuredRun], values: dict[str, dict[str, float]]) -> list[OverlapSurface]:
    """For each run whose step time moves by FABRIC_SENSITIVITY or more between an overlap slowdown of 0 and
    1 for its framework, its step time over OVERLAP_GRID, with its GPU (and fabric) parameters at
    `values[gpu]`."""
    out = []
    for run in runs:
        root = run_framework(run)
        base = values.get(run.cluster.gpu.name, {})
        table = np.array([step_time(run, base, {root: s}) for s in OVERLAP_GRID])
        if table[-1] >= table[0] * (1.0 + FABRIC_SENSITIVITY):
            out.append(OverlapSurface(run, overlap_parameter(root), table))
    return out


@dataclass(frozen=True)
class OverlapSurface:
    """One run's step time at OVERLAP_GRID values of its framework's overlap slowdown."""

    run: MeasuredRun
    name: str
    table: np.ndarray

    @property
    def measured_s(self) -> float:
        return float(self.run.step_time_s or 0.0)

    def at(self, slowdown: np.ndarray) -> np.ndarray:
        return np.interp(slowdown, OVERLAP_GRID, self.table)


def fit_overlaps(surfaces: Sequence[OverlapSurface]) -> list[Fitted]:
    """Per framework with at least MIN_ROWS runs in `surfaces`, the overlap slowdown minimising their mean
    |log(t / measured)|: steps of 0.05 over [0, 1], then of STEP within +-0.05 of the best. A value on an
    end of the range is reported, not adopted."""
    by_name: dict[str, list[OverlapSurface]] = {}
    for s in surfaces:
        by_name.setdefault(s.name, []).append(s)
    out = []
    for name, rows in sorted(by_name.items()):
        if len(rows) < MIN_ROWS:
            continue

        def objective(cand: np.ndarray, rows: list[OverlapSurface] = rows) -> np.ndarray:
            return sum(np.abs(np.log(r.at(cand) / r.measured_s)) for r in rows) / len(rows)

        coarse = np.round(np.arange(0.0, 1.0 + 0.025, 0.05), 6)
        centre = float(coarse[int(np.argmin(objective(coarse)))])
        fine = np.round(np.arange(max(0.0, centre - 0.05), min(1.0, centre + 0.05) + STEP / 2, STEP), 6)
        value = float(fine[int(np.argmin(objective(fine)))])
        out.append(Fitted("", name, value, _overlap_now(rows[0].run), len(rows),
                          adopted=not _on_overlap_bound(value)))
    return out


def _fit_gpus_and_fabrics(surfaces: Sequence[Surface], gpus: dict[str, GPUSpec], pinned: tuple[tuple[str, str], ...],
                          fabrics: bool, progress: Callable[[str], None] | None
                          ) -> tuple[list[Fitted], Sequence[Surface | JointSurface]]:
    """The GPU (and fabric) fit of `fit_all`, and the surfaces its last round fitted on."""
    fitted = fit(surfaces, gpus, pinned)
    if not fabrics:
        return fitted, surfaces
    used: Sequence[Surface | JointSurface] = surfaces
    runs = [s.run for s in surfaces]
    gpu_surf = {id(s.run): s for s in surfaces}
    at_fabric: dict[str, float] = {}  # fabric values every surface was tabulated at (else the catalog's)
    for _ in range(ROUNDS):
        by_run: dict[int, list[Surface]] = {}
        for f in tabulate_fabrics(runs, values_by_gpu(fitted), at_fabric):
            by_run.setdefault(id(f.run), []).append(f)
        used = [JointSurface(g, by_run.get(key, ()), at_fabric) for key, g in gpu_surf.items()]
        fitted = fit(used, gpus, pinned)
        adopted = {f.name: f.value for f in fitted if f.adopted and is_fabric(f.name)}
        catalog = {f.name: f.before for f in fitted if is_fabric(f.name)}
        moved = {n for n in set(adopted) | set(at_fabric)
                 if abs(adopted.get(n, catalog.get(n, -1.0)) - at_fabric.get(n, catalog.get(n, -1.0))) >= STEP / 2}
        if not moved:
            break
        at_fabric = adopted
        clusters = {fabric_of(n)[0] for n in moved}
        gpu_surf = {key: tabulate([g.run], fixed=at_fabric)[0] if g.run.cluster.name in clusters else g
                    for key, g in gpu_surf.items()}
        if progress:
            progress("tabulated again at the fabric values " + ", ".join(
                f"{n} {v:.2f}" for n, v in sorted(at_fabric.items())))
    return fitted, used


def _on_bound(value: float) -> bool:
    return value <= GRID[0] + STEP / 2 or value >= GRID[-1] - STEP / 2


def _on_overlap_bound(value: float) -> bool:
    return value <= OVERLAP_GRID[0] + STEP / 2 or value >= OVERLAP_GRID[-1] - STEP / 2


def values_by_gpu(fitted: Iterable[Fitted]) -> dict[str, dict[str, float]]:
    """The adopted values by GPU and parameter (a cluster's fabric values under its GPU; not the
    frameworks' overlap slowdowns: `values_by_framework`)."""
    out: dict[str, dict[str, float]] = {}
    for f in fitted:
        if f.adopted and not is_overlap(f.name):
            out.setdefault(f.gpu, {})[f.name] = f.value
    return out


def values_by_framework(fitted: Iterable[Fitted]) -> dict[str, float]:
    """The adopted overlap slowdowns by framework (root profile)."""
    return {overlap_of(f.name): f.value for f in fitted if f.adopted and is_overlap(f.name)}


def predict(runs: Iterable[MeasuredRun], fitted: Iterable[Fitted]) -> list[float]:
    """The cost model's step times of `runs` with the adopted fitted values (the catalog's elsewhere)."""
    fitted = list(fitted)
    values, overlaps = values_by_gpu(fitted), values_by_framework(fitted)
    return [step_time(r, values.get(r.cluster.gpu.name, {}), overlaps) for r in runs]


@dataclass(frozen=True)
class Score:
    """Step-time errors of a set of runs: (predicted - measured) / measured."""

    rows: int
    mape: float
    bias: float
    worst: float

    @classmethod
    def of(cls, predicted: Sequence[float], measured: Sequence[float]) -> Score:
        err = np.asarray(predicted) / np.asarray(measured) - 1.0
        if not len(err):
            return cls(0, math.nan, math.nan, math.nan)
        return cls(len(err), float(np.mean(np.abs(err))), float(np.mean(err)), float(err[np.argmax(np.abs(err))]))


@dataclass(frozen=True)
class Fold:
    """One held-out group of a cross-validation."""

    group: str
    score: Score
    fitted: tuple[Fitted, ...]  # what the fit on the other groups gave


def cross_validate(surfaces: Sequence[Surface], gpus: dict[str, GPUSpec], group: Callable[[MeasuredRun], str],
                   progress: Callable[[str], None] | None = None,
                   pinned: Iterable[tuple[str, str]] = (), fabrics: bool = False,
                   overlaps: bool = False) -> tuple[list[Fold], Score]:
    """Leave each group out in turn: fit on the others (`fit_all`), predict it with the real cost model.
    Returns the folds and the pooled score over every held-out run."""
    pinned = tuple(pinned)
    groups = sorted({group(s.run) for s in surfaces})
    folds, pred, meas = [], [], []
    for g in groups:
        train = [s for s in surfaces if group(s.run) != g]
        test = [s.run for s in surfaces if group(s.run) == g]
        fitted = tuple(fit_all(train, gpus, pinned, fabrics, overlaps=overlaps))
        p = predict(test, fitted)
        m = [float(r.step_time_s or 0.0) for r in test]
        folds.append(Fold(g, Score.of(p, m), fitted))
        pred += p
        meas += m
        if progress:
            progress(f"held out {g}: {len(test)} runs")
    return folds, Score.of(pred, meas)


def model_family(run: MeasuredRun) -> str:
    """The model a run trains, without its size (llama3-8b and llama3-70b are one family): leaving a
    family out tests a model the fit never saw."""
    name = run.run.model.lower()
    m = re.match(r"[a-z]+\d*", name)
    return m.group(0) if m else name


def stderr_progress(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)
