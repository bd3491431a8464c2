"""The dry run (executor/dry_run.py, planner/dry_run_report.py): full-size jobs built rank by rank in
one process on a fake process group and meta tensors, and compared with the cost model.

1. The bridges are faithful: on the 2-rank plans of tests/test_crosscheck.py the dry run counts
   exactly the collectives (ops, phases, calls, bytes) that real gloo runs issue, and on 4-rank plans
   exactly the weights, gradients and optimizer state real runs report in measured.json.
2. At hundreds of ranks, for every parallel dimension the executor supports (tp, sp, pp with 1F1B,
   interleaved, GPipe and uneven splits, dp with ZeRO 0-3, cp, ep, ep x tp; LoRA, per-op recompute), every built
   rank agrees with the cost model: its
   model state with `model_state_bytes` within 0.5% and, on first-stage ranks, its communication with
   traffic.py within 5%, once the executor's named departures are applied.
3. The comparison can fail: a 1% error in the executor's bytes or in the model's parameters, or a
   report compared with another plan's sharding, is a disagreement.
4. The command: bad input is exit status 2 and one line.
Nothing here depends on wall-clock time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "executor_workers"))

from crosscheck import MODELS as CROSSCHECK_MODELS
from crosscheck import PLANS as CROSSCHECK_PLANS
from crosscheck import plan_fields

from executor.dry_run import TRAFFIC_KIND, RankReport, default_ranks, dry_run
from executor.errors import UnsupportedPlan
from executor.parallel_dims import ParallelDims
from executor.plans import local_plan
from planner import dry_run_report
from planner.cli import main
from planner.cost.model_state import model_state_bytes
from planner.dry_run_report import compare
from planner.plan import Plan, PlanDocument, save_plan
from planner.specs.catalog import load_cluster
from planner.specs.model import ModelSpec

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
JOBS = 2

GPT = ModelSpec(name="gpt", num_layers=8, hidden=64, num_heads=4, ffn_hidden=256, vocab_size=512, seq_len=32,
                dtype="bf16")  # learned positions, GELU, LayerNorm, biases, tied embeddings
LLAMA = dataclasses.replace(GPT, name="llama", norm="rmsnorm", position="rope", activation="swiglu", bias=False,
                            qkv_bias=False, num_kv_heads=2, tied_embeddings=False)
MOE = dataclasses.replace(LLAMA, name="moe", num_layers=4, num_kv_heads=4, num_experts=8, top_k=2,
                          capacity_factor=1.0)
SPECS = {"gpt": GPT, "llama": LLAMA, "moe": MOE}

# name -> (model, plan fields, departures that must be among the named ones). 128-256 ranks each.
SCALE: dict[str, tuple[str, dict[str, Any], tuple[str, ...]]] = {
    "tp2-sp-replicate": ("llama", {"tp": 2, "dp": 128, "sequence_parallel": True},
                         ("no backward re-gather", "fp32 parameters")),
    "tp2-zero1-fsdp": ("gpt", {"tp": 2, "dp": 128, "zero_stage": 1},
                       ("ZeRO-1 runs as FSDP2", "position / token-type tables", "separate column-parallel")),
    "dp256-zero1-ddp": ("gpt", {"dp": 256, "zero_stage": 1}, ("ZeroRedundancyOptimizer",)),
    "dp256-zero2": ("llama", {"dp": 256, "zero_stage": 2}, ("re-gathers the weights every micro-batch",)),
    "tp2-pp2-v2-zero3": ("gpt", {"tp": 2, "pp": 2, "vpp": 2, "dp": 64, "zero_stage": 3,
                                 "schedule": "interleaved-1f1b"},
                         ("defers FSDP2's reduce-scatter", "schedule's order", "tied pair")),
    "pp4-gpipe": ("llama", {"pp": 4, "dp": 64, "schedule": "gpipe"}, ()),
    "tp2-pp4-full-recompute": ("gpt", {"tp": 2, "pp": 4, "dp": 32, "recompute": "full"},
                               ("recompute stops", "whole activation")),
    "ep4-zero1-ddp": ("moe", {"dp": 256, "ep": 4, "zero_stage": 1},
                      ("expert weights outside ZeRO", "token counts")),
    "pp2-ep8-zero3": ("moe", {"pp": 2, "dp": 128, "ep": 8, "zero_stage": 3},
                      ("expert weights outside ZeRO", "never gathered")),
    "pp4-uneven-lora-zero2": ("llama", {"pp": 4, "dp": 64, "first_stage_layers": 1, "last_stage_layers": 1,
                                        "finetune": "lora", "zero_stage": 2}, ("frozen base weights",)),
    "tp2-pp2-op-selective": ("gpt", {"tp": 2, "pp": 2, "dp": 64, "recompute": "op-selective"},
                             ("per-op selective recompute re-runs",)),
    "tp2-save-attn-proj": ("llama", {"tp": 2, "dp": 128, "recompute": "save-attn-proj"},
                           ("per-op selective recompute re-runs",)),
    "dp256-hsdp8-zero3": ("llama", {"dp": 256, "zero_stage": 3, "shard_group": 8}, ()),
    "dp256-hsdp16-zero1": ("gpt", {"dp": 256, "zero_stage": 1, "shard_group": 16}, ("ZeRO-1 runs as FSDP2",)),
    "cp2-tp2-zero3": ("llama", {"cp": 2, "tp": 2, "dp": 32, "zero_stage": 3}, ("ring attention",)),
    "cp4-pp2-replicate": ("gpt", {"cp": 4, "pp": 2, "dp": 16}, ("ring attention",)),
    "ep4-tp2-zero1": ("moe", {"tp": 2, "dp": 64, "ep": 4, "zero_stage": 1},
                      ("expert weights outside ZeRO", "expert tensor parallelism")),
    "cp2-ep2-tp2-sp-pp2": ("moe", {"cp": 2, "tp": 2, "pp": 2, "dp": 16, "ep": 2, "sequence_parallel": True},
                           ("ring attention", "whole gathered sequence")),  # all five dimensions
}


def _doc(model: ModelSpec, fields: dict[str, Any]) -> PlanDocument:
    dp = fields.get("dp", 1)
    plan = Plan(**{"micro_batch": 1, "global_batch": 2 * dp, "dtype": "bf16", **fields})
    return PlanDocument(plan=plan, model=model, cluster=load_cluster("dgx-h100", gpus=plan.world_size))


@pytest.fixture(scope="module")
def scale_runs() -> dict[str, tuple[PlanDocument, list[RankReport]]]:
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    out = {}
    for name, (model, fields, _) in SCALE.items():
        doc = _doc(SPECS[model], fields)
        out[name] = (doc, dry_run(doc, jobs=JOBS))
    return out


# ---- 1. faithful to real runs ---------------------------------------------------------------------------

# One cross-check plan per bridge of executor/dry_run.py: DTensor TP + SP, DDP's comm hook, ZeroRedundancy-
# Optimizer, FSDP2 on the meta device (ZeRO-2 and ZeRO-3), the pipeline schedules' metadata exchange.
BRIDGED = ("tp2-sp", "tp2-full-recompute", "dp2-ddp", "dp2-zero1", "dp2-zero2", "dp2-fsdp2", "pp2-1f1b",
           "pp2-interleaved")


@pytest.fixture(scope="module")
def crosscheck_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("crosscheck") / "results.json"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    worker = REPO / "tests" / "executor_workers" / "crosscheck.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(worker),
           "--out", str(out), "--only", ",".join(BRIDGED)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_dry_run_counts_the_collectives_real_runs_issue(crosscheck_runs: dict[str, Any]) -> None:
    """The cross-check's plans that cross a bridge (TP, SP, recompute, DDP, ZeRO-1/2/3, 1F1B, interleaved), both ranks:
    the same collectives, calls and bytes (the worker measures after warm-up; the dry run excludes the
    pipeline's one-off metadata exchange). SGD as in the worker (see its note on AdamW)."""
    for name in BRIDGED:
        model_key, fields = CROSSCHECK_PLANS[name]
        doc = local_plan(CROSSCHECK_MODELS[model_key], **plan_fields(fields))
        for report in dry_run(doc, [0, 1], optimizer="sgd", jobs=JOBS):
            real_bytes: Counter = Counter()
            real_calls: Counter = Counter()
            for row in crosscheck_runs[name]["ranks"][report.rank]["rows"]:
                key = (row["kind"], row["op"], row["phase"])
                real_bytes[key] += row["bytes"]
                real_calls[key] += 1
            dry_bytes: Counter = Counter()
            dry_calls: Counter = Counter()
            for c in report.collectives:
                key = (TRAFFIC_KIND.get(c.kind, c.kind), c.op, c.phase)
                dry_bytes[key] += c.bytes
                dry_calls[key] += c.calls
            assert dry_bytes == real_bytes, (name, report.rank)
            assert dry_calls == real_calls, (name, report.rank)


@pytest.mark.parametrize(("model_key", "fields"), [("llama", {"tp": 2, "dp": 2, "zero_stage": 3}),
                                                    ("moe", {"dp": 4, "ep": 2, "zero_stage": 1})],
                         ids=["tp2-dp2-zero3", "dp4-ep2-zero1"])
def test_dry_run_memory_equals_a_real_run(tmp_path: Path, model_key: str, fields: dict[str, Any]) -> None:
    """The bytes of weights, gradients and optimizer state a real 4-rank run reports (max over ranks)."""
    from executor.launch import run_plan

    spec = dataclasses.replace(SPECS[model_key], dtype="fp32")
    doc = local_plan(spec, micro_batch=1, global_batch=2 * fields["dp"], **fields)
    path = save_plan(tmp_path / "plan.json", doc)
    measured = run_plan(path, nproc_per_node=4, steps=1, warmup=0, timeout=300.0)["memory"]
    reports = dry_run(doc, list(range(4)), jobs=JOBS)
    assert max(r.weight_bytes for r in reports) == measured["weights_bytes"]
    assert max(r.grad_bytes for r in reports) == measured["grads_bytes"]
    assert max(r.optimizer_bytes for r in reports) == measured["optimizer_bytes"]


# ---- 2. at scale, every parallel dimension ---------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCALE))
def test_every_rank_agrees_with_the_cost_model(scale_runs: dict[str, Any], name: str) -> None:
    doc, reports = scale_runs[name]
    dims = ParallelDims.from_plan(doc.plan)
    assert [r.rank for r in reports] == default_ranks(dims)
    named = set()
    for report in reports:
        comparison = compare(doc, report)
        for row in (*comparison.memory, *comparison.comm):
            assert row.ok, (name, report.rank, row)
            named |= {d.name for d in row.departures if d.bytes}
        assert comparison.comm or report.pp_rank > 0
        # The model state is the executor's parameters, not a restatement of the model's formula:
        # elements counted from the parameters the rank holds.
        assert report.weight_elements == sum(
            int(__import__("math").prod(p.local_shape)) for p in report.params)
    for expected in SCALE[name][2]:
        assert any(expected in n for n in named), (name, expected, sorted(named))


def test_reports_describe_the_layout(scale_runs: dict[str, Any]) -> None:
    """Coordinates, stage chunks and placements, independent of the cost model."""
    doc, reports = scale_runs["tp2-pp2-v2-zero3"]
    dims = ParallelDims.from_plan(doc.plan)
    by_stage = {r.pp_rank: r for r in reports}
    held = sorted(layer for r in by_stage.values() for s in r.stages for layer in s.layers)
    assert held == list(range(GPT.num_layers))  # the two pipeline ranks hold every layer once
    for r in reports:
        assert r.coords == dims.coords(r.rank)
        assert [s.stage for s in r.stages] == [r.pp_rank, r.pp_rank + 2]  # round-robin virtual stages
        q = next(p for p in r.params if p.name.endswith("attn.qkv.q.weight"))
        assert "tp:Shard(dim=0)" in q.placements and "dp:" in q.placements  # TP column split, FSDP2 over dp
        sent = {c.kind for c in r.collectives if c.op == "send"}
        assert sent == {"pp"}
    _, moe = scale_runs["ep4-zero1-ddp"]
    w_up = next(p for p in moe[0].params if p.name.endswith("experts.up.w_up"))
    assert w_up.placements == "ep:Shard(dim=0)" and w_up.local_shape[0] == MOE.num_experts // 4
    assert any(c.kind == "ep" and c.op == "all_to_all" for c in moe[0].collectives)
    assert any(c.kind == "edp" and c.op == "all_reduce" for c in moe[0].collectives)


def test_middle_pipeline_ranks_match_model_state(scale_runs: dict[str, Any]) -> None:
    doc, reports = scale_runs["pp4-gpipe"]
    middle = [r for r in reports if 0 < r.pp_rank < doc.plan.pp - 1]
    assert len(middle) == 2
    for r in middle:
        assert r.weight_elements == model_state_bytes(doc.model, doc.plan, r.pp_rank).weight_params


# ---- 3. the comparison has teeth ---------------------------------------------------------------------------


def test_a_one_percent_difference_is_a_disagreement(scale_runs: dict[str, Any],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    doc, reports = scale_runs["tp2-zero1-fsdp"]
    report = reports[0]
    assert compare(doc, report).ok
    for field in ("weight_bytes", "grad_bytes", "optimizer_bytes"):
        worse = dataclasses.replace(report, **{field: int(getattr(report, field) * 1.01)})
        assert not compare(doc, worse).ok, field

    real = dry_run_report.model_state_bytes

    def off_by_one_percent(model: ModelSpec, plan: Plan, pp_rank: int) -> Any:
        s = real(model, plan, pp_rank)
        return dataclasses.replace(s, weights=s.weights * 1.01, weight_params=s.weight_params * 1.01)

    monkeypatch.setattr(dry_run_report, "model_state_bytes", off_by_one_percent)
    assert not compare(doc, report).ok


def test_another_sharding_is_a_disagreement(scale_runs: dict[str, Any]) -> None:
    """The report of one plan compared with the same sizes under another ZeRO stage or tp x dp split."""
    doc, reports = scale_runs["tp2-zero1-fsdp"]
    for change in ({"zero_stage": 0}, {"zero_stage": 3}):
        other = dataclasses.replace(doc, plan=dataclasses.replace(doc.plan, **change))
        assert not compare(other, reports[0]).ok, change


# ---- 4. the command ------------------------------------------------------------------------------------------


def test_command_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = _doc(LLAMA, {"tp": 2, "dp": 4})
    path = save_plan(tmp_path / "plan.json", doc)
    for flags, needle in ((["--ranks", "8"], "rank 8 is out of range"), (["--ranks", "0,x"], "comma-separated"),
                          (["--jobs", "0"], "jobs")):
        assert main(["run", str(path), "--dry-run", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    lora = dataclasses.replace(doc, plan=dataclasses.replace(doc.plan, finetune="lora"))  # LoRA with tp > 1
    path = save_plan(tmp_path / "lora.json", lora)
    assert main(["run", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "LoRA" in err and len(err.splitlines()) == 1, err
    with pytest.raises(UnsupportedPlan):
        dry_run(lora)


def test_command_prints_json_and_agrees(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_plan(tmp_path / "plan.json", _doc(GPT, {"tp": 2, "pp": 2, "dp": 4, "zero_stage": 2}))
    assert main(["run", str(path), "--dry-run", "--ranks", "0,15", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["world_size"] == 16 and [r["rank"] for r in out["ranks"]] == [0, 15]
    first = out["ranks"][0]
    assert first["coords"] == {"pp": 0, "dp": 0, "cp": 0, "tp": 0} and first["comparison"]["comm"]
    assert main(["run", str(path), "--dry-run", "--ranks", "15"]) == 0
    text = capsys.readouterr().out
    assert "rank 15:" in text and "every rank agrees" in text and "layers.*.attn.qkv.q.weight" in text
