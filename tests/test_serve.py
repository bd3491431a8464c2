"""Serving planner: every term against an independent reference (published configs by hand, worked
examples in docs/serving.md, queueing theory), the search's contracts, and `planner serve` bad input."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from planner.cli import main
from planner.errors import PlanError
from planner.plan import load_plan, validate_document
from planner.serve.kv import (
    context_limit,
    kv_bytes_per_token,
    max_concurrency,
    model_kv,
    request_kv_bytes_per_gpu,
    stage_layers,
)
from planner.serve.plan import (
    SLO,
    ServeDocument,
    ServePlan,
    ServePool,
    Workload,
    load_serve_plan,
    save_serve_plan,
)
from planner.serve.predict import predict
from planner.serve.scheduler import Scheduler
from planner.serve.search import ServeConstraints, search_serving
from planner.serve.step import StepCost
from planner.serve.stream import run_stream, simulate_scheduler
from planner.specs.catalog import load_cluster, model_preset
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

LLAMA70 = model_preset("llama3-70b")
# DeepSeek-V3 (Hugging Face deepseek-ai/DeepSeek-V3 config.json): 61 layers, hidden 7168, 128 heads,
# kv_lora_rank 512, qk_rope_head_dim 64; the MLA fields go in `extra` until ModelSpec has them.
DEEPSEEK_V3 = ModelSpec(name="deepseek-v3-attention", num_layers=61, hidden=7168, num_heads=128, ffn_hidden=18432,
                        vocab_size=129280, seq_len=4096, activation="swiglu", norm="rmsnorm", position="rope",
                        tied_embeddings=False, bias=False,
                        extra={"kv_lora_rank": 512, "qk_rope_head_dim": 64, "max_position_embeddings": 163840})


# ---- KV cache ---------------------------------------------------------------------------------------


def test_llama3_70b_kv_bytes_per_token_by_hand() -> None:
    # 80 layers x (K and V) x 8 KV heads x 128 head_dim x 2 bytes (bf16) = 327,680 B = 320 KiB
    assert kv_bytes_per_token(LLAMA70, "bf16") == 80 * 2 * 8 * 128 * 2 == 327_680
    assert kv_bytes_per_token(LLAMA70, "fp8") == 163_840


def test_deepseek_v3_mla_latent_cache_by_hand() -> None:
    # 61 layers x (kv_lora_rank 512 + rope key 64) x 2 bytes = 70,272 B per token, ~4.7x less than Llama-3-70B
    assert kv_bytes_per_token(DEEPSEEK_V3, "bf16") == 61 * 576 * 2 == 70_272
    layers = model_kv(DEEPSEEK_V3, "bf16")
    # the latent is shared by all heads: every TP rank holds all of it
    assert layers[0].bytes_per_gpu_token(8) == layers[0].bytes_per_gpu_token(1) == 1152
    assert context_limit(DEEPSEEK_V3) == 163_840


def test_gqa_cache_splits_over_tp_and_replicates_beyond_the_kv_heads() -> None:
    layer = model_kv(LLAMA70, "bf16")[0]  # 8 KV heads: 4096 B per token per layer
    assert layer.bytes_per_gpu_token(8) == 4096 / 8
    assert layer.bytes_per_gpu_token(16) == 4096 / 8  # one head per rank, not half a head


def test_sliding_window_layers_keep_at_most_the_window() -> None:
    # gpt-oss-style alternation: even layers slide over 128 tokens, odd layers see everything
    m = ModelSpec(name="swa", num_layers=4, hidden=512, num_heads=8, num_kv_heads=2, ffn_hidden=1024,
                  vocab_size=1000, seq_len=4096, position="rope",
                  extra={"sliding_window": 128, "layer_types": ["sliding_attention", "full_attention"] * 2})
    per_layer = 2 * 2 * 64 * 2  # K and V, 2 KV heads, head_dim 64, bf16 = 512 B per token
    # a 1000-token request: 2 full layers hold 1008 tokens (63 blocks of 16), 2 windowed hold 128
    assert request_kv_bytes_per_gpu(model_kv(m, "bf16"), 1000, 1, 16) == per_layer * (2 * 1008 + 2 * 128)


def test_paged_capacity_rounds_up_to_blocks() -> None:
    layers = model_kv(LLAMA70, "bf16")
    # 1000 tokens -> 63 blocks of 16 = 1008 tokens per layer, TP8: 40,960 B per token per GPU
    per_req = request_kv_bytes_per_gpu(layers, 1000, 8, 16)
    assert per_req == 1008 * 327_680 / 8
    assert max_concurrency(10 * per_req - 1, per_req) == 9


def test_stage_layers_cover_every_layer_once() -> None:
    for n in (1, 7, 61, 80, 126):
        for pp in (1, 2, 3, 4, 8):
            if pp > n:
                continue
            got = [i for s in range(pp) for i in stage_layers(n, pp, s)]
            assert got == list(range(n))


# ---- step cost: worked examples of docs/serving.md ---------------------------------------------------


def _idealised(cluster: ClusterSpec, memory_only: bool) -> ClusterSpec:
    """The catalog cluster with free links and no fixed kernel costs, and either unbounded compute
    (memory_only) or unbounded memory bandwidth."""
    gpu = dataclasses.replace(cluster.gpu, kernel_overhead_s=0.0, gemm_overhead_s=0.0)
    if memory_only:
        gpu = dataclasses.replace(gpu, peak_flops={k: 1e18 for k in gpu.peak_flops})
    else:  # the worked example's efficiency: 0.6 of peak for GEMMs and the attention kernel alike
        gpu = dataclasses.replace(gpu, memory_bandwidth=1e15, gemm_efficiency=0.6, attention_efficiency=0.0,
                                  gemm_efficiency_by_dtype={})
    link = dataclasses.replace(cluster.intra_node, latency=0.0, bandwidth=1e15)
    return dataclasses.replace(cluster, gpu=gpu, intra_node=link, inter_node=link)


def test_decode_step_is_weights_plus_kv_over_bandwidth() -> None:
    """docs/serving.md worked example: Llama-3-70B, TP8 on H100, one sequence at context 1024."""
    cluster = _idealised(load_cluster("dgx-h100", gpus=8), memory_only=True)
    cost = StepCost(LLAMA70, cluster, "bf16", "bf16", np.array([8]), np.array([1]))
    t = float(cost.step_time(1, 1, 1, 1024.0, 0, 0.0)[0])
    embedding = 128_256 * 8_192
    weights = (70_553_706_496 - embedding) / 8 * 2  # published parameters, the embedding table is not read
    kv = 1024 * 327_680 / 8
    bandwidth = 3.35e12 * 0.85  # H100 SXM datasheet x the catalog's achieved fraction
    expected = (weights + kv) / bandwidth
    assert expected == pytest.approx(6.117e-3, rel=1e-3)
    assert t == pytest.approx(expected, rel=0.005)


def test_prefill_is_quadratic_compute() -> None:
    """docs/serving.md worked example: a 2048-token prompt of Llama-3-70B on TP8 H100, compute bound."""
    cluster = _idealised(load_cluster("dgx-h100", gpus=8), memory_only=False)
    cost = StepCost(LLAMA70, cluster, "bf16", "bf16", np.array([8]), np.array([1]))
    s = 2048
    t = float(cost.step_time(s, 1, 0, 0.0, s, s * s / 2.0)[0])
    emb = 128_256 * 8_192
    linear = 2 * (70_553_706_496 - 2 * emb) * s + 2 * emb  # the LM head runs for the last token only
    attention = 4 * 8192 * 80 * s * s / 2  # 4 h FLOPs per causal query-key pair
    expected = (linear + attention) / 8 / (989.4e12 * 0.6)
    assert expected == pytest.approx(60.2e-3, rel=2e-3)
    assert t == pytest.approx(expected, rel=0.01)
    # doubling the prompt more than doubles the attention part (quadratic)
    t2 = float(cost.step_time(2 * s, 1, 0, 0.0, 2 * s, 2.0 * s * s)[0])
    assert t2 > 2 * t


def test_fp8_weights_halve_the_memory_bound_decode() -> None:
    cluster = _idealised(load_cluster("dgx-h100", gpus=8), memory_only=True)
    t16 = StepCost(LLAMA70, cluster, "bf16", "bf16", np.array([8]), np.array([1])).step_time(1, 1, 1, 1.0, 0, 0.0)
    t8 = StepCost(LLAMA70, cluster, "fp8", "bf16", np.array([8]), np.array([1])).step_time(1, 1, 1, 1.0, 0, 0.0)
    # linear weights at 1 byte, the LM head stays 16-bit: 1.05e9 of 69.5e9 read parameters
    head = 128_256 * 8_192
    read16 = (70_553_706_496 - head) * 2
    read8 = (70_553_706_496 - 2 * head) * 1 + head * 2
    assert float(t8[0] / t16[0]) == pytest.approx(read8 / read16, rel=0.01)


def test_timer_matches_the_vectorised_step() -> None:
    cluster = load_cluster("dgx-h100", gpus=16)
    rng = np.random.default_rng(1)
    for model, tp, pp in ((LLAMA70, 4, 2), (model_preset("mixtral-8x7b"), 2, 1), (model_preset("gpt-oss-20b"), 2, 2),
                          (model_preset("deepseek-v3"), 8, 2)):
        cost = StepCost(model, cluster, "bf16", "bf16", np.array([tp]), np.array([pp]))
        timer = cost.timer(2048, 256)
        for _ in range(20):
            n, c, p = int(rng.integers(0, 256)), int(rng.integers(0, 1792)), int(rng.integers(0, 4000))
            ctx = float(n * rng.integers(1, 4000))
            window = timer.window or 1 << 30
            args = (n + c, n + (1 if c else 0), n, ctx, c, c * (p + c / 2), c * min(p + c / 2, window))
            ref = float(cost.step_time(*(np.array([a]) for a in args))[0])
            assert timer(*args) == pytest.approx(ref, rel=1e-4)
        stretch = timer.decode_stretch(64, 64 * 900.0, 30)
        assert stretch[17] == pytest.approx(timer(64, 64, 64, 64 * 900.0 + 17 * 64, 0, 0.0), rel=1e-9)


def test_moe_decode_reads_only_the_routed_experts() -> None:
    """Mixtral 8x7B (top-2 of 8): one token reads 2 experts per layer; two tokens read
    8 (1 - (6/8)^2) = 3.5 on average (uniform routing), 1.5 experts' weights more."""
    m = model_preset("mixtral-8x7b")
    cluster = _idealised(load_cluster("dgx-h100", gpus=8), memory_only=True)
    cost = StepCost(m, cluster, "bf16", "bf16", np.array([1]), np.array([1]))
    one = float(cost.step_time(1, 1, 1, 1.0, 0, 0.0)[0])
    two = float(cost.step_time(2, 2, 2, 2.0, 0, 0.0)[0])
    expert = 3 * 4096 * 14336 * 32 * 2  # bytes of one expert (gate, up, down) in all 32 layers
    assert two - one == pytest.approx(1.5 * expert / (3.35e12 * 0.85), rel=0.02)


# ---- the stream simulation -------------------------------------------------------------------------


class ConstantTimer:
    """Every step takes `dt` seconds (independent of the cost model)."""

    window = None

    def __init__(self, dt: float = 1.0) -> None:
        self.dt = dt

    def __call__(self, *args: object) -> float:
        return self.dt

    def decode_stretch(self, decode_seqs: int, decode_ctx: float, steps: int) -> np.ndarray:
        return np.full(steps, self.dt)


def test_chunked_prefill_takes_ceil_isl_over_budget_steps() -> None:
    # Sarathi-Serve: a lone 1000-token prompt with a 256-token budget needs 4 steps, then 9 decodes
    r = simulate_scheduler(ConstantTimer(), 1000, 10, 8, 256, 100, mode="closed", users=1, num_requests=1)
    assert r.ttft_s.tolist() == [4.0]
    assert r.tpot_s.tolist() == [1.0]


def test_batch_limit_queues_the_extra_users() -> None:
    # 4 users, 2 slots, whole prompts in one step: the third and fourth wait for the first two
    sched = Scheduler(isl=10, osl=5, max_batch=2, chunk_size=64, kv_slots=100)
    reqs, _, _ = run_stream(ConstantTimer(), sched, users=4, num_requests=4)
    # first two: prefill together (TTFT 1), 4 decode steps -> finish at 5; then the next two
    assert [r.ttft for r in reqs] == [1.0, 1.0, 6.0, 6.0]
    assert [r.finish for r in reqs] == [5.0, 5.0, 10.0, 10.0]


def test_a_new_token_count_pays_its_shape_cost_once_per_process() -> None:
    """One user, 4-token prompts in one step, 3 tokens out: each request is a prefill step (4 tokens)
    then two decode steps (1 token). Steps cost 1; the first step at a token count costs 1 + 0.5. By
    hand: request 0 prefills at 1.5 (TTFT), decodes at 1.5 (new count 1) and 1, finishing at 4; request
    1 runs only seen counts: TTFT 1, finishing 3 later. After a warm-up stream in the same process
    (`predict` replays the engine's), no request pays it."""
    from planner.serve.stream import NewShapeTimer

    sched = Scheduler(isl=4, osl=3, max_batch=1, chunk_size=4, kv_slots=10)
    timer = NewShapeTimer(ConstantTimer(), 0.5)
    reqs, _, _ = run_stream(timer, sched, users=1, num_requests=2)
    assert [r.ttft for r in reqs] == [1.5, 1.0]
    assert [r.finish for r in reqs] == [4.0, 7.0]
    warm = Scheduler(isl=4, osl=3, max_batch=1, chunk_size=4, kv_slots=10)
    reqs, _, _ = run_stream(timer, warm, users=1, num_requests=2)
    assert [r.ttft for r in reqs] == [1.0, 1.0] and [r.finish for r in reqs] == [3.0, 6.0]


def test_predict_charges_new_shapes_only_with_tensor_parallelism_after_the_warm_up() -> None:
    """A tp-2 plan on CPU ranks with a shape cost: one user at batch 1 runs only shapes the engine's
    warm-up ran (the prompt, one decode token), so its one request's prediction equals the one without the
    cost (without the warm-up it would pay for both); four users
    in 256-token chunks form token counts the warm-up never ran, and their first tokens come later.
    At tp 1 (no DTensor) the cost is never charged."""
    from planner.serve.step import Overheads
    from planner.specs.catalog import localhost_cpu

    model = ModelSpec(name="s", num_layers=2, hidden=256, num_heads=4, num_kv_heads=2, ffn_hidden=512,
                      vocab_size=512, seq_len=1024, activation="swiglu", norm="rmsnorm", position="rope",
                      tied_embeddings=False, bias=False, dtype="fp32")
    cluster = localhost_cpu().with_gpus(2)
    base = Overheads(step_s=1e-3, tp_layer_s=5e-3)
    shaped = dataclasses.replace(base, tp_new_shape_s=0.25)

    def ttft(tp: int, users: int, overheads: Overheads) -> float:
        plan = ServePlan(pools=(ServePool(tp=tp, max_batch=users, chunk_size=256),), dtype="fp32", kv_dtype="fp32")
        w = Workload(isl=128, osl=16, concurrency=users, num_requests=1 if users == 1 else 2 * users + 8)
        return predict(model, cluster, plan, w, overheads=overheads)["ttft_ms"]["p90"]

    assert ttft(2, 1, shaped) == pytest.approx(ttft(2, 1, base), rel=1e-12)
    assert ttft(2, 4, shaped) > ttft(2, 4, base) + 200.0  # the slowest first tokens wait on a new shape
    assert ttft(1, 4, shaped) == ttft(1, 4, base)


def test_md1_waiting_time_at_batch_one() -> None:
    """One request at a time, Poisson arrivals, deterministic service: M/D/1, mean wait
    rho S / (2 (1 - rho)) (Pollaczek-Khinchine)."""
    isl, osl, dt = 256, 3, 0.01
    service = (1 + (osl - 1)) * dt  # one prefill step, osl - 1 decode steps
    for rho in (0.3, 0.6):
        rate = rho / service
        r = simulate_scheduler(ConstantTimer(dt), isl, osl, 1, 512, 10, mode="open", rate=rate,
                               num_requests=20000, seed=3)
        wait = float(r.ttft_s.mean()) - dt  # TTFT = wait + the prefill step
        assert wait == pytest.approx(rho * service / (2 * (1 - rho)), rel=0.06)


def test_closed_loop_obeys_littles_law() -> None:
    cluster = load_cluster("dgx-h100", gpus=8)
    cost = StepCost(LLAMA70, cluster, "bf16", "bf16", np.array([8]), np.array([1]))
    users = 24
    r = simulate_scheduler(cost.timer(1024, 32), 512, 64, 32, 1024, 1000, mode="closed", users=users,
                           num_requests=600)
    # every user always has one request in the system: users = throughput x mean time in system
    assert r.requests_per_s * float(r.e2e_s.mean()) == pytest.approx(users, rel=0.03)
    assert r.output_tokens_per_s == pytest.approx(r.requests_per_s * 64, rel=0.03)


# ---- plans, documents, search -------------------------------------------------------------------------


def _doc(tmp_path: Path) -> Path:
    cluster = load_cluster("dgx-h100", gpus=8)
    plan = ServePlan(pools=(ServePool(tp=8, max_batch=64, chunk_size=2048),))
    w = Workload(isl=1024, osl=128, concurrency=16)
    doc = ServeDocument(plan=plan, model=LLAMA70, cluster=cluster, workload=w, slo=SLO(tpot_ms=50),
                        prediction=predict(LLAMA70, cluster, plan, w, SLO(tpot_ms=50)))
    path = tmp_path / "serve.json"
    save_serve_plan(path, doc)
    return path


def test_serve_document_round_trips_and_training_commands_refuse_it(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = _doc(tmp_path)
    doc = load_serve_plan(path)
    assert doc.plan.pools[0].tp == 8 and doc.workload.concurrency == 16
    raw = json.loads(path.read_text())
    validate_document(raw)
    for key in ("ttft_ms", "tpot_ms"):
        assert set(raw["prediction"][key]) >= {"p50", "p90", "p99"}
    with pytest.raises(PlanError, match="serving plan"):
        load_plan(path)
    assert main(["explain", str(path)]) == 2
    err = capsys.readouterr().err
    assert "serving plan" in err and len(err.strip().splitlines()) == 1


def test_search_ranks_by_tokens_per_gpu_and_respects_fixed_sizes() -> None:
    cluster = load_cluster("dgx-h100", gpus=16)
    w = Workload(isl=512, osl=128)
    r = search_serving(LLAMA70, cluster, w, SLO(tpot_ms=60), constraints=ServeConstraints(tp=4), top_k=4)
    assert r.documents
    per_gpu = [d.prediction["tokens_per_s_per_gpu"] for d in r.documents]
    assert per_gpu == sorted(per_gpu, reverse=True)
    for d in r.documents:
        assert d.plan.pools[0].tp == 4
        assert d.prediction["tpot_ms"]["p90"] <= 60
        assert d.plan.num_gpus == 16
    # the front: no simulated plan beats a front plan on both axes (brute force)
    pts = [(d.prediction["tokens_per_s_per_gpu"], d.prediction["tokens_per_s_per_user"]) for d in r.pareto]
    for a in pts:
        assert not any(b[0] >= a[0] and b[1] >= a[1] and b != a for b in pts)


def test_disaggregated_search_matches_rates_and_moves_kv() -> None:
    cluster = load_cluster("dgx-h100", gpus=16)
    r = search_serving(LLAMA70, cluster, Workload(isl=2048, osl=128, request_rate=4.0), SLO(tpot_ms=40),
                       disaggregated=True, top_k=2, rerank=2)
    d = r.documents[0]
    assert [p.role for p in d.plan.pools] == ["prefill", "decode"] and d.plan.num_gpus <= 16
    dis = d.prediction["disaggregated"]
    # the decode GPUs each receive their share of the 2048-token prompt's KV cache over InfiniBand
    decode = d.plan.pool("decode")
    per_gpu = 2048 * 327_680 / decode.tp / decode.pp
    assert dis["kv_transfer_ms"] == pytest.approx((6e-6 + per_gpu / 45e9) * 1e3, rel=0.05)
    assert min(dis["prefill_capacity_rps"], dis["decode_capacity_rps"]) >= 4.0


# ---- planner serve: output and bad input ------------------------------------------------------------

SERVE = ["serve", "--model", "llama3-70b", "--cluster", "dgx-h100", "--gpus", "8"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_serve_json_contract(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "best.json"
    code, out, err = run([*SERVE, "--isl", "512", "--osl", "128", "--tpot-ms", "60", "--json", "--top", "2",
                          "--out", str(out_file)], capsys)
    assert code == 0, err
    docs = json.loads(out)
    assert 1 <= len(docs) <= 2
    for d in docs:
        assert d["kind"] == "serve"
        p = d["prediction"]
        for k in ("ttft_ms", "tpot_ms"):
            assert {"p50", "p90", "p99"} <= set(p[k])
        for k in ("tokens_per_s_per_gpu", "tokens_per_s_per_user", "kv_cache_gib_per_gpu", "max_concurrency",
                  "memory_gib_per_gpu"):
            assert k in p
    assert json.loads(out_file.read_text())["pools"] == docs[0]["pools"]


@pytest.mark.parametrize(("args", "words"), [
    (["--isl", "8000", "--osl", "500"], ["context of 8192", "--osl 192"]),
    (["--isl", "1024", "--osl", "256", "--tpot-ms", "0.5"], ["no plan meets", "nearest feasible", "--tpot-ms"]),
    (["--isl", "1024", "--osl", "256", "--tp", "1", "--pp", "1"], ["weights", "no room", "more GPUs"]),
    (["--isl", "1024", "--osl", "256", "--concurrency", "4", "--request-rate", "2"], ["not allowed with"]),
    (["--isl", "0", "--osl", "256"], ["--isl", "positive integer"]),
])
def test_serve_bad_input_is_one_line_exit_2(capsys: pytest.CaptureFixture[str], args: list[str],
                                            words: list[str]) -> None:
    code, out, err = run([*SERVE, *args], capsys)
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err


def test_kv_cache_that_cannot_hold_one_request_names_the_longest_that_fits(
        capsys: pytest.CaptureFixture[str]) -> None:
    # llama3-70b on 2 x A100-80GB at TP2: 0.85 x 80 GiB - 2 GiB reserved - 70.55 GB of weights leaves
    # ~0.3 GB per GPU, 163,840 B per token: ~1,900 tokens, not 8,192
    code, _, err = run(["serve", "--model", "llama3-70b", "--cluster", "dgx-a100-80gb", "--gpus", "2",
                        "--isl", "4096", "--osl", "4096", "--tp", "2", "--memory-utilization", "0.85"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "KV cache" in err and "isl + osl <=" in err
    longest = int(err.split("isl + osl <= ")[1].split()[0])
    assert 1500 < longest < 2300


def test_kv_bytes_math_is_consistent_with_published_ratio() -> None:
    # MLA's point (DeepSeek-V2 paper, Table 1): a far smaller cache than GQA of a similar-size model
    assert kv_bytes_per_token(LLAMA70, "bf16") / kv_bytes_per_token(DEEPSEEK_V3, "bf16") == pytest.approx(
        327_680 / 70_272)
    assert math.isclose(kv_bytes_per_token(DEEPSEEK_V3, "fp8"), 35_136)


# ---- serving calibration ------------------------------------------------------------------------------


def test_overhead_fit_recovers_known_overheads() -> None:
    """Synthetic calibration rows built with known host overheads on top of the op costs: the fit
    returns them (the executor's rows are measured the same way)."""
    from executor.serve import CALIB_BATCHES, CALIB_CONTEXT, CALIB_LAYERS, calibration_spec
    from planner.serve.calibrate import fit_overheads
    from planner.serve.step import Overheads
    from planner.specs.catalog import localhost_cpu

    cluster = localhost_cpu()
    truth = Overheads(step_s=4e-4, tp_step_s=3e-4, layer_s=2e-4, tp_layer_s=9e-4, sequence_layer_s=5e-5,
                      tp_new_shape_s=0.2, tp_new_shape_layer_s=3e-3)
    rows = []
    for tp in (1, 2):
        for layers in CALIB_LAYERS:
            # first step at a new token count minus its repeat (tp 1: a small cost the fit leaves out)
            miss = truth.tp_new_shape_s + layers * truth.tp_new_shape_layer_s if tp > 1 else 1e-4
            rows.append({"layers": layers, "tp": tp, "new_shape_s": miss})
            for batch in CALIB_BATCHES:
                spec = calibration_spec(layers)
                cost = StepCost(spec, cluster.with_gpus(tp), "fp32", "fp32", np.array([tp]), np.array([1]),
                                overheads=truth)
                t = float(cost.step_time(batch, batch, batch, batch * (CALIB_CONTEXT + 1.0), 0, 0.0)[0])
                rows.append({"layers": layers, "batch": batch, "tp": tp, "context": CALIB_CONTEXT, "step_s": t})
    fit = fit_overheads(cluster, rows, calibration_spec)
    for name in Overheads.NAMES:
        assert getattr(fit, name) == pytest.approx(getattr(truth, name), rel=1e-6, abs=1e-9), name


def test_serving_kernels_replace_the_training_gemm_curve_and_bandwidth() -> None:
    from planner.serve.calibrate import with_kernels
    from planner.serve.step import serving_gpu
    from planner.specs.catalog import localhost_cpu

    cluster = localhost_cpu()
    peak = cluster.gpu.peak("fp32")
    kernels = {"gemm": [[512, 512, 2048, 2.0 * 512 * 512 * 2048, 2.0 * 512 * 512 * 2048 / (0.25 * peak)]],
               "stream": {"bytes": 1e9, "seconds": 0.125}}
    gpu = serving_gpu(with_kernels(cluster, kernels))
    assert gpu.gemm_curve == ((2.0 * 512 * 512 * 2048, pytest.approx(0.25)),)
    assert gpu.memory_bandwidth == 8e9 and gpu.memory_efficiency == 1.0


def test_gemv_fit_recovers_the_row_cost_and_bandwidth() -> None:
    """GEMV times built as out x row_s + bytes / bandwidth for the calibration's shapes: the fit
    returns both (the executor measures the same shapes)."""
    from executor.serve import GEMV_SHAPES
    from planner.serve.calibrate import fit_gemv

    row_s, bw = 5e-8, 2.0e10
    rows = [[o, i, 4.0 * o * i, o * row_s + 4.0 * o * i / bw] for o, i in GEMV_SHAPES]
    got_row_s, got_bw = fit_gemv(rows)
    assert got_row_s == pytest.approx(row_s, rel=1e-6) and got_bw == pytest.approx(bw, rel=1e-6)


def test_a_decode_step_pays_the_gemv_row_cost_once_per_weight_row() -> None:
    """One decode token through a layer of the validation model (GQA: q 512, k 128, v 128, o 512,
    gate 1408, up 1408, down 512 output features = 4,608 weight rows, counted by hand): with a row
    cost the layer's memory-bound linear layers take 4,608 x row_s longer, whatever the graph fuses."""
    from planner.serve.calibrate import with_kernels
    from planner.serve.validate import VALIDATION_MODEL
    from planner.specs.catalog import localhost_cpu

    peak = localhost_cpu().gpu.peak("fp32")
    rows = [[o, i, 4.0 * o * i, o * 1e-7 + 4.0 * o * i / 1.5e10] for o, i in ((512, 512), (2048, 512), (512, 2048))]
    kernels = {"gemm": [[512, 512, 512, 2.0 * 512**3, 2.0 * 512**3 / peak]], "stream": {"bytes": 1e9, "seconds": 0.1},
               "gemm_rows": [[m, 1024, 1024, 2.0 * m * 1024 * 1024, 2.0 * m * 1024 * 1024 / peak] for m in (1, 512)]}
    plain = with_kernels(localhost_cpu().with_gpus(1), {**kernels, "gemv": [[*r[:3], r[2] / 1.5e10] for r in rows]})
    with_rows = with_kernels(localhost_cpu().with_gpus(1), {**kernels, "gemv": rows})

    def layer(cluster: ClusterSpec) -> float:
        cost = StepCost(VALIDATION_MODEL, cluster, "fp32", "fp32", np.array([1]), np.array([1]))
        return float(cost.ops_time(cost.lg.kinds[0].ops, np.array([1.0]), np.array([1.0]))[0])

    assert layer(with_rows) - layer(plain) == pytest.approx(4608 * 1e-7, rel=1e-6)


def test_decode_attention_rate_is_the_slope_over_context() -> None:
    from planner.serve.calibrate import decode_attention_flops_per_s

    rows = [[16, 4, 64, ctx, 4.0 * 16 * 64 * ctx, 2e-5 + 4.0 * 16 * 64 * ctx / 3e9] for ctx in (256, 1024, 4096)]
    rows += [[8, 8, 128, ctx, 4.0 * 8 * 128 * ctx, 5e-5 + 4.0 * 8 * 128 * ctx / 5e9] for ctx in (256, 1024, 4096)]
    assert decode_attention_flops_per_s(rows) == pytest.approx(4e9)  # the two kernels' rates averaged


def test_step_errors_group_engine_steps_by_kind_against_their_own_batch() -> None:
    """validate --serve's step table: a measured step is compared with the step model of its own batch.
    Checked two ways: (1) one user alone has a TTFT that is its prompt's prefill step and a TPOT that is
    its decode step (the request-level simulation, an independent path), so the prefill kind's prediction
    equals the predicted TTFT and the decode kind's, at the median context, the predicted TPOT; (2) with
    measured times set to known multiples of the predicted ones, the errors
    come back as those multiples, per kind."""
    from planner.serve.validate import VALIDATION_MODEL, step_errors
    from planner.specs.catalog import localhost_cpu

    cluster = localhost_cpu().with_gpus(1)
    plan = ServePlan(pools=(ServePool(tp=1, max_batch=1, chunk_size=128),), dtype="fp32", kv_dtype="fp32")
    w = Workload(isl=128, osl=33, concurrency=1, num_requests=4)
    doc = ServeDocument(plan=plan, model=VALIDATION_MODEL, cluster=cluster, workload=w, slo=SLO())
    pred = predict(VALIDATION_MODEL, cluster, plan, w)
    ttft, tpot = pred["ttft_ms"]["p50"], pred["tpot_ms"]["p50"]
    cols = ["tokens", "sampled", "decode", "decode_ctx", "prefill_tokens", "prefill_pairs", "seconds"]
    # a prompt's prefill (128 tokens, 128 x 64 causal pairs), then its decode steps at contexts 129..160
    rows = [[128, 1, 0, 0, 128, 128 * 64.0, 1.0]] + [[1, 1, 1, 128 + k, 0, 0.0, 1.0] for k in range(1, 33)]
    got = step_errors(doc, {"columns": cols, "rows": rows})
    assert got["decode"]["steps"] == 32 and got["prefill"]["steps"] == 1
    assert got["decode"]["predicted_ms"] == pytest.approx(tpot, rel=1e-3)
    assert got["prefill"]["predicted_ms"] == pytest.approx(ttft, rel=1e-3)

    decode_s, prefill_s = got["decode"]["predicted_ms"] / 1e3, got["prefill"]["predicted_ms"] / 1e3
    rows = [[*r[:6], (prefill_s * 0.5) if r[4] else (decode_s * 1.25)] for r in rows]
    again = step_errors(doc, {"columns": cols, "rows": rows})
    assert again["decode"]["error"] == pytest.approx(-0.2, abs=0.01)
    assert again["prefill"]["error"] == pytest.approx(1.0, rel=1e-9)
    assert again["decode"]["measured_ms"] == pytest.approx(decode_s * 1.25e3, rel=1e-9)


def test_ranks_sharing_cores_stretch_every_serving_op() -> None:
    """Two ranks on a node with one compute slot time-slice it (compute_slowdown 2): with no host
    overheads and no communication (tp 1, pp 1), a decode step and a prefill step take twice as long,
    in the vectorised step model and in the tabulated timer the request simulation uses alike."""
    from planner.serve.step import Overheads
    from planner.serve.validate import VALIDATION_MODEL
    from planner.specs.catalog import localhost_cpu

    alone = dataclasses.replace(localhost_cpu(), gpus_per_node=2, num_nodes=1, compute_slots_per_node=0.0)
    shared = dataclasses.replace(alone, compute_slots_per_node=1.0)
    assert shared.compute_slowdown == 2.0 and alone.compute_slowdown == 1.0

    def steps(cluster: ClusterSpec) -> list[float]:
        cost = StepCost(VALIDATION_MODEL, cluster, "fp32", "fp32", np.array([1]), np.array([1]), overheads=Overheads())
        vec = [float(cost.step_time(4, 4, 4, 4 * 200.0, 0, 0.0)[0]),
               float(cost.step_time(128, 1, 0, 0.0, 128, 128 * 64.0)[0])]
        timer = cost.timer(128, 4)
        return [*vec, timer(4, 4, 4, 4 * 200.0, 0, 0.0), timer(128, 1, 0, 0.0, 128, 128 * 64.0)]

    for one, two in zip(steps(alone), steps(shared), strict=True):
        assert two == pytest.approx(2.0 * one, rel=1e-9)


def test_a_serving_step_prices_collectives_back_to_back() -> None:
    """On CPU ranks calibrate prices a collective twice: after compute, as a training step issues it, and
    right after another call (burst). A decode step's layers compute well under a millisecond between
    their all-reduces, where gloo runs them as back to back, so a serving step takes the burst prices:
    with step prices a hundred times dearer, a TP 2 decode step of the tiny GPT costs what it costs on a
    profile whose only prices are the burst ones (and more than on one priced as the step's)."""
    base = load_cluster("dgx-h100", gpus=2)

    def with_rows(**row: float) -> ClusterSpec:
        rows = {op: [{"group": 2, **row}] for op in ("all_reduce", "all_gather", "reduce_scatter")}
        return dataclasses.replace(base, intra_node=dataclasses.replace(base.intra_node, collectives=rows))

    both = with_rows(alpha=1e-3, busbw=1e9, burst_alpha=1e-5, burst_busbw=1e11)
    burst_only = with_rows(alpha=1e-5, busbw=1e11)
    step_only = with_rows(alpha=1e-3, busbw=1e9)
    tiny = model_preset("tiny")

    def decode(cluster: ClusterSpec) -> float:
        cost = StepCost(tiny, cluster, "bf16", "bf16", np.array([2]), np.array([1]))
        return float(cost.step_time(4, 4, 4, 64.0, 0, 0.0)[0])

    assert decode(both) == pytest.approx(decode(burst_only))
    assert decode(step_only) > decode(burst_only) + 0.5e-3  # the dearer calls do count where priced
