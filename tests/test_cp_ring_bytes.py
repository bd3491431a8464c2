"""Context parallelism's ring passes the K and V that the attention kernel is called with.

Reference: the tensors each framework builds. torchtitan repeats K and V to every query head before
F.scaled_dot_product_attention (torchtitan/models/llama3/model/model.py, repeat_kv), and PyTorch's ring
attention rotates the key and value the kernel receives; Megatron-Core passes the GQA heads as projected.
Llama 3 8B: 32 query heads and 8 K/V heads of 128; at 65,536 tokens over cp 2 each rank holds 32,768
tokens, bf16, and the ring all-gathers K and V of both ranks per layer and pass: 2 x 2 ranks x 32,768
tokens x width x 2 bytes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from planner.cost import batch_from_plans
from planner.cost.terms import cost_terms
from planner.plan import Plan
from planner.specs.catalog import cluster_preset, model_preset


def ring_bytes(model: str, framework: str, tp: int) -> float:
    m = dataclasses.replace(model_preset(model), seq_len=65536)
    plan = Plan(tp=tp, cp=2, dp=1, micro_batch=1, global_batch=1, dtype="bf16", framework=framework,
                recompute="full", sequence_parallel=tp > 1)
    comms = cost_terms(m, cluster_preset("dgx-h100"), batch_from_plans([plan]), volumes=True).comms
    return float(np.asarray(next(c for c in comms if c.name == "cp.ring").nbytes)[0])


@pytest.mark.parametrize(("model", "tp", "repeated_width", "projected_width"), [
    ("llama3-8b", 1, 32 * 128, 8 * 128),  # K/V repeated 4x
    ("llama3-405b", 8, 128 // 8 * 128, 8 // 8 * 128),  # per TP rank: 16 query heads, 1 K/V head
])
def test_the_ring_passes_the_kernels_key_and_value(model: str, tp: int, repeated_width: int,
                                                    projected_width: int) -> None:
    per_width = 2 * 2 * 32768 * 2  # K and V, two ranks, 32,768 tokens each, bf16
    assert ring_bytes(model, "torchtitan", tp) == per_width * repeated_width
    assert ring_bytes(model, "megatron-core", tp) == per_width * projected_width
