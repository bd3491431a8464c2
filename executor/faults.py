"""TEST-ONLY fault injection for the executor's fault-tolerance tests. Not a user feature.

Set the environment variable `PLANNER_TEST_FAULT` for a `planner run` (torchrun passes it to every
rank) to make one rank fail at the start of a step, i.e. after `step` steps have completed:

    PLANNER_TEST_FAULT=kill-rank:1:step:3    rank 1 sends itself SIGKILL (a crash, an OOM kill)
    PLANNER_TEST_FAULT=hang-rank:1:step:3    rank 1 sleeps forever (a hung rank, a stuck host)

A fault fires on the first attempt only; append `:attempt:N` to fire on restart N instead (torchrun
`--max-restarts` counts attempts in TORCHELASTIC_RESTART_COUNT). Several faults: comma-separated.
Nothing else in the executor depends on this module; unset, it does nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass

from executor.errors import UnsupportedPlan

ENV = "PLANNER_TEST_FAULT"
ACTIONS = ("kill-rank", "hang-rank")


@dataclass(frozen=True)
class Fault:
    action: str
    rank: int
    step: int
    attempt: int = 0


def parse(text: str | None) -> list[Fault]:
    """Faults from the environment variable's value; UnsupportedPlan (exit 2) names it when malformed."""
    if not text:
        return []
    faults = []
    for item in text.split(","):
        parts = item.strip().split(":")
        try:
            if len(parts) not in (4, 6) or parts[0] not in ACTIONS or parts[2] != "step" or (
                    len(parts) == 6 and parts[4] != "attempt"):
                raise ValueError
            nums = [int(parts[1]), int(parts[3]), int(parts[5]) if len(parts) == 6 else 0]
            if min(nums) < 0:
                raise ValueError
        except ValueError:
            raise UnsupportedPlan(f"expected kill-rank:R:step:S or hang-rank:R:step:S[:attempt:A], got "
                                  f"{item[:60]!r}", field=ENV) from None
        faults.append(Fault(parts[0], *nums))
    return faults


def from_env() -> list[Fault]:
    return parse(os.environ.get(ENV))


def inject(faults: list[Fault], rank: int, step: int, attempt: int) -> None:
    """Called by the worker at the start of every step; fires a matching fault."""
    for f in faults:
        if (f.rank, f.step, f.attempt) != (rank, step, attempt):
            continue
        print(f"executor.run: TEST FAULT: rank {rank} {f.action.split('-')[0]}s itself at step {step} "
              f"({ENV})", file=sys.stderr, flush=True)
        if f.action == "kill-rank":
            os.kill(os.getpid(), signal.SIGKILL)
        while True:  # hang-rank: never returns; the launcher's SIGTERM ends it
            time.sleep(3600)
