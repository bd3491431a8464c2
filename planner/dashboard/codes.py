"""Plan codes: the short names the dashboard shows, links carry and the legend explains.

A code is `Plan.describe()` plus the rank placement when it is not the default, e.g.
`tp4 pp4 dp16 cp2 v4 mb1 sp z1 [tp>dp>cp>pp]`. Within one search (one model, cluster, batch, dtype)
it names one plan, so links name plans by it and the page looks it up among the search's plans.
"""

from __future__ import annotations

import re

from planner.plan import DEFAULT_PLACEMENT, Plan

LEGEND = (
    ("tp4", "tensor parallel: each layer's matrices split over 4 GPUs"),
    ("pp4", "pipeline parallel: the layers in 4 stages"),
    ("dp16", "data parallel: 16 replicas, each on a share of the batch"),
    ("cp2", "context parallel: each sequence split over 2 GPUs"),
    ("ep8", "expert parallel: mixture-of-experts experts spread over 8 GPUs"),
    ("etp1", "expert tensor parallel: each expert split over 1 GPU, narrower than tp (MoE parallel folding)"),
    ("v4", "4 virtual stages per pipeline GPU (interleaved 1F1B schedule)"),
    ("mb1", "micro-batch of 1 sequence"),
    ("sp", "sequence parallelism (norms and dropout split along the sequence, with tp)"),
    ("rc-selective / rc-full / rc-full/2", "activation recomputation: attention core / whole layers / 1 layer in 2"),
    ("rc-op-selective / rc-save-matmuls / rc-save-matmuls-but-mlp-up / rc-save-attn-proj",
     "per-op recomputation keeping chosen matmul outputs: every other one and attention (torchtitan) / all / "
     "all but the MLP's gate and up / the attention projections (the JAX policies of MaxText and PaxML)"),
    ("z1 / z2 / z3", "ZeRO stage: optimizer states / + gradients / + weights sharded over dp"),
    ("z3/hs8", "hybrid sharding: ZeRO over groups of 8 data-parallel GPUs, replicated across the groups"),
    ("gpipe", "GPipe schedule (all forwards, then all backwards); else 1F1B"),
    ("first4 / last2", "uneven pipeline: layers on the first / last stage"),
    ("lora16", "LoRA fine-tuning with adapters of rank 16"),
    ("@torchtitan", "the framework that runs the plan, when not the cluster's default"),
    ("[tp>dp>cp>pp]", "rank placement, innermost (fastest links) first; omitted for tp>cp>dp>pp"),
)
CODE_CHARACTERS = re.compile(r"^[a-z0-9 ./@_\[\]>-]{1,200}$")


def plan_code(plan: Plan) -> str:
    """`Plan.describe()` plus the placement when it is not the default order."""
    note = "" if plan.placement == DEFAULT_PLACEMENT else " [" + ">".join(plan.placement) + "]"
    return plan.describe() + note


def looks_like_code(text: str) -> bool:
    """Whether `text` could be a plan code (which plan it names depends on the search)."""
    return bool(CODE_CHARACTERS.match(text)) and text.split(" ")[0].startswith("tp")
