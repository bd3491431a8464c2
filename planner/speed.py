"""How fast the machine ran during a measurement, against its calibration (the speed probe).

A shared host's speed wanders by several percent within minutes, so a step measured some time after
`planner calibrate` can differ from its prediction although the model is right. `executor.speed_probe`
times the same linear layer and memory stream while calibrate runs (kept in the profile's
`provenance.speed_probe`) and around each plan's steps (measured.json's `speed_probe`). Here:

- `speed_ratio(cluster, measured)`: the run's rates over the calibration's, compute (the GEMM) and
  memory (the stream);
- `at_speed(cluster, ratio)`: the calibrated profile re-based to those rates, every compute-bound rate
  and host time (Python dispatch runs on the same cores) scaled by the compute ratio, every memory rate
  by the memory ratio; collectives keep their measurements. Predicting a plan with it answers "what
  would the model have said, had it been calibrated at the speed the machine ran this plan".

`planner compare` / `run` show the two rates side by side; `planner validate` reports its error both as
calibrated and at the measured speed. The probe is a measurement, never fitted to step times.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from planner.specs.cluster import ClusterSpec

SPEED_KEYS = ("gemm_flops_per_s", "stream_bytes_per_s")
# A probe ratio beyond 1.25x either way is the host, not noise: between calibrations a shared VM's speed
# drifts 5-10%, and launches of one plan scatter by about as much (docs/cost-model.md, "The speed probe")
DRIFT_LIMIT = 1.25
# ClusterSpec's host times (seconds of CPU work per layer / micro-batch): they run on the cores the probe's GEMM
# measures, so they scale with its rate
HOST_TIMES = ("tp_layer_overhead_s", "tp_microbatch_overhead_s", "sp_layer_overhead_s", "host_layer_overhead_s",
              "host_microbatch_overhead_s", "pp_microbatch_overhead_s", "fsdp_layer_overhead_s",
              "dtensor_optimizer_tensor_s")


@dataclass(frozen=True)
class SpeedRatio:
    """A run's probe rates over its calibration's (1.0: the machine ran as fast as when calibrated)."""

    compute: float  # GEMM FLOP/s
    memory: float  # streamed bytes/s

    def to_json(self) -> dict[str, float]:
        return {"compute": self.compute, "memory": self.memory}

    def drift_note(self) -> str | None:
        """One line for the reader when the machine ran at a speed the calibration did not see (beyond
        DRIFT_LIMIT either way, past the run-to-run noise); None within it."""
        moved = [(name, r) for name, r in (("GEMM", self.compute), ("memory stream", self.memory))
                 if not 1.0 / DRIFT_LIMIT <= r <= DRIFT_LIMIT]
        if not moved:
            return None
        what = " and ".join(f"its {name} {r:.2f}x as fast" for name, r in moved)
        return (f"note: the machine ran {what} during this run as during its calibration (a shared host's speed "
                "wanders); the prediction at this run's machine speed is the comparable one, and `planner "
                "calibrate` (`planner demo --recalibrate`) measures the machine again")


def probe_rates(obj: Any) -> dict[str, float] | None:
    """The probe's two rates from a `speed_probe` block; None where it is missing or malformed."""
    if not isinstance(obj, dict):
        return None
    out = {}
    for k in SPEED_KEYS:
        v = obj.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            return None
        out[k] = float(v)
    return out


def calibrated_rates(cluster: ClusterSpec) -> dict[str, float] | None:
    """The probe taken while `cluster` was calibrated (None for presets and older profiles)."""
    return probe_rates(cluster.provenance.get("speed_probe"))


def probe_shape(obj: Any) -> tuple[int, ...] | None:
    """The probe's linear layer (tokens, in, out) a `speed_probe` block was measured with; None for the
    probes written before 2026-12-06, which did not say (on CPUs 512 x 1024 x 1024)."""
    shape = obj.get("gemm_shape") if isinstance(obj, dict) else None
    if not isinstance(shape, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in shape):
        return None
    return tuple(shape)


def speed_ratio(cluster: ClusterSpec, measured: dict[str, Any]) -> SpeedRatio | None:
    """The run's speed over the calibration's, where both sides probed it with the same linear layer."""
    cal, run = calibrated_rates(cluster), probe_rates(measured.get("speed_probe"))
    if cal is None or run is None:
        return None
    if probe_shape(cluster.provenance.get("speed_probe")) != probe_shape(measured.get("speed_probe")):
        return None  # another probe's rates: a ratio of different GEMMs would read as drift
    return SpeedRatio(run["gemm_flops_per_s"] / cal["gemm_flops_per_s"],
                      run["stream_bytes_per_s"] / cal["stream_bytes_per_s"])


def at_speed(cluster: ClusterSpec, ratio: SpeedRatio) -> ClusterSpec:
    """`cluster` as if calibrated at `ratio` times its speed (module docstring)."""
    c, m = ratio.compute, ratio.memory
    gpu = cluster.gpu
    gpu = dataclasses.replace(
        gpu, peak_flops={k: v * c for k, v in gpu.peak_flops.items()}, activation_rate=gpu.activation_rate * c,
        gemm_overhead_s=gpu.gemm_overhead_s / c, kernel_overhead_s=gpu.kernel_overhead_s / c,
        memory_bandwidth=gpu.memory_bandwidth * m, cache_bandwidth=gpu.cache_bandwidth * m)
    return dataclasses.replace(cluster, gpu=gpu, **{k: getattr(cluster, k) / c for k in HOST_TIMES})
