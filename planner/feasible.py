"""When no plan fits: the nearest problems that have one.

Three directions, each tried nearest first with the same `planner.search.search` (so the plan
offered is the one the search ranks best there): the same problem without the user's constraints,
a nearby global batch that some legal data-parallel size divides, and a nearby GPU count (more GPUs
hold more of the model per step's memory). The first problem that searches successfully in each
direction is returned; a number of searches (not a time, so the answer does not depend on how busy
the machine is) bounds the whole look-around.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import planner.search as searching
from planner.errors import PlannerError
from planner.plan import Plan, check_plan
from planner.search import Constraints, divisors
from planner.specs.catalog import load_cluster
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

MAX_TRIES = 4  # searches per direction


@dataclass(frozen=True)
class Alternative:
    """A problem near the one asked that has a plan, and the best plan there."""

    change: str  # what differs, for people: "global batch 2560 (asked 2520)"
    global_batch: int
    gpus: int
    relaxed: bool  # the user's constraints were dropped
    plan: Plan
    prediction: dict[str, Any]


def data_parallel_sizes(model: ModelSpec, cluster: ClusterSpec) -> list[int]:
    """Every dp that some legal (tp, cp, pp) leaves on this cluster's GPU count (any batch it divides)."""
    n = cluster.num_gpus
    out = set()
    for tp in divisors(n):
        for cp in divisors(n // tp):
            for pp in divisors(n // tp // cp):
                dp = n // tp // cp // pp
                try:
                    check_plan(model, cluster, Plan(tp=tp, cp=cp, pp=pp, dp=dp, global_batch=dp,
                                                    dtype=next(iter(cluster.gpu.peak_flops))))
                except PlannerError:
                    continue
                out.add(dp)
    return sorted(out)


def nearby_batches(global_batch: int, dp_sizes: list[int], limit: int = MAX_TRIES) -> list[int]:
    """Global batches nearest `global_batch` that one of `dp_sizes` divides (the batch itself excluded)."""
    found = set()
    for dp in dp_sizes:  # the `limit` nearest multiples of each size on each side hold the answer
        below = global_batch // dp * dp
        found.update(b for k in range(limit) for b in (below - k * dp, below + (k + 1) * dp)
                     if b > 0 and b != global_batch)
    return sorted(found, key=lambda b: (abs(b - global_batch), b))[:limit]


def nearby_gpu_counts(cluster: ClusterSpec, doublings: int = 8) -> list[int]:
    """GPU counts the cluster can have near its own, in the order to try them: one node fewer and one
    more, then 2x, 4x, ... (a model too large for its GPUs needs several times as many)."""
    n, per_node = cluster.num_gpus, cluster.gpus_per_node
    steps = [c for c in (n - per_node, n + per_node) if c > 0]
    if n < per_node:
        steps = [per_node]
    out = []
    for c in [*steps, *(n * 2**k for k in range(1, doublings + 1))]:
        if c in out or c == n:
            continue
        try:
            load_cluster(cluster, gpus=c)
        except PlannerError:
            continue
        out.append(c)
    return out


def nearest_feasible(model: ModelSpec, cluster: ClusterSpec, global_batch: int, constraints: Constraints | None = None,
                     *, objective: str = "time", dtype: str | None = None, max_searches: int = 14,
                     **search_kw: Any) -> list[Alternative]:
    """Up to three alternatives (relaxed constraints, another global batch, another GPU count) for a
    problem on which `search` finds no plan; an empty list when none is found in `max_searches`."""
    c = constraints or Constraints()
    out: list[Alternative] = []
    searches = 0

    def attempt(batch: int, sized: ClusterSpec, cons: Constraints) -> Any:
        nonlocal searches
        if searches >= max_searches:
            return None
        searches += 1
        try:
            return searching.search(model, sized, batch, dtype=dtype, constraints=cons, objective=objective, top_k=1,
                          **search_kw)
        except PlannerError:
            return None

    if c != Constraints():
        r = attempt(global_batch, cluster, Constraints())
        if r is not None:
            out.append(Alternative("without the constraints", global_batch, cluster.num_gpus, True, r.plans[0],
                                   r.predictions[0]))
    for b in nearby_batches(global_batch, data_parallel_sizes(model, cluster)):
        r = attempt(b, cluster, c)
        if r is not None:
            out.append(Alternative(f"global batch {b} (asked {global_batch})", b, cluster.num_gpus, False,
                                   r.plans[0], r.predictions[0]))
            break
    for n in nearby_gpu_counts(cluster):
        r = attempt(global_batch, load_cluster(cluster, gpus=n), c)
        if r is not None:
            out.append(Alternative(f"{n} GPUs (asked {cluster.num_gpus})", global_batch, n, False, r.plans[0],
                                   r.predictions[0]))
            break
    return out
