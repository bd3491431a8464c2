"""Issue "Robustness round 2", done-when: one table of hand-written hostile cases over every command.

Each case runs the real CLI in process against one shared folder of good and bad files (plans, a
serving plan, a measured result, model and cluster files, binary / empty / deep / duplicate-key /
NaN JSON, a folder, a FIFO, and `/dev/null` when run as root) and checks what a user would check:

- the exit status is 2 and stderr is exactly one line, `planner...: error: ...`, naming the field or
  file at fault, with no traceback;
- nothing in the folder changed: every file keeps its bytes and mode, none appears or disappears,
  the FIFO is still a FIFO and `/dev/null` still a character device.

With the generated cases of tests/test_robustness_inputs.py (1,300), the invariants, the fault runs
and tests/test_robustness_round2.py (signals, concurrent runs, devices), docs/robustness.md counts
the whole suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from planner.cli import main
from planner.plan import plan_hash

TINY = ["--model", "tiny", "--cluster", "localhost-cpu"]
PLAN = ["plan", *TINY, "--gpus", "2", "--global-batch", "8"]
EST = ["estimate", *TINY, "--gpus", "2", "--global-batch", "8"]
SERVE = ["serve", *TINY, "--gpus", "2", "--isl", "64", "--osl", "16", "--concurrency", "2"]
H100 = ["--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "8"]


def _snapshot(folder: Path) -> dict[str, Any]:
    """Every entry under `folder`: its kind, mode and (for regular files) a hash of its bytes."""
    snap: dict[str, Any] = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None
        snap[str(p.relative_to(folder))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), digest)
    return snap


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared folder every case runs against (built once; each case must leave it unchanged)."""
    d = tmp_path_factory.mktemp("hostile")
    assert main([*PLAN, "--out", str(d / "plan.json")]) == 0
    assert main([*SERVE, "--out", str(d / "serve.json")]) == 0
    plan = json.loads((d / "plan.json").read_text())
    (d / "model.json").write_text(json.dumps({"name": "m", "num_layers": 2, "hidden": 64, "num_heads": 4,
                                              "ffn_hidden": 256, "vocab_size": 256, "seq_len": 32}))
    (d / "hf").mkdir()
    (d / "hf" / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256, "max_position_embeddings": 64}))
    (d / "cluster.json").write_text(json.dumps(plan["cluster"]))
    (d / "measured.json").write_text(json.dumps({
        "schema_version": 1, "kind": "measured", "status": "ok", "plan_hash": plan_hash(plan),
        "step_times_s": [0.5, 0.52], "losses": [4.0, 3.9],
        "step_time_s": {"median": 0.51, "p10": 0.5, "p90": 0.52, "mean": 0.51}, "tokens_per_s": 1000.0,
        "memory": {"peak_bytes": 2**30, "weights_bytes": 2**20, "grads_bytes": 2**20, "optimizer_bytes": 2**21,
                   "activations_peak_bytes": 2**22}}))
    edits = {
        "p_world.json": {"tp": 2},  # tp*cp*dp*pp no longer the world size
        "p_unknown.json": {"zero": 3},
        "p_mb.json": {"micro_batch": 0},
        "p_dtype.json": {"dtype": "fp7"},
        "p_sched.json": {"schedule": "zigzag"},
        "p_recompute.json": {"recompute": "sometimes"},
        "p_vpp.json": {"vpp": 3},
        "p_neg.json": {"dp": -2},
        "p_float.json": {"dp": 2.5},
        "p_str.json": {"dp": "2"},
        "p_bool.json": {"dp": True},
    }
    for name, change in edits.items():
        (d / name).write_text(json.dumps({**plan, **change}))
    (d / "p_version.json").write_text(json.dumps({**plan, "schema_version": 99}))
    (d / "p_kind.json").write_text(json.dumps({**plan, "kind": "cluster"}))
    (d / "p_nomodel.json").write_text(json.dumps({k: v for k, v in plan.items() if k != "model"}))
    (d / "p_noplan.json").write_text(json.dumps({k: v for k, v in plan.items() if k != "tp"}))
    (d / "p_badmodel.json").write_text(json.dumps({**plan, "model": {**plan["model"], "num_heads": 5}}))
    (d / "m_other.json").write_text(json.dumps({**json.loads((d / "measured.json").read_text()),
                                                "plan_hash": "0123456789abcdef"}))
    (d / "m_running.json").write_text(json.dumps({**json.loads((d / "measured.json").read_text()),
                                                  "status": "sideways"}))
    (d / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (d / "empty.json").write_bytes(b"")
    (d / "array.json").write_text("[1, 2, 3]")
    (d / "string.json").write_text('"tiny"')
    (d / "trunc.json").write_text('{"name": "m", "num_layers": 2,')
    (d / "dup.json").write_text('{"name": "a", "name": "b"}')
    (d / "nan.json").write_text('{"name": "m", "num_layers": NaN}')
    (d / "huge_num.json").write_text('{"name": "m", "num_layers": 1e400}')
    (d / "deep.json").write_text("[" * 100 + "]" * 100)
    (d / "bom.json").write_bytes(b"\xef\xbb\xbf{}")
    (d / "latin1.json").write_bytes(b'{"name": "caf\xe9"}')
    (d / "text.txt").write_text("some training text " * 50)
    (d / "nul.txt").write_bytes(b"text\0text " * 50)
    (d / "folder").mkdir()
    os.mkfifo(d / "fifo")
    return d


def _fill(argv: list[str], d: Path) -> list[str]:
    return [a.replace("{d}", str(d)) for a in argv]


# (argv with {d} for the shared folder, text the single error line must contain)
CASES: list[tuple[list[str], str]] = [
    # ---- plan / estimate flags -------------------------------------------------------------------------
    *[([*PLAN, flag, value], flag) for flag in ("--tp", "--pp", "--dp", "--cp", "--ep", "--vpp", "--micro-batch")
      for value in ("0", "-1", "1.5", "x", "1e9")],
    ([*PLAN, "--seq-len", "0"], "--seq-len"),
    ([*PLAN, "--seq-len", "10000000000"], "seq"),
    ([*PLAN, "--headroom", "-0.5"], "--headroom"),
    ([*PLAN, "--headroom", "nan"], "--headroom"),
    ([*PLAN, "--max-memory-gib", "0"], "--max-memory-gib"),
    ([*PLAN, "--max-memory-gib", "inf"], "--max-memory-gib"),
    ([*PLAN, "--top", "0"], "--top"),
    ([*PLAN, "--top", "-3"], "--top"),
    ([*PLAN, "--simulate-top", "-5"], "--simulate-top"),
    ([*PLAN, "--objective", "cheapest"], "--objective"),
    ([*PLAN, "--zero", "4"], "--zero"),
    ([*PLAN, "--recompute", "sometimes"], "--recompute"),
    ([*PLAN, "--dtype", "fp7"], "--dtype"),
    ([*PLAN, "--framework", "jax9"], "--framework"),
    ([*PLAN, "--shard-group", "0"], "shard"),
    ([*PLAN, "--lora-rank", "-4"], "lora"),
    ([*PLAN, "--recompute-every", "0"], "recompute"),
    ([*PLAN, "--first-stage-layers", "-1"], "first"),
    (["plan", "--model", "tiny", "--cluster", "localhost-cpu", "--gpus", "0", "--global-batch", "8"], "--gpus"),
    (["plan", "--model", "tiny", "--cluster", "localhost-cpu", "--gpus", "2", "--global-batch", "0"],
     "--global-batch"),
    (["plan", "--model", "tiny", "--cluster", "localhost-cpu", "--gpus", "2", "--global-batch", "1099511627776"],
     "global"),
    (["plan", "--model", "tiny", "--cluster", "localhost-cpu", "--gpus", "1e30", "--global-batch", "8"], "--gpus"),
    (["plan", "--model", "nope", "--cluster", "localhost-cpu", "--gpus", "2", "--global-batch", "8"], "nope"),
    (["plan", "--model", "tiny", "--cluster", "nope", "--gpus", "2", "--global-batch", "8"], "nope"),
    (["plan", "--model", "", "--cluster", "localhost-cpu", "--gpus", "2", "--global-batch", "8"], "model"),
    (["plan", "--model", "llama3-8b", "--cluster", "dgx-a100-80gb", "--gpus", "8", "--global-batch", "8",
      "--dtype", "fp8"], "fp8"),
    (["plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "8",
      "--dtype", "nvfp4"], "nvfp4"),
    (["plan", "--model", "tiny", *H100, "--tp", "3"], "tp 3 does not divide the 8 GPUs"),
    (["plan", "--model", "tiny", *H100, "--pp", "16"], "pp 16 does not divide the 8 GPUs"),
    (["plan", "--model", "tiny", *H100, "--ep", "2"], "ep"),
    (["plan", "--model", "tiny", *H100, "--cp", "3", "--tp", "2"], "tp 2 x cp 3 = 6 do not divide the 8 GPUs"),
    ([*EST, "--tp", "3"], "tp"),
    ([*EST, "--dp", "4"], "world"),
    ([*EST, "--schedule", "zigzag"], "--schedule"),
    ([*EST, "--placement", "tp>xx"], "placement"),
    ([*EST, "--placement", ""], "placement"),
    ([*EST, "--micro-batch", "3"], "micro"),
    # ---- model and cluster files ---------------------------------------------------------------------
    *[(["plan", "--model", f"{{d}}/{name}", "--cluster", "localhost-cpu", "--gpus", "2", "--global-batch", "8"],
       name) for name in ("binary.bin", "empty.json", "array.json", "string.json", "trunc.json", "dup.json",
                          "nan.json", "huge_num.json", "deep.json", "latin1.json", "missing.json", "plan.json",
                          "cluster.json", "measured.json", "serve.json")],
    (["plan", "--model", "{d}/hf", "--cluster", "{d}/hf/config.json", "--gpus", "2", "--global-batch", "8"],
     "config.json is a model description"),
    (["plan", "--model", "{d}/cluster.json", "--cluster", "localhost-cpu", "--gpus", "2", "--global-batch", "8"],
     "cluster.json is a cluster description"),
    (["plan", "--model", "{d}/folder", "--cluster", "localhost-cpu", "--gpus", "2", "--global-batch", "8"],
     "folder"),
    *[(["plan", "--model", "tiny", "--cluster", f"{{d}}/{name}", "--gpus", "2", "--global-batch", "8"], name)
      for name in ("binary.bin", "empty.json", "array.json", "trunc.json", "dup.json", "nan.json", "deep.json",
                   "missing.json", "model.json", "measured.json")],
    (["inspect", "{d}/binary.bin"], "binary.bin"),
    (["inspect", "{d}/missing.json"], "missing.json"),
    (["inspect", "nope"], "nope"),
    (["inspect", "tiny", "--seq-len", "-1"], "seq"),
    # ---- plan files given to explain / simulate / trace / export / compare / run -----------------------
    *[([cmd, f"{{d}}/{name}"], field) for cmd in ("explain", "simulate")
      for name, field in (("p_world.json", "world_size"), ("p_unknown.json", "zero"), ("p_mb.json", "micro_batch"),
                          ("p_dtype.json", "fp7"), ("p_sched.json", "schedule"), ("p_recompute.json", "recompute"),
                          ("p_vpp.json", "vpp"), ("p_neg.json", "dp"), ("p_float.json", "dp"), ("p_str.json", "dp"),
                          ("p_bool.json", "dp"), ("p_version.json", "schema_version"), ("p_kind.json", "kind"),
                          ("p_nomodel.json", "model"), ("p_noplan.json", "tp"), ("p_badmodel.json", "num_heads"),
                          ("binary.bin", "binary.bin"), ("empty.json", "empty.json"), ("missing.json", "missing"),
                          ("model.json", "model.json"), ("measured.json", "measured.json"), ("folder", "folder"))],
    (["trace", "{d}/p_world.json", "--out", "{d}/t.json"], "world_size"),
    (["trace", "{d}/plan.json", "--out", "{d}/plan.json"], "out"),
    (["trace", "{d}/plan.json", "--out", "{d}/folder"], "folder"),
    (["trace", "{d}/plan.json", "--out", "{d}/fifo"], "fifo"),
    (["trace", "{d}/plan.json", "--out", ""], "out"),
    (["trace", "{d}/plan.json", "--out", "{d}/nothere/"], "out"),
    (["trace", "{d}/plan.json", "--out", "{d}/measured.json/x.json"], "measured.json"),
    (["export", "{d}/p_unknown.json", "--format", "torchtitan", "--out", "{d}/e"], "zero"),
    (["export", "{d}/plan.json", "--format", "jax", "--out", "{d}/e"], "--format"),
    (["export", "{d}/plan.json", "--format", "megatron", "--out", "{d}/plan.json"], "out"),
    (["trace", "{d}/plan.json", "--out", "{d}/measured.json"], "holds a 'measured' document"),
    (["trace", "{d}/p_world.json", "--out", "{d}/plan.json"], "holds a 'plan' document"),
    (["export", "{d}/serve.json", "--format", "megatron", "--out", "{d}/e"], "serve"),
    (["compare", "{d}/plan.json", "{d}/m_other.json"], "plan_hash"),
    (["compare", "{d}/plan.json", "{d}/m_running.json"], "status"),
    (["compare", "{d}/plan.json", "{d}/plan.json"], "plan.json"),
    (["compare", "{d}/plan.json", "{d}/binary.bin"], "binary.bin"),
    (["compare", "{d}/measured.json", "{d}/measured.json"], "measured.json"),
    (["compare", "{d}/p_world.json", "{d}/measured.json"], "world_size"),
    (["compare", "{d}/plan.json", "{d}/missing.json"], "missing.json"),
    # ---- run: refused before anything is launched --------------------------------------------------------
    (["run", "{d}/p_world.json"], "world_size"),
    (["run", "{d}/p_unknown.json"], "zero"),
    (["run", "{d}/binary.bin"], "binary.bin"),
    (["run", "{d}/missing.json"], "missing.json"),
    (["run", "{d}/plan.json", "--nproc-per-node", "3"], "world_size"),
    (["run", "{d}/plan.json", "--nproc-per-node", "0"], "nproc"),
    (["run", "{d}/plan.json", "--nnodes", "0"], "nnodes"),
    (["run", "{d}/plan.json", "--nnodes", "2"], "rdzv_endpoint"),
    (["run", "{d}/plan.json", "--node-rank", "5"], "node_rank"),
    (["run", "{d}/plan.json", "--max-restarts", "-1"], "max_restarts"),
    (["run", "{d}/plan.json", "--steps", "0"], "steps"),
    (["run", "{d}/plan.json", "--steps", "1000000000"], "steps"),
    (["run", "{d}/plan.json", "--warmup", "-1"], "warmup"),
    (["run", "{d}/plan.json", "--threads", "0"], "threads"),
    (["run", "{d}/plan.json", "--threads", "999999"], "threads"),
    (["run", "{d}/plan.json", "--lr", "0"], "lr"),
    (["run", "{d}/plan.json", "--lr", "nan"], "lr"),
    (["run", "{d}/plan.json", "--lr", "inf"], "lr"),
    (["run", "{d}/plan.json", "--lr", "-1"], "lr"),
    (["run", "{d}/plan.json", "--timeout", "0"], "timeout"),
    (["run", "{d}/plan.json", "--timeout", "nan"], "timeout"),
    (["run", "{d}/plan.json", "--timeout", "inf"], "timeout"),
    (["run", "{d}/plan.json", "--optimizer", "lion"], "--optimizer"),
    (["run", "{d}/plan.json", "--device", "tpu"], "--device"),
    (["run", "{d}/plan.json", "--tokenizer", "bpe"], "--tokenizer"),
    (["run", "{d}/plan.json", "--checkpoint-every", "-2"], "checkpoint_every"),
    (["run", "{d}/plan.json", "--checkpoint-every", "1", "--checkpoint-dir", "{d}/measured.json"], "checkpoint_dir"),
    (["run", "{d}/plan.json", "--rdzv-endpoint", "host:0"], "rdzv_endpoint"),
    (["run", "{d}/plan.json", "--rdzv-endpoint", ":80"], "rdzv_endpoint"),
    (["run", "{d}/plan.json", "--data", "{d}/missing.txt"], "missing.txt"),
    (["run", "{d}/plan.json", "--data", "{d}/binary.bin"], "binary.bin"),
    (["run", "{d}/plan.json", "--data", "{d}/nul.txt"], "nul.txt"),
    (["run", "{d}/plan.json", "--data", "{d}/empty.json"], "empty"),
    (["run", "{d}/plan.json", "--data", "{d}/folder"], "folder"),
    (["run", "{d}/plan.json", "--out", "{d}/plan.json"], "out"),
    (["run", "{d}/plan.json", "--out", "{d}/folder"], "folder"),
    (["run", "{d}/plan.json", "--out", "{d}/fifo"], "fifo"),
    (["run", "{d}/plan.json", "--out", ""], "out"),
    # ---- serve ------------------------------------------------------------------------------------------
    *[([*SERVE, flag, value], flag) for flag in ("--isl", "--osl", "--concurrency", "--max-batch", "--tp",
                                                 "--replicas", "--block-size", "--num-requests")
      for value in ("0", "-1", "x")],
    ([*SERVE, "--ttft-ms", "-5"], "--ttft-ms"),
    ([*SERVE, "--tpot-ms", "nan"], "--tpot-ms"),
    ([*SERVE, "--request-rate", "-1"], "--request-rate"),
    ([*SERVE, "--memory-utilization", "1.5"], "--memory-utilization"),
    ([*SERVE, "--kv-dtype", "fp3"], "--kv-dtype"),
    ([*SERVE, "--dtype", "fp7"], "--dtype"),
    ([*SERVE, "--slo-percentile", "p42"], "--slo-percentile"),
    ([*SERVE, "--arrivals", "sometimes"], "--arrivals"),
    ([*SERVE, "--out", "{d}/plan.json"], "holds a 'plan' document"),
    ([*PLAN, "--out", "{d}/serve.json"], "holds a 'serve' document"),
    ([*EST, "--out", "{d}/measured.json"], "holds a 'measured' document"),
    (["run", "{d}/plan.json", "--out", "{d}/serve.json"], "holds a 'serve' document"),
    (["run", "{d}/serve.json", "--steps", "5"], "--steps applies to training plans"),
    (["run", "{d}/serve.json", "--data", "{d}/text.txt"], "--data applies to training plans"),
    (["run", "{d}/serve.json", "--dry-run"], "--dry-run applies to training plans"),
    (["run", "{d}/serve.json", "--nnodes", "2"], "--nnodes applies to training plans"),
    ([*SERVE, "--out", "{d}/folder"], "folder"),
    (["serve", "--model", "{d}/binary.bin", "--cluster", "localhost-cpu", "--gpus", "2", "--isl", "64",
      "--osl", "16"], "binary.bin"),
    # ---- outputs of plan / estimate ---------------------------------------------------------------------
    ([*PLAN, "--out", "{d}/plan.json/x"], "plan.json"),
    ([*PLAN, "--out", "{d}/folder"], "folder"),
    ([*PLAN, "--out", "{d}/fifo"], "fifo"),
    ([*PLAN, "--out", ""], "out"),
    ([*PLAN, "--out", "{d}/newdir/"], "out"),
    ([*PLAN, "--tp", "3", "--out", "{d}/plan.json"], "tp"),  # a failed search leaves the old plan alone
    ([*EST, "--dp", "4", "--out", "{d}/plan.json"], "world"),
    # ---- fit / validate / calibrate ---------------------------------------------------------------------
    (["fit", "{d}/binary.bin"], "binary.bin"),
    (["fit", "{d}/missing.csv"], "missing.csv"),
    (["fit", "--gpu", "nope"], "nope"),
    (["fit", "--cv", "sideways"], "cross-validation group"),
    (["fit", "--cluster", "nope", "--profile-out", "{d}/prof.json"], "nope"),
    (["fit", "--out", "{d}/plan.json"], "holds a 'plan' document"),
    (["fit", "--cluster", "dgx-h100"], "--profile-out go together"),
    (["validate", "--model", "nope", "--nproc-per-node", "2", "--out-dir", "{d}/v"], "nope"),
    (["validate", "--nproc-per-node", "0", "--out-dir", "{d}/v"], "nproc"),
    (["validate", "--out-dir", "{d}/plan.json"], "exists and is not a folder"),
    (["validate", "--model", "tiny", "--out-dir", "{d}/plan.json/v"], "not a writable folder"),
    (["calibrate", "--out", "{d}/folder"], "folder"),
    (["calibrate", "--out", "{d}/plan.json/x"], "plan.json"),
]


def _ids() -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for argv, _ in CASES:
        key = " ".join(a.replace("{d}/", "") for a in argv[:1] + argv[-2:])[:60]
        seen[key] = seen.get(key, 0) + 1
        out.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return out


def test_the_suite_is_large_enough() -> None:
    assert len(CASES) >= 250  # with the generated and the round-2 cases, well over the 300


@pytest.mark.parametrize("argv, names", CASES, ids=_ids())
def test_hostile_case_is_one_line_exit_2_and_changes_nothing(world: Path, capsys: pytest.CaptureFixture[str],
                                                             argv: list[str], names: str) -> None:
    before = _snapshot(world)
    capsys.readouterr()
    try:
        rc = main(_fill(argv, world))
    except SystemExit as exc:  # argparse's own refusal (also exit 2, one usage line + the error)
        rc = exc.code
    out, err = capsys.readouterr()
    assert rc == 2, (rc, err[-2000:], out[-500:])
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("usage:") and not ln.startswith("  ")]
    assert len(lines) == 1 and "error" in lines[0], err[-2000:]
    assert "Traceback" not in err + out
    assert names.replace("{d}/", "").lower() in lines[0].lower(), lines[0]
    assert _snapshot(world) == before, "a refused command changed the folder"
    assert stat.S_ISFIFO((world / "fifo").lstat().st_mode)
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)
