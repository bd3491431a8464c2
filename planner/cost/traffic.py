"""Communication volume per step and rank, by kind (the bytes behind the time terms of model.py).

Convention: the buffer each collective call is given (all-reduce: the tensor; all-gather: the gathered
output; reduce-scatter: the full input; broadcast: the tensor; p2p: the tensor sent, receives are not
counted), summed over one training step (m = grad_accum micro-batches) on one rank of the first
pipeline stage. These are buffer sizes, not bytes on the wire: a ring all-reduce moves 2(g-1)/g of its
buffer over each rank's link, an all-gather or a reduce-scatter (g-1)/g (comm.py applies the factors).
tests/test_crosscheck.py counts the same quantity on real executor runs.

What is counted is the implementation the cost model times (Megatron-LM's), with act = b·s/cp·h bytes
of one micro-batch's activation:

TP ("tp"), per micro-batch:
- every layer: forward all-reduces after the row-parallel attention out-projection and MLP down
  projection; backward all-reduces of the input gradients of the column-parallel QKV and MLP up
  projections (one fused linear each); full recompute repeats the two forward ones. With sequence
  parallelism each all-reduce is an all-gather + a reduce-scatter of the same buffer, and backward
  also re-gathers the sequence-sharded inputs the column-parallel linears saved (Korthikanti et al.
  2022, Sec. 4.2.2: that is what makes their saved activations 1/t);
- the vocabulary-parallel embedding (first stage): forward all-reduce of its output (with SP a
  reduce-scatter, and an all-gather of the output gradient in backward);
- the LM head (last stage): backward all-reduce of its input gradient (with SP: forward all-gather of
  its input, backward re-gather and reduce-scatter), and the vocabulary-parallel cross-entropy's three
  fp32 all-reduces of one value per token (max logit, target logit, sum of exponentials);
- with pp > 1 and no SP, every received activation or gradient arrives as 1/t per TP rank and is
  all-gathered over TP (Narayanan et al. 2021, Sec. 4.1, scatter/gather);
- once per step with SP: the gradients of the replicated ops' weights (norms) are partial sums over
  the sequence shards and are all-reduced (Megatron-LM's layernorm-gradient all-reduce).
PP ("pp"): per micro-batch each of the rank's v model chunks sends its output activation forward and
all but the very first one send an input gradient back: (2v - 1) sends of act/t (with SP the sequence
shard, otherwise the scatter/gather's 1/t).
DP ("dp"), over dp·cp ranks; gradients are reduced in fp32 (GRAD_BYTES), weights gathered in the
training dtype: ZeRO-0 all-reduces the gradients once per step; ZeRO-1 reduce-scatters them once per
step and all-gathers the updated weights; ZeRO-2 reduce-scatters every micro-batch and all-gathers once
per step; ZeRO-3 reduce-scatters every micro-batch and all-gathers the weights for each micro-batch's
forward and again for its backward. With tied embeddings and pp > 1 the first and the last stage
all-reduce the embedding gradient once per step (counted under "dp", as model.py's dp_comm does).

Not counted: context parallelism, expert parallelism (all-to-all) and expert-TP collectives, and
one-off collectives (set-up, pipeline shape inference, DDP bucket rebuilds).

Where this repository's executor (PyTorch's DTensor / FSDP2 / DDP / pipelining) does otherwise, the
cross-check names and measures the difference instead of folding it in here: without SP its separate
q/k/v (and gate/up) ColwiseParallel linears each all-reduce their input gradient; it all-gathers the
full logits instead of a vocabulary-parallel cross-entropy; with SP its column-parallel linears save
the gathered input and skip the backward re-gather; non-reentrant checkpointing does not re-run the
last all-reduce of a layer; FSDP2's ZeRO-2 re-gathers the weights every micro-batch; DDP +
ZeroRedundancyOptimizer all-reduces and broadcasts (same buffer bytes as reduce-scatter + all-gather);
torch.distributed.pipelining sends the full activation from every TP rank.
"""

from __future__ import annotations

import numpy as np

from planner.cost.memory import GRAD_BYTES, WEIGHT_BYTES, stage_params
from planner.graph import DTYPE_BYTES, LOSS_BYTES, build_graph
from planner.plan import Plan
from planner.specs.model import ModelSpec

KINDS = ("tp", "pp", "dp")


def comm_terms(model: ModelSpec, plan: Plan) -> dict[str, float]:
    """Bytes per step on one rank of the first stage, by term ("tp.layers", "dp.grads", ...).

    A term is present only where the plan has it; the prefix before the dot is its kind.
    """
    lg = build_graph(model, plan.dtype, plan.flash_attention)
    beta = DTYPE_BYTES[plan.dtype]
    t, p, m, v = plan.tp, plan.pp, plan.grad_accum, plan.vpp
    sp = plan.sequence_parallel and t > 1
    tokens = plan.micro_batch * model.seq_len / plan.cp
    act = tokens * model.hidden * beta
    layers = model.num_layers / p
    holds_head = p == 1  # the first stage holds the LM head only without pipelining
    grad_b, w_b = GRAD_BYTES[plan.dtype], WEIGHT_BYTES[plan.dtype]
    terms: dict[str, float] = {}

    if t > 1:
        sync = 2 * act if sp else act  # one all-reduce, or one all-gather + reduce-scatter pair
        syncs = 2 + 2 + (2 if plan.recompute == "full" else 0)  # forward, backward, recomputed forward
        terms["tp.layers"] = m * layers * syncs * sync
        if sp:  # QKV and MLP up in every layer, and the LM head
            terms["tp.regather"] = m * (layers * 2 + (1 if holds_head else 0)) * act
        terms["tp.embedding"] = m * sync
        if holds_head:
            terms["tp.lm_head"] = m * sync
            terms["tp.loss"] = m * 3 * tokens * LOSS_BYTES
        if p > 1 and not sp:
            terms["tp.pp_gather"] = m * (2 * v - 1) * act
        if sp:
            replicated = layers * sum(op.params for op in lg.layer_ops if op.tp == "replicated")
            replicated += sum(op.params for op in lg.pre_ops if op.tp == "replicated")
            if holds_head:
                replicated += sum(op.params for op in lg.post_ops if op.tp == "replicated")
            terms["tp.sp_grads"] = replicated * grad_b

    if p > 1:
        terms["pp.p2p"] = m * (2 * v - 1) * act / t

    g = plan.dp * plan.cp
    if g > 1:
        tp_a, pp_a, ep_a = np.array([float(t)]), np.array([float(p)]), np.array([float(plan.ep)])
        first = stage_params(lg, tp_a, pp_a, ep_a, first=True)
        params = float(first.dense[0] + first.expert[0])
        z = plan.zero_stage
        reductions = 1 if z <= 1 else m  # ZeRO-2/3 reduce-scatter every micro-batch
        terms["dp.grads"] = reductions * params * grad_b
        if z in (1, 2):
            terms["dp.weights"] = params * w_b
        elif z == 3:
            terms["dp.weights"] = 2 * m * params * w_b
    if p > 1 and model.tied_embeddings:
        terms["dp.tied_embedding"] = model.vocab_size * model.hidden / t * grad_b
    return terms


def comm_volume(model: ModelSpec, plan: Plan) -> dict[str, float]:
    """Bytes per step on one rank of the first stage: {"tp": ..., "pp": ..., "dp": ...}."""
    out = dict.fromkeys(KINDS, 0.0)
    for name, value in comm_terms(model, plan).items():
        out[name.split(".", 1)[0]] += value
    return out
