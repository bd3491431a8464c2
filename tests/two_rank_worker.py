"""Runs a worker script of tests/executor_workers/ on two CPU ranks (torchrun, gloo) and returns the JSON it
wrote: the reference measurements the cost model's counts are checked against (test_fsdp_copies.py,
test_fsdp_gathers.py, test_dtensor_optimizer.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_two_rank_worker(name: str, out_dir: Path) -> Any:
    """The result of tests/executor_workers/`name` run with `--out` on two ranks (assert: it succeeded)."""
    out = out_dir / "result.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(REPO / "tests" / "executor_workers" / name), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0 and out.exists(), proc.stderr[-3000:]
    return json.loads(out.read_text())
