"""Predicted vs measured on the published runs: the closed-form estimate and the step simulation of each
expressible run under its printed configuration, errors as (predicted - measured) / measured.

Memory is compared on the definition the source measured (`PrintedRun.memory_definition`):
- "reserved" (torch's caching-allocator reserved peak, torchtitan): the predicted reserved peak
  (`memory_reserved_gib_per_gpu`: what the allocator holds, new segments for an optimizer step's gradient
  copies included) without the runtime's own reserve (CUDA context, NCCL buffers:
  `ClusterSpec.reserved_memory_bytes`);
- "device" (nvidia-smi, BLOOM): the predicted reserved peak, the runtime's reserve included.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from planner.cost import estimate
from planner.measured.express import MeasuredRun
from planner.simulate import simulate_plans
from planner.track_record import seq_len_bucket

GIB = 2**30


@dataclass(frozen=True)
class Prediction:
    """One expressible run with a measured step time, predicted."""

    run: MeasuredRun
    estimate_s: float  # planner.cost.estimate (closed form)
    simulated_s: float  # planner.simulate.simulate_plans (the search's re-ranking)
    memory_gib: float  # predicted, on the run's memory definition (0 if it measured none)
    fits: bool

    @property
    def measured_s(self) -> float:
        assert self.run.step_time_s is not None
        return self.run.step_time_s

    @property
    def error(self) -> float:
        return self.estimate_s / self.measured_s - 1.0

    @property
    def sim_error(self) -> float:
        return self.simulated_s / self.measured_s - 1.0

    @property
    def memory_error(self) -> float | None:
        m = self.run.memory_gib
        return None if m is None or not self.memory_gib else self.memory_gib / m - 1.0


def comparable_memory_gib(prediction: dict[str, Any], run: MeasuredRun) -> float:
    """The predicted peak memory per GPU on the definition the run's source measured."""
    total = float(prediction["memory_reserved_gib_per_gpu"])
    if run.run.memory_definition == "reserved":
        return max(0.0, total - run.cluster.reserved_memory_bytes / GIB)
    return total


def predict(runs: Iterable[MeasuredRun]) -> tuple[list[Prediction], list[tuple[MeasuredRun, str]]]:
    """Predictions of every run with a measured step time; runs the cost model failed on, with the error."""
    done: list[Prediction] = []
    failed: list[tuple[MeasuredRun, str]] = []
    for r in runs:
        if r.step_time_s is None:
            continue
        try:
            pred = estimate(r.model, r.cluster, r.plan)
            sim = simulate_plans(r.model, r.cluster, [r.plan])[0]
        except Exception as exc:  # a cost-model failure is reported per row, never hidden
            failed.append((r, f"{type(exc).__name__}: {exc}"))
            continue
        mem = comparable_memory_gib(pred, r) if r.memory_gib is not None else 0.0
        done.append(Prediction(r, float(pred["step_time_s"]), float(sim.step_time_s), mem, bool(pred["fits"])))
    return done, failed


@dataclass(frozen=True)
class Summary:
    rows: int
    mape: float  # mean |error|
    bias: float  # mean signed error
    worst: float  # the signed error of largest magnitude
    worst_label: str

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "mape": self.mape, "bias": self.bias, "worst": self.worst,
                "worst_row": self.worst_label}


def summarise(errors: list[tuple[float, str]]) -> Summary:
    """MAPE, bias and worst of (error, label) pairs; NaN for none."""
    if not errors:
        return Summary(0, math.nan, math.nan, math.nan, "")
    worst = max(errors, key=lambda e: abs(e[0]))
    return Summary(len(errors), sum(abs(e) for e, _ in errors) / len(errors),
                   sum(e for e, _ in errors) / len(errors), worst[0], worst[1])


# ---- buckets (issue 14's error patterns) ---------------------------------------------------------


def seq_bucket(p: Prediction) -> str:
    return seq_len_bucket(p.run.model.seq_len)


def size_bucket(p: Prediction) -> str:
    n = p.run.model.params
    return "<3B" if n < 3e9 else "3-20B" if n < 20e9 else "20-100B" if n < 100e9 else ">100B"


BUCKETS: dict[str, Callable[[Prediction], str]] = {
    "sequence length": seq_bucket,
    "model size": size_bucket,
    "TP width": lambda p: f"tp{p.run.plan.tp}",
    "GPU": lambda p: p.run.cluster.gpu.name,
    "framework": lambda p: p.run.framework,
    "precision": lambda p: p.run.plan.dtype,
}
BUCKET_ORDER = {"sequence length": ["<=2k", "4k", "8k", "16-32k", ">=64k"],
                "model size": ["<3B", "3-20B", "20-100B", ">100B"]}


def by_bucket(preds: list[Prediction], key: Callable[[Prediction], str], simulated: bool = False,
              order: list[str] | None = None) -> dict[str, Summary]:
    groups: dict[str, list[tuple[float, str]]] = {}
    for p in preds:
        groups.setdefault(key(p), []).append((p.sim_error if simulated else p.error, p.run.run.label))
    names = [k for k in (order or []) if k in groups] + sorted(k for k in groups if k not in (order or []))
    return {k: summarise(groups[k]) for k in names}
