"""Executor errors that are the user's input (exit status 2), as the planner's own errors are."""

from __future__ import annotations

from planner.errors import PlannerError


class UnsupportedPlan(PlannerError, ValueError):
    """A legal plan that asks for something this executor does not implement (e.g. cp > 1)."""


class ResourceMismatch(PlannerError, ValueError):
    """The plan's world size differs from the processes launched (nproc_per_node x nnodes)."""
