"""Small helpers to write plans for this host without a search (tests, benchmarks, examples)."""

from __future__ import annotations

from typing import Any

from planner.plan import Plan, PlanDocument, check_plan
from planner.specs.catalog import load_cluster
from planner.specs.model import ModelSpec


def local_plan(model: ModelSpec, **fields: Any) -> PlanDocument:
    """A checked plan for the local CPU cluster sized to the plan's world size (fp32 by default)."""
    fields.setdefault("dtype", "fp32")
    plan = Plan(**fields)
    cluster = load_cluster("localhost-cpu", gpus=plan.world_size)
    check_plan(model, cluster, plan)
    return PlanDocument(plan=plan, model=model, cluster=cluster)
