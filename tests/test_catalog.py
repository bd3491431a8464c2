"""Preset catalogs and loaders: parameter counts against published totals, Hugging Face imports,
cluster presets, and the (de)serialisation round trip of every preset."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from planner.errors import SpecError
from planner.graph import build_graph
from planner.specs.catalog import (
    cluster_names,
    cluster_preset,
    gpu_names,
    gpu_preset,
    load_cluster,
    load_model,
    model_catalog,
    model_names,
    model_preset,
)
from planner.specs.cluster import ClusterSpec
from planner.specs.hf import from_hf_config
from planner.specs.model import ModelSpec

HF = Path(__file__).parent / "fixtures" / "hf"

ARCH_FIELDS = ("num_layers", "hidden", "num_heads", "num_kv_heads", "ffn_hidden", "vocab_size",
               "activation", "norm", "position", "tied_embeddings")

# HF fixture -> the preset describing the same architecture.
HF_MATCHES_PRESET = {
    "llama3-8b": "llama3-8b",
    "llama2-70b": "llama2-70b",
    "mixtral-8x7b": "mixtral-8x7b",
    "gpt2": "gpt2",
    "bert-base-uncased": "bert-base",
    "deepseek-v3": "deepseek-v3",
    "kimi-k2-instruct": "kimi-k2",
    "qwen3-8b": "qwen3-8b",
    "qwen3-32b": "qwen3-32b",
    "qwen3-30b-a3b": "qwen3-30b-a3b",
    "qwen3-235b-a22b": "qwen3-235b-a22b",
    "gpt-oss-20b": "gpt-oss-20b",
    "gpt-oss-120b": "gpt-oss-120b",
    "llama4-scout": "llama4-scout",
    "llama4-maverick": "llama4-maverick",
}

# HF fixture -> total parameters of the Hub checkpoint (tied embeddings counted once).
# Mistral-7B-v0.1, Qwen2-7B and Qwen2-0.5B: the safetensors totals the Hub prints;
# GPT-NeoX-20B: Black et al. 2022 ("GPT-NeoX-20B"), Table 1.
HF_PUBLISHED = {
    "mistral-7b": 7_241_732_096,
    "qwen2-7b": 7_615_616_512,
    "qwen2-0.5b": 494_032_768,
    "gpt-neox-20b": 20_554_567_680,
}


def _within(ours: int, published: list[float] | tuple[float, float]) -> bool:
    """|ours - published| <= max(1% of published, the precision the source prints)."""
    value, precision = published
    return abs(ours - value) <= max(0.01 * value, precision)


def _hf(name: str) -> dict[str, Any]:
    return json.loads((HF / f"{name}.json").read_text())


# ---- model presets --------------------------------------------------------------------------

PUBLISHED = [n for n, e in model_catalog().items() if e.get("published_params") is not None]


def test_every_preset_but_tiny_has_a_published_count() -> None:
    assert set(model_names()) - set(PUBLISHED) == {"tiny"}
    for name in PUBLISHED:
        value, precision = model_catalog()[name]["published_params"]
        assert value > 0 and precision >= 1, name


def _as_published(name: str, which: str) -> int:
    """The preset's total (`which` = "params") or active parameters, counted as its source counts them:
    without what `published_<which>_excludes` names (the MTP module: the model built without it; the
    input embedding), plus what `published_params_includes` adds (Llama 4's vision encoder)."""
    entry = model_catalog()[name]
    model = model_preset(name)
    excludes = entry.get(f"published_{which}_excludes", [])
    assert set(excludes) <= {"mtp", "embedding"}, excludes
    lg = build_graph(dataclasses.replace(model, mtp_layers=0) if "mtp" in excludes else model)
    count = lg.total_params if which == "params" else lg.active_params
    if "embedding" in excludes:
        count -= sum(op.params for op in lg.pre_ops)
    if which == "params":
        count += sum(entry.get("published_params_includes", {}).values())
    return count


@pytest.mark.parametrize("name", PUBLISHED)
def test_preset_params_match_published(name: str) -> None:
    entry = model_catalog()[name]
    model = model_preset(name)
    ours = _as_published(name, "params")
    assert _within(ours, entry["published_params"]), (name, ours, entry["published_params"])
    if "published_active_params" in entry:
        assert model.is_moe
        ours = _as_published(name, "active_params")
        assert _within(ours, entry["published_active_params"]), (name, ours, entry["published_active_params"])
    elif not model.is_moe:
        assert model.active_params == model.params


def test_deepseek_v3_mtp_module_matches_published() -> None:
    """DeepSeek-V3's README_WEIGHTS.md: the MTP module has 11.5B unique parameters (the embedding and
    output head it shares with the main model excluded), on top of the 671B main model."""
    full = build_graph(model_preset("deepseek-v3"))
    main = build_graph(dataclasses.replace(model_preset("deepseek-v3"), mtp_layers=0))
    assert full.mtp_params == full.total_params - main.total_params > 0
    assert _within(full.mtp_params, model_catalog()["deepseek-v3"]["published_mtp_params"]), full.mtp_params


def test_kimi_k2_equals_its_checkpoint() -> None:
    """Kimi K2's README prints 1T / 32B. Its Hub checkpoint's weight tensors (61 layers: 1 dense, 60
    with 384 experts and a shared one, MLA, untied 163840-token embeddings) hold 1,026,408,209,408
    parameters, without the FP8 scale factors and the routers' score-correction biases (a buffer of
    the routing rule): exactly what the graph counts."""
    assert model_preset("kimi-k2").params == 1_026_408_209_408


def test_exact_published_counts_are_exact() -> None:
    """Entries printed to the parameter (precision 1) are HF checkpoint totals: no 1% slack needed."""
    for name in PUBLISHED:
        value, precision = model_catalog()[name]["published_params"]
        if precision == 1:
            assert model_preset(name).params == value, name


def test_mixtral_active_params() -> None:
    m = model_preset("mixtral-8x7b")
    assert (m.num_experts, m.top_k) == (8, 2)
    assert 12.85e9 < m.active_params < 12.95e9 < 46.65e9 < m.params < 46.75e9


def test_tiny_preset_is_small() -> None:
    assert model_preset("tiny").params < 5_000_000


def test_unknown_model_preset() -> None:
    with pytest.raises(SpecError) as err:
        model_preset("llama9-1t")
    assert err.value.field == "model"
    assert "llama9-1t" in str(err.value) and "llama3-8b" in str(err.value)  # names the known ones


# ---- GPU and cluster presets ----------------------------------------------------------------


@pytest.mark.parametrize("name", gpu_names())
def test_gpu_preset_has_bf16_peak(name: str) -> None:
    gpu = gpu_preset(name)
    assert gpu.peak("bf16") >= 100e12
    assert gpu.memory_bytes >= 32 * 2**30 and gpu.memory_bandwidth > 1e12
    assert gpu.source


def test_h200_runs_the_h100_sxm_kernels() -> None:
    """NVIDIA's H200 datasheet gives it the H100 SXM's dense BF16 and FP8 rates (the same GH100 compute
    die at 700 W, with HBM3e): every GEMM and attention efficiency the H100 SXM was fitted to, at the
    full clock; only the memory differs (141 GB at 4.8 TB/s against 80 GB at 3.35)."""
    h100, h200 = gpu_preset("H100-SXM5-80GB"), gpu_preset("H200-SXM-141GB")
    assert h200.peak_flops == h100.peak_flops
    for key in ("gemm_efficiency", "gemm_efficiency_by_dtype", "gemm_overhead_s", "attention_efficiency",
                "attention_efficiency_by_kernel"):
        assert getattr(h200, key) == getattr(h100, key), key
    assert h200.clock_fraction == 1.0
    assert (h200.memory_bytes, h200.memory_bandwidth) == (150_755_966_976, 4.8e12)


@pytest.mark.parametrize("gpu, low, high", [("A100-SXM4-80GB", 0.50, 0.73), ("H100-SXM5-80GB", 0.35, 0.35),
                                             ("H200-SXM-141GB", 0.35, 0.35)])
def test_flash_attention_2_runs_at_its_published_fraction(gpu: str, low: float, high: float) -> None:
    """FlashAttention-2 reaches 50-73% of the A100's peak (Dao 2023, arXiv 2307.08691, abstract) and 35%
    of the H100's (Shah et al. 2024, FlashAttention-3, arXiv 2407.08608, abstract): a long causal
    attention priced with that kernel (torchtitan's, through PyTorch's SDPA) runs its forward FLOPs at a
    fraction of the 16-bit peak inside the published range."""
    import numpy as np

    from planner.cost.compute import attention_times
    from planner.graph import causal_fraction

    spec = dataclasses.replace(model_preset("llama3-8b"), seq_len=16384)
    op = next(o for o in build_graph(spec, "bf16", True).kinds[0].ops if o.kind == "attention")
    g = gpu_preset(gpu)
    tokens = seq = np.array([16384.0])
    one = np.array([1.0])
    t = attention_times(op, g, "bf16", True, True, tokens, seq, one, spec.num_heads, spec.kv_hidden, spec.hidden,
                        "fa2")
    work = op.flops_s * tokens * seq * causal_fraction(op, seq)
    achieved = float(work[0] / (t.fwd[0] * g.peak("bf16")))
    assert low - 1e-9 <= achieved <= high + 1e-9


@pytest.mark.parametrize("name", cluster_names())
def test_cluster_preset_loads(name: str) -> None:
    c = cluster_preset(name)
    assert isinstance(c, ClusterSpec) and c.name == name
    assert c.num_nodes == 1 and c.num_gpus == c.gpus_per_node
    assert c.gpu.peak("bf16") > 0
    assert c.intra_node.bandwidth >= c.inter_node.bandwidth
    assert c.source
    assert load_cluster(name) == c
    hash(c)  # presets are hashable (usable as cache keys)


@pytest.mark.parametrize("name", [n for n in cluster_names() if n != "localhost-cpu"])
def test_with_gpus(name: str) -> None:
    c = cluster_preset(name)
    per = c.gpus_per_node
    for nodes in (1, 2, 16, 128):
        scaled = c.with_gpus(per * nodes)
        assert (scaled.num_nodes, scaled.gpus_per_node, scaled.num_gpus) == (nodes, per, per * nodes)
        assert scaled.gpu == c.gpu and scaled.inter_node == c.inter_node
    partial = c.with_gpus(per // 2)  # fewer GPUs than a node: one partial node
    assert (partial.num_nodes, partial.num_gpus) == (1, per // 2)
    for bad in (per + 1, 3 * per // 2, per * 10 + 3):
        with pytest.raises(SpecError) as err:
            c.with_gpus(bad)
        assert err.value.field == "gpus" and str(bad) in str(err.value)
    for bad in (0, -8, True, 8.0, 10**30):
        with pytest.raises(SpecError) as err:
            c.with_gpus(bad)  # type: ignore[arg-type]
        assert err.value.field == "gpus"
    assert load_cluster(name, gpus=2 * per).num_nodes == 2


def test_unknown_cluster_preset() -> None:
    with pytest.raises(SpecError) as err:
        cluster_preset("dgx-z900")
    assert err.value.field == "cluster" and "dgx-h100" in str(err.value)


# ---- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", model_names())
def test_model_round_trip(name: str) -> None:
    m = model_preset(name)
    d = m.to_dict()
    back = ModelSpec.from_dict(json.loads(json.dumps(d)))
    assert back == m and back.to_dict() == d
    assert hash(back) == hash(m)


@pytest.mark.parametrize("name", cluster_names())
def test_cluster_round_trip(name: str) -> None:
    c = cluster_preset(name)
    d = c.to_dict()
    back = ClusterSpec.from_dict(json.loads(json.dumps(d)))
    assert back == c and back.to_dict() == d
    assert hash(back) == hash(c)


def test_cluster_round_trip_with_measurements() -> None:
    """A calibrated profile (gemm curve, measured collectives, provenance) survives the trip too."""
    c = cluster_preset("dgx-h100").to_dict()
    c["gpu"]["gemm_curve"] = [[1e12, 0.7], [1e9, 0.3]]
    c["intra_node"]["collectives"] = {"all_reduce": [{"group": 8, "alpha": 1e-5, "busbw": 3e11}]}
    c["provenance"] = {"tool": "planner calibrate"}
    spec = ClusterSpec.from_dict(c)
    assert spec.gpu.gemm_curve == ((1e9, 0.3), (1e12, 0.7))  # sorted by FLOPs
    back = ClusterSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec and back.provenance == {"tool": "planner calibrate"}


# ---- loaders --------------------------------------------------------------------------------


def test_load_model_accepts_preset_names() -> None:
    assert load_model("llama3-8b") == model_preset("llama3-8b")
    assert load_model("gpt2", seq_len=512).seq_len == 512
    m = model_preset("tiny")
    assert load_model(m) is m


def test_load_model_accepts_modelspec_json(tmp_path: Path) -> None:
    m = model_preset("llama2-7b")
    path = tmp_path / "my-model.json"
    path.write_text(json.dumps(m.to_dict()))
    assert load_model(str(path)) == m
    assert load_model(path) == m  # a Path works as well as a str

    d = m.to_dict()
    del d["name"]  # the file name names the model when the JSON does not
    path.write_text(json.dumps(d))
    loaded = load_model(str(path))
    assert loaded.name == "my-model" and loaded.params == m.params

    assert load_model(m.to_dict()) == m  # a dict works too


def test_load_model_accepts_hf_config(tmp_path: Path) -> None:
    m = load_model(str(HF / "llama3-8b.json"))
    assert m.name == "llama3-8b" and m.params == 8_030_261_248
    # A model folder holding config.json, as downloaded from the Hub; named after the folder.
    folder = tmp_path / "Meta-Llama-3-8B"
    folder.mkdir()
    shutil.copy(HF / "llama3-8b.json", folder / "config.json")
    assert load_model(str(folder)).name == "Meta-Llama-3-8B"
    assert load_model(str(folder / "config.json")).name == "Meta-Llama-3-8B"
    assert load_model(str(folder), seq_len=2048).seq_len == 2048


@pytest.mark.parametrize(("fixture", "preset"), sorted(HF_MATCHES_PRESET.items()))
def test_hf_config_matches_preset(fixture: str, preset: str) -> None:
    ours = from_hf_config(_hf(fixture), name=fixture)
    ref = model_preset(preset)
    for f in ARCH_FIELDS:
        assert getattr(ours, f) == getattr(ref, f), f
    assert (ours.num_experts, ours.top_k, ours.bias, ours.qkv_bias) == (
        ref.num_experts, ref.top_k, ref.bias, ref.qkv_bias)
    # Everything else but the training sequence length (the preset's is the published pre-training one).
    assert dataclasses.replace(ours, name=ref.name, seq_len=ref.seq_len, source=ref.source, dropout=ref.dropout,
                               dtype=ref.dtype) == ref
    assert ours.params == ref.params
    assert ours.active_params == ref.active_params


@pytest.mark.parametrize(("fixture", "published"), sorted(HF_PUBLISHED.items()))
def test_hf_config_matches_published_total(fixture: str, published: int) -> None:
    assert from_hf_config(_hf(fixture), name=fixture).params == published


def test_every_hf_fixture_is_covered_and_documented() -> None:
    fixtures = {p.stem for p in HF.glob("*.json")}
    assert fixtures == set(HF_MATCHES_PRESET) | set(HF_PUBLISHED)
    readme = (HF / "README.md").read_text()
    for name in fixtures:
        assert f"`{name}.json`" in readme, name


def test_hf_family_specifics() -> None:
    qwen7 = from_hf_config(_hf("qwen2-7b"))
    assert (qwen7.qkv_bias, qwen7.bias, qwen7.tied_embeddings) == (True, False, False)
    assert (qwen7.num_heads, qwen7.num_kv_heads) == (28, 4)
    qwen05 = from_hf_config(_hf("qwen2-0.5b"))
    assert (qwen05.qkv_bias, qwen05.tied_embeddings) == (True, True)
    neox = from_hf_config(_hf("gpt-neox-20b"))
    assert (neox.position, neox.norm, neox.activation, neox.bias, neox.tied_embeddings) == (
        "rope", "layernorm", "gelu", True, False)
    assert neox.dtype == "fp16"  # torch_dtype float16
    gpt2 = from_hf_config(_hf("gpt2"))
    assert (gpt2.max_position, gpt2.seq_len, gpt2.dropout) == (1024, 1024, 0.1)
    bert = from_hf_config(_hf("bert-base-uncased"))
    assert (bert.causal, bert.head, bert.type_vocab_size, bert.pooler) == (False, "mlm", 2, True)
    mistral = from_hf_config(_hf("mistral-7b"))
    assert mistral.seq_len == 8192  # 32k context capped at the default training length
    assert from_hf_config(_hf("mistral-7b"), seq_len=4096).seq_len == 4096


def test_hf_config_detected_from_architectures_alone() -> None:
    cfg = _hf("mixtral-8x7b")
    del cfg["model_type"]
    assert from_hf_config(cfg).params == model_preset("mixtral-8x7b").params


def test_a_power_limited_part_is_its_full_power_part_at_a_lower_clock() -> None:
    """H100-SXM5-96GB-500W shares the 700 W part's efficiencies (efficiencies_of) and scales every compute-bound
    rate by its clock: a GEMM and the attention kernel take 1 / clock_fraction as long, a memory-bound kernel
    as long as its own HBM makes it."""
    from planner.specs.catalog import gpu_preset

    slow, full = gpu_preset("H100-SXM5-96GB-500W"), gpu_preset("H100-SXM5-80GB")
    assert slow.efficiencies_of == full.name and 0 < slow.clock_fraction < 1
    for field in ("gemm_efficiency", "gemm_efficiency_by_dtype", "attention_efficiency",
                  "attention_efficiency_by_kernel"):
        assert getattr(slow, field) == getattr(full, field)
    flops = 4096.0 * 8192 * 8192 * 2
    assert (float(slow.gemm_time(flops, "bf16")) - slow.gemm_overhead_s) * slow.clock_fraction == pytest.approx(
        float(full.gemm_time(flops, "bf16")) - full.gemm_overhead_s)
    assert slow.peak("bf16") == full.peak("bf16")  # MFU stays against the datasheet peak
    assert float(slow.memory_time(1e9)) == pytest.approx(1e9 / (2.4e12 * slow.memory_efficiency))


def test_a_gpu_file_naming_a_full_power_part_inherits_what_it_does_not_state() -> None:
    from planner.specs.cluster import GPUSpec

    base = {"name": "my-h100-400w", "peak_flops": {"bf16": 989.4e12, "fp8": 1978.9e12}, "memory_bytes": 80e9,
            "memory_bandwidth": 3.35e12}
    gpu = GPUSpec.from_dict({**base, "efficiencies_of": "H100-SXM5-80GB", "clock_fraction": 0.7})
    from planner.specs.catalog import gpu_preset

    full = gpu_preset("H100-SXM5-80GB")
    assert (gpu.gemm_efficiency, gpu.attention_efficiency_by_kernel) == (full.gemm_efficiency,
                                                                           full.attention_efficiency_by_kernel)
    with pytest.raises(SpecError, match="efficiencies_of: unknown GPU"):
        GPUSpec.from_dict({**base, "efficiencies_of": "H100-nope"})
    with pytest.raises(SpecError, match="clock_fraction"):
        GPUSpec.from_dict({**base, "clock_fraction": 1.2})


def test_explain_names_a_power_limited_parts_clock() -> None:
    from planner.cost import estimate
    from planner.plan import Plan, PlanDocument
    from planner.report import explain
    from planner.specs.catalog import cluster_preset, model_preset

    model, cluster = model_preset("llama3-8b"), cluster_preset("grand-teton-h100").with_gpus(8)
    plan = Plan(dp=8, global_batch=8, zero_stage=1, framework="torchtitan")
    doc = PlanDocument(plan=plan, model=model, cluster=cluster, prediction=estimate(model, cluster, plan))
    line = next(x for x in explain(doc.to_json()).splitlines() if x.startswith("framework torchtitan"))
    assert f"FlashAttention-2 at 0.35 of peak at {cluster.gpu.clock_fraction:.2f} of the datasheet clock" in line


def test_explain_says_why_unfused_attention_with_misaligned_heads_is_slow() -> None:
    """BLOOM's 13824-wide model with 128 heads (108 wide: 216 bytes) against 64 heads (216 wide)."""
    from planner.cost import estimate
    from planner.plan import Plan, PlanDocument
    from planner.report import explain
    from planner.specs.catalog import cluster_preset, model_preset

    cluster = cluster_preset("dgx-a100-80gb").with_gpus(8)
    base = model_preset("gpt3-175b")
    plan = Plan(tp=8, global_batch=8, dtype="fp16", flash_attention=False, recompute="full")
    notes = []
    for heads in (128, 64):
        model = dataclasses.replace(base, name=f"h13824-a{heads}", hidden=13824, num_heads=heads,
                                    num_kv_heads=heads, ffn_hidden=4 * 13824, num_layers=8)
        doc = PlanDocument(plan=plan, model=model, cluster=cluster, prediction=estimate(model, cluster, plan))
        notes.append("not a multiple of 16 bytes" in explain(doc.to_json()))
    assert notes == [True, False]


def test_explain_names_the_optimizer_step_when_it_is_the_memory_peak() -> None:
    """DeepSpeed's fp16 ZeRO-1 step with one data-parallel replica (BLOOM's single-node runs): the step's
    gradient copies (8 B per parameter) outweigh one micro-batch's activations; with 8 replicas they do not."""
    from planner.cost import estimate
    from planner.plan import Plan, PlanDocument
    from planner.report import explain
    from planner.specs.catalog import cluster_preset, model_preset

    model = dataclasses.replace(model_preset("gpt3-175b"), num_layers=8)
    said = []
    for gpus in (8, 64):
        cluster = cluster_preset("dgx-a100-80gb").with_gpus(gpus)
        plan = Plan(tp=8, dp=gpus // 8, global_batch=64, dtype="fp16", flash_attention=False, recompute="full",
                    zero_stage=1, framework="deepspeed")
        pred = estimate(model, cluster, plan)
        doc = PlanDocument(plan=plan, model=model, cluster=cluster, prediction=pred)
        said.append((pred["memory"]["activations"] == 0.0, "the peak is the optimizer step" in explain(doc.to_json())))
    assert said == [(True, True), (False, False)]
