"""Executor faults: a hung rank fails the run within `--timeout` naming the rank; a rank killed with
SIGKILL (rank 0 included) leaves measured.json `"failed"` with every step completed so far; with
`--checkpoint-every` and `--max-restarts` a restarted run resumes from its checkpoint and the final
measured.json holds every completed step once.

Faults are injected for real with the test-only hook `PLANNER_TEST_FAULT` (executor/faults.py): the
rank SIGKILLs itself, or sleeps forever, at the start of a step. Three torchrun launches of 2 CPU ranks
(the rest runs in process). Wall-clock time is only used as a generous bound ("fails instead of
hanging").
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import pytest
import torch

from executor import faults
from executor.checkpoint import SIGNATURE, Checkpointer
from executor.data import make_data
from executor.errors import UnsupportedPlan
from executor.launch import add_run_arguments, failure_reason, run_command
from executor.ledger import Ledger, mark_failed, read_run
from executor.parallel_dims import ParallelDims
from executor.plans import local_plan
from executor.trainer import Trainer, TrainOptions
from planner.io import atomic_write_json, load_json
from planner.plan import plan_hash, save_plan
from planner.specs.model import ModelSpec

SPEC = ModelSpec(name="t", num_layers=2, hidden=32, num_heads=4, ffn_hidden=64, vocab_size=64, seq_len=16,
                 dtype="fp32")
TIMEOUT_S = 5  # the collective timeout of the hang test (ranks start within it even on a loaded host)
BOUND_S = 150  # "fails instead of hanging": far above the ~20 s such a run takes on a 2-core machine


def planner_run(plan: Path, flags: list[str], fault: str, capsys: pytest.CaptureFixture[str],
                monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, float]:
    """`planner run PLAN FLAGS` in process (torchrun is its child), with the test-only fault set; returns
    (exit status, stdout + stderr, seconds)."""
    monkeypatch.setenv(faults.ENV, fault)
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    args = parser.parse_args([str(plan), "--nproc-per-node", "2", *flags])
    capsys.readouterr()
    start = time.monotonic()
    rc = run_command(args)
    took = time.monotonic() - start
    out, err = capsys.readouterr()
    return rc, out + err, took


def last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


# ---- real faults under torchrun ---------------------------------------------------------------------


@pytest.mark.slow
def test_hung_rank_fails_within_the_timeout_naming_the_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    plan = save_plan(tmp_path / "dp2.json", local_plan(SPEC, dp=2, micro_batch=1, global_batch=4))
    rc, err, took = planner_run(plan, ["--steps", "4", "--warmup", "1", "--timeout", str(TIMEOUT_S)],
                                "hang-rank:1:step:3", capsys, monkeypatch)
    assert rc == 1 and took < BOUND_S
    line = last_line(err)
    assert line.startswith("planner run: failed:"), err[-3000:]
    assert f"rank 1 did not reach step 3: dead, or hung for more than the {TIMEOUT_S} s --timeout" in line
    assert "Traceback" not in err and "ChildFailedError" not in err
    m = load_json(tmp_path / "dp2.measured.json")
    assert m["status"] == "failed" and "rank 1 did not reach step 3" in m["error"]
    assert m["steps_completed"] == 3 and len(m["losses"]) == 3 and len(m["step_times_s"]) == 2  # 1 warm-up
    assert m["plan_hash"] == plan_hash(load_json(plan)) and m["step_time_s"]["median"] > 0


@pytest.mark.slow
def test_rank0_killed_leaves_a_failed_measured_json_with_its_steps(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 is the writer; when it is SIGKILLed the launcher marks its file failed, steps kept. The
    completed result an earlier run left there is kept as dp2.measured.prev.json, not lost."""
    plan = save_plan(tmp_path / "dp2.json", local_plan(SPEC, dp=2, micro_batch=1, global_batch=4))
    earlier = b'{"status": "ok", "run_id": "earlier", "steps_completed": 7}\n'
    (tmp_path / "dp2.measured.json").write_bytes(earlier)
    rc, err, took = planner_run(plan, ["--steps", "5", "--warmup", "1", "--timeout", "30"],
                                "kill-rank:0:step:4", capsys, monkeypatch)
    assert rc == 1 and took < BOUND_S
    assert (tmp_path / "dp2.measured.prev.json").read_bytes() == earlier
    assert "previous completed result is kept" in last_line(err)
    assert "rank 0 was killed by SIGKILL" in err, err[-3000:]
    m = load_json(tmp_path / "dp2.measured.json")
    assert m["status"] == "failed" and m["error"].startswith("rank 0 was killed by SIGKILL")
    assert m["steps_completed"] == 4 and len(m["losses"]) == 4 and len(m["step_times_s"]) == 3
    assert all(x > 0 for x in m["losses"] + m["step_times_s"])


@pytest.mark.slow
def test_restart_resumes_from_the_checkpoint_and_keeps_every_step_once(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """ZeRO-3 (FSDP2, sharded DTensor state): rank 1 is killed at step 3 of attempt 0; torchrun restarts
    both ranks, which load the step-2 checkpoint and run steps 2-5 again."""
    plan = save_plan(tmp_path / "z3.json", local_plan(SPEC, dp=2, zero_stage=3, micro_batch=1, global_batch=4))
    rc, err, took = planner_run(plan, ["--steps", "5", "--warmup", "1", "--timeout", "30", "--checkpoint-every",
                                       "2", "--max-restarts", "1"], "kill-rank:1:step:3", capsys, monkeypatch)
    assert rc == 0, err[-3000:]
    assert took < 2 * BOUND_S
    m = load_json(tmp_path / "z3.measured.json")
    assert m["status"] == "ok" and m["steps_completed"] == 6
    assert len(m["losses"]) == 6 and len(m["step_times_s"]) == 5  # every step once
    assert m["restarts"] == [{"attempt": 1, "resumed_from_step": 2, "previous_status": "failed",
                              "previous_error": m["restarts"][0]["previous_error"]}]
    # rank 0 names the dead rank, unless torchrun stopped it first or its own collective saw the peer's
    # socket close before the monitored barrier could (races on a loaded machine; gloo then says "typically
    # caused by a remote worker crashing")
    assert re.search(r"rank 1 did not reach step 3|attempt 0 was stopped at step 3|"
                     r"rank 0 failed at step 3: .*remote worker crashing", m["restarts"][0]["previous_error"])
    # step 2 ran twice: its first measurement is kept aside, and the resumed model state was exact
    (again,) = m["discarded_steps"]
    assert again["step"] == 2 and again["attempt"] == 0
    assert again["loss"] == pytest.approx(m["losses"][2], rel=1e-6)
    assert m["executor"]["checkpoint_every"] == 2
    ckpt = Path(m["executor"]["checkpoint_dir"])
    assert sorted(p.name for p in ckpt.iterdir()) == ["step_00000002", "step_00000004"]
    assert (ckpt / "step_00000004" / SIGNATURE).is_file()
    assert "resumed 1 time(s): from step(s) 2" in err


# ---- in process: checkpoints, the ledger, the launcher's last word ----------------------------------------


def _trainer(seed: int) -> Trainer:
    doc = local_plan(SPEC, micro_batch=2, global_batch=4)
    return Trainer(doc, ParallelDims.from_plan(doc.plan), None, torch.device("cpu"), TrainOptions(lr=1e-2, seed=seed))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_checkpoint_round_trip_restores_model_and_optimizer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = make_data(None, SPEC.vocab_size, SPEC.seq_len, 0, "auto")
    key = b"k" * 32
    a = _trainer(seed=0)
    ck = Checkpointer(tmp_path, 2, key, a.modules, a.optimizers, rank=0, world=1)
    losses = []
    for step in range(4):
        losses.append(float(a.train_step(a.batch(data, step))[0]))
        if ck.due(step + 1):
            ck.save(step + 1)
    b = _trainer(seed=1)  # other initial weights, fresh AdamW state: the checkpoint must replace both
    ck_b = Checkpointer(tmp_path, 2, key, b.modules, b.optimizers, rank=0, world=1)
    assert ck_b.latest() == 4
    assert ck_b.latest(limit=3) == 2  # never past the steps measured.json holds
    ck_b.load(2)
    resumed = [float(b.train_step(b.batch(data, step))[0]) for step in (2, 3)]
    assert resumed == pytest.approx(losses[2:], rel=1e-6)
    # a checkpoint whose files changed, or signed with another key, is never loaded (DCP unpickles)
    shard = next((tmp_path / "step_00000004").glob("*.distcp"))
    raw = shard.read_bytes()
    shard.write_bytes(raw[:-1] + bytes([raw[-1] ^ 0xFF]))
    assert ck_b.latest() == 2
    with pytest.raises(RuntimeError, match="signature does not verify"):
        ck_b.load(4)
    assert Checkpointer(tmp_path, 2, b"other key", b.modules, b.optimizers, rank=0, world=1).latest() == 0


def test_ledger_persists_every_step_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "measured.json"
    header = {"kind": "measured", "run_id": "r1", "plan_hash": "abc"}
    led = Ledger(out, header, warmup=1, tokens_per_step=64)
    for i in range(4):
        led.record(5.0 - i, 0.1 * (i + 1))
        on_disk = load_json(out)  # persisted after every step
        assert on_disk["status"] == "running" and on_disk["steps_completed"] == i + 1
    assert on_disk["losses"] == [5.0, 4.0, 3.0, 2.0] and on_disk["step_times_s"] == pytest.approx([0.2, 0.3, 0.4])
    assert on_disk["tokens_per_s"] == pytest.approx(64 / 0.3)
    led.flush("failed", "rank 1 was killed by SIGKILL")
    again = Ledger(out, header, warmup=1, tokens_per_step=64)
    again.resume(read_run(out, "r1"), start_step=2, attempt=1)  # checkpoint after 2 steps
    assert again.losses == [5.0, 4.0] and again.times == pytest.approx([0.2])
    assert [d["step"] for d in again.discarded] == [2, 3] and again.discarded[0]["time_s"] == pytest.approx(0.3)
    assert again.restarts == [{"attempt": 1, "resumed_from_step": 2, "previous_status": "failed",
                               "previous_error": "rank 1 was killed by SIGKILL"}]
    for i in range(2, 5):
        again.record(5.0 - i, 0.5)
    doc = again.document("ok")
    assert doc["losses"] == [5.0, 4.0, 3.0, 2.0, 1.0] and doc["steps_completed"] == 5
    assert len(doc["step_times_s"]) == 4 and len(doc["discarded_steps"]) == 2
    with pytest.raises(RuntimeError, match="holds only"):
        Ledger(out, header, 1, 64).resume({"losses": [1.0]}, start_step=3, attempt=2)


def test_ledger_busy_split_survives_a_resume(tmp_path: Path) -> None:
    out = tmp_path / "measured.json"
    header = {"kind": "measured", "run_id": "r2", "plan_hash": "abc"}
    led = Ledger(out, header, warmup=1, tokens_per_step=64)
    for i, (t, b) in enumerate([(0.5, 0.4), (0.2, 0.15), (0.3, 0.2), (0.4, 0.1)]):
        led.record(5.0 - i, t, busy=b)
    doc = load_json(out)
    assert doc["busy_times_s"] == pytest.approx([0.15, 0.2, 0.1])  # timed steps only
    assert doc["time_breakdown"]["busy_s"] == pytest.approx(0.15)
    assert doc["time_breakdown"]["waiting_s"] == pytest.approx(0.1)  # median of 0.05, 0.1, 0.3
    again = Ledger(out, header, warmup=1, tokens_per_step=64)
    again.resume(read_run(out, "r2"), start_step=3, attempt=1)
    assert again.busy == pytest.approx([0.15, 0.2])
    again.record(2.0, 0.6, busy=0.3)
    assert again.document()["busy_times_s"] == pytest.approx([0.15, 0.2, 0.3])
    # a step measured without the split (e.g. CUDA) leaves none rather than a misaligned one
    again.record(1.0, 0.6)
    assert "time_breakdown" not in again.document() and "busy_times_s" not in again.document()


def test_mark_failed_keeps_what_rank0_persisted(tmp_path: Path) -> None:
    out = tmp_path / "measured.json"
    header = {"kind": "measured", "plan_hash": "abc", "steps_requested": 5, "warmup": 1}
    # nothing written by rank 0 (or a stale file of another run): a failed document without steps
    atomic_write_json(out, {"run_id": "old", "status": "ok", "losses": [1.0]})
    d = mark_failed(out, "r2", "rank 0 was killed by SIGKILL", header)
    assert d == load_json(out) and d["status"] == "failed" and d["steps_completed"] == 0 and d["run_id"] == "r2"
    # rank 0 died mid-run: "running" becomes "failed", its steps stay
    atomic_write_json(out, {"run_id": "r3", "status": "running", "losses": [3.0, 2.0], "steps_completed": 2})
    d = mark_failed(out, "r3", "rank 0 was killed by SIGKILL", header)
    assert d["status"] == "failed" and d["losses"] == [3.0, 2.0] and d["error"] == "rank 0 was killed by SIGKILL"
    # rank 0 already said why: the launcher adds only what it alone saw
    atomic_write_json(out, {"run_id": "r4", "status": "failed", "error": "rank 0 failed at step 3: x"})
    d = mark_failed(out, "r4", "rank 1 was killed by SIGKILL; rank 0 failed at step 3: x", header)
    assert d["error"] == "rank 0 failed at step 3: x" and d["launcher_error"] == "rank 1 was killed by SIGKILL"
    # a finished plan is never marked failed
    atomic_write_json(out, {"run_id": "r5", "status": "ok"})
    assert mark_failed(out, "r5", "later failure", header)["status"] == "ok"


TORCHRUN_TAIL = """executor.run: rank 1 failed at step 3: rank 0 did not answer at step 3: dead, or hung
E1125 failed (exitcode: -9) local_rank: 0 (pid: 10332) of binary: python3
============================================================
executor.run FAILED
Failures:
[1]:
  rank      : 1 (local_rank: 1)
  exitcode  : -15 (pid: 8671)  (SIGTERM)
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : -9 (pid: 8670)  (SIGKILL)
============================================================
"""


def test_failure_reason_names_killed_ranks_and_the_first_error() -> None:
    reason = failure_reason(TORCHRUN_TAIL, 1)
    assert reason == ("rank 0 was killed by SIGKILL; rank 1 failed at step 3: rank 0 did not answer at step 3: "
                      "dead, or hung")  # SIGTERM is torchrun's own teardown, not a cause
    assert failure_reason("", 7) == "torchrun exited with status 7"


@pytest.mark.parametrize("spec", ["kill-rank:1", "kill-rank:a:step:3", "explode:1:step:3", "kill-rank:1:step:-1",
                                  "hang-rank:0:step:2:attempt", "kill-rank:1:stp:3"])
def test_malformed_fault_specs_are_bad_input(spec: str) -> None:
    with pytest.raises(UnsupportedPlan) as err:
        faults.parse(spec)
    assert err.value.field == faults.ENV


def test_fault_specs() -> None:
    assert faults.parse("") == []
    assert faults.parse("kill-rank:1:step:3, hang-rank:0:step:2:attempt:1") == [
        faults.Fault("kill-rank", 1, 3, 0), faults.Fault("hang-rank", 0, 2, 1)]
    faults.inject(faults.parse("kill-rank:1:step:3"), rank=0, step=3, attempt=0)  # another rank: no-op
    faults.inject(faults.parse("kill-rank:0:step:3"), rank=0, step=3, attempt=1)  # another attempt: no-op


def test_bad_fault_env_and_checkpoint_flags_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    plan = save_plan(tmp_path / "dp2.json", local_plan(SPEC, dp=2, micro_batch=1, global_batch=4))
    for fault, flags, field in (("kill-rank:x", [], faults.ENV),
                                ("", ["--checkpoint-every", "-1"], "checkpoint_every")):
        rc, err, _ = planner_run(plan, flags, fault, capsys, monkeypatch)
        assert rc == 2 and len(err.strip().splitlines()) == 1 and field in err, err
    moe = ModelSpec(name="moe", num_layers=2, hidden=32, num_heads=4, ffn_hidden=64, vocab_size=64, seq_len=16,
                    num_experts=2, top_k=1, dtype="fp32")
    plan = save_plan(tmp_path / "ep2.json", local_plan(moe, dp=2, ep=2, micro_batch=1, global_batch=4))
    rc, err, _ = planner_run(plan, ["--checkpoint-every", "2"], "", capsys, monkeypatch)
    assert rc == 2 and "checkpoint_every" in err and "expert parallelism" in err


def test_a_resumed_attempt_records_a_killed_attempt_as_failed(tmp_path: Path) -> None:
    """An attempt torchrun stopped mid-step leaves measured.json "running"; the next one says it failed."""
    from executor.ledger import Ledger

    previous = {"status": "running", "losses": [3.0, 2.9, 2.8], "step_times_s": [0.5, 0.5]}
    ledger = Ledger(tmp_path / "measured.json", {}, warmup=1, tokens_per_step=8)
    ledger.resume(previous, start_step=2, attempt=1)
    (restart,) = ledger.restarts
    assert restart["previous_status"] == "failed"
    assert "attempt 0 was stopped at step 3" in restart["previous_error"]
    assert ledger.losses == [3.0, 2.9] and [d["step"] for d in ledger.discarded] == [2]
