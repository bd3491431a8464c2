"""The caching allocator's reserved peak (`memory_reserved_gib_per_gpu`) against the allocated peak.

Worked example. DeepSpeed's ZeRO-1 fp16 optimizer step (deepspeed/runtime/zero/stage_1_and_2.py, v0.6)
copies the gradients of the rank's partition after the backward: the partition's fp16 gradients into one
buffer, a flat fp16 copy of them, and its fp32 cast: 2 + 2 + 4 = 8 bytes per parameter of the partition.
Under PyTorch's caching allocator without expandable segments, blocks of different cudaMalloc segments
never merge and a request larger than every cached free block takes a new segment (pytorch/devlogs,
"When does fragmentation occur in the CUDA caching allocator?", 2026-06-01), so the copies, each larger
than any activation or per-parameter gradient block, come on top of what the backward reserved. For a GPT
of L layers, hidden h, vocabulary v and s learned positions, the parameters on one GPU at tp = pp = 1 are
12·L·h² + 13·L·h + v·h + s·h + 2·h (Megatron's layout: QKV, projection, two MLP matrices with their
biases, two LayerNorms per layer; tied embeddings; the final LayerNorm); at dp = 8 the reserved peak
exceeds the allocated one (the backward's) by 8 bytes × that / 8, plus the bucket DeepSpeed's ZeRO-1 reduction
allocates after the backward under its pipeline engine (each bucket of up to `reduce_bucket_size` fp16 elements,
5e8 by default, flattened into a new tensor to all-reduce it; at most the rank's gradients here: 2 bytes × N).
DeepSpeed's BF16_Optimizer copies nothing at the step; its reduction hands the whole fp32 gradient buffer,
one tensor, to `buffered_allreduce_fallback`, where a bucket of one tensor flattens to a view of it (no copy,
whatever the bucket size) and `allreduce_bucket` casts it to the communication dtype, bf16
(`tensor.to(communication_data_type)`): 2 bytes × N, also for N above the 5e8-element bucket.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._utils import _flatten_dense_tensors

from planner.cost import estimate
from planner.measured import bloom
from planner.measured.express import MeasuredRun, express
from planner.plan import Plan
from planner.specs.catalog import load_cluster
from planner.specs.model import ModelSpec

GIB = 2**30
GPT = ModelSpec(name="gpt-2l", num_layers=2, hidden=2048, num_heads=16, ffn_hidden=8192, vocab_size=50304,
                seq_len=2048)
CLUSTER = load_cluster("dgx-a100-80gb")


def params_by_hand(m: ModelSpec) -> int:
    h, n = m.hidden, m.num_layers
    return 12 * n * h * h + 13 * n * h + m.vocab_size * h + m.seq_len * h + 2 * h


def plan(framework: str, **kw: object) -> Plan:
    fields: dict = dict(tp=1, pp=1, dp=8, micro_batch=1, global_batch=8, recompute="full", zero_stage=1,
                        dtype="fp16", framework=framework)
    fields.update(kw)
    return Plan(**fields)


def test_deepspeed_zero1_step_copies_come_on_top_of_the_backward_peak() -> None:
    pred = estimate(GPT, CLUSTER, plan("deepspeed"))
    assert pred["memory"]["activations"] > 0  # the allocated peak is the backward's, not the step's
    extra = (pred["memory_reserved_gib_per_gpu"] - pred["memory_gib_per_gpu"]) * GIB
    n = params_by_hand(GPT)
    assert n < 5e8
    assert extra == pytest.approx(8 * n / 8 + 2 * n, rel=1e-9)


def test_a_bucket_of_one_tensor_flattens_to_a_view_and_its_cast_copies_it() -> None:
    """What the worked example rests on, with torch's own flatten (DeepSpeed's is the same C++ op)."""
    buffer = torch.zeros(1000, dtype=torch.float32)
    flat = _flatten_dense_tensors([buffer])
    assert flat.data_ptr() == buffer.data_ptr()  # no copy
    cast = flat.to(torch.bfloat16)
    assert cast.untyped_storage().data_ptr() != buffer.untyped_storage().data_ptr()
    assert cast.untyped_storage().nbytes() == 2 * buffer.numel()


@pytest.mark.parametrize("layers", [2, 24])
def test_deepspeed_bf16_optimizer_casts_its_whole_gradient_buffer(layers: int) -> None:
    model = dataclasses.replace(GPT, name=f"gpt-{layers}l", num_layers=layers)
    pred = estimate(model, CLUSTER, plan("deepspeed", dtype="bf16"))
    extra = (pred["memory_reserved_gib_per_gpu"] - pred["memory_gib_per_gpu"]) * GIB
    n = params_by_hand(model)
    assert (n > 5e8) == (layers == 24)  # above the bucket size the cast is not capped by it
    assert extra == pytest.approx(min(2 * n, CLUSTER.gpu.memory_bytes - pred["memory_gib_per_gpu"] * GIB),
                                  rel=1e-9)


@pytest.mark.parametrize("framework", ["megatron-core", "torchtitan", "this", "fsdp"])
def test_frameworks_whose_step_copies_nothing_reserve_their_allocated_peak(framework: str) -> None:
    pred = estimate(GPT, CLUSTER, plan(framework, dtype="bf16"))
    assert pred["memory_reserved_gib_per_gpu"] == pred["memory_gib_per_gpu"]


def test_deepspeed_zero0_fp16_step_peak() -> None:
    """Under ZeRO-0 DeepSpeed's FP16_Optimizer (runtime/fp16/fused_optimizer.py, `step`) converts every fp16
    gradient to fp32 in a list and flattens the list while the fp16 gradients are held: at that moment the
    rank holds its fp16 weights (2 B per parameter) and gradients (2), the fp32 master weights and Adam's two
    moments (12), the list and the flat copy (4 + 4): 24 B per parameter, above the backward's 16 + the
    activations of a model this small, plus the runtime reserve."""
    pred = estimate(GPT, CLUSTER, plan("deepspeed", zero_stage=0))
    assert pred["memory"]["activations"] == 0.0  # the peak is the step's
    expected = 24 * params_by_hand(GPT) + CLUSTER.reserved_memory_bytes
    assert pred["memory_gib_per_gpu"] * GIB == pytest.approx(expected, rel=1e-9)


def test_the_reserve_never_exceeds_the_gpu() -> None:
    """Where the backward's peak plus the step's copies pass the GPU's memory, cudaMalloc fails and the
    allocator frees its cached blocks and retries: the reserve stops at the GPU (the allocated peak fits)."""
    free = estimate(GPT, CLUSTER, plan("deepspeed"))
    allocated, copies = free["memory_gib_per_gpu"], 3 * params_by_hand(GPT) / GIB  # step copies + bucket
    capacity = allocated + copies / 2  # room for the backward's peak, not for the copies on top
    cluster = dataclasses.replace(CLUSTER, gpu=dataclasses.replace(CLUSTER.gpu, memory_bytes=capacity * GIB))
    pred = estimate(GPT, cluster, plan("deepspeed"), headroom=0.0)
    assert pred["fits"] and pred["memory_gib_per_gpu"] == pytest.approx(allocated)
    assert pred["memory_reserved_gib_per_gpu"] == pytest.approx(capacity)


def test_bloom_best_tflops_rows_measured_by_nvidia_smi() -> None:
    """The BLOOM prequel's 'Best TFLOPs' fp16 runs (chronicles-prequel.md, 02-17): 20B on 8 GPUs at 67 GB,
    200B on 80 GPUs at 73 GB, each within 5% (the allocated peaks alone were 7% and 15% short)."""
    runs = [express(r) for r in bloom.read() if r.label.startswith("Best TFLOPs / fp16")]
    found = {}
    for r in runs:
        assert isinstance(r, MeasuredRun)
        if r.plan.dp == 1:
            pred = estimate(r.model, r.cluster, r.plan)
            found[r.plan.pp] = (pred["memory_reserved_gib_per_gpu"], r.memory_gib)
    assert set(found) == {1, 10}
    for predicted, measured in found.values():
        assert predicted == pytest.approx(measured, rel=0.05)
