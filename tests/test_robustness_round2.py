"""Issue "Robustness round 2": outputs only to regular files and never over a command's input, checked
before any work starts; predictions from what a plan file says; bounds before launch; a GPU plan run on CPU
says so. Each case here damaged a file, gave a silent wrong answer or a traceback before."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest

from planner.cli import main
from planner.io import atomic_write_text

PLAN = ["plan", "--model", "tiny", "--cluster", "localhost-cpu", "--gpus", "2", "--global-batch", "8"]


def _plan(tmp_path: Path) -> Path:
    out = tmp_path / "plan.json"
    assert main([*PLAN, "--out", str(out)]) == 0
    return out


@pytest.mark.skipif(os.geteuid() != 0 or not hasattr(os, "mknod"), reason="making a device node needs root")
def test_a_device_is_not_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """As root (containers, CI) `--out /dev/null` used to rename the temp file over the device."""
    dev = tmp_path / "null"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # the same device as /dev/null
    assert main([*PLAN, "--out", str(dev)]) == 2
    assert stat.S_ISCHR(dev.stat().st_mode)
    assert "not a regular file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a regular file"):
        atomic_write_text(dev, "x")  # the writer itself refuses too
    assert stat.S_ISCHR(dev.stat().st_mode)


@pytest.mark.parametrize("make, why", [
    (lambda p: os.mkfifo(p), "not a regular file"),
    (lambda p: p.mkdir(), "is a directory"),
])
def test_fifo_and_directory_are_refused_before_any_work(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        make, why: str) -> None:
    target = tmp_path / "out"
    make(target)
    assert main([*PLAN, "--out", str(target)]) == 2
    err = capsys.readouterr()
    assert why in err.err and "searched" not in err.err  # refused before the search ran
    assert not stat.S_ISREG(target.stat().st_mode)


def test_empty_name_and_trailing_separator_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*PLAN, "--out", ""]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main([*PLAN, "--out", str(tmp_path / "dir") + "/"]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not (tmp_path / "dir").exists()


@pytest.mark.parametrize("command", [["trace"], ["export", "--format", "megatron"]])
def test_output_over_the_input_plan_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               command: list[str]) -> None:
    plan = _plan(tmp_path)
    before = plan.read_bytes()
    capsys.readouterr()
    assert main([command[0], str(plan), *command[1:], "--out", str(plan)]) == 2
    assert "also this command's input" in capsys.readouterr().err
    assert plan.read_bytes() == before


def test_a_symbolic_link_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("{}")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert main([*PLAN, "--out", str(link)]) == 0
    assert link.is_symlink() and '"schema_version"' in real.read_text()


def test_new_files_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o600
    (tmp_path / "a.txt").chmod(0o640)  # a rewritten file keeps its mode
    atomic_write_text(tmp_path / "a.txt", "y")
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640


def test_a_hand_edited_plan_is_explained_from_its_contents(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """`tp1 dp2` edited to `tp2 dp1` kept its stored 2-way data-parallel prediction; explain now prices
    what the file says (the same as `planner estimate` of tp2) and says the stored one was stale."""
    plan = _plan(tmp_path)
    doc = json.loads(plan.read_text())
    assert (doc["tp"], doc["dp"]) == (1, 2)
    stored = doc["prediction"]["step_time_s"]
    doc.update(tp=2, dp=1, grad_accum=doc["global_batch"] // doc["micro_batch"])
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    reference = tmp_path / "tp2.json"
    assert main(["estimate", "--model", "tiny", "--cluster", "localhost-cpu", "--gpus", "2", "--global-batch", "8",
                 "--tp", "2", "--dp", "1", "--micro-batch", str(doc["micro_batch"]), "--zero", str(doc["zero_stage"]),
                 "--out", str(reference)]) == 0
    capsys.readouterr()
    assert main(["explain", str(edited), "--json"]) == 0
    out = capsys.readouterr()
    shown = json.loads(out.out)["prediction"]["step_time_s"]
    assert shown == pytest.approx(json.loads(reference.read_text())["prediction"]["step_time_s"], rel=1e-9)
    assert shown != pytest.approx(stored, rel=1e-3)
    assert "stale" in out.err
    assert main(["explain", str(plan)]) == 0
    assert "stale" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, field", [
    (["plan", "--model", "tiny", "--cluster", "localhost-cpu", "--gpus", "2", "--global-batch", str(1 << 40)],
     "--global-batch"),
    (["run", "{plan}", "--timeout", "inf"], "timeout"),
    (["run", "{plan}", "--lr", "inf"], "lr"),
    (["run", "{plan}", "--steps", "1000000000"], "steps"),
    (["run", "{plan}", "--steps", "10", "--warmup", "99999"], "warmup"),
    (["run", "{plan}", "--threads", "100000"], "threads"),
    (["run", "{plan}", "--timeout", "1e300"], "timeout"),
    (["run", "{plan}", "--nnodes", "2", "--rdzv-endpoint", "::bad::"], "rdzv_endpoint"),
    (["run", "{plan}", "--nnodes", "2", "--rdzv-endpoint", "host:99999"], "rdzv_endpoint"),
])
def test_unbounded_or_malformed_sizes_are_refused_before_launch(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                argv: list[str], field: str) -> None:
    """A 2^40 global batch ran the simulator out of memory; an infinite timeout overflowed on every rank;
    a malformed rendezvous endpoint was a torchrun traceback. Each is now one line, exit 2, nothing run."""
    plan = _plan(tmp_path)
    capsys.readouterr()
    try:
        rc = main([str(plan) if a == "{plan}" else a for a in argv])
    except SystemExit as exc:  # argparse's own refusal
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{field}:" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*measured*"))




@pytest.mark.parametrize("where", ["a-file", "a-file/sub"])
def test_a_checkpoint_folder_that_cannot_be_one_is_refused_before_launch(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str) -> None:
    """A regular file as --checkpoint-dir (or above it) was a distributed-checkpoint traceback on every
    rank after the first step; now one line, exit 2, nothing launched."""
    plan = _plan(tmp_path)
    (tmp_path / "a-file").write_text("not a folder")
    capsys.readouterr()
    rc = main(["run", str(plan), "--steps", "1", "--checkpoint-every", "1", "--checkpoint-dir",
               str(tmp_path / where)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "checkpoint_dir" in err and "not a folder" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*measured*"))


def test_a_second_run_to_the_same_result_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two concurrent runs to one --out both exited 0 and one result was lost: while a run holds the
    result, another is refused (one line, exit 2) and launches nothing; once it ends the lock is free."""
    from executor.launch import output_lock

    plan = _plan(tmp_path)
    out = tmp_path / "measured.json"
    capsys.readouterr()
    with output_lock(out):
        rc = main(["run", str(plan), "--steps", "1", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "another planner run is writing" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    with output_lock(out):  # released: taken again at once
        pass


def test_a_node_that_never_joins_ends_the_run_after_the_timeout(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`--nnodes 2` with the second node never started waited on the rendezvous past --timeout (torchrun's
    own join timeout is 600 s and it keeps retrying); the run now fails after --timeout and says why."""
    import socket
    import time

    plan = _plan(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    capsys.readouterr()
    start = time.monotonic()
    rc = main(["run", str(plan), "--nnodes", "2", "--node-rank", "0", "--nproc-per-node", "1",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--timeout", "5", "--steps", "1"])
    assert rc == 1
    assert time.monotonic() - start < 120
    assert "not every node joined within --timeout" in capsys.readouterr().err


def test_late_errors_come_first(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`validate --model typo` calibrated this machine for ~26 s before naming the model; an empty
    `--data` file was "internal error: ValueError: both buffer length (0) ...". Both are now one line,
    exit 2, before any work."""
    import planner.calibrate

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("calibrated before checking --model")

    monkeypatch.setattr(planner.calibrate, "run_calibration", never)
    rc = main(["validate", "--model", "typo", "--nproc-per-node", "2", "--out-dir", str(tmp_path / "v")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "typo" in err and len(err.strip().splitlines()) == 1
    plan = _plan(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    capsys.readouterr()
    assert main(["run", str(plan), "--steps", "1", "--data", str(tmp_path / "empty.txt")]) == 2
    err = capsys.readouterr().err
    assert "empty" in err and "internal error" not in err and len(err.strip().splitlines()) == 1


def test_a_binary_data_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A binary `--data` file was decoded with replacement characters and trained on silently."""
    plan = _plan(tmp_path)
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 64)
    (tmp_path / "nul.txt").write_bytes(b"some text\0with a NUL byte " * 100)
    for name, what in (("blob.bin", "not UTF-8 text (byte 128 is 0x80)"), ("nul.txt", "NUL byte at offset 9")):
        capsys.readouterr()
        assert main(["run", str(plan), "--steps", "1", "--data", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert what in err and name in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.glob("*measured*"))


@pytest.mark.slow
def test_a_diverged_run_says_so_and_keeps_its_steps_in_a_file_named_after_the_plan(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A NaN loss was "ValueError: Out of range float values are not JSON compliant: nan"; and every plan
    in a folder wrote the same default measured.json, so a run of one plan replaced another's result."""
    plan = _plan(tmp_path)
    other = tmp_path / "other.measured.json"
    other.write_text('{"status": "ok", "run_id": "another plan"}\n')
    capsys.readouterr()
    assert main(["run", str(plan), "--steps", "3", "--warmup", "1", "--lr", "1e30"]) == 1
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "the loss is nan: training diverged (a smaller --lr than 1e+30 may help)" in last, err[-2000:]
    assert "ValueError" not in err and "Traceback" not in err
    m = json.loads((tmp_path / "plan.measured.json").read_text())
    assert m["status"] == "failed" and "diverged" in m["error"]
    assert m["steps_completed"] >= 1 and all(x == x for x in m["losses"])  # the finite steps before it
    assert other.read_text() == '{"status": "ok", "run_id": "another plan"}\n'


def test_an_endless_input_is_cut_at_the_cap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """/dev/zero reports size 0 and never ends: `--model /dev/zero` read forever; now the reader stops
    after the 16 MiB cap and names the file."""
    rc = main(["estimate", "--model", "/dev/zero", "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "8"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "/dev/zero" in err and "16 MiB" in err and len(err.strip().splitlines()) == 1

@pytest.mark.slow
def test_a_gpu_plan_run_on_cpu_ranks_says_the_comparison_is_across_devices(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A dgx-h100 plan ran on CPU and was compared (-94%) with no word that the devices differ."""
    plan = tmp_path / "h100.json"
    assert main(["plan", "--model", "tiny", "--cluster", "dgx-h100", "--gpus", "2", "--global-batch", "4",
                 "--tp", "1", "--out", str(plan)]) == 0
    capsys.readouterr()
    assert main(["run", str(plan), "--device", "cpu", "--steps", "2", "--warmup", "1"]) == 0
    err = capsys.readouterr().err
    assert "comparison below is across devices" in err and "H100" in err


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and int(d.name) != os.getpid():
            try:
                cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(d.name))
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_to_the_launcher_stops_torchrun_and_every_rank(tmp_path: Path, sig: int, code: int) -> None:
    """SIGTERM to `planner run` used to leave torchrun and the ranks training; SIGINT let the run finish."""
    import subprocess
    import sys
    import time

    plan = _plan(tmp_path)
    out = tmp_path / "measured.json"
    proc = subprocess.Popen([sys.executable, "-m", "planner.cli", "run", str(plan), "--steps", "90000",
                             "--warmup", "1", "--out", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (out.is_file() and '"losses": [' in out.read_text()):
        time.sleep(0.5)  # until a step has completed: the ranks are training
    assert _processes_mentioning(str(out)), "the ranks never started"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == code, err[-2000:]
    assert "torchrun and its ranks were stopped" in err
    time.sleep(1)
    assert _processes_mentioning(str(out)) == []  # torchrun and the ranks name the output file
    assert json.loads(out.read_text())["status"] == "failed"


def test_a_local_folder_named_like_a_preset_is_ambiguous(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A `./tiny/` model folder silently replaced the `tiny` preset for `--model tiny`."""
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 64}))
    monkeypatch.chdir(tmp_path)
    assert main(["inspect", "tiny"]) == 2
    err = capsys.readouterr().err
    assert "'tiny' is both a model preset and a model folder" in err and len(err.strip().splitlines()) == 1
    assert main(["inspect", "./tiny", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_layers"] == 2  # the folder, not the 4-layer preset
