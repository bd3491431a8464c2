"""The executor serves for real: the KV-cache forward against the model's own full forward, mixed
batches against requests served alone, `planner run serve.json` end to end (1 and 2 ranks: the same
greedy outputs with and without tensor parallelism), and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from executor.kv_cache import CachedForward, KVCache, Segment
from executor.model import build_model
from planner.cli import main
from planner.serve.plan import SLO, ServeDocument, ServePlan, ServePool, Workload, save_serve_plan
from planner.serve.predict import predict
from planner.specs.catalog import localhost_cpu
from planner.specs.model import ModelSpec

SPEC = ModelSpec(name="serve-tiny", num_layers=2, hidden=64, num_heads=4, num_kv_heads=2, ffn_hidden=128,
                 vocab_size=256, seq_len=128, activation="swiglu", norm="rmsnorm", position="rope",
                 tied_embeddings=False, bias=False, dtype="fp32")


def _greedy_full(model: torch.nn.Module, prompt: torch.Tensor, n: int) -> list[int]:
    seq = prompt.clone()
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([seq, model(seq[None])[0, -1].argmax()[None]])
    return seq[prompt.numel():].tolist()


@pytest.mark.parametrize("spec", [SPEC, ModelSpec(name="gpt-learned", num_layers=2, hidden=64, num_heads=4,
                                                   ffn_hidden=128, vocab_size=256, seq_len=64, dtype="fp32"),
                                  # BLOOM's embedding LayerNorm; the dropout is off in evaluation
                                  ModelSpec(name="gpt-embed-norm", num_layers=2, hidden=64, num_heads=4,
                                            ffn_hidden=128, vocab_size=256, seq_len=64, dtype="fp32",
                                            embedding_norm=True, dropout=0.1)])
def test_cached_forward_matches_the_full_forward(spec: ModelSpec) -> None:
    model = build_model(spec).eval()
    if model.embed.norm is not None:  # an affine part far from the identity, so that leaving it out shows
        with torch.no_grad():
            gen = torch.Generator().manual_seed(2)
            model.embed.norm.weight.copy_(torch.randn(spec.hidden, generator=gen) * 3)
            model.embed.norm.bias.copy_(torch.randn(spec.hidden, generator=gen) * 3)
    prompt = torch.randint(0, 256, (21,), generator=torch.Generator().manual_seed(1))
    fw = CachedForward(model, KVCache(model, 3, 64, torch.device("cpu"), torch.float32))
    fw.step([Segment(1, 0, prompt[:8], False)])  # the prompt in chunks of 8, 8, 5
    fw.step([Segment(1, 8, prompt[8:16], False)])
    out = fw.step([Segment(1, 16, prompt[16:], True)]).tolist()
    for _ in range(4):
        pos = prompt.numel() + len(out) - 1
        out += fw.step([Segment(1, pos, torch.tensor([out[-1]]), True)]).tolist()
    assert out == _greedy_full(model, prompt, 5)


def test_a_mixed_batch_equals_each_request_alone() -> None:
    model = build_model(SPEC).eval()
    g = torch.Generator().manual_seed(2)
    a, b = torch.randint(0, 256, (12,), generator=g), torch.randint(0, 256, (9,), generator=g)
    fw = CachedForward(model, KVCache(model, 2, 32, torch.device("cpu"), torch.float32))
    first_a = fw.step([Segment(0, 0, a, True)]).tolist()
    # one step: a decodes while b's whole prompt prefills
    both = fw.step([Segment(0, 12, torch.tensor(first_a), True), Segment(1, 0, b, True)]).tolist()
    assert both == [_greedy_full(model, a, 2)[1], _greedy_full(model, b, 1)[0]]


def _plan(tmp_path: Path, tp: int, name: str) -> Path:
    cluster = localhost_cpu().with_gpus(tp)
    plan = ServePlan(pools=(ServePool(tp=tp, max_batch=2, chunk_size=32),), dtype="fp32", kv_dtype="fp32")
    w = Workload(isl=24, osl=6, concurrency=2, num_requests=6)
    doc = ServeDocument(plan=plan, model=SPEC, cluster=cluster, workload=w, slo=SLO(),
                        prediction=predict(SPEC, cluster, plan, w))
    path = tmp_path / name
    save_serve_plan(path, doc)
    return path


def test_planner_run_serves_a_plan_on_one_and_two_ranks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outs = []
    for tp in (1, 2):
        path = _plan(tmp_path, tp, f"tp{tp}.json")
        out = tmp_path / f"tp{tp}.measured.json"
        assert main(["run", str(path), "--out", str(out)]) == 0, capsys.readouterr().err
        m = json.loads(out.read_text())
        assert m["kind"] == "measured-serve" and m["requests"] == 6
        assert m["ttft_ms"]["p50"] > 0 and m["tpot_ms"]["p50"] > 0 and m["tokens_per_s"] > 0
        # every request got osl tokens, first token after arrival, finish after first token
        assert all(len(v) == 6 for v in m["outputs"].values())
        assert all(a <= f <= e for _, a, f, e in m["timeline"])
        outs.append(m["outputs"])
    assert "TPOT ms p50" in capsys.readouterr().out
    assert outs[0] == outs[1]  # tensor parallelism does not change the greedy outputs


def test_planner_run_refuses_what_the_executor_cannot_serve(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    cluster = localhost_cpu().with_gpus(2)
    plan = ServePlan(pools=(ServePool(role="prefill", max_batch=2, chunk_size=32),
                            ServePool(role="decode", max_batch=2, chunk_size=2)), dtype="fp32", kv_dtype="fp32")
    doc = ServeDocument(plan=plan, model=SPEC, cluster=cluster, workload=Workload(isl=24, osl=6), slo=SLO())
    path = tmp_path / "disagg.json"
    save_serve_plan(path, doc)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "disaggregated" in err and len(err.strip().splitlines()) == 1
    one = _plan(tmp_path, 1, "one.json")
    assert main(["run", str(one), "--nproc-per-node", "2"]) == 2
    assert "needs 1 processes" in capsys.readouterr().err
