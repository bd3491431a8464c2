"""Framework profiles: what each overlaps changes the step as the overlap rules say, by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from planner.cost import batch_from_plans, cost_terms, estimate
from planner.errors import PlanError, SpecError
from planner.framework import framework, framework_names
from planner.plan import Plan
from planner.search import search
from planner.specs.catalog import cluster_preset, model_preset

M = model_preset("llama3-70b").with_seq_len(8192)
C = cluster_preset("dgx-h100").with_gpus(64)
TP_PLAN = dict(tp=8, dp=8, global_batch=128, recompute="full", zero_stage=1)


def test_more_overlap_never_costs_more() -> None:
    """The same TP + DP plan: no TP overlap (Megatron-DeepSpeed 2022) >= the backward all-reduce hidden
    (Megatron-LM) >= every TP collective pipelined with its GEMM (Megatron-Core)."""
    step = {fw: estimate(M, C, Plan(**TP_PLAN, framework=fw))["step_time_s"]
            for fw in ("deepspeed", "megatron-lm", "megatron-core")}
    assert step["deepspeed"] > step["megatron-lm"] > step["megatron-core"]


def test_no_tp_overlap_exposes_all_of_it() -> None:
    """tp_overlap 'none': a layer's exposed TP time is the whole of its forward and backward
    collectives (2 all-reduces each way without SP), what `layer_tp` totals."""
    plan = Plan(tp=8, dp=8, global_batch=128, framework="deepspeed")  # Megatron-DeepSpeed 2022: no overlap
    t = cost_terms(M, C, batch_from_plans([plan]))
    ref = cost_terms(M, C, batch_from_plans([dataclasses.replace(plan, tp=8, framework="megatron-lm")]))
    # compute is the same; only the exposed communication differs
    exposed_none = float(t.layer_fwd[0, 0] + t.layer_bwd[0, 0])
    exposed_bwd = float(ref.layer_fwd[0, 0] + ref.layer_bwd[0, 0])
    assert exposed_none - exposed_bwd > 0
    assert float(t.layer_tp[0, 0]) == pytest.approx(float(ref.layer_tp[0, 0]))
    compute = float(t.layer_compute[0, 0])
    assert exposed_none - compute == pytest.approx(float(t.layer_tp[0, 0]), rel=1e-9)


def test_without_gather_overlap_the_all_gather_is_exposed() -> None:
    """Megatron-DeepSpeed 2022's ZeRO-1 all-gathers the updated parameters after the optimizer step
    (no forward to hide it behind): its step is at least compute + optimizer + the whole all-gather,
    which a profile that overlaps the gather (Megatron-LM) partly hides."""
    plan = Plan(dp=64, global_batch=64, zero_stage=1, recompute="full")
    ds = dataclasses.replace(plan, framework="deepspeed")
    gather = float(cost_terms(M, C, batch_from_plans([ds])).dp_gather[0, 0])
    pred = estimate(M, C, ds)
    t = pred["time"]
    assert gather > 0
    assert pred["step_time_s"] >= t["compute"] + t["optimizer"] + t["bubble"] + gather
    hidden = estimate(M, C, dataclasses.replace(plan, framework="megatron-lm"))
    assert hidden["step_time_s"] < pred["step_time_s"]


def test_unknown_framework_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(PlanError, match="megatron-core") as err:
        Plan(framework="megatron-x")
    assert err.value.field == "framework"
    assert "this" in framework_names()


def test_the_search_tries_the_frameworks_recompute_policies() -> None:
    m = model_preset("llama3-8b")
    c = cluster_preset("dgx-h100").with_gpus(8)
    titan = search(m, c, 8, framework="torchtitan", top_k=50, rerank=0)
    assert {p.recompute for p in titan.plans} <= {"none", "op-selective", "full"}
    assert all(p.framework == "torchtitan" for p in titan.plans)


def test_frameworks_on_flashattention2_run_attention_at_its_published_h100_rate() -> None:
    """torchtitan (PyTorch SDPA) and llm-foundry (flash-attn 2) call FlashAttention-2, which reaches 35% of
    the H100's 989.4 TFLOP/s BF16 peak (Shah et al. 2024, FlashAttention-3, abstract); NeMo's cuDNN kernel
    runs faster. The attention core of a long causal sequence (memory traffic negligible) at that rate."""
    from planner.cost.compute import attention_times
    from planner.graph import build_graph
    from planner.specs.catalog import gpu_preset

    gpu = gpu_preset("H100-SXM5-80GB")
    m = model_preset("llama3-8b").with_seq_len(65536)
    (core,) = [op for k in build_graph(m).kinds for op in k.ops if op.kind == "attention"]
    s = np.array([65536.0])
    rates = {}
    for name in ("torchtitan", "fsdp", "nemo"):
        kernel = framework(name).attention_kernel
        t = attention_times(core, gpu, "bf16", True, True, s, s, np.array([1.0]), m.num_heads, m.kv_hidden,
                            m.hidden, kernel)
        work = core.flops_s * 65536.0 * 65536.0 / 2  # causal: half the query-key pairs
        rates[name] = work / float(t.fwd[0])
    assert rates["torchtitan"] == pytest.approx(0.35 * 989.4e12, rel=0.01)
    assert rates["fsdp"] == pytest.approx(rates["torchtitan"])
    assert rates["nemo"] > 1.5 * rates["torchtitan"]


def test_a_reduction_bucket_without_a_size_is_refused() -> None:
    from planner.errors import SpecError

    with pytest.raises(SpecError, match="dp_bucket_params"):
        dataclasses.replace(framework("deepspeed"), dp_bucket_params=0.0)


def test_a_whole_buffer_cast_without_its_moment_is_refused() -> None:
    """The cast's copy is priced after the backward; a profile that does not reduce then cannot state it."""
    from planner.errors import SpecError

    fw = framework("deepspeed")
    with pytest.raises(SpecError, match="reduction_casts_buffer"):
        dataclasses.replace(fw, reduction_bucket_after_backward=False)
    with pytest.raises(SpecError, match="true or false"):
        dataclasses.replace(fw.gradient_override("bf16"), reduction_casts_buffer="yes").check("bf16")


def test_every_gradient_byte_field_is_checked() -> None:
    """A profile's byte field that is out of range, a string or a boolean is refused, naming the field;
    a switch that is not a boolean likewise (each field of the dataclass, not a list kept beside it)."""
    from planner.errors import SpecError
    from planner.framework import GradientPath

    byte_fields = [f.name for f in dataclasses.fields(GradientPath) if f.name != "reduce_op"][:-1]
    assert len(byte_fields) == 6
    for name in byte_fields:
        for bad in (-1, 101, "2", True):
            with pytest.raises(SpecError, match=rf"bf16\.{name}: must be bytes per parameter"):
                dataclasses.replace(GradientPath(2, 2), **{name: bad}).check("bf16")
    with pytest.raises(SpecError, match=r"bf16\.reduction_casts_buffer: must be true or false"):
        dataclasses.replace(GradientPath(2, 2), reduction_casts_buffer=0).check("bf16")


def test_an_unknown_attention_kernel_is_refused() -> None:
    from planner.errors import SpecError
    from planner.specs.catalog import gpu_preset

    with pytest.raises(SpecError, match="attention_kernel"):
        dataclasses.replace(framework("torchtitan"), attention_kernel="fa9")
    with pytest.raises(SpecError, match="unknown attention kernel"):
        dataclasses.replace(gpu_preset("H100-SXM5-80GB"), attention_efficiency_by_kernel={"fa9": 0.5})


def test_nemo_keeps_16_bit_gradients_and_reduces_them_in_16_bit() -> None:
    """NeMo's performance recipes set grad_reduce_in_fp32 = False: Llama 3 8B (8,030,261,248 parameters,
    its config.json) on 8 H100s with cp 2 x dp 4 and ZeRO-1 holds 2 B of bf16 gradients per parameter
    (Megatron-LM: 4 B of fp32 main_grad), and its reduce-scatter moves half the bytes."""
    model, cluster = model_preset("llama3-8b").with_seq_len(8192), cluster_preset("dgx-h100").with_gpus(8)
    params = 8_030_261_248
    plans = {fw: Plan(tp=1, cp=2, dp=4, global_batch=128, zero_stage=1, framework=fw) for fw in ("nemo", "megatron-lm")}
    mem = {fw: estimate(model, cluster, p)["memory"] for fw, p in plans.items()}
    assert mem["nemo"]["grads"] * 2**30 == pytest.approx(2 * params, rel=1e-3)
    assert mem["megatron-lm"]["grads"] * 2**30 == pytest.approx(4 * params, rel=1e-3)
    assert mem["nemo"]["weights"] == mem["megatron-lm"]["weights"]  # bf16 weights either way
    assert mem["nemo"]["optimizer"] == mem["megatron-lm"]["optimizer"]  # 12 B / 8 ranks either way
    volume = {fw: {c.name: float(c.nbytes[0] * c.calls[0]) for c in
                   cost_terms(model, cluster, batch_from_plans([p]), volumes=True).comms if c.op == "reduce_scatter"
                   and c.kind == "dp"} for fw, p in plans.items()}
    assert volume["nemo"] and volume["nemo"].keys() == volume["megatron-lm"].keys()
    for name, nbytes in volume["nemo"].items():
        assert nbytes == pytest.approx(volume["megatron-lm"][name] / 2), name


def test_nemo_keeps_fp8_weights_without_a_16_bit_copy() -> None:
    """NeMo's FP8 precision plugins set fp8_param_gather = True (FP8 primary weights): Llama 3 8B's linear
    layers hold 32 x (4096 x (4096 + 1024 + 1024) + 4096 x 4096 + 3 x 4096 x 14336) = 6,979,321,856
    parameters (its config.json; the embedding, LM head and norms stay 16-bit). Under the fp8 recipe
    Megatron-LM keeps their bf16 weight beside an FP8 copy and its transpose (2 + 2 B); NeMo keeps only the
    FP8 pair (2 B), so its weights are 2 B x 6,979,321,856 smaller; under mxfp8 (fp8_param_gather False
    in NeMo) and bf16 both keep the same bytes."""
    model, cluster = model_preset("llama3-8b").with_seq_len(8192), cluster_preset("dgx-h100").with_gpus(8)
    linear = 32 * (4096 * (4096 + 1024 + 1024) + 4096 * 4096 + 3 * 4096 * 14336)
    assert linear == 6_979_321_856

    def weights(fw: str, dtype: str) -> float:
        plan = Plan(tp=1, cp=2, dp=4, global_batch=128, zero_stage=1, framework=fw, dtype=dtype)
        return estimate(model, cluster, plan)["memory"]["weights"] * 2**30

    assert weights("megatron-lm", "fp8") - weights("nemo", "fp8") == pytest.approx(2 * linear, rel=1e-6)
    assert weights("megatron-lm", "fp8") - weights("megatron-lm", "bf16") == pytest.approx(2 * linear, rel=1e-6)
    assert weights("nemo", "fp8") == pytest.approx(weights("nemo", "bf16"), rel=1e-9)


def test_transformer_engine_norms_keep_their_input_only() -> None:
    """Megatron's Transformer Engine layers fuse the pre-attention and pre-MLP RMSNorm into the linear
    layer after them (LayerNormLinear / LayerNormMLP), which saves the norm's input and not its normalised
    tensor; torchtitan's unfused RMSNorm keeps both. Llama 3 8B at 8,192 tokens (tp 1, one micro-batch in
    flight): 32 layers x 2 norms x 4096 x 2 B x 8192 tokens = 4,294,967,296 B fewer saved activations."""
    model, cluster = model_preset("llama3-8b").with_seq_len(8192), cluster_preset("dgx-h100").with_gpus(8)
    acts = {fw: estimate(model, cluster, Plan(dp=8, global_batch=8, zero_stage=1, framework=fw))["memory"]
            ["activations"] * 2**30 for fw in ("megatron-lm", "torchtitan", "nemo")}
    assert acts["torchtitan"] - acts["megatron-lm"] == pytest.approx(32 * 2 * 4096 * 2 * 8192, rel=1e-9)
    assert acts["nemo"] == pytest.approx(acts["megatron-lm"], rel=1e-12)


def test_frameworks_command_lists_what_each_profile_keeps(capsys: pytest.CaptureFixture[str]) -> None:
    """`planner frameworks --json` carries the memory switches: NeMo's recipes keep bf16 gradients and FP8
    primary weights (grad_reduce_in_fp32 = False, fp8_param_gather = True) in Transformer Engine layers
    (fused norms); torchtitan keeps fp32 gradients and runs an unfused RMSNorm."""
    import json

    from planner.cli import main

    assert main(["frameworks", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    switches = ("grad_reduce_in_fp32", "fp8_param_gather", "fused_norm", "quantized_saved_inputs")
    assert tuple(rows["nemo"][k] for k in switches) == (False, True, True, True)
    assert tuple(rows["torchtitan"][k] for k in switches) == (True, False, False, False)
    # torchtitan runs eager unless told to compile (its CompileConfig default, what the export keeps)
    assert (rows["torchtitan"]["compiled"], rows["torchtitan-compile"]["compiled"]) == (False, True)
    assert rows["torchtitan-async-tp"]["compiled"] and rows["torchtitan-2024"]["composite_rms_norm"]
    assert main(["frameworks"]) == 0
    out = capsys.readouterr().out
    assert "16-bit grads, fp8 weights, fused norms" in out and "eager, composite norm" in out
    # the optimizer step's bytes per parameter: a profile's own count per dtype, JSON and table alike
    assert rows["megatron-lm"]["optimizer_step_bytes"] == {"bf16": 50, "fp16": 58}
    assert rows["this"]["optimizer_step_bytes"] == 72 and "bf16 50 B, fp16 58 B" in out


def test_deepspeed_profile_reduces_gradients_after_the_backward_as_its_pipeline_engine_does() -> None:
    """Megatron-DeepSpeed trains through DeepSpeed's PipelineEngine, which switches the backward's gradient
    all-reduce off and schedules one ReduceGrads after the batch's last backward. DeepSpeed's own
    TrainSchedule (2 stages, 4 micro-batches, either stage) says when: the deepspeed profile must not
    overlap the reduction with the backward."""
    schedule = pytest.importorskip("deepspeed.runtime.pipe.schedule")
    for stage in (0, 1):
        order = [type(c) for cmds in schedule.TrainSchedule(micro_batches=4, stages=2, stage_id=stage).steps()
                 for c in cmds]  # the stage's instructions in the order it runs them
        backward = [i for i, kind in enumerate(order) if kind is schedule.BackwardPass]
        reduce = [i for i, kind in enumerate(order) if kind is schedule.ReduceGrads]
        assert len(backward) == 4 and len(reduce) == 1 and reduce[0] > backward[-1]
    assert not framework("deepspeed").dp_overlap


def test_a_release_profile_is_its_parent_with_what_it_states() -> None:
    """torchtitan-compile-2024 extends torchtitan-compile: every switch it does not state is the parent's."""
    child, parent = framework("torchtitan-compile-2024"), framework("torchtitan-compile")
    own = {"name", "description", "source", "cross_entropy", "quantise_bytes"}
    for f in dataclasses.fields(child):
        if f.name not in own:
            assert getattr(child, f.name) == getattr(parent, f.name), f.name
    assert (child.cross_entropy, parent.cross_entropy) == ("eager-fp32", "compiled")
    # its own per-tensor fp8 casts (that torchao release's), the parent's row-wise ones (a mapping, key by key)
    assert child.quantise_traffic("fp8") != parent.quantise_traffic("fp8")
    assert child.quantise_traffic("fp8-rowwise") == parent.quantise_traffic("fp8-rowwise") is not None


def test_a_release_profile_extends_a_mapping_key_by_key() -> None:
    """deepspeed-zero-bf16 states only its bf16 gradient path; its fp16 path is deepspeed's."""
    from planner.cost.memory import gradient_path

    child, parent = framework("deepspeed-zero-bf16"), framework("deepspeed")
    assert gradient_path(child, "fp16") == gradient_path(parent, "fp16")
    assert gradient_path(child, "bf16") == gradient_path(child, "fp16") != gradient_path(parent, "bf16")


def test_a_profile_extending_itself_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import planner.framework as fwmod

    catalog = {"a": {"extends": "b"}, "b": {"extends": "a"}}
    monkeypatch.setattr(fwmod, "_catalog", lambda: catalog)
    fwmod.framework.cache_clear()
    try:
        with pytest.raises(SpecError, match="extends itself"):
            fwmod.framework("a")
    finally:
        fwmod.framework.cache_clear()


def test_the_executors_adamw_streams_what_its_profile_prices() -> None:
    """One optimizer step of the executor's own Trainer (the tiny GPT on one CPU rank, default options):
    every aten op it dispatches over parameter-sized tensors, counted by a TorchDispatchMode (bytes of
    the distinct tensors read, plus those written), is the `this` profile's optimizer_step_bytes per
    parameter and optimizer_launches_per_tensor per parameter tensor."""
    import dataclasses

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from executor.parallel_dims import ParallelDims
    from executor.trainer import Trainer, TrainOptions
    from planner.plan import PlanDocument
    from planner.specs.catalog import localhost_cpu

    class Count(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.launches, self.bytes = 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            # parameter-sized operands (the 0-d step counter is not one)
            big = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.numel() > 1]
            if big:
                written = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.numel() > 1]
                self.launches += 1
                self.bytes += sum({t.data_ptr(): t.nbytes for t in big}.values()) + sum(t.nbytes for t in written)
            return out

    plan = Plan(micro_batch=1, global_batch=1, dtype="fp32")
    doc = PlanDocument(plan=plan, model=model_preset("tiny"),
                       cluster=dataclasses.replace(localhost_cpu(), gpus_per_node=1))
    trainer = Trainer(doc, ParallelDims.from_plan(plan), None, torch.device("cpu"), TrainOptions())
    (opt,) = trainer.optimizers
    params = [p for group in opt.param_groups for p in group["params"]]
    for _ in range(2):  # the first step creates the moments; count a later one
        for p in params:
            p.grad = torch.randn_like(p)
        counter = Count()
        with counter:
            opt.step()
    fw = framework("this")
    assert counter.bytes / sum(p.numel() for p in params) == fw.optimizer_step_bytes == 72
    assert counter.launches / len(params) == fw.optimizer_launches_per_tensor == 7


def test_a_profile_may_state_its_optimizer_bytes_per_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """megatron-lm's step streams 50 B per parameter under bf16 and 58 under fp16 (its unscale pass);
    another dtype falls back to the fused default (0), and a bad entry is one clear SpecError."""
    import planner.framework as fwmod

    fw = framework("megatron-lm")
    assert (fw.optimizer_bytes("bf16"), fw.optimizer_bytes("fp16"), fw.optimizer_bytes("fp32")) == (50, 58, 0)
    base = dict(fwmod._catalog()["megatron-lm"])
    for bad, match in (({"bf16": -1}, "0..1000"), ({"int8": 40}, "fp32, fp16 or bf16")):
        monkeypatch.setattr(fwmod, "_catalog", lambda bad=bad: {"x": {**base, "optimizer_step_bytes": bad}})
        fwmod.framework.cache_clear()
        try:
            with pytest.raises(SpecError, match=match):
                fwmod.framework("x")
        finally:
            fwmod.framework.cache_clear()
