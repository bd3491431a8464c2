"""The analytic cost model: `estimate` scores one plan, `evaluate` scores a PlanBatch of many.

`cost_terms` returns the per-micro-batch terms (`CostTerms`) that the closed form, the step
simulation, the trace and the traffic counts all consume.
"""

from __future__ import annotations

from typing import Any

from planner.cost.batch import PlanBatch, batch_from_plans
from planner.cost.model import DEFAULT_HEADROOM, Scores, evaluate, prediction, step_times
from planner.cost.terms import Comm, CostTerms, cost_terms
from planner.plan import Plan, check_plan
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

__all__ = ["DEFAULT_HEADROOM", "Comm", "CostTerms", "PlanBatch", "Scores", "batch_from_plans", "cost_terms",
           "estimate", "evaluate", "prediction", "step_times"]


def estimate(model: ModelSpec, cluster: ClusterSpec, plan: Plan, headroom: float = DEFAULT_HEADROOM,
             check: bool = True) -> dict[str, Any]:
    """The `prediction` object of one plan (raises PlanError if the plan is illegal)."""
    if check:
        check_plan(model, cluster, plan)
    scores = evaluate(model, cluster, batch_from_plans([plan]), headroom)
    return prediction(scores, 0, cluster, plan.dtype)
