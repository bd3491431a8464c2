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


def test_torchtitans_profile_exchanges_kv_as_torchs_context_parallel_defaults_say() -> None:
    """torchtitan runs torch's context_parallel with its default options: the profile must say what the
    installed torch does (rotate_method ALL_GATHER -> "allgather", convert_to_f32 -> dK / dV in fp32),
    and Megatron-Core's ring attention stays a ring in the 16-bit dtype."""
    from planner.framework import framework

    attention = pytest.importorskip("torch.distributed.tensor.experimental._attention")
    options = attention._cp_options
    fw = framework("torchtitan")
    assert fw.cp_rotation == {"ALL_GATHER": "allgather", "ALL_TO_ALL": "ring"}[options.rotate_method.name]
    assert fw.cp_grads_fp32 is bool(options.convert_to_f32)
    assert (framework("megatron-core").cp_rotation, framework("megatron-core").cp_grads_fp32) == ("ring", False)


def test_what_the_attention_hides_of_each_exchange_worked_example() -> None:
    """docs/cost-model.md §5 (CP), worked by hand: a layer at cp 4 whose attention takes 40 ms forward and
    80 ms backward, K and V of all ranks 12 ms around the ring, their gradients 18 ms, overlap free.
    A ring hides every step's exchange behind that step's attention: nothing is exposed. An all-gather
    issued before the first step runs beside the local causal block only, 40 / 4 = 10 ms: 2 ms exposed;
    in backward the gather hides behind 80 / 4 = 20 ms, and the dK / dV of the three ring steps behind the
    next step's compute (12 ms behind 60), the last step's 18 / 3 = 6 ms behind none."""
    from planner.cost.terms import cp_exposure

    kv, grads, fwd, bwd, cp = (np.array([x]) for x in (0.012, 0.018, 0.040, 0.080, 4))
    ring = cp_exposure("ring", kv, grads, fwd, bwd, cp, 0.0)
    gather = cp_exposure("allgather", kv, grads, fwd, bwd, cp, 0.0)
    assert [float(x[0]) for x in ring] == pytest.approx([0.0, 0.0])
    assert [float(x[0]) for x in gather] == pytest.approx([0.002, 0.006])


def test_explain_says_how_a_plans_context_parallelism_exchanges_kv() -> None:
    """`planner explain` names the CP exchange the step time above was priced with, and says nothing of
    it for a plan without context parallelism."""
    from planner.cost import estimate
    from planner.plan import PlanDocument
    from planner.report import explain

    m, c = dataclasses.replace(model_preset("llama3-8b"), seq_len=65536), cluster_preset("dgx-h100").with_gpus(8)

    def framework_line(fw: str, cp: int) -> str:
        plan = Plan(dp=8 // cp, cp=cp, global_batch=8 // cp, framework=fw, recompute="full")
        doc = PlanDocument(plan=plan, model=m, cluster=c, prediction=estimate(m, c, plan))
        return next(x for x in explain(doc.to_json()).splitlines() if x.startswith(f"framework {fw}"))

    assert "context parallelism: one all-gather of every rank's K/V" in framework_line("torchtitan", 2)
    assert "(allgather), dK / dV in fp32" in framework_line("torchtitan", 2)
    assert "(ring), dK / dV in the training dtype" in framework_line("megatron-core", 2)
    assert "context parallelism" not in framework_line("torchtitan", 1)
