"""Pipelined FSDP2 stages keep their gradients unsharded until the step's end (Framework
.pipeline_unsharded_grads), measured on two CPU ranks.

torch.distributed.pipelining turns an FSDP2 stage's gradient reduction off for every micro-batch and
reduces once after the last backward; with the reduction off, FSDP2 accumulates each parameter's
gradient unsharded in its fp32 reduce dtype. The worker (tests/executor_workers/fsdp_grads.py) records
the schedule's calls and counts the bytes with torch's MemTracker; the cost model's gradient bytes per
parameter for a torchtitan plan must equal them, pipelined or not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from planner.cost.model_state import model_state_bytes
from planner.plan import Plan
from planner.specs.catalog import model_preset

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "executor_workers" / "fsdp_grads.py"


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("fsdp_grads") / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER),
           "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    result = json.loads(out.read_text()) if out.exists() else {}
    assert proc.returncode == 0 and "error" not in result, f"{result}\n{proc.stderr[-3000:]}"
    return result


def _predicted_grad_bytes_per_param(pp: int, framework: str) -> float:
    plan = Plan(pp=pp, dp=2, micro_batch=1, global_batch=8, zero_stage=2, framework=framework)
    state = model_state_bytes(model_preset("llama3-8b"), plan, 0)
    return state.grads / (state.trained_dense_params + state.trained_expert_params)


def test_the_pipeline_schedule_reduces_gradients_only_after_the_last_micro_batch(measured: dict[str, Any]) -> None:
    m = measured["microbatches"]
    calls = [tuple(c) for c in measured["pipeline_sync_calls"]]
    assert calls and all(done < m for done, on in calls if not on)  # switched off before the backwards
    assert [on for done, on in calls if done < m] == [False] * m  # and never on between them
    assert any(on for done, on in calls if done == m)  # then reduced once at the step's end


def test_unsynced_fsdp2_gradients_take_the_bytes_the_cost_model_gives_pipelined_torchtitan(
        measured: dict[str, Any]) -> None:
    """With the reduction on: fp32 gradient shards, 4 / dp B per parameter; off: unsharded fp32, 4 B."""
    assert measured["world_size"] == 2
    assert measured["held_synced"] == pytest.approx(_predicted_grad_bytes_per_param(1, "torchtitan"), abs=0.05)
    assert measured["held_unsynced"] == pytest.approx(_predicted_grad_bytes_per_param(2, "torchtitan"), abs=0.05)
    # a framework that reduce-scatters every micro-batch (Megatron's distributed optimizer) shards them
    assert _predicted_grad_bytes_per_param(2, "megatron-core") == pytest.approx(measured["held_synced"], abs=0.05)
