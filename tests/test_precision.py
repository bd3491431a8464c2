"""Low-precision training recipes (planner/precision.py): bytes per parameter by hand (the worked
example in docs/cost-model.md), GEMMs at the low-precision peak plus their quantisation, and the
refusal of a recipe the GPU cannot run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from planner.cost import estimate
from planner.cost.compute import gemm_op_times
from planner.errors import PlanError
from planner.graph import build_graph
from planner.plan import Plan
from planner.search import search
from planner.specs.catalog import cluster_preset, model_preset

GIB = 2**30
H100 = cluster_preset("dgx-h100")
# A Blackwell-like GPU for the block-scaled recipes (the catalog's peaks are another engineer's data):
# FP8 / MXFP8 at 2x and FP4 at 4x the BF16 rate.
BLACKWELL = dataclasses.replace(
    H100, gpu=dataclasses.replace(H100.gpu, name="test-blackwell", peak_flops={
        "bf16": 2.25e15, "fp16": 2.25e15, "fp8": 4.5e15, "mxfp8": 4.5e15, "nvfp4": 9e15, "fp32": 7.5e13}))


def _linear_params(model_name: str) -> tuple[int, int]:
    """(all parameters, parameters of the linear layers that run in low precision): every layer's
    GEMM weights and biases (not the embedding, not the LM head)."""
    lg = build_graph(model_preset(model_name))
    linear = sum(op.params for op in lg.layer_ops if op.kind == "gemm")
    return lg.total_params, lg.model.num_layers * linear


@pytest.mark.parametrize(("dtype", "copy_bytes"), [
    ("bf16", 0.0),
    ("fp8", 2 * 1.0),  # an FP8 copy and its transpose, 1 byte each
    ("fp8-rowwise", 2 * 1.0),  # the same two copies, each row's fp32 scale left out (< 0.4%)
    ("mxfp8", 2 * (1 + 1 / 32)),  # rowwise and columnwise MXFP8: 1 byte + a 1-byte scale per 32
    ("nvfp4", 2 * (0.5 + 1 / 16)),  # rowwise and columnwise NVFP4: half a byte + a 1-byte scale per 16
])
def test_bytes_per_parameter_by_hand(dtype: str, copy_bytes: float) -> None:
    """docs/cost-model.md §3 worked example: Llama 3 8B on one GPU (no sharding). Every parameter keeps
    2 B of bf16 weight, 4 B of fp32 gradient and 12 B of Adam state (fp32 master, m, v); each linear
    parameter also keeps the recipe's low-precision copies."""
    psi, linear = _linear_params("llama3-8b")
    model = model_preset("llama3-8b")
    cluster = (BLACKWELL if dtype in ("mxfp8", "nvfp4") else H100).with_gpus(1)
    mem = estimate(model, cluster, Plan(global_batch=1, dtype=dtype))["memory"]
    assert mem["weights"] * GIB == pytest.approx(2 * psi + copy_bytes * linear, rel=1e-9)
    assert mem["grads"] * GIB == pytest.approx(4 * psi, rel=1e-9)
    assert mem["optimizer"] * GIB == pytest.approx(12 * psi, rel=1e-9)


def test_zero3_keeps_low_precision_copies_only_of_the_gathered_layers() -> None:
    model = model_preset("llama3-8b")
    cluster = H100.with_gpus(8)
    bf16 = estimate(model, cluster, Plan(dp=8, global_batch=8, zero_stage=3))["memory"]
    fp8 = estimate(model, cluster, Plan(dp=8, global_batch=8, zero_stage=3, dtype="fp8"))["memory"]
    _, linear = _linear_params("llama3-8b")
    per_layer = linear / model.num_layers
    assert fp8["weights"] == bf16["weights"]
    assert (fp8["other"] - bf16["other"]) * GIB == pytest.approx(2 * 2 * per_layer, rel=1e-9)


def test_linear_gemms_run_at_the_fp8_peak_plus_their_quantisation() -> None:
    """A large MLP GEMM (8192 tokens x 4096 x 14336): at the same efficiency, FP8's doubled peak
    halves the GEMM time; on top come the memory-bound casts: forward reads the bf16 input and weight
    and writes FP8 copies (3 bytes per element), backward casts the output gradient (3 bytes per
    element) and writes transposed FP8 copies of input and weight (2 bytes per element)."""
    model = model_preset("llama3-8b")
    op = next(o for o in build_graph(model).layer_ops if o.name == "mlp.down")
    # No wave quantisation (the hand numbers stay simple) and one efficiency for both formats.
    gpu = dataclasses.replace(H100.gpu, num_sms=0, gemm_efficiency_by_dtype={})
    tokens, one = np.array([8192.0]), np.array([1.0])
    bf16 = gemm_op_times(op, gpu, "bf16", tokens, one, one, 0)
    fp8 = gemm_op_times(op, gpu, "fp8", tokens, one, one, 0)
    k, n = op.gemm[0], op.gemm[1]
    m = 8192.0
    bw = gpu.memory_bandwidth * gpu.memory_efficiency
    cast_fwd = 3 * (m * k + k * n) / bw + 2 * gpu.kernel_overhead_s
    cast_bwd = (3 * m * n + 2 * (m * k + k * n)) / bw + 3 * gpu.kernel_overhead_s
    gemm_bf16 = 2 * m * k * n / (gpu.peak("bf16") * gpu.gemm_efficiency)
    assert bf16.fwd[0] == pytest.approx(gemm_bf16 + gpu.gemm_overhead_s, rel=0.02)  # compute bound
    assert fp8.fwd[0] == pytest.approx(gemm_bf16 / 2 + gpu.gemm_overhead_s + cast_fwd, rel=0.02)
    assert fp8.bwd[0] == pytest.approx(2 * (gemm_bf16 / 2 + gpu.gemm_overhead_s) + cast_bwd, rel=0.02)
    # An FP8 efficiency of its own (fitted: planner fit) replaces the 16-bit one for FP8 GEMMs only.
    slow = dataclasses.replace(gpu, gemm_efficiency_by_dtype={"fp8": gpu.gemm_efficiency / 2})
    assert gemm_op_times(op, slow, "fp8", tokens, one, one, 0).fwd[0] == pytest.approx(
        gemm_bf16 + gpu.gemm_overhead_s + cast_fwd, rel=0.02)
    assert gemm_op_times(op, slow, "bf16", tokens, one, one, 0).fwd[0] == bf16.fwd[0]


def test_attention_and_lm_head_stay_in_bf16() -> None:
    """Only the layers' linear GEMMs change: the LM head's time is the same under fp8."""
    model = model_preset("llama3-8b")
    head = next(o for o in build_graph(model).post_ops if o.name == "lm_head")
    tokens, one = np.array([8192.0]), np.array([1.0])
    a = gemm_op_times(head, H100.gpu, "bf16", tokens, one, one, 0)
    b = gemm_op_times(head, H100.gpu, "fp8", tokens, one, one, 0)
    assert (a.fwd[0], a.bwd[0]) == (b.fwd[0], b.bwd[0])


@pytest.mark.parametrize(("cluster", "dtype", "names"), [
    ("dgx-a100-80gb", "fp8", "H100"),
    ("dgx-h100", "nvfp4", "FP4 tensor cores"),
    ("dgx-h100", "mxfp8", "MXFP8"),
    ("dgx-a100-80gb", "fp8-rowwise", "H100"),
])
def test_unsupported_recipe_is_refused_naming_what_supports_it(cluster: str, dtype: str, names: str) -> None:
    model = model_preset("llama3-8b")
    c = cluster_preset(cluster).with_gpus(8)
    with pytest.raises(PlanError, match=names) as err:
        estimate(model, c, Plan(dp=8, global_batch=8, dtype=dtype))
    assert err.value.field == "dtype"
    with pytest.raises(PlanError, match=names):
        search(model, c, 8, dtype=dtype)


def test_rowwise_fp8_rescales_its_backward_gemms_outputs() -> None:
    """Row-wise scaling runs the forward at the FP8 rate with per-tensor FP8's casts (the backward
    re-quantises along the other axis, as per-tensor FP8 writes transposes), and torchao's recipe runs
    the two backward GEMMs per-tensor and rescales their 16-bit outputs after them (read + write: 4 bytes
    per element of the input gradient, m x k, and of the weight gradient, k x n, in 2 kernels). Worked
    example, Llama 3 8B's MLP down projection on 8192 tokens: k = 14336, n = 4096, m x k + k x n =
    117,440,512 + 58,720,256 elements, 704,643,072 bytes."""
    model = model_preset("llama3-8b")
    op = next(o for o in build_graph(model).layer_ops if o.name == "mlp.down")
    gpu = dataclasses.replace(H100.gpu, num_sms=0)
    tokens, one = np.array([8192.0]), np.array([1.0])
    fp8 = gemm_op_times(op, gpu, "fp8", tokens, one, one, 0)
    rowwise = gemm_op_times(op, gpu, "fp8-rowwise", tokens, one, one, 0)
    assert (op.gemm[0], op.gemm[1]) == (14336, 4096)
    rescale = 704_643_072 / (gpu.memory_bandwidth * gpu.memory_efficiency) + 2 * gpu.kernel_overhead_s
    assert rowwise.fwd[0] == fp8.fwd[0]
    assert rowwise.bwd[0] - fp8.bwd[0] == pytest.approx(rescale, rel=1e-9)
    model, cluster = model_preset("llama3-8b"), H100.with_gpus(8)
    plan = Plan(dp=8, global_batch=8, zero_stage=1)
    step = {d: estimate(model, cluster, dataclasses.replace(plan, dtype=d))["step_time_s"]
            for d in ("bf16", "fp8", "fp8-rowwise")}
    assert step["fp8"] < step["fp8-rowwise"] < step["bf16"]


def test_torchao_rowwise_recipe_rescales_its_slow_accumulation_gemms_afterwards(monkeypatch) -> None:
    """The mechanism priced above, read from the installed torchao: its rowwise recipe leaves fast
    accumulation off for the input- and weight-gradient GEMMs, and a rowwise-scaled GEMM without it
    runs torch._scaled_mm at unit scales and multiplies the output by the row scales afterwards."""
    pytest.importorskip("torchao", reason="torchao is not installed (scripts/test.sh installs it)")
    import torch
    from torchao.float8 import Float8LinearConfig, float8_ops

    cfg = Float8LinearConfig.from_recipe_name("rowwise")
    assert cfg.gemm_config_output.use_fast_accum is True
    assert cfg.gemm_config_grad_input.use_fast_accum is False and cfg.gemm_config_grad_weight.use_fast_accum is False
    seen = {}

    def fake_scaled_mm(a, b, scale_a, scale_b, **kw):  # the GEMM itself: record its scales, return ones
        seen.update(scale_a=scale_a, scale_b=scale_b, fast=kw.get("use_fast_accum"))
        return torch.ones(a.shape[0], b.shape[1], dtype=kw.get("out_dtype", torch.bfloat16))

    monkeypatch.setattr(float8_ops.torch, "_scaled_mm", fake_scaled_mm)
    a = torch.zeros(4, 16, dtype=torch.float8_e4m3fn)
    b = torch.zeros(16, 8, dtype=torch.float8_e4m3fn)
    a_scale = torch.arange(1.0, 5.0).reshape(4, 1)
    b_scale = torch.arange(1.0, 9.0).reshape(1, 8)
    out = float8_ops.addmm_float8_unwrapped(a, a_scale, b, b_scale, torch.float32, use_fast_accum=False)
    assert float(seen["scale_a"]) == 1.0 and float(seen["scale_b"]) == 1.0 and seen["fast"] is False
    assert torch.allclose(out.float(), (1.0 / a_scale) * (1.0 / b_scale), rtol=1e-2)  # bf16 rounding


@pytest.mark.parametrize(("dtype", "flags"), [
    ("fp8", ["--bf16", "--fp8-format hybrid", "--fp8-recipe delayed"]),
    ("fp8-rowwise", ["--bf16", "--fp8-format hybrid", "--fp8-recipe delayed"]),
])
def test_megatron_export_trains_in_the_plans_precision(dtype: str, flags: list[str]) -> None:
    """The Megatron-LM export of an FP8 plan used to carry no precision flag at all (fp32 training);
    it now selects Transformer Engine's FP8 recipe (row-wise deviates to per-tensor, and says so)."""
    from planner.export import export_files, export_warnings
    from planner.plan import PlanDocument, check_plan

    model, cluster = model_preset("llama3-8b"), H100.with_gpus(8)
    plan = Plan(dp=8, global_batch=8, zero_stage=1, dtype=dtype)
    check_plan(model, cluster, plan)
    doc = PlanDocument(plan=plan, model=model, cluster=cluster)
    args = export_files(doc, "megatron")["megatron.args"].splitlines()
    assert all(f in args for f in flags)
    assert any("row-wise" in w for w in export_warnings(doc, "megatron")) == (dtype == "fp8-rowwise")
    # DeepSpeed's export writes no FP8 training and says so; torchtitan's trains row-wise FP8 exactly and
    # says so only for per-tensor FP8, which its float8 converter lacks
    assert any(w.startswith("WARNING: dtype") or "dtype:" in w for w in export_warnings(doc, "deepspeed"))
    assert any("dtype:" in w for w in export_warnings(doc, "torchtitan")) == (dtype == "fp8")


@pytest.mark.parametrize(("framework", "zero", "gathered"), [("nemo", 1, True), ("nemo", 0, False),
                                                            ("megatron-lm", 1, False)])
def test_megatron_export_keeps_fp8_primary_weights_where_the_plan_was_priced_so(framework: str, zero: int,
                                                                                gathered: bool) -> None:
    """A plan priced under NeMo's profile (fp8_param_gather: FP8 primary weights) exports
    --fp8-param-gather, which Megatron-LM accepts only with the distributed optimizer: at ZeRO-0 the
    export leaves it out and says so; Megatron-LM's own profile keeps bf16 weights (no flag)."""
    from planner.export import export_files
    from planner.plan import PlanDocument

    model, cluster = model_preset("llama3-8b"), H100.with_gpus(8)
    plan = Plan(dp=8, global_batch=8, zero_stage=zero, dtype="fp8", framework=framework)
    files = export_files(PlanDocument(plan=plan, model=model, cluster=cluster), "megatron")
    assert ("--fp8-param-gather" in files["megatron.args"].splitlines()) == gathered
    said = "fp8_param_gather" in "\n".join(files.values())
    assert said == (framework == "nemo" and zero == 0)


@pytest.mark.parametrize(("tp", "sp"), [(1, False), (2, True)])
def test_transformer_engine_keeps_fp8_copies_of_its_linear_inputs_torchao_the_bf16_ones(tp: int, sp: bool) -> None:
    """What a layer keeps for backward under FP8, from the frameworks' own save lists. Transformer Engine
    (NeMo, Megatron-Core): `_LayerNormLinear.forward` saves the LayerNorm's input and the FP8 `ln_out` it
    feeds the GEMM (QKV, MLP up), `_Linear.forward` the FP8 copy of its input (the attention output
    before the output projection, the activation before the MLP down projection), while the fused
    attention kernel still keeps its bf16 output O for its own backward. Against bf16 (2 B per element)
    a layer keeps, per token, 1 B less of the QKV input (h), of the MLP up input (h) and of the MLP down
    input (f), and 1 B more for the projection's FP8 copy (h): h + f bytes, divided by tp (with SP every
    one of these tensors is split over the TP ranks). torchao's float8 linear (torchtitan) saves
    `input_hp`, the bf16 input: nothing changes."""
    model = model_preset("llama3-8b")
    h, f, layers, tokens = model.hidden, model.ffn_hidden, model.num_layers, model.seq_len
    cluster = cluster_preset("dgx-h100")

    def activations(dtype: str, fw: str) -> float:
        plan = Plan(tp=tp, dp=8 // tp, global_batch=8 // tp, sequence_parallel=sp, dtype=dtype, framework=fw)
        return estimate(model, cluster, plan)["memory"]["activations"] * GIB

    saved = activations("bf16", "nemo") - activations("fp8", "nemo")
    assert saved == pytest.approx(layers * tokens * (h + f) / tp, rel=1e-9)
    assert activations("fp8", "torchtitan") == pytest.approx(activations("bf16", "torchtitan"), rel=1e-12)


def test_explain_says_what_the_linear_layers_keep_under_fp8() -> None:
    """`planner explain` names the assumption the memory above came from: Transformer Engine's FP8 copy
    (NeMo), torchao's bf16 input (torchtitan); nothing outside the low-precision recipes."""
    from planner.plan import PlanDocument
    from planner.report import explain

    model, cluster = model_preset("llama3-8b"), H100.with_gpus(8)

    def framework_line(fw: str, dtype: str) -> str:
        plan = Plan(dp=8, global_batch=8, zero_stage=1, framework=fw, dtype=dtype)
        doc = PlanDocument(plan=plan, model=model, cluster=cluster, prediction=estimate(model, cluster, plan))
        return next(x for x in explain(doc.to_json()).splitlines() if x.startswith(f"framework {fw}"))

    assert "linear layers keep an fp8 copy of their input for the weight gradient" in framework_line("nemo", "fp8")
    assert "linear layers keep their bf16 input for the weight gradient" in framework_line("torchtitan", "fp8")
    assert "linear layers keep" not in framework_line("nemo", "bf16")
    # and whose quantisation traffic it counted: torchtitan's own (torchao's), NeMo's the recipe's default
    assert "its own fp8 casts (6 / 8 / 6 B per input / weight / output-gradient element)" in framework_line(
        "torchtitan", "fp8")
    assert "own fp8 casts" not in framework_line("nemo", "fp8")
