"""Communication volume per step and rank, by kind (the bytes behind the time terms of model.py).

Convention: the buffer each collective call is given (all-reduce: the tensor; all-gather: the gathered
output; reduce-scatter: the full input; broadcast: the tensor; p2p: the tensor sent, receives are not
counted), summed over one training step (m = grad_accum micro-batches) on one rank of the first
pipeline stage. These are buffer sizes, not bytes on the wire: a ring all-reduce moves 2(g-1)/g of its
buffer over each rank's link, an all-gather or a reduce-scatter (g-1)/g (comm.py applies the factors).
tests/test_crosscheck.py counts the same quantity on real executor runs.

What is counted is the implementation the cost model times (Megatron-LM's, or where the plan's framework
profile says otherwise, that profile's), with act = b·s/cp·h bytes of one micro-batch's activation:

TP ("tp"), per micro-batch:
- every layer: forward all-reduces after the row-parallel attention out-projection and MLP down
  projection; backward all-reduces of the input gradients of the column-parallel QKV and MLP up
  projections (one fused linear each); full recompute repeats the two forward ones. With sequence
  parallelism each all-reduce is an all-gather + a reduce-scatter of the same buffer, and backward
  also re-gathers the sequence-sharded inputs the column-parallel linears saved (Korthikanti et al.
  2022, Sec. 4.2.2: that is what makes their saved activations 1/t; none under a profile with
  `sp_keeps_gathered_input`, whose per-op checkpoint policy re-runs the layers' gathers instead; under
  `recompute_skips_last_collective` full recompute repeats one collective fewer per layer);
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
DP ("dp"), over dp·cp ranks; gradients are reduced in fp32 (memory.gradient_path; 16-bit under a framework
profile with grad_reduce_in_fp32 false, or the profile's own path per dtype), weights gathered in the
training dtype: ZeRO-0 all-reduces the gradients once per step; ZeRO-1 reduce-scatters them once per
step (all-reduces them where the profile's path says so: DeepSpeed's BF16_Optimizer) and all-gathers the
updated weights; ZeRO-2 reduce-scatters every micro-batch and all-gathers once
per step; ZeRO-3 reduce-scatters every micro-batch and all-gathers the weights for each micro-batch's
forward and again for its backward. Under hybrid sharding (a shard group of f of the dp·cp ranks) the
reduce-scatters and all-gathers run inside the shard group and every reduce-scatter is followed by an
all-reduce of its 1/f shard over the replicas. With tied embeddings and pp > 1 the first and the last stage
all-reduce the embedding gradient once per step (counted under "dp", as model.py's dp_comm does).

Context parallelism ("cp"): per layer, micro-batch and direction the ring exchange of the K and V
chunks, counted as one all-gather of the full K and V (forward once, backward twice). Expert parallelism
("ep"): a dispatch and a combine all-to-all per MoE layer in each direction. Not counted: expert-TP
collectives and one-off collectives (set-up, pipeline shape inference, DDP bucket rebuilds).

The counts and buffers are `planner.cost.terms.CostTerms.comms`, the same objects the time model prices.

Where this repository's executor (PyTorch's DTensor / FSDP2 / DDP / pipelining) does otherwise, the
cross-check names and measures the difference instead of folding it in here: without SP its separate
q/k/v (and gate/up) ColwiseParallel linears each all-reduce their input gradient; it all-gathers the
full logits instead of a vocabulary-parallel cross-entropy; with SP its column-parallel linears save the
gathered input and skip the backward re-gather; non-reentrant checkpointing does not re-run the last
all-reduce of a layer (those four the cost model counts as the executor issues them under its own
framework profile, "this": `tp.layers_unfused`, `tp.logits_gather`, no `tp.regather`, one `tp.layers`
fewer per recomputed layer; a plan naming no framework is counted here under Megatron-LM's, the GPU
preset's default); FSDP2's ZeRO-2 re-gathers the weights
every micro-batch; DDP + ZeroRedundancyOptimizer all-reduces and broadcasts (same buffer bytes as
reduce-scatter + all-gather); torch.distributed.pipelining sends the full activation from every TP rank.
"""

from __future__ import annotations

from planner.cost.batch import batch_from_plans
from planner.cost.terms import cost_terms
from planner.plan import Plan
from planner.specs.catalog import cluster_preset
from planner.specs.model import ModelSpec

KINDS = ("tp", "cp", "ep", "pp", "dp")


def comm_terms(model: ModelSpec, plan: Plan) -> dict[str, float]:
    """Bytes per step on one rank of the first stage, by term ("tp.layers", "dp.grads", ...).

    A term is present only where the plan has it; the prefix before the dot is its kind.
    """
    # Volumes do not depend on link speeds: any cluster of the plan's size prices them alike.
    cluster = cluster_preset("dgx-a100-80gb").with_gpus(plan.world_size)
    terms = cost_terms(model, cluster, batch_from_plans([plan]), volumes=True)
    out: dict[str, float] = {}
    for c in terms.comms:
        total = float(c.nbytes[0] * c.calls[0])
        if total > 0:
            out[c.name] = out.get(c.name, 0.0) + total
    return out


def comm_volume(model: ModelSpec, plan: Plan) -> dict[str, float]:
    """Bytes per step on one rank of the first stage: {"tp": ..., "cp": ..., "pp": ..., "dp": ...}."""
    out = dict.fromkeys(KINDS, 0.0)
    for name, value in comm_terms(model, plan).items():
        out[name.split(".", 1)[0]] += value
    return out
