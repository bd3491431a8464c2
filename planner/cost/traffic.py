"""Communication volume per step and rank, by kind (the bytes behind the time terms of model.py).

Counted as the buffer each collective call is given (all-reduce: the tensor; all-gather: the gathered
output; reduce-scatter: the full input; p2p: the tensor sent), summed over one training step on one
rank of the first pipeline stage. The executor counts the same quantity on real runs, which is what
the cross-check tests compare (within 5%).
"""

from __future__ import annotations

import numpy as np

from planner.cost.memory import GRAD_BYTES, WEIGHT_BYTES, stage_params
from planner.graph import DTYPE_BYTES, build_graph
from planner.plan import Plan
from planner.specs.model import ModelSpec


def comm_volume(model: ModelSpec, plan: Plan) -> dict[str, float]:
    """Bytes per step on one rank of the first stage: {"tp": ..., "pp": ..., "dp": ...}."""
    lg = build_graph(model, plan.dtype, plan.flash_attention)
    beta = DTYPE_BYTES[plan.dtype]
    t, p, m, v = plan.tp, plan.pp, plan.grad_accum, plan.vpp
    tokens = plan.micro_batch * model.seq_len / plan.cp
    act = tokens * model.hidden * beta
    layers = model.num_layers / p

    # TP: per layer two sync points each way; with SP each all-reduce becomes all-gather + reduce-scatter.
    per_sync = 2 * act if plan.sequence_parallel else act
    syncs = 2 + 2 + (2 if plan.recompute == "full" else 0)  # forward, backward, recomputed forward
    tp = 0.0
    if t > 1:
        # + the vocabulary-parallel embedding's forward reduction, and (when this stage also holds the
        # LM head) the reduction of the head's input gradient
        tp = m * (layers * syncs * per_sync + per_sync * (2 if p == 1 else 1))

    # PP: per micro-batch, each of the first rank's v chunks sends its activation forward and all but
    # the very first send a gradient back: (2v - 1) sends of one activation (the full tensor, as
    # torch.distributed.pipelining sends it; Megatron-LM's scatter/gather sends 1/t per TP rank).
    pp = m * (2 * v - 1) * act if p > 1 else 0.0

    # DP: gradient reduction (fp32) and, for ZeRO, parameter gathers, over dp x cp ranks.
    tp_a, pp_a, ep_a = np.array([float(t)]), np.array([float(p)]), np.array([float(plan.ep)])
    first = stage_params(lg, tp_a, pp_a, ep_a, first=True)
    params = float(first.dense[0] + first.expert[0])
    g = plan.dp * plan.cp
    grad_b, w_b = GRAD_BYTES[plan.dtype], WEIGHT_BYTES[plan.dtype]
    dp = 0.0
    if g > 1:
        z = plan.zero_stage
        if z == 0:
            dp = params * grad_b
        elif z == 1:
            dp = params * (grad_b + w_b)
        elif z == 2:
            dp = m * params * grad_b + params * w_b
        else:  # per micro-batch: gather the weights for forward and again for backward
            dp = m * params * (grad_b + 2 * w_b)
    return {"tp": tp, "pp": pp, "dp": dp}
