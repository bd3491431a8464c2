"""Torch-free constants and checks shared by the launcher, the worker and the `planner` CLI.

Kept apart so that `planner --help` and argument errors do not pay the 2-4 s import of torch.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_TIMEOUT_S = 600.0  # collective timeout (init_process_group); a hung rank fails after this
OPTIMIZERS = ("adamw", "sgd")


def default_out(plan_path: str | Path) -> Path:
    """Where a plan's measured result goes by default: beside it, named after it (plan.json ->
    plan.measured.json), so runs of different plans in one folder never write the same file."""
    p = Path(plan_path).resolve()
    return p.with_name(p.stem + ".measured.json")
