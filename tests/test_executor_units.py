"""Executor pieces that need no process group: mesh layout, data, statistics, launcher checks."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from executor.data import SyntheticData, TextData, make_data
from executor.errors import ResourceMismatch, UnsupportedPlan
from executor.launch import add_run_arguments, comparison_table, run_command, torchrun_command, validate
from executor.measure import stats
from executor.parallel_dims import ParallelDims
from executor.plans import local_plan
from planner.errors import InputFileError, PlannerError
from planner.plan import save_plan
from planner.specs.model import ModelSpec

REPO = Path(__file__).resolve().parent.parent
SPEC = ModelSpec(name="t", num_layers=2, hidden=32, num_heads=4, ffn_hidden=64, vocab_size=300, seq_len=8,
                 dtype="fp32")


# ---- ParallelDims ---------------------------------------------------------------------------------


def test_default_placement_puts_tp_innermost() -> None:
    dims = ParallelDims(tp=2, pp=2, dp=2, cp=1, ep=1, vpp=1, placement=("tp", "cp", "dp", "pp"))
    assert dims.mesh_names == ("pp", "dp", "cp", "tp")
    assert dims.groups("tp") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert dims.groups("dp") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert dims.groups("pp") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert dims.coords(5) == {"pp": 1, "dp": 0, "cp": 0, "tp": 1}


def test_placement_dp_innermost() -> None:
    dims = ParallelDims(tp=2, pp=1, dp=2, cp=1, ep=1, vpp=1, placement=("dp", "tp", "cp", "pp"))
    assert dims.groups("dp") == [[0, 1], [2, 3]]
    assert dims.groups("tp") == [[0, 2], [1, 3]]
    # every rank appears exactly once in each dimension's groups
    for dim in ("tp", "dp", "pp", "cp"):
        assert sorted(r for g in dims.groups(dim) for r in g) == list(range(4))


def test_every_degree_combination_is_supported() -> None:
    order = ("tp", "cp", "dp", "pp")
    ParallelDims(tp=1, pp=1, dp=1, cp=2, ep=1, vpp=1, placement=order).check_supported()  # context parallel
    ParallelDims(tp=2, pp=2, dp=2, cp=2, ep=2, vpp=1, placement=order).check_supported()  # ep x tp, with cp, pp
    with pytest.raises(ValueError, match="ep 2 must divide dp 3"):
        ParallelDims(tp=1, pp=1, dp=3, cp=1, ep=2, vpp=1, placement=order)


def test_gradient_group_spans_dp_and_cp() -> None:
    dims = ParallelDims(tp=2, pp=2, dp=2, cp=2, ep=1, vpp=1, placement=("tp", "cp", "dp", "pp"))
    # rank = ((pp * 2 + dp) * 2 + cp) * 2 + tp: same tp and pp coordinates, every dp and cp
    assert dims.group(("dp", "cp"), 0) == [0, 2, 4, 6]
    assert dims.group(("dp", "cp"), 11) == [9, 11, 13, 15]
    assert dims.group(("cp",), 5) == [5, 7]


def test_expert_groups_with_tp_and_cp() -> None:
    from executor.expert_parallel import expert_groups

    dims = ParallelDims(tp=2, pp=1, dp=4, cp=2, ep=2, vpp=1, placement=("tp", "cp", "dp", "pp"))
    # rank = (dp * 2 + cp) * 2 + tp. ep: consecutive dp ranks of the same cp and tp coordinates; edp: the
    # other dp pair and every cp rank at the same ep position and tp coordinate.
    assert {k: sorted(v) for k, v in expert_groups(dims, 0).items()} == {"ep": [0, 4], "edp": [0, 2, 8, 10]}
    assert {k: sorted(v) for k, v in expert_groups(dims, 7).items()} == {"ep": [3, 7], "edp": [5, 7, 13, 15]}


# ---- data ----------------------------------------------------------------------------------------------


def test_synthetic_rows_do_not_depend_on_the_split() -> None:
    data = SyntheticData(vocab_size=50, seq_len=8, seed=3)
    whole = data.rows(step=2, start=0, count=8)
    halves = torch.cat([data.rows(2, 0, 4), data.rows(2, 4, 4)])
    assert torch.equal(whole, halves)
    assert whole.shape == (8, 9) and int(whole.max()) < 50
    assert not torch.equal(whole, data.rows(3, 0, 8))
    assert not torch.equal(whole, SyntheticData(50, 8, seed=4).rows(2, 0, 8))


def test_text_data_byte_and_char(tmp_path: Path) -> None:
    f = tmp_path / "t.txt"
    f.write_text("hello world, héllo again " * 20, encoding="utf-8")
    byte = TextData(f, vocab_size=300, seq_len=8, seed=0)
    assert byte.tokenizer.kind == "byte"
    rows = byte.rows(0, 0, 3)
    assert rows.shape == (3, 9) and int(rows.max()) < 256
    char = TextData(f, vocab_size=40, seq_len=8, seed=0)
    assert char.tokenizer.kind == "char" and char.tokenizer.vocab_size <= 40
    window = char.rows(1, 0, 1)[0].tolist()
    assert char.tokenizer.decode(window) in "hello world, héllo again " * 20


def test_text_data_errors(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="cannot read"):
        make_data(str(tmp_path / "missing.txt"), 300, 8, 0)
    short = tmp_path / "short.txt"
    short.write_text("abc")
    with pytest.raises(InputFileError, match="shorter than one sequence"):
        make_data(str(short), 300, 8, 0)
    many = tmp_path / "many.txt"
    many.write_text("".join(chr(0x4E00 + i) for i in range(100)))
    with pytest.raises(UnsupportedPlan, match="vocab_size"):
        make_data(str(many), 50, 8, 0, "char")


# ---- statistics ------------------------------------------------------------------------------------------


def test_stats_percentiles() -> None:
    s = stats([float(x) for x in range(1, 11)])
    assert s["median"] == 5.5 and s["mean"] == 5.5
    assert s["p10"] == pytest.approx(1.9) and s["p90"] == pytest.approx(9.1)


# ---- launcher checks (no processes) ------------------------------------------------------------------------


def _args(plan: Path, *extra: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    add_run_arguments(ap)
    return ap.parse_args([str(plan), *extra])


@pytest.fixture
def plan_dp2(tmp_path: Path) -> Path:
    return save_plan(tmp_path / "dp2.json", local_plan(SPEC, dp=2, micro_batch=1, global_batch=2))


def test_world_size_must_match(plan_dp2: Path) -> None:
    with pytest.raises(ResourceMismatch, match="needs 2 processes"):
        validate(_args(plan_dp2, "--nproc-per-node", "4"))
    args = _args(plan_dp2, "--device", "cpu")
    validate(args)
    assert args.nproc_per_node == 2  # defaults to the plan's world size
    with pytest.raises(ResourceMismatch, match="rdzv-endpoint"):
        validate(_args(plan_dp2, "--nnodes", "2", "--nproc-per-node", "1"))


def test_bad_plans_are_planner_errors(tmp_path: Path, plan_dp2: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlannerError, match="malformed JSON"):
        validate(_args(bad))
    cp = save_plan(tmp_path / "cp8.json", local_plan(SPEC, cp=8, micro_batch=1, global_batch=1))
    with pytest.raises(UnsupportedPlan, match="2\\*cp = 16 chunks"):  # seq_len 8 cannot be cut into 16 chunks
        validate(_args(cp))
    with pytest.raises(PlannerError, match="steps"):
        validate(_args(plan_dp2, "--steps", "0"))


def test_cpu_run_of_a_model_too_big_for_the_host_is_refused(tmp_path: Path) -> None:
    from planner.specs.catalog import model_preset

    big = save_plan(tmp_path / "big.json", local_plan(model_preset("llama2-70b"), dp=2, micro_batch=1,
                                                      global_batch=2))
    with pytest.raises(ResourceMismatch, match="GiB"):
        validate(_args(big, "--device", "cpu"))


def test_torchrun_command_single_and_multi_node(plan_dp2: Path, tmp_path: Path) -> None:
    single = _args(plan_dp2, "--threads", "2", "--profile")
    validate(single)
    cmd = torchrun_command(single, tmp_path / "m.json", "abc")
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in cmd and cmd[cmd.index("--nproc-per-node") + 1] == "2"
    assert cmd[cmd.index("-m", 3) + 1] == "executor.run"
    assert "--profile" in cmd and cmd[cmd.index("--threads") + 1] == "2"
    multi = _args(plan_dp2, "--nnodes", "2", "--node-rank", "1", "--rdzv-endpoint", "10.0.0.1:29500",
                  "--rdzv-id", "job7")
    validate(multi)
    cmd = torchrun_command(multi, tmp_path / "m.json", "abc")
    assert "--standalone" not in cmd
    for flag, value in (("--nnodes", "2"), ("--node-rank", "1"), ("--rdzv-endpoint", "10.0.0.1:29500"),
                        ("--rdzv-id", "job7"), ("--rdzv-backend", "c10d"), ("--nproc-per-node", "1")):
        assert cmd[cmd.index(flag) + 1] == value


def test_run_command_exit_2_one_line(plan_dp2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(_args(plan_dp2, "--nproc-per-node", "3")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("planner run: error:") and "needs 2 processes" in err[0]


def test_module_entry_points_exit_2_without_traceback(plan_dp2: Path, tmp_path: Path) -> None:
    """`python -m executor.launch` and a direct `python -m executor.run` refuse a mismatched world size."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launch = subprocess.run([sys.executable, "-m", "executor.launch", str(plan_dp2), "--nproc-per-node", "1"],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert launch.returncode == 2 and "Traceback" not in launch.stderr
    assert launch.stderr.count("\n") == 1 and "needs 2 processes" in launch.stderr
    run = subprocess.run([sys.executable, "-m", "executor.run", "--plan", str(plan_dp2)], capture_output=True,
                         text=True, env={**env, "WORLD_SIZE": "1", "RANK": "0"}, cwd=tmp_path, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr and "needs 2 processes" in run.stderr


def test_comparison_table(plan_dp2: Path) -> None:
    # on CPU the measured peak is the training tensors: compared with their predicted sum (0.5 GiB),
    # not with the total that also holds the runtime's reserved memory ("other")
    prediction = {"step_time_s": 0.1, "tokens_per_s": 160.0, "memory_gib_per_gpu": 0.75,
                  "memory": {"weights": 0.1, "grads": 0.1, "optimizer": 0.2, "activations": 0.1, "other": 0.25}}
    doc = dataclasses.replace(local_plan(SPEC, dp=2, micro_batch=1, global_batch=2), prediction=prediction)
    measured = {
        "plan": "tp1 pp1 dp2", "warmup": 1, "step_times_s": [0.11, 0.12], "losses": [5.0, 4.0, 3.0],
        "step_time_s": {"median": 0.115, "p10": 0.111, "p90": 0.119, "mean": 0.115},
        "tokens_per_s": 139.1, "memory": {"peak_bytes": 2**29, "rss_bytes": 2**30},
        "env": {"world_size": 2, "nnodes": 1, "device": "cpu", "backend": "gloo"},
    }
    table = comparison_table(doc, measured)
    assert "-13.0%" in table  # step time 0.115 s measured vs 0.1 s predicted: (p - m) / m
    assert "115.0 ms" in table and "0.500 GiB" in table and "+0.0%" in table
    assert "loss 5.0000 -> 3.0000" in table
    json.dumps(measured)  # the example stays serialisable


def test_a_step_is_timed_from_a_barrier_to_its_own_end(monkeypatch) -> None:
    """executor.measure.timed: a barrier, then the step, and nothing after it inside the interval (the
    slowest rank's interval is the step's, as calibrate times its steps); a closing barrier would add a
    collective no training step issues (1-1.5 ms on 2 CPU ranks)."""
    import torch.distributed as dist

    import executor.measure as measure

    events: list[str] = []
    clock = iter([10.0, 10.25])
    monkeypatch.setattr(dist, "barrier", lambda *a, **k: events.append("barrier"))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    out, seconds = measure.timed(lambda: events.append("step") or 7, torch.device("cpu"), world=2)
    assert (out, seconds) == (7, 0.25)
    assert events == ["barrier", "step"]
    events.clear()
    clock = iter([0.0, 1.0])
    measure.timed(lambda: events.append("step"), torch.device("cpu"), world=2, barrier=lambda: events.append("mine"))
    assert events == ["mine", "step"]
