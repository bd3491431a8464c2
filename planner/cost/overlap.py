"""Overlap rules: how much of a communication is hidden behind compute, in one place.

Every consumer of the cost terms (the closed form, the step simulation, the trace) applies these
functions, so the rules cannot drift apart:

- `hide`: a collective issued alongside a window of compute on another stream costs what does not fit
  in the window, and slows the compute it overlaps by the `overlap_slowdown` fraction of the overlapped
  time (the two share memory bandwidth and SMs): the framework profile's where it states one (fitted by
  `planner fit --overlaps`), else the cluster's (measured by `planner calibrate`).
- `data_parallel`: which data-parallel collectives each ZeRO stage issues and behind which window
  (Rajbhandari et al. 2020 for the stages; the overlap of gradient reduction with the backward pass as
  in PyTorch DDP, Li et al. 2020, and Megatron-LM's overlapped gradient reduction). The once-per-step
  reduction runs bucket by bucket as gradients become ready, in reverse order of the parameters; the
  last bucket holds the first layers' (and the embedding's) gradients, which the backward produces
  last, so it cannot start before the backward ends and is never hidden (Li et al. 2020, section 3.2:
  a bucket is reduced only once all its gradients are ready).
- `core_sharing_stretch`: ranks that share too few cores (CPU ranks) cannot finish a step before
  their summed busy time has run on the node's cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Array = np.ndarray


def hide(comm: Array, window: Array, slowdown: float) -> Array:
    """Exposed seconds of `comm` run alongside `window` seconds of compute that it slows by `slowdown`."""
    return np.maximum(0.0, comm - window) + slowdown * np.minimum(comm, window)


@dataclass(frozen=True)
class DataParallelTime:
    """Data-parallel communication of one step on one rank (seconds).

    total: every data-parallel collective of the step; exposed: what extends the step beyond the
    pipeline; after_backward: the once-per-step gradient reduction that overlaps the rank's last
    backward (ZeRO-0/1; the simulation places it on the rank's own timeline), of which `last_bucket`
    starts only when that backward ends; before_forward: the
    exposed once-per-step parameter all-gather (ZeRO-1: the updated shards are gathered ahead of the
    next step's first forward).
    """

    total: Array
    exposed: Array
    after_backward: Array
    last_bucket: Array
    before_forward: Array


def data_parallel(zero: Array, has_dp: Array, m: Array, reduce: Array, reduce_mb: Array, gather: Array,
                  gather_mb: Array, fwd_window: Array, bwd_window: Array, slowdown: float,
                  reduce_last: Array | float = 0.0) -> DataParallelTime:
    """Exposed data-parallel time per ZeRO stage (arrays that broadcast together).

    reduce / gather: the gradient reduction / parameter all-gather issued once per step (bucketed);
    each is zero for the ZeRO stages that do not issue it (the cost terms are built so); reduce_last:
    the part of `reduce` in its last bucket, exposed after the backward whatever the window;
    reduce_mb / gather_mb: the per-micro-batch reduce-scatter / all-gather of the whole stage, issued
    layer by layer; fwd_window / bwd_window: one micro-batch's forward / backward compute of the stage.

    ZeRO-0: all-reduce once, hidden behind one backward but for its last bucket. ZeRO-1: reduce-scatter
    once, likewise, all-gather of the updated parameters behind one forward. ZeRO-2: reduce-scatter every
    micro-batch behind its backward, all-gather once behind one forward (`gather`), or, where the
    framework reshards after each backward (FSDP2), before every forward (`gather_mb`). ZeRO-3: all-gather
    before every forward and again before every backward, reduce-scatter every micro-batch.
    """
    # The inputs are zero where a stage does not issue them, so one expression serves every stage.
    last = np.minimum(reduce_last, reduce)
    reduce_h = last + hide(reduce - last, bwd_window, slowdown)
    gather_h = hide(gather, fwd_window, slowdown)
    exposed = reduce_h + gather_h \
        + np.where(zero == 2, m * (hide(reduce_mb, bwd_window, slowdown) + hide(gather_mb, fwd_window, slowdown)),
                   0.0) \
        + np.where(zero == 3, m * (hide(gather_mb, fwd_window, slowdown)
                                   + hide(gather_mb + reduce_mb, bwd_window, slowdown)), 0.0)
    total = reduce + gather + m * (reduce_mb + np.where(zero == 3, 2.0, 1.0) * gather_mb)
    before = np.where(zero == 1, gather_h, 0.0)
    return DataParallelTime(total=np.where(has_dp, total, 0.0), exposed=np.where(has_dp, exposed, 0.0),
                            after_backward=np.where(has_dp, reduce + 0.0 * gather, 0.0),
                            last_bucket=np.where(has_dp, last + 0.0 * gather, 0.0),
                            before_forward=np.where(has_dp, before, 0.0))


def core_sharing_stretch(busy: Array, span: Array, compute_slowdown: float) -> Array:
    """Factor (>= 1) by which a step of `span` seconds stretches when ranks share cores.

    `busy` is the average rank's busy time; with `compute_slowdown` s > 1 (ranks per core, as measured
    by calibration) the node cannot finish before s·busy (work conserving). Pipeline fill and drain
    leave cores to the busy stages, so they cost less than on dedicated devices.
    """
    if compute_slowdown <= 1.0:
        return np.ones_like(np.asarray(span, dtype=np.float64))
    return np.maximum(1.0, compute_slowdown * np.asarray(busy) / np.asarray(span))
