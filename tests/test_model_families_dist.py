"""The 2025 families on several CPU ranks: tiny DeepSeek-V3 (MLA, shared experts, MTP), Qwen3 (dense and
MoE), Qwen2-MoE's gated shared expert, gpt-oss (sliding window, sinks, biases) and Llama 4 (interleaved
dense / MoE, chunked and RoPE-free layers) trained under tp / sp / pp / vpp / dp (ZeRO 0 and 3) / ep,
each against the same steps in one process: losses and every parameter after two SGD steps agree to
fp32 reordering (the checks of tests/test_executor_dist.py, including its negative control).

Not run by the executor (refused with one line before any process starts): multi-token prediction
with pipeline parallelism (the last stage would need the token ids), and, as for every model, ep with
tp and cp > 1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "executor_workers"))

from families import FAMILIES
from numerics import SETS

from executor.errors import UnsupportedPlan
from executor.plans import local_plan
from executor.run import check_executable

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "executor_workers" / "numerics.py"
LOSS_RTOL = 1e-5


def _numerics(nproc: int, name: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp(f"numerics_{name}") / "results.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(WORKER), "--set", name, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    results = json.loads(out.read_text()) if out.exists() else {}
    assert proc.returncode == 0, f"worker failed: {results}\n{proc.stderr[-3000:]}"
    return results


def _check(result: dict[str, Any]) -> None:
    assert "error" not in result, result
    assert result["loss_err"] <= LOSS_RTOL, result
    assert result["param_ratio"] <= 1.0, result  # |p - p_ref| <= 1e-7 + 1e-5 |p_ref| elementwise
    assert result["max_update"] > 1e-2, result  # the step moved the parameters: the check has teeth


@pytest.fixture(scope="module")
def families_w2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _numerics(2, "families-w2", tmp_path_factory)


@pytest.fixture(scope="module")
def families_w4(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _numerics(4, "families-w4", tmp_path_factory)


@pytest.mark.parametrize("layout", list(SETS["families-w2"]))
def test_two_rank_family_layout_matches_single_process(families_w2: dict[str, Any], layout: str) -> None:
    _check(families_w2[layout])


@pytest.mark.parametrize("layout", list(SETS["families-w4"]))
def test_four_rank_family_layout_matches_single_process(families_w4: dict[str, Any], layout: str) -> None:
    _check(families_w4[layout])


def test_every_family_runs_on_several_ranks() -> None:
    trained = {model for set_ in ("families-w2", "families-w4") for model, _ in SETS[set_].values()}
    assert set(FAMILIES) <= trained | {"deepseek-v3-no-mtp"}


def test_mtp_with_pipeline_parallelism_is_refused() -> None:
    with pytest.raises(UnsupportedPlan) as err:
        check_executable(local_plan(FAMILIES["deepseek-v3"], pp=2, micro_batch=2, global_batch=8))
    assert err.value.field == "pp" and "multi-token prediction" in str(err.value)
