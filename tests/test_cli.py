"""The `planner` command line, in process: outputs, the JSON contracts, and exit status 2 with one
clear line on stderr for every kind of bad input."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from planner.cli import build_parser, main
from planner.cost import estimate
from planner.plan import Plan, PlanDocument, check_plan, load_plan, schema
from planner.specs.catalog import cluster_names, cluster_preset, model_names, model_preset

PREDICTION_KEYS = {"step_time_s", "tokens_per_s", "tflops_per_gpu", "hw_tflops_per_gpu", "mfu",
                   "memory_gib_per_gpu", "fits", "time", "memory"}
TIME_KEYS = {"compute", "tp_comm", "pp_comm", "dp_comm", "cp_comm", "ep_comm", "bubble", "exposed"}
MEMORY_KEYS = {"weights", "grads", "optimizer", "activations", "other"}
SIZE_KEYS = ("tp", "pp", "dp", "cp", "ep", "vpp", "micro_batch", "global_batch", "recompute",
             "sequence_parallel", "zero_stage")

GPT3 = ["--model", "gpt3-175b", "--cluster", "dgx-a100-80gb", "--gpus", "1024", "--global-batch", "1536"]
GPT2_8 = ["--model", "gpt2", "--cluster", "dgx-a100-80gb", "--gpus", "8", "--global-batch", "16"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """main(argv) -> (exit status, stdout, stderr); argparse errors exit through SystemExit."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def check_prediction(pred: dict[str, Any]) -> None:
    assert set(pred) >= PREDICTION_KEYS, PREDICTION_KEYS - set(pred)
    assert set(pred["time"]) >= TIME_KEYS and set(pred["memory"]) >= MEMORY_KEYS
    assert pred["step_time_s"] > 0 and isinstance(pred["fits"], bool)
    assert all(isinstance(v, float) and v >= 0 for v in (*pred["time"].values(), *pred["memory"].values()))


# ---- the GPT-3 175B plan on 1024 GPUs (searched once for the module) ------------------------------


@pytest.fixture(scope="module")
def gpt3(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("cli") / "plan.json"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["plan", *GPT3, "--out", str(path), "--json", "--top", "3"])
    return {"code": code, "path": path, "out": out.getvalue(), "err": err.getvalue()}


def test_plan_writes_a_valid_plan(gpt3: dict[str, Any]) -> None:
    assert gpt3["code"] == 0
    assert "wrote the best plan to" in gpt3["err"] and "Traceback" not in gpt3["err"]
    data = json.loads(gpt3["path"].read_text())
    jsonschema.Draft202012Validator(schema()).validate(data)  # the shipped schema accepts it
    doc = load_plan(gpt3["path"])
    assert doc.model.name == "gpt3-175b" and doc.cluster.num_gpus == 1024
    assert doc.plan.global_batch == 1536 and doc.plan.world_size == 1024
    check_plan(doc.model, doc.cluster, doc.plan)
    assert doc.prediction is not None and doc.prediction["fits"]
    assert doc.prediction == estimate(doc.model, doc.cluster, doc.plan)
    assert "simulation" in doc.extra


def test_plan_json_is_an_array_best_first(gpt3: dict[str, Any]) -> None:
    plans = json.loads(gpt3["out"])
    assert isinstance(plans, list) and len(plans) == 3
    for p in plans:
        for key in SIZE_KEYS:
            assert key in p, key
        check_prediction(p["prediction"])
        assert p["tp"] * p["pp"] * p["dp"] * p["cp"] == 1024
    # the simulation re-ranks the closed form's top plans: best first by simulated step time
    sims = [p["simulation"]["step_time_s"] for p in plans]
    assert sims == sorted(sims)
    assert plans[0] == json.loads(gpt3["path"].read_text())


def test_explain_prints_the_breakdown(gpt3: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["explain", str(gpt3["path"])], capsys)
    assert code == 0 and err == ""
    for text in ("gpt3-175b", "1024 x A100-SXM4-80GB", "step time", "compute", "exposed comm", "bubble",
                 "tp_comm", "dp_comm", "memory per GPU", "fits", "weights", "optimizer", "activations",
                 "discrete-event simulation"):
        assert text in out, text
    code, out, _ = run(["explain", str(gpt3["path"]), "--json"], capsys)
    assert code == 0 and json.loads(out) == json.loads(gpt3["path"].read_text())


def test_simulate_command(gpt3: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["simulate", str(gpt3["path"]), "--json"], capsys)
    assert code == 0
    sim = json.loads(out)
    assert sim["step_time_s"] == pytest.approx(sim["closed_form_step_time_s"], rel=0.03)
    assert len(sim["per_stage"]) == json.loads(gpt3["path"].read_text())["pp"]
    code, out, _ = run(["simulate", str(gpt3["path"])], capsys)
    assert code == 0 and "simulated step" in out and "closed form" in out


# ---- estimate ---------------------------------------------------------------------------------


def test_estimate_json_prints_the_prediction(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["estimate", *GPT3, "--tp", "8", "--pp", "16", "--micro-batch", "1",
                          "--recompute", "full", "--json"], capsys)
    assert code == 0 and err == ""
    pred = json.loads(out)
    check_prediction(pred)
    m, c = model_preset("gpt3-175b"), cluster_preset("dgx-a100-80gb").with_gpus(1024)
    assert pred == estimate(m, c, Plan(tp=8, pp=16, dp=8, micro_batch=1, global_batch=1536, recompute="full"))


def test_estimate_accepts_every_knob(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_path = tmp_path / "est.json"
    argv = ["estimate", "--model", "mixtral-8x7b", "--cluster", "dgx-a100-80gb", "--gpus", "32",
            "--global-batch", "64", "--tp", "2", "--pp", "2", "--dp", "4", "--cp", "2", "--ep", "4",
            "--vpp", "2", "--micro-batch", "1", "--recompute", "selective", "--sequence-parallel",
            "--zero", "1", "--placement", "tp,dp,cp,pp", "--no-flash-attention", "--dtype", "fp16",
            "--headroom", "0.1", "--out", str(out_path)]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    doc = load_plan(out_path)
    p = doc.plan
    assert (p.tp, p.pp, p.dp, p.cp, p.ep, p.vpp, p.micro_batch) == (2, 2, 4, 2, 4, 2, 1)
    assert p.schedule == "interleaved-1f1b" and p.recompute == "selective"
    assert p.sequence_parallel and p.zero_stage == 1
    assert (p.placement, p.flash_attention, p.dtype) == (("tp", "dp", "cp", "pp"), False, "fp16")
    assert doc.prediction["memory_limit_gib"] == pytest.approx(80 * 0.9)
    assert "ZeRO 1" in out and "placement tp > dp > cp > pp" in out


def test_estimate_out_on_one_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: on one GPU the exposed time came out as -1e-18 s and the schema refused the file."""
    path = tmp_path / "one.json"
    code, _, err = run(["estimate", "--model", "gpt2", "--cluster", "dgx-a100-80gb", "--gpus", "1",
                        "--global-batch", "1", "--out", str(path)], capsys)
    assert code == 0, err
    assert load_plan(path).prediction["time"]["exposed"] == 0.0


def test_packed_samples_reach_the_estimate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--packed-samples: the plan document's model attends within samples (its attention chunk), and the
    step is shorter than one causal 4096-token sequence per row; a sample count of 0 is refused."""
    base = ["estimate", "--model", "llama3-8b", "--cluster", "dgx-h100", "--gpus", "8", "--global-batch", "32",
            "--seq-len", "4096", "--finetune", "lora"]
    steps = []
    for extra, name in (([], "full.json"), (["--packed-samples", "256"], "packed.json")):
        code, _, err = run([*base, *extra, "--out", str(tmp_path / name)], capsys)
        assert code == 0, err
        steps.append(load_plan(tmp_path / name))
    full, packed = steps
    assert (full.model.attention_chunk, packed.model.attention_chunk) == (0, 256)
    assert packed.prediction["step_time_s"] < full.prediction["step_time_s"]
    code, _, err = run([*base, "--packed-samples", "0"], capsys)
    assert code == 2 and "--packed-samples" in err


# ---- plan on a small problem --------------------------------------------------------------------


def plan_json(capsys: pytest.CaptureFixture[str], *extra: str,
              base: list[str] = GPT2_8) -> list[dict[str, Any]]:
    code, out, err = run(["plan", *base, "--json", "--top", "5", "--simulate-top", "0", *extra], capsys)
    assert code == 0, err
    plans = json.loads(out)
    assert plans and len(plans) <= 5
    return plans


def test_plan_table_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["plan", *GPT2_8, "--top", "3", "--pareto"], capsys)
    assert code == 0
    assert "searched" in err and "fit in memory" in err
    for text in ("gpt2 on 8 x A100-SXM4-80GB", "step s", "simulated s", "MFU", "Pareto front"):
        assert text in out, text


def test_plan_json_small(capsys: pytest.CaptureFixture[str]) -> None:
    plans = plan_json(capsys)
    steps = [p["prediction"]["step_time_s"] for p in plans]
    assert steps == sorted(steps)
    m, c = model_preset("gpt2"), cluster_preset("dgx-a100-80gb").with_gpus(8)
    for p in plans:
        check_prediction(p["prediction"])
        plan = Plan.from_dict(p)
        check_plan(m, c, plan)
        assert p["prediction"] == estimate(m, c, plan)


CONSTRAINT_FLAGS = [
    (["--tp", "2"], lambda p: p["tp"] == 2),
    (["--pp", "2"], lambda p: p["pp"] == 2),
    (["--dp", "2"], lambda p: p["dp"] == 2),
    (["--cp", "2"], lambda p: p["cp"] == 2),
    (["--micro-batch", "1"], lambda p: p["micro_batch"] == 1),
    (["--vpp", "2"], lambda p: p["vpp"] == 2 and p["schedule"] == "interleaved-1f1b"),
    (["--recompute", "full"], lambda p: p["recompute"] == "full"),
    (["--recompute", "none", "selective"], lambda p: p["recompute"] in ("none", "selective")),
    (["--sequence-parallel"], lambda p: p["sequence_parallel"]),
    (["--no-sequence-parallel"], lambda p: not p["sequence_parallel"]),
    (["--zero", "3"], lambda p: p["zero_stage"] == 3),
    (["--zero", "0", "1"], lambda p: p["zero_stage"] in (0, 1)),
    (["--tp", "2", "--pp", "2", "--dp", "2", "--micro-batch", "2", "--recompute", "selective", "--zero", "1",
      "--sequence-parallel"],
     lambda p: (p["tp"], p["pp"], p["dp"], p["micro_batch"], p["recompute"], p["zero_stage"],
                p["sequence_parallel"]) == (2, 2, 2, 2, "selective", 1, True)),
    (["--max-memory-gib", "3"], lambda p: p["prediction"]["memory_gib_per_gpu"] <= 3),
    (["--no-placement-search"], lambda p: p["placement"] == ["tp", "cp", "dp", "pp"]),
]


@pytest.mark.parametrize(("flags", "holds"), CONSTRAINT_FLAGS, ids=[" ".join(f[0]) for f in CONSTRAINT_FLAGS])
def test_plan_respects_constraint_flags(capsys: pytest.CaptureFixture[str], flags: list[str],
                                        holds: Any) -> None:
    for p in plan_json(capsys, *flags):
        assert holds(p), p


def test_plan_respects_ep(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--model", "mixtral-8x7b", "--cluster", "dgx-a100-80gb", "--gpus", "16", "--global-batch", "32"]
    for p in plan_json(capsys, "--ep", "2", base=base):
        assert p["ep"] == 2


def test_plan_accepts_every_size_flag_of_estimate() -> None:
    subs = next(a for a in build_parser()._actions if a.dest == "command").choices
    plan_flags = {s for a in subs["plan"]._actions for s in a.option_strings}
    for flag in ("--tp", "--pp", "--dp", "--cp", "--ep", "--micro-batch", "--vpp", "--recompute",
                 "--sequence-parallel", "--zero"):
        assert flag in plan_flags, flag
        assert flag in {s for a in subs["estimate"]._actions for s in a.option_strings}, flag


# ---- catalogs ---------------------------------------------------------------------------------


def test_models_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["models", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == model_names()
    for r in rows:
        assert isinstance(r["name"], str) and isinstance(r["params"], int) and r["params"] > 0
    by_name = {r["name"]: r for r in rows}
    assert by_name["gpt2"]["params"] == 124_439_808
    assert abs(by_name["gpt3-175b"]["params"] - 175e9) < 0.5e9
    code, out, _ = run(["models"], capsys)
    assert code == 0 and "gpt3-175b" in out and "active" in out


def test_clusters_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["clusters", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    assert [r["name"] for r in rows] == cluster_names()
    a100 = next(r for r in rows if r["name"] == "dgx-a100-80gb")
    assert a100["gpu"] == "A100-SXM4-80GB" and a100["gpus_per_node"] == 8
    assert a100["peak_tflops"]["bf16"] == pytest.approx(312)
    # NVLink SHARP: ~275 GB/s of all-reduce buffer on 8 H100s (NVIDIA/nccl-tests#212); A100's switch has none
    h100 = next(r for r in rows if r["name"] == "dgx-h100")
    assert h100["nvls_all_reduce_gbs"] == pytest.approx(275, rel=0.01) and a100["nvls_all_reduce_gbs"] is None
    code, out, _ = run(["clusters"], capsys)
    assert code == 0 and "dgx-h100" in out and "NVLS all-reduce GB/s" in out


def test_inspect_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["inspect", "llama3-8b", "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert info["params"] == 8_030_261_248 == info["active_params"]
    assert info["num_kv_heads"] == 8 and info["layer_ops"]
    code, out, _ = run(["inspect", "mixtral-8x7b", "--json"], capsys)
    info = json.loads(out)
    assert info["active_params"] < info["params"]
    code, out, _ = run(["inspect", "gpt2", "--seq-len", "512"], capsys)
    assert code == 0 and "124,439,808 parameters" in out and "seq 512" in out


# ---- bad input: exit 2, one line on stderr, no traceback -------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    bad_json = tmp_path / "broken.json"
    bad_json.write_text('{"num_layers": 2,')
    nan_json = tmp_path / "nan.json"
    nan_json.write_text('{"name": "m", "num_layers": NaN}')
    cluster = json.loads(json.dumps(cluster_preset("dgx-a100-80gb").to_dict()))
    cluster["gpu"] = "H100-PCIe-99GB"
    bad_gpu = tmp_path / "cluster.json"
    bad_gpu.write_text(json.dumps(cluster))
    m, c = model_preset("gpt2"), cluster_preset("dgx-a100-80gb").with_gpus(8)
    doc = PlanDocument(Plan(dp=8, global_batch=8), m, c).to_json()
    doc["tp"] = "2"
    bad_schema = tmp_path / "schema.json"
    bad_schema.write_text(json.dumps(doc))
    doc["tp"], doc["dp"] = 1, 4
    bad_world = tmp_path / "world.json"
    bad_world.write_text(json.dumps(doc))
    doc["dp"], doc["schema_version"] = 8, 99
    future = tmp_path / "future.json"
    future.write_text(json.dumps(doc))
    return {"broken": str(bad_json), "nan": str(nan_json), "bad_gpu": str(bad_gpu), "schema": str(bad_schema),
            "world": str(bad_world), "future": str(future), "missing": str(tmp_path / "missing.json")}


BAD = [
    # (argv, words the one-line message must contain)
    (["estimate", *GPT3, "--tp", "5"], ["tp*pp*cp = 5", "1024"]),
    (["estimate", *GPT3[:5], "40", *GPT3[6:], "--tp", "5"], ["num_heads 96", "tp 5"]),
    (["estimate", *GPT3, "--tp", "3"], ["tp*pp*cp = 3"]),
    (["estimate", *GPT2_8, "--tp", "8", "--dp", "2"], ["world_size", "8 GPUs"]),
    (["estimate", *GPT2_8, "--micro-batch", "3"], ["global_batch", "micro_batch"]),
    (["estimate", *GPT2_8, "--pp", "8"], ["num_layers 12", "pp"]),
    (["estimate", *GPT2_8, "--sequence-parallel"], ["sequence parallelism needs tp > 1"]),
    (["estimate", *GPT2_8, "--ep", "2"], ["expert parallelism needs a mixture-of-experts"]),
    (["estimate", *GPT2_8, "--vpp", "2", "--pp", "2", "--schedule", "1f1b"], ["interleaved-1f1b"]),
    (["plan", *GPT3[:5], "40", *GPT3[6:7], "40", "--tp", "5"], ["no plan fits", "tp does not divide heads"]),
    (["plan", *GPT3[:5], "8", *GPT3[6:7], "8"], ["no plan fits gpt3-175b", "does not fit in memory"]),
    (["plan", "--model", "nosuch", *GPT2_8[2:]], ["unknown model preset 'nosuch'"]),
    (["plan", "--model", "gpt2", "--cluster", "nosuch", *GPT2_8[4:]], ["unknown cluster preset 'nosuch'"]),
    (["plan", "--model", "gpt2", "--cluster", "{bad_gpu}", *GPT2_8[4:]], ["unknown GPU 'H100-PCIe-99GB'"]),
    (["plan", "--model", "{broken}", *GPT2_8[2:]], ["broken.json", "malformed JSON"]),
    (["plan", "--model", "{nan}", *GPT2_8[2:]], ["nan.json", "NaN"]),
    (["plan", "--model", "{missing}", *GPT2_8[2:]], ["missing.json", "cannot read"]),
    (["plan", *GPT2_8[:5], "0", *GPT2_8[6:]], ["--gpus", "positive integer"]),
    (["plan", *GPT2_8[:5], str(10**30), *GPT2_8[6:]], ["--gpus", "beyond any real cluster"]),
    (["plan", *GPT2_8[:5], "eight", *GPT2_8[6:]], ["--gpus", "positive integer"]),
    (["plan", *GPT2_8[:5], "12", *GPT2_8[6:]], ["12 GPUs is not a whole number of 8-GPU nodes"]),
    (["plan", *GPT2_8[:7], "0"], ["--global-batch"]),
    (["plan", *GPT2_8[:6]], ["required", "--global-batch"]),
    (["plan", *GPT2_8, "--objective", "speed"], ["--objective"]),
    (["plan", *GPT2_8, "--zero", "4"], ["--zero"]),
    (["plan", *GPT2_8, "--headroom", "1.5"], ["--headroom"]),
    (["estimate", *GPT2_8, "--placement", "tp,dp"], ["--placement"]),
    (["explain", "{broken}"], ["broken.json", "malformed JSON"]),
    (["explain", "{missing}"], ["missing.json"]),
    (["explain", "{schema}"], ["schema.json", "does not match the plan schema at tp"]),
    (["explain", "{world}"], ["world_size", "8 GPUs"]),
    (["explain", "{future}"], ["schema_version 99 is newer"]),
    (["simulate", "{schema}"], ["does not match the plan schema at tp"]),
    (["inspect", "nosuch"], ["unknown model preset"]),
    (["frobnicate"], ["invalid choice"]),
]


@pytest.mark.parametrize(("argv", "words"), BAD, ids=[f"{a[0]}: {w[0]}" for a, w in BAD])
def test_bad_input_exits_2_with_one_line(argv: list[str], words: list[str], files: dict[str, str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(**files) if a.startswith("{") else a for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_calibrate_defaults_to_one_rank_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-GPU node with many cores calibrates one rank (one per GPU), not one per core; --device cpu
    (or no GPU) one per core."""
    import os

    import torch

    from planner.cli import _default_ranks

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert _default_ranks("auto") == 1 and _default_ranks("cuda") == 1
    assert _default_ranks("cpu") == (os.cpu_count() or 2)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _default_ranks("auto") == (os.cpu_count() or 2)


def test_every_command_prints_its_help() -> None:
    """argparse expands `%` in help texts only when it prints them: a stray one (a percentage) crashes that
    command's --help alone, so every command's and sub-command's help is formatted here."""
    import argparse

    from planner.cli import build_parser

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        parser.format_help()  # raises on a bad help string
        seen = [path]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    seen += walk(sub, f"{path} {name}")
        return seen

    commands = walk(build_parser(), "planner")
    assert "planner fit" in commands and len(commands) > 10
