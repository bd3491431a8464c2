"""Multi-process executor tests: torchrun on CPU/gloo with 1-4 ranks and tiny models.

Launches are grouped (one torchrun per rank count runs every layout of that size) to keep the suite
fast on a 2-core machine. Nothing here asserts on wall-clock time.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "executor_workers"))

from numerics import SETS

from executor.launch import run_plan
from executor.plans import local_plan
from planner.io import load_json
from planner.plan import plan_hash, save_plan
from planner.specs.model import ModelSpec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
WORKER = REPO / "tests" / "executor_workers" / "numerics.py"
LOSS_RTOL = 1e-5


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _numerics(nproc: int, name: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp(f"numerics_{name}") / "results.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           str(WORKER), "--set", name, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=REPO, timeout=600)
    results = json.loads(out.read_text()) if out.exists() else {}
    assert proc.returncode == 0, f"worker failed: {results}\n{proc.stderr[-3000:]}"
    return results


@pytest.fixture(scope="module")
def numerics_w2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _numerics(2, "w2", tmp_path_factory)


@pytest.fixture(scope="module")
def numerics_w4(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _numerics(4, "w4", tmp_path_factory)


def _check(result: dict[str, Any], min_update: float = 1e-2) -> None:
    assert "error" not in result, result
    assert result["loss_err"] <= LOSS_RTOL, result
    assert result["param_ratio"] <= 1.0, result  # |p - p_ref| <= 1e-7 + 1e-5 |p_ref| elementwise
    assert result["max_update"] > min_update, result  # the step moved the parameters: the check has teeth


@pytest.mark.parametrize("layout", [k for k in SETS["w2"] if not k.startswith("control")])
def test_two_rank_layout_matches_single_process(numerics_w2: dict[str, Any], layout: str) -> None:
    # LoRA trains only the adapters, and B starts at zero: its first updates are small, still 10^4 x
    # the tolerance of the parameter check.
    _check(numerics_w2[layout], 1e-3 if "lora" in layout else 1e-2)


@pytest.mark.parametrize("layout", list(SETS["w4"]))
def test_four_rank_layout_matches_single_process(numerics_w4: dict[str, Any], layout: str) -> None:
    _check(numerics_w4[layout])


def test_numerics_check_detects_a_wrong_update(numerics_w2: dict[str, Any]) -> None:
    """Negative control: a 0.1% larger learning rate on one layout must fail the parameter check."""
    control = numerics_w2["control-dp2-lr"]
    assert control["param_ratio"] > 10.0, control


def test_layouts_use_the_intended_data_parallel_wrappers(numerics_w2: dict[str, Any],
                                                         numerics_w4: dict[str, Any]) -> None:
    assert numerics_w2["dp2-ddp"]["dp"] == "DDP (ZeRO-0)"
    assert "ZeroRedundancyOptimizer" in numerics_w2["dp2-zero1"]["dp"]
    assert "reshard_after_forward=False" in numerics_w2["dp2-zero2"]["dp"]
    assert "reshard_after_forward=True" in numerics_w2["dp2-zero3"]["dp"]
    assert "replicate" in numerics_w4["tp2-dp2"]["dp"]


# ---- end-to-end runs through the launcher -------------------------------------------------------------

SPEC = ModelSpec(name="t", num_layers=2, hidden=32, num_heads=4, ffn_hidden=64, vocab_size=64, seq_len=16,
                 dtype="fp32")


def test_run_plan_writes_measured_json(tmp_path: Path) -> None:
    plan_path = save_plan(tmp_path / "pp2.json", local_plan(SPEC, pp=2, micro_batch=1, global_batch=4))
    measured = run_plan(plan_path, nproc_per_node=2, steps=3, warmup=1, profile=True, timeout=120.0)
    on_disk = load_json(tmp_path / "pp2.measured.json")  # named after the plan, beside it
    assert on_disk == measured
    assert measured["status"] == "ok" and measured["kind"] == "measured" and measured["schema_version"] == 1
    assert measured["plan_hash"] == plan_hash(load_json(plan_path))
    assert measured["steps_requested"] == 3 and measured["warmup"] == 1
    assert len(measured["step_times_s"]) == 3 and len(measured["losses"]) == 4
    st = measured["step_time_s"]
    assert st["p10"] <= st["median"] <= st["p90"] and min(measured["step_times_s"]) <= st["mean"]
    assert measured["tokens_per_s"] == pytest.approx(4 * 16 / st["median"])
    # busy: the busiest rank's training-thread CPU time, never more than the step it was measured in
    busy, tb = measured["busy_times_s"], measured["time_breakdown"]
    assert len(busy) == 3 and all(0 < b <= t for b, t in zip(busy, measured["step_times_s"], strict=True))
    assert 0 < tb["busy_s"] <= max(measured["step_times_s"]) and tb["waiting_s"] >= 0
    mem = measured["memory"]
    for key in ("peak_bytes", "weights_bytes", "grads_bytes", "optimizer_bytes", "activations_bytes",
                "rss_bytes"):
        assert mem[key] > 0, key
    # AdamW keeps two fp32 states per parameter; the first stage holds the larger half (the embedding).
    assert mem["optimizer_bytes"] >= 2 * mem["weights_bytes"] * 0.99
    assert mem["peak_bytes"] >= mem["weights_bytes"] + mem["grads_bytes"] + mem["optimizer_bytes"]
    # 1F1B keeps more than one micro-batch in flight on the first stage.
    assert mem["max_microbatches_in_flight"] >= 2
    probe = measured["speed_probe"]  # the machine's speed before and after the plan's steps
    for key in ("gemm_flops_per_s", "stream_bytes_per_s"):
        assert probe["before"][key] > 0 and probe["after"][key] > 0
        assert probe[key] == pytest.approx((probe["before"][key] + probe["after"][key]) / 2)
    env = measured["env"]
    assert env["world_size"] == 2 and env["nnodes"] == 1 and env["backend"] == "gloo"
    assert env["threads_per_rank"] == 1 and env["torch"].startswith("2.")
    for rank in (0, 1):
        trace = json.loads((tmp_path / f"pp2.measured.trace.rank{rank}.json").read_text())
        assert trace["traceEvents"], rank


def test_two_nodes_rendezvous_on_loopback(tmp_path: Path) -> None:
    """Two torchrun agents (--nnodes 2, distinct --node-rank, c10d rendezvous) run one dp2 plan."""
    plan_path = save_plan(tmp_path / "dp2.json", local_plan(SPEC, dp=2, micro_batch=1, global_batch=2))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(
        [sys.executable, "-m", "executor.launch", str(plan_path), "--nnodes", "2", "--node-rank", str(node),
         "--nproc-per-node", "1", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "test-two-nodes",
         "--steps", "2", "--warmup", "1", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=tmp_path)
        for node in (0, 1)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n----\n".join(outputs)
    measured = load_json(tmp_path / "dp2.measured.json")
    assert measured["status"] == "ok"
    assert measured["env"]["nnodes"] == 2 and measured["env"]["world_size"] == 2
    assert len(measured["step_times_s"]) == 2
    # exactly one agent (the one holding global rank 0) prints the comparison table
    assert sum("predicted" in out for out in outputs) == 1


def test_loss_falls_on_a_text_file(tmp_path: Path) -> None:
    """--data trains on real text: a tiny char-level model's loss drops well below uniform guessing."""
    text = (REPO / "executor" / "model.py").read_text()
    data = tmp_path / "corpus.txt"
    data.write_text(text)
    spec = ModelSpec(name="text", num_layers=2, hidden=64, num_heads=4, ffn_hidden=128, vocab_size=128,
                     seq_len=32, dtype="fp32")
    plan_path = save_plan(tmp_path / "one.json", local_plan(spec, micro_batch=8, global_batch=8))
    measured = run_plan(plan_path, nproc_per_node=1, steps=40, warmup=0, data=str(data), lr=3e-3,
                        tokenizer="char")
    losses = measured["losses"]
    assert measured["executor"]["data"] == str(data.resolve())
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < 0.75 * sum(losses[:3]) / 3, losses
