"""ALiBi positions (Press et al. 2022, "Train Short, Test Long"): no parameters, a per-head linear bias on
the attention scores. What the cost model charges for it, and who refuses it.

Worked example (PyTorch's CUDA baddbmm, aten/src/ATen/native/cuda/Blas.cpp, as Megatron-DeepSpeed's
BigScience fork calls it with the [b·a, 1, s] bias and beta = 1): a result distinct from `self` is first
filled with `self` expanded to [b·a, s, s] (`result.copy_(self)`: one write of the scores), and the batched
GEMM then reads it back as its C operand (beta != 0: one read). Two more passes over the scores, 2 bytes
each in 16-bit, so 2·2·a bytes per query per key in the unfused attention; the fused kernels compute the
bias from the slopes (no traffic).
"""

from __future__ import annotations

import dataclasses

import pytest

from executor.kv_cache import check_servable
from executor.model import ModelNotSupported, Transformer
from executor.run import UnsupportedPlan, check_executable
from planner.cost import estimate
from planner.errors import SpecError
from planner.export import FORMATS, ExportError, export_plan
from planner.graph import build_graph
from planner.measured.models import bloom_shape
from planner.plan import Plan, PlanDocument
from planner.specs.catalog import load_cluster, model_preset
from planner.specs.model import ModelSpec

TINY = ModelSpec(name="tiny-alibi", num_layers=2, hidden=64, num_heads=4, ffn_hidden=256, vocab_size=128,
                 seq_len=32, position="alibi")


def core(m: ModelSpec, flash: bool):
    return next(op for op in build_graph(m, "fp16", flash_attention=flash).kinds[0].ops if op.name == "attn.core")


def test_the_unfused_scores_gemm_reads_and_writes_the_broadcast_bias_once_more() -> None:
    learned = dataclasses.replace(TINY, position="learned")
    extra = core(TINY, flash=False).io_s - core(learned, flash=False).io_s
    assert extra == 2 * 2 * TINY.num_heads  # copy's write + GEMM's read of C, 2 bytes per score element


def test_fused_attention_pays_nothing_for_alibi() -> None:
    learned = dataclasses.replace(TINY, position="learned")
    assert core(TINY, flash=True) == core(learned, flash=True)


def test_alibi_has_no_parameters_and_no_rotary_op() -> None:
    rope = dataclasses.replace(TINY, position="rope")
    assert TINY.params == rope.params
    assert all(op.name != "attn.rope" for op in build_graph(TINY, "fp16").kinds[0].ops)


def test_unknown_positions_are_refused() -> None:
    with pytest.raises(SpecError, match="position"):
        dataclasses.replace(TINY, position="sinusoidal")


def test_bloom_runs_with_alibi() -> None:
    # bigscience train/tr11-200B-ml/tr11-200B-ml.slurm (the prequel benchmarks' script): --position-embedding-type alibi
    assert bloom_shape(14336, 70, 112).position == "alibi"


def doc(m: ModelSpec) -> PlanDocument:
    c = load_cluster("dgx-a100-80gb", gpus=8)
    p = Plan(tp=2, dp=4, micro_batch=1, global_batch=8, flash_attention=False)
    return PlanDocument(plan=p, model=m, cluster=c, prediction=estimate(m, c, p))


def test_the_executor_refuses_alibi_before_any_process_starts() -> None:
    with pytest.raises(UnsupportedPlan, match="ALiBi"):
        check_executable(doc(TINY))
    with pytest.raises(ModelNotSupported, match="ALiBi"):
        Transformer(TINY)
    check_executable(doc(dataclasses.replace(model_preset("gpt2"), num_layers=2)))  # the same plan, learned


def test_the_serving_executor_refuses_alibi() -> None:
    with pytest.raises(UnsupportedPlan, match="ALiBi"):
        check_servable(TINY)
    check_servable(dataclasses.replace(TINY, position="rope"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_exports_refuse_alibi(fmt: str) -> None:
    with pytest.raises(ExportError):
        export_plan(doc(TINY), fmt)
