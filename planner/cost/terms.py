"""The per-micro-batch cost terms of many plans: the one contract between the cost model's consumers.

`cost_terms(model, cluster, batch)` prices every row of a PlanBatch once; the closed form
(planner/cost/model.py), the step simulation (planner/simulate.py), the trace (planner/trace.py) and
the traffic counts (planner/cost/traffic.py) all read the resulting `CostTerms`, so a term is computed,
and cited, in exactly one place: here (compute in compute.py, collectives in comm.py, bytes per
parameter and saved activations in memory.py, overlap rules in overlap.py).

Tensor parallelism (Shoeybi et al. 2019; Korthikanti et al. 2022 Sec. 4.2.2): per layer two sync
points in forward and two in backward, each an all-reduce, or with sequence parallelism an all-gather
+ reduce-scatter pair; backward also re-gathers the sequence-sharded inputs of the column-parallel
linears. The backward reduction of a column-parallel linear's input gradient overlaps its
weight-gradient GEMM (Megatron-LM's async TP all-reduce).
Pipeline p2p (Narayanan et al. 2021 Sec. 4.1): each TP rank sends 1/t of the activation; without
sequence parallelism the receiver all-gathers it over TP.
Context parallelism: a ring exchange of K and V chunks overlapped with the attention core (Liu et al.
2023, Ring Attention): forward once, backward twice (K/V and their gradients).
Expert parallelism: a dispatch and a combine all-to-all per MoE layer in each direction (Lepikhin et
al. 2021, GShard).
Data parallelism: gradients reduced in fp32 in 25 MiB buckets (PyTorch DDP's default, Li et al. 2020;
Megatron-Core: max(40M, 1M x dp) parameters, the framework profile's dp_bucket_params),
parameters gathered in the training dtype; ZeRO-2/3 issue per-layer collectives every micro-batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from planner.cost.batch import PlanBatch, group_index, unique_inverse
from planner.cost.comm import collective_time, functional_or_plain, p2p_time, product_layout
from planner.cost.compute import low_precision, ops_times
from planner.cost.memory import (
    FP32_BYTES,
    MATMUL_POLICIES,
    OPTIMIZER_STEP_BYTES,
    WEIGHT_BYTES,
    gradient_path,
    layer_activation_bytes,
    loss_peak_bytes,
    op_params_per_gpu,
    policy_saved_bytes,
    saved_bytes,
)
from planner.cost.overlap import hide
from planner.cost.stages import ClassArrays, class_arrays
from planner.framework import Framework, default_framework, framework
from planner.graph import (
    DTYPE_BYTES,
    LOSS_BYTES,
    LayerGraph,
    Op,
    build_graph,
    with_eager_ops,
    with_fused_norms,
    with_quantized_saved_inputs,
)
from planner.plan import RECOMPUTE
from planner.precision import RECIPES, base_dtype, extra_weight_bytes
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

Array = np.ndarray
# The fraction of a training step's memory traffic a host's cache level serves: none. Its data does not
# survive in cache between two uses (flushing the cache between forward and backward leaves a CPU step's
# time unchanged: docs/cost-model.md §2, `python benchmarks/cache_flush.py`), so layers, gradient
# accumulation and the optimizer's first pass stream from memory (a GPU has one level anyway); only an
# unfused optimizer's repeated passes over the tensor it has just touched are served from cache.
TRAINING_RESIDENT = 0.0
FIRST_MATMUL_POLICY = RECOMPUTE.index(MATMUL_POLICIES[0])
assert RECOMPUTE[FIRST_MATMUL_POLICY:] == MATMUL_POLICIES, "RECOMPUTE must end with the matmul policies in order"
DDP_BUCKET_BYTES = 25 * 2**20  # gradient bucket of DDP / Megatron-LM's overlapped reduction


@dataclass(frozen=True)
class Comm:
    """One communication of a training step on one rank of the first pipeline stage.

    `nbytes` is the buffer handed to each call (all-reduce: the tensor; all-gather: the gathered
    output; reduce-scatter: the full input; all-to-all: what one rank holds; p2p: the tensor sent),
    `calls` the calls per step, `seconds` the time of one call on its links. Arrays over rows.
    """

    name: str  # "<kind>.<what>", kind one of tp, cp, ep, pp, dp
    op: str  # all_reduce | all_gather | reduce_scatter | all_to_all | p2p
    nbytes: Array
    calls: Array
    seconds: Array

    @property
    def kind(self) -> str:
        return self.name.split(".", 1)[0]


@dataclass(frozen=True)
class PlanAxes:
    """The plan fields the closed form reads, broadcastable to the terms' leading shape."""

    pp: Array
    vpp: Array
    m: Array  # micro-batches per step (gradient accumulation)
    gb: Array  # global batch (sequences)
    rc: Array  # recompute index into planner.plan.RECOMPUTE
    zero: Array  # ZeRO stage
    every: Array  # full recompute of 1 in every k layers


@dataclass(frozen=True)
class CostTerms:
    """Cost terms of many plans (seconds per micro-batch unless noted).

    Every array has the leading shape `grid`: (plans,) from `cost_terms`, or (structures, recompute
    policies, ZeRO stages) from `cost_grid`, where the search prices every recompute x ZeRO variant of
    a structure at once; arrays broadcast along axes they do not depend on (size 1). Layer terms
    have a trailing axis over layer kinds (`LayerGraph.kinds`), stage-class terms one over stage
    classes (`planner.cost.stages`: ranks holding the same layers and extras).
    """

    grid: tuple[int, ...]
    axes: PlanAxes
    dtype: str  # training precision (bytes per parameter of the model states)
    framework: Framework  # what the framework overlaps (the data-parallel and pipeline overlap rules read it)
    # One layer of each kind, one micro-batch: (..., kinds).
    layer_fwd: Array  # forward compute + exposed TP / CP / EP communication + host overheads
    layer_bwd: Array  # backward, incl. recompute, exposed communication and host overheads
    layer_compute: Array  # forward + backward + recompute compute and host time alone (no communication)
    layer_tp: Array  # TP communication, all of it (exposed or not), forward + backward + recompute
    layer_cp: Array  # CP ring exchange, all of it
    layer_ep: Array  # EP all-to-alls, all of them
    layer_act: Array  # bytes kept for backward under the plan's recompute policy
    layer_act_full: Array  # bytes a layer holds while it runs without recompute (full recompute's working set)
    layer_weights: Array  # weight bytes of one layer per GPU (ZeRO-3 gathers two at a time)
    layer_lowp: Array  # bytes of one layer's low-precision weight copies per GPU (0 in bf16 / fp32)
    # The embedding on the first virtual stage and the head + loss on the last: (...).
    pre_fwd: Array
    pre_bwd: Array
    post_fwd: Array
    post_bwd: Array
    pre_compute: Array
    post_compute: Array
    pre_tp: Array  # the embedding's TP communication, all of it (vocabulary-parallel output reduction)
    post_tp: Array  # the head's and the loss's TP communication, all of it
    pre_saved: Array  # bytes the embedding saves per micro-batch
    post_saved: Array  # bytes the head and loss save per micro-batch
    logits: Array  # bytes of one micro-batch's logits buffer (last stage)
    # Pipeline: (...).
    p2p: Array  # one blocking send to a neighbouring stage (incl. the TP re-gather without SP)
    pp_host: Array  # host cost of the pipeline schedule per micro-batch per model chunk
    # Stage classes: (..., classes).
    classes: ClassArrays
    params_dense: Array  # parameters per GPU replicated over dp x cp ranks
    params_expert: Array  # expert parameters per GPU replicated over (dp / ep) x cp ranks
    lowp_copies: Array  # bytes of the class's low-precision weight copies (kept for every layer unless ZeRO-3)
    train_dense: Array  # of params_dense, those trained (gradients, optimizer states); fewer when fine-tuning
    train_expert: Array
    largest_trained: Array  # the largest trained op's parameters on one GPU of the class (its gradient's elements)
    dp_reduce: Array  # once-per-step gradient reduction (ZeRO-0 all-reduce, ZeRO-1 reduce-scatter)
    dp_reduce_last: Array  # its last bucket, which starts when the backward ends
    dp_reduce_mb: Array  # per-micro-batch gradient reduce-scatter, per layer (ZeRO-2/3), whole stage
    dp_gather: Array  # once-per-step parameter all-gather (ZeRO-1/2)
    dp_gather_mb: Array  # per-micro-batch parameter all-gather, per layer (ZeRO-3), whole stage, one pass
    optimizer: Array  # optimizer step (s per step)
    # Per step: (...).
    emb_sync: Array  # tied-embedding gradient all-reduce between the first and last stage
    has_dp: Array  # bool: there is a data-parallel (dp x cp) replica to synchronise with
    dp_group: Array  # ranks ZeRO shards a dense parameter over: the dp x cp ranks it is replicated over, or
    # under hybrid sharding their shard group
    edp_group: Array  # ranks an expert parameter is replicated over ((dp / ep) x cp)
    total_layers: Array  # (kinds,) layers of each kind in the model
    graph: LayerGraph  # the layer graph the terms were priced on (kinds, adapters)
    comms: tuple[Comm, ...] = ()  # every communication's volume, count and time (first stage), if asked

    def select(self, index: tuple[Array, ...]) -> CostTerms:
        """The terms at grid positions `index` (one index array per grid axis), as (len,) rows."""
        lead = len(self.grid)

        def pick(x: Array) -> Array:
            x = np.asarray(x)
            if x.ndim < lead:
                return x
            # index only the grid axes x varies along (most terms vary by structure alone)
            at = tuple(ix if n > 1 else 0 for ix, n in zip(index, x.shape[:lead], strict=True))
            if all(n == 1 for n in x.shape[:lead]):
                return np.broadcast_to(x[at], (len(index[0]), *x.shape[lead:]))
            return x[at]

        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out: dict[str, object] = {}
        for name, value in fields.items():
            if name == "grid":
                out[name] = (len(index[0]),)
            elif name in ("dtype", "framework"):
                out[name] = value
            elif name in ("axes", "classes"):
                parts = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
                out[name] = type(value)(**{k: pick(x) if isinstance(x, np.ndarray) else x for k, x in parts.items()})
            elif name in ("total_layers", "comms", "graph"):
                out[name] = value
            else:
                out[name] = pick(value)
        return CostTerms(**out)  # type: ignore[arg-type]


def _pad(cols: list[Array], n: int, like: Array) -> list[Array]:
    zero = np.zeros_like(like, dtype=np.float64)
    return (cols + [zero] * n)[:n]


def _trained_params(ops: tuple[Op, ...] | list[Op], tp: Array, etp: Array, ep: Array) -> tuple[Array, Array, Array]:
    """Per structure, the trained (not frozen) ops' parameters on one GPU: (dense, routed experts', the
    largest op's), the last standing for the largest gradient tensor (a linear layer's weight, counted with
    its bias; the embedding's table, with a learned position table)."""
    zero = np.zeros_like(tp, dtype=np.float64)
    sizes = [(op.routed, op_params_per_gpu(op, etp if op.routed else tp, ep))
             for op in ops if op.params and not op.frozen]
    dense = sum((n for routed, n in sizes if not routed), zero)
    expert = sum((n for routed, n in sizes if routed), zero)
    return dense, expert, np.maximum.reduce([n for _, n in sizes]) if sizes else zero


def _count_tensors(op: Op, model: ModelSpec, fused_qkv: bool) -> int:
    """Parameter tensors of an op (a weight, plus a bias or a LayerNorm's beta): what the optimizer and
    the gradient passes launch kernels for. Learned positions are a second embedding table; a framework
    that keeps q, k and v as three linear layers (`Framework.fused_qkv` false) has three of each."""
    if not op.params:
        return 0
    per = 2 if op.bias or (model.norm == "layernorm" and op.name.endswith("norm")) else 1
    if op.name == "embed" and model.position == "learned":
        return per + 1
    return 3 * per if op.name == "attn.qkv" and not fused_qkv else per


def _tp_dtensor_tensors(op: Op, model: ModelSpec, fused_qkv: bool, sp: bool) -> int:
    """Of an op's parameter tensors, those tensor parallelism makes DTensors (executor.tensor_parallel):
    every sharded layer's, the replicated norms' only under SP (SequenceParallel wraps them), never the
    learned position table (the executor's tensor-parallel plan leaves it plain)."""
    if op.tp == "replicated" and not sp:
        return 0
    n = _count_tensors(op, model, fused_qkv)
    return n - 1 if op.name == "embed" and model.position == "learned" and n else n


def gathers_per_microbatch(zero: Array, fw: Framework) -> Array:
    """Where the sharded wrapper all-gathers each layer's parameters before every micro-batch's forward:
    ZeRO-3, and ZeRO-2 under a framework that reshards them after each backward
    (`Framework.zero2_gather_per_microbatch`); elsewhere ZeRO-1/2 gather once per step."""
    return (zero == 3) | ((zero == 2) & fw.zero2_gather_per_microbatch)


def tp_collective(cluster: ClusterSpec, fw: Framework, op: str) -> str:
    """The name TP's `op` is priced under: its functional-collective measurement where the framework
    issues functional collectives (`Framework.functional_tp_collectives`) and the profile timed them."""
    return functional_or_plain(cluster.intra_node, op) if fw.functional_tp_collectives else op


def ring_kv_width(model: ModelSpec, fw: Framework) -> float:
    """Elements per token of the K (and of the V) that context parallelism's ring passes: the model's
    K/V heads, or every query head's where the framework repeats K and V before the attention kernel
    (`Framework.repeated_kv`; MLA's keys and values are per head already)."""
    if fw.repeated_kv and not model.is_mla:
        return float(model.num_heads * model.head_dim)
    return float(model.kv_hidden)


def ring_pass_times(cluster: ClusterSpec, fw: Framework, q: Array, kv: Array, cp: Array) -> tuple[Array, Array]:
    """(forward, backward) seconds of the ring attention's element-wise passes outside its kernels in one
    layer pass (Framework.cp_ring_bytes, memory bound): `q` local query elements, `kv` local key and value
    elements, `cp` ranks in the ring (cp - 1 steps after the first); zero without context parallelism."""
    zero = np.zeros_like(np.asarray(q, dtype=np.float64))
    if not fw.cp_ring_bytes or not np.any(cp > 1):
        return zero, zero
    (fq, fk), (sq, sk), (bq, bk), (tq, tk) = fw.cp_ring_bytes
    steps = np.maximum(cp - 1, 0.0)
    on = cp > 1

    def seconds(once_q: float, once_kv: float, step_q: float, step_kv: float) -> Array:
        nbytes = once_q * q + once_kv * kv + steps * (step_q * q + step_kv * kv)
        return np.where(on, cluster.gpu.memory_time(nbytes, 0, TRAINING_RESIDENT) * cluster.compute_slowdown, 0.0)

    return seconds(fq, fk, sq, sk), seconds(bq, bk, tq, tk)


def cp_exposure(rotation: str, kv: Array, grads: Array, attn_fwd: Array, attn_bwd: Array, cp: Array,
                slowdown: Array | float) -> tuple[Array, Array]:
    """(forward, backward) seconds of a layer's context-parallel exchange that the attention core does not
    hide: `kv` the time of all ranks' K and V passed around once, `grads` that of their gradients.
    "ring": each step's chunk travels beside the whole attention (Liu et al. 2023). "allgather" (torch's
    default ALL_GATHER rotater): the K/V of all ranks are gathered before the first step, beside only the
    local causal block, 1/cp of a rank's load-balanced attention; in backward the dK/dV of each step
    travel beside the next step's compute, the last step's beside none."""
    if rotation == "ring":
        return hide(kv, attn_fwd, slowdown), hide(kv + grads, attn_bwd, slowdown)
    n = np.maximum(cp, 1)
    last = np.where(cp > 1, grads / np.maximum(n - 1, 1), 0.0)
    return (hide(kv, attn_fwd / n, slowdown),
            hide(kv, attn_bwd / n, slowdown) + hide(grads - last, attn_bwd * (n - 1) / n, slowdown) + last)


def tp_exposure(mode: str, sp: Array, ag: Array, rs: Array, ar: Array, fwd_total: Array, bwd_total: Array,
                col_fwd: list[Array], row_fwd: list[Array], col_wgrad: list[Array],
                summed_input_grads: tuple[bool, bool], slowdown: Array | float,
                regather: bool = True) -> tuple[Array, Array]:
    """(forward, backward) seconds of a layer's tensor-parallel collectives that its GEMMs do not hide, under
    the framework's `tp_overlap` mode (Framework.tp_overlap). `ag` / `rs` / `ar`: one activation-sized
    all-gather / reduce-scatter / all-reduce; `fwd_total` / `bwd_total`: all of them, exposed; the GEMM
    windows: each column-parallel group's forward and weight-gradient time (attention's input projection,
    then the MLP's), each row-parallel GEMM's forward time (= its input-gradient time);
    `summed_input_grads`: whether each column-parallel group's input gradient sums several matmuls
    (separate q / k / v, gate / up linears); `regather`: with SP, backward re-gathers each column-parallel
    group's saved sequence shard (False where the gathered input was saved:
    Framework.sp_keeps_gathered_input; `bwd_total` then leaves those gathers out too)."""
    if mode == "none":  # every TP collective on the compute stream
        return fwd_total, bwd_total
    rg = hidden_regather(sp, ag, col_wgrad, slowdown) if regather else 0.0
    if mode == "backward":
        # The column-parallel input-gradient reduction overlaps the weight-gradient GEMM; with SP the
        # re-gather of the saved input overlaps the input-gradient GEMM, and the gather of the output
        # gradient ahead of each row-parallel GEMM is exposed; forward is exposed.
        return fwd_total, np.where(sp, 2 * ag + sum(hide(rs, w, slowdown) for w in col_wgrad) + rg,
                                   sum(hide(ar, w, slowdown) for w in col_wgrad))
    # "all" / "micro-pipeline": each collective chunked and pipelined with the GEMM it feeds or drains, but
    # torch's async TP fuses a reduce-scatter only with the one matmul producing its input, so a group whose
    # input gradient sums several matmuls reduce-scatters it exposed, and it never fuses an all-reduce (no SP)
    micro = mode == "micro-pipeline"
    exposed = summed_input_grads if micro else (False, False)
    fwd_sp = sum(hide(ag, w, slowdown) for w in col_fwd) + sum(hide(rs, w, slowdown) for w in row_fwd)
    bwd_sp = (sum(hide(ag, w, slowdown) for w in row_fwd) + rg
              + sum(rs if out else hide(rs, w, slowdown) for w, out in zip(col_wgrad, exposed, strict=True)))
    if micro:
        return np.where(sp, fwd_sp, fwd_total), np.where(sp, bwd_sp, bwd_total)
    return (np.where(sp, fwd_sp, sum(hide(ar, w, slowdown) for w in row_fwd)),
            np.where(sp, bwd_sp, sum(hide(ar, w, slowdown) for w in col_wgrad)))


def hidden_regather(sp: Array, ag: Array, col_wgrad: list[Array], slowdown: Array | float) -> Array:
    """Exposed seconds of a layer's backward re-gathers of the column-parallel groups' saved sequence shards
    (`ag`: one of them) where the framework overlaps TP communication (every `tp_overlap` mode but
    "none"): with SP, each behind its group's weight-gradient GEMM; none without SP."""
    return np.where(sp, sum(hide(ag, w, slowdown) for w in col_wgrad), 0.0)


def last_forward_exposure(mode: str, sp: Array, last: Array, row_last: Array, slowdown: Array | float) -> Array:
    """Exposed seconds of a layer's last forward collective (`last`: the reduce-scatter, or all-reduce
    without SP, after the MLP's down projection, whose forward takes `row_last`) under `tp_overlap` `mode`,
    as tp_exposure prices it: exposed under "none" and "backward"; pipelined with the down projection
    under "all", and under "micro-pipeline" with SP (torch's async TP fuses no all-reduce)."""
    if mode in ("none", "backward"):
        return last
    hidden = hide(last, row_last, slowdown)
    return np.where(sp, hidden, last if mode == "micro-pipeline" else hidden)


def unfused_input_linears(model: ModelSpec, fw: Framework) -> tuple[int, int]:
    """Backward all-reduces per layer beyond Megatron-LM's two (one per fused input projection) when the
    framework keeps q, k, v (and gate, up) as separate column-parallel linears (`Framework.fused_qkv`
    false) and runs TP without SP: (attention's, a dense MLP's). Each such linear turns the replicated
    layer input into a tensor-parallel input of its own (DTensor's ColwiseParallel), so each reduces its
    input gradient (the executor's CommDebugMode count: three in attn.qkv, tests/test_crosscheck.py).
    Latent attention's up projections take the latents, not the layer input: none counted there."""
    if fw.fused_qkv:
        return 0, 0
    return (0 if model.is_mla else 2), (1 if model.activation == "swiglu" else 0)


def _structure(model: ModelSpec, cluster: ClusterSpec, lg: LayerGraph, b: PlanBatch) -> dict[str, Array]:
    """Terms that depend only on sizes, SP and placement, for the rows of `b` (one per structure)."""
    gpu, dt = cluster.gpu, b.dtype
    fw = framework(b.framework or default_framework(cluster))
    grads = gradient_path(fw, dt)  # fp32 (Megatron-LM main_grad, FSDP2 reduce_dtype), 16-bit, or the profile's own
    grad_b = grads.reduce_bytes
    t = b.tp.astype(np.float64)
    c = b.cp.astype(np.float64)
    e = b.ep.astype(np.float64)
    et = b.etp.astype(np.float64)  # the experts' tensor-parallel size (tp unless folded)
    folded = b.etp != b.tp
    sp = b.sp
    seq = np.full_like(t, model.seq_len)
    tokens = b.mb * model.seq_len / c  # local tokens of one micro-batch
    h, beta = model.hidden, DTYPE_BYTES[base_dtype(dt)]
    lowp_extra = extra_weight_bytes(dt, fw.fp8_param_gather)  # bytes per low-precision weight beyond 16 bits
    m = (b.gb // (b.dp * b.mb)).astype(np.float64)  # micro-batches per step
    acc_b = grads.accumulation_bytes
    acc_share = np.ones_like(t)  # of the micro-batches that pay it
    if not acc_b and fw.eager_grad_accumulation:
        # autograd's AccumulateGrad: every micro-batch after the first adds its gradient into `.grad`
        # in place (read both, write one); the first one's gradient is stored as is
        acc_b = 3.0 * grads.buffer_bytes
        acc_share = (m - 1.0) / m

    def accumulate(params: Array, tensors: Array) -> Array:
        """Each micro-batch's gradient accumulation outside the weight-gradient GEMMs (memory bound, one
        launch per tensor): the bytes per parameter the framework's GradientPath streams, or autograd's
        in-place add after the first micro-batch (averaged over the step's micro-batches)."""
        if not acc_b:
            return np.zeros_like(params)
        return gpu.memory_time(params * acc_b * acc_share, tensors * acc_share,
                               TRAINING_RESIDENT) * cluster.compute_slowdown
    ov = cluster.overlap_slowdown_for(fw)

    # Host-side cost of the framework (a third in forward, two in backward): per layer, per
    # micro-batch (split over the two ends), and the extra of the tensor-parallel implementation.
    host_l = cluster.host_layer_overhead_s + np.where(b.tp > 1, cluster.tp_layer_overhead_s, 0.0) \
        + np.where((b.tp > 1) & sp, cluster.sp_layer_overhead_s, 0.0)
    host_mb = cluster.host_microbatch_overhead_s / 2 + np.where(b.tp > 1, cluster.tp_microbatch_overhead_s / 2, 0.0)

    # Tensor parallel: two sync points per layer in each direction. Without SP, a framework that keeps
    # the column-parallel input projections as separate linears (`unfused_input_linears`) all-reduces
    # each one's input gradient in backward.
    act = tokens * h * beta
    ar = collective_time(cluster, tp_collective(cluster, fw, "all_reduce"), act, b.tp, b.stride_tp)
    ag = collective_time(cluster, tp_collective(cluster, fw, "all_gather"), act, b.tp, b.stride_tp)
    rs = collective_time(cluster, tp_collective(cluster, fw, "reduce_scatter"), act, b.tp, b.stride_tp)
    extra_attn, extra_mlp = unfused_input_linears(model, fw)
    # With SP, backward re-gathers the two column-parallel groups' saved sequence shards, unless the
    # framework saved the gathered inputs (Framework.sp_keeps_gathered_input); `regather_*` is then the
    # re-gather a per-op checkpoint policy brings back by recomputing the gathers.
    keeps = fw.sp_keeps_gathered_input
    regather_dense = np.where(sp, 2 * ag, 0.0)
    own_regather = 0.0 if keeps else 1.0
    tp_fwd_dense = np.where(sp, 2 * (ag + rs), 2 * ar)
    tp_bwd_total_dense = (np.where(sp, 2 * ag + 2 * rs, (2 + extra_attn + extra_mlp) * ar)
                          + own_regather * regather_dense)
    # An MoE layer's experts take their input through one tensor-parallel region: no gate/up extra.
    tp_bwd_total_routed = (np.where(sp, 2 * ag + 2 * rs, (2 + extra_attn) * ar) + own_regather * regather_dense
                           if extra_mlp else tp_bwd_total_dense)
    # The layer's last forward collective (after the MLP's down projection), which full recompute does not
    # re-run under Framework.recompute_skips_last_collective.
    last_dense = np.where(sp, rs, ar)
    regather_moe, last_moe = regather_dense, last_dense
    # A mixture-of-experts layer's second sync point (around its experts) runs over the experts' etp
    # ranks: none when etp = 1, the freed ranks holding other experts (MoE parallel folding). Priced only
    # where some row folds (the search's hot path otherwise): unfolded rows keep the dense totals.
    tp_fwd_moe, tp_bwd_total_moe = tp_fwd_dense, tp_bwd_total_routed
    if np.any(folded):
        ag_e = collective_time(cluster, "all_gather", act, b.etp, b.stride_tp)
        rs_e = collective_time(cluster, "reduce_scatter", act, b.etp, b.stride_tp)
        ar_e = collective_time(cluster, "all_reduce", act, b.etp, b.stride_tp)
        tp_fwd_moe = np.where(folded, np.where(sp, ag + rs + ag_e + rs_e, ar + ar_e), tp_fwd_dense)
        regather_moe = np.where(folded, np.where(sp, ag + ag_e, 0.0), regather_dense)
        tp_bwd_total_moe = np.where(folded, np.where(sp, ag + rs + ag_e + rs_e, (1 + extra_attn) * ar + ar_e)
                                    + own_regather * regather_moe, tp_bwd_total_routed)
        last_moe = np.where(folded, np.where(sp, rs_e, ar_e), last_dense)
    # Context parallel: the exchange of K and V chunks (forward, and again in backward) and of their
    # gradients (backward), overlapped with the attention core (cp_exposure).
    kv = 2 * tokens * ring_kv_width(model, fw) * beta / t
    cp_ring = collective_time(cluster, "all_gather", kv * c, b.cp, b.stride_cp)
    cp_grads = cp_ring * (FP32_BYTES / beta if fw.cp_grads_fp32 else 1.0)
    ring_fwd, ring_bwd = ring_pass_times(cluster, fw, tokens * model.q_width / t, kv / beta, c)

    out: dict[str, list[Array]] = {k: [] for k in (
        "fwd", "bwd", "attn_fwd", "compute_fwd", "compute_bwd", "tp_fwd", "tp_fwd_total", "tp_bwd", "tp_bwd_total",
        "ep", "cp_fwd",
        "cp_bwd", "cp_total", "act_none", "act_selective", "act_full", "params_dense", "params_expert",
        "tensors", "tp_tensors", "lowp_copies", "policy_fwd", "act_policy", "train_dense", "train_expert",
        "grad_accum", "tp_regather", "tp_regather_total", "tp_skipped", "tp_skipped_total", "largest")}

    def tp_dtensors(ops: list[Op]) -> Array:
        """Per structure: the DTensors tensor parallelism makes of `ops`' parameters (with SP or without)."""
        return np.where(sp, *(float(sum(_tp_dtensor_tensors(op, model, fw.fused_qkv, on) for op in ops))
                              for on in (True, False)))

    quantise = fw.quantise_traffic(dt)  # the profile's own quantisation traffic (None: the recipe's default)
    for kind in lg.kinds:
        lay = ops_times(list(kind.ops), lg, gpu, dt, b.flash, tokens, seq, t, sp, e, fw.attention_kernel, et,
                        TRAINING_RESIDENT, quantise)
        routed = any(op.routed for op in kind.ops)
        tp_fwd, tp_bwd_total = (tp_fwd_moe, tp_bwd_total_moe) if routed else (tp_fwd_dense, tp_bwd_total_dense)
        regather, last = (regather_moe, last_moe) if routed else (regather_dense, last_dense)
        cols = _pad(lay.col_gemm, 2, t)
        col_f, row_f = _pad(lay.col_fwd, 2, t), _pad(lay.row_fwd, 2, t)
        summed = (extra_attn > 0, extra_mlp > 0)
        tp_fwd_k, tp_bwd = tp_exposure(fw.tp_overlap, sp, ag, rs, ar, tp_fwd, tp_bwd_total, col_f, row_f, cols,
                                       summed, ov, regather=not keeps)
        if keeps:  # what recomputing the gathers (a per-op checkpoint policy) adds back
            out["tp_regather"].append(regather if fw.tp_overlap == "none" else hidden_regather(sp, ag, cols, ov))
            out["tp_regather_total"].append(regather)
        else:
            out["tp_regather"].append(np.zeros_like(t))
            out["tp_regather_total"].append(np.zeros_like(t))
        skip = fw.recompute_skips_last_collective
        out["tp_skipped"].append(last_forward_exposure(fw.tp_overlap, sp, last, row_f[-1], ov) if skip
                                 else np.zeros_like(t))
        out["tp_skipped_total"].append(last if skip else np.zeros_like(t))
        if routed:
            nbytes = act * model.top_k * model.capacity_factor / np.where(sp, t, 1)
            # folded, the expert-parallel group is the ep ranks after each etp group (tp's ranks first)
            a2a = 2 * collective_time(cluster, "all_to_all", nbytes, b.ep,
                                      np.where(folded, b.stride_tp * b.etp, b.stride_dp))
        else:
            a2a = np.zeros_like(t)
        # the ring attention's element-wise passes run with the attention core (recomputed with it)
        busy_fwd, busy_bwd = lay.fwd + host_l / 3 + ring_fwd, lay.bwd + 2 * host_l / 3 + ring_bwd
        out["fwd"].append(busy_fwd)
        out["bwd"].append(busy_bwd)
        out["compute_fwd"].append(busy_fwd)  # the framework's host time is busy time too
        out["compute_bwd"].append(busy_bwd)
        out["attn_fwd"].append(lay.attn_fwd + ring_fwd)
        # (n, policies): the matmul checkpoint policies' recomputed forward and saved bytes
        out["policy_fwd"].append(np.stack(lay.policy_fwd, axis=1))
        out["act_policy"].append(np.stack([policy_saved_bytes(pol, kind.ops, model, base_dtype(dt), tokens, t, sp)
                                           for pol in MATMUL_POLICIES], axis=1))
        out["tp_fwd"].append(tp_fwd_k)  # exposed
        out["tp_fwd_total"].append(tp_fwd)
        out["tp_bwd"].append(tp_bwd)
        out["tp_bwd_total"].append(tp_bwd_total)
        out["ep"].append(a2a)
        cp_fwd, cp_bwd = cp_exposure(fw.cp_rotation, cp_ring, cp_grads, lay.attn_fwd, lay.attn_bwd, b.cp, ov)
        out["cp_fwd"].append(cp_fwd)
        out["cp_bwd"].append(cp_bwd)
        out["cp_total"].append(2 * cp_ring + cp_grads)
        acts = [layer_activation_bytes(kind.ops, base_dtype(dt), h, tokens, seq, t, sp, r, gathered=keeps)
                for r in range(3)]
        out["act_none"].append(acts[0])
        out["act_selective"].append(acts[1])
        out["act_full"].append(acts[2])
        dense = sum((op_params_per_gpu(op, t, e) for op in kind.ops if not op.routed), np.zeros_like(t))
        expert = sum((op_params_per_gpu(op, et, e) for op in kind.ops if op.routed), np.zeros_like(t))
        out["params_dense"].append(dense)
        out["params_expert"].append(expert)
        train = [op for op in kind.ops if not op.frozen]
        for key, part in zip(("train_dense", "train_expert", "largest"), _trained_params(train, t, et, e), strict=True):
            out[key].append(part)
        out["tensors"].append(np.full_like(t, sum(_count_tensors(op, model, fw.fused_qkv) for op in train)))
        out["tp_tensors"].append(tp_dtensors(train))
        out["grad_accum"].append(accumulate(out["train_dense"][-1] + out["train_expert"][-1], out["tensors"][-1]))
        # Low-precision copies of the linear weights kept beside the bf16 ones (fp8: and transposed).
        lowp = sum((op_params_per_gpu(op, et if op.routed else t, e) for op in kind.ops if low_precision(op, dt)),
                   np.zeros_like(t))
        out["lowp_copies"].append(lowp * lowp_extra)
    res: dict[str, Array] = {k: np.stack(v, axis=1) for k, v in out.items()}

    pre = ops_times(list(lg.pre_ops), lg, gpu, dt, b.flash, tokens, seq, t, sp, e, fw.attention_kernel,
                    resident=TRAINING_RESIDENT, quantise=quantise)
    post = ops_times(list(lg.post_ops), lg, gpu, dt, b.flash, tokens, seq, t, sp, e, fw.attention_kernel,
                     resident=TRAINING_RESIDENT, quantise=quantise)
    # Embedding / LM head (vocabulary parallel) and the loss's three fp32 all-reduces per token.
    small = collective_time(cluster, tp_collective(cluster, fw, "all_reduce"), tokens * float(LOSS_BYTES), b.tp,
                            b.stride_tp)
    if fw.gathered_logits:  # the LM head's logits gathered over TP instead of a vocabulary-parallel loss
        loss_tp = collective_time(cluster, tp_collective(cluster, fw, "all_gather"),
                                  tokens * model.vocab_size * beta, b.tp, b.stride_tp)
    else:
        loss_tp = 3 * small
    head_w = _pad(post.col_gemm, 1, t)[0]
    res["pre_fwd"] = pre.fwd + host_mb / 3 + np.where(sp, rs, ar)
    # With SP the embedding's output gradient is all-gathered back to the full sequence in backward.
    res["pre_bwd"] = pre.bwd + 2 * host_mb / 3 + np.where(sp, ag, 0.0)
    res["post_fwd"] = post.fwd + host_mb / 3 + np.where(sp, ag, 0.0) + loss_tp
    res["post_bwd"] = post.bwd + 2 * host_mb / 3 + np.where(sp, hide(rs, head_w, ov), hide(ar, head_w, ov))
    res["pre_compute"] = pre.fwd + pre.bwd + host_mb
    res["post_compute"] = post.fwd + post.bwd + host_mb
    res["pre_tp"] = np.where(sp, rs + ag, ar)
    res["post_tp"] = np.where(sp, ag + rs, ar) + loss_tp
    res["pre_saved"] = saved_bytes(list(lg.pre_ops), tokens, seq, t, sp, gathered=keeps)
    res["post_saved"] = saved_bytes(list(lg.post_ops), tokens, seq, t, sp, gathered=keeps)
    # The loss's peak beyond the fp32 log-probabilities counted as the head's saved activations.
    res["logits"] = (loss_peak_bytes(fw.cross_entropy, beta, t > 1) - LOSS_BYTES) * model.vocab_size * tokens / t
    res["pre_params"] = sum((op_params_per_gpu(op, t, e) for op in lg.pre_ops), np.zeros_like(t))
    res["post_params"] = sum((op_params_per_gpu(op, t, e) for op in lg.post_ops), np.zeros_like(t))
    # With pipelining, the last stage keeps its own copy of a tied embedding for the LM head.
    res["tied_copy"] = np.full_like(t, model.vocab_size * h) / t if model.tied_embeddings else np.zeros_like(t)
    for part, ops in (("pre", lg.pre_ops), ("post", lg.post_ops)):
        count = sum(_count_tensors(op, model, fw.fused_qkv) for op in ops if not op.frozen)
        res[f"{part}_tensors"] = np.full_like(t, count)
        res[f"{part}_tp_tensors"] = tp_dtensors([op for op in ops if not op.frozen])
    res["pre_train"], _, res["pre_largest"] = _trained_params(lg.pre_ops, t, t, e)  # no routed ops
    res["post_train"], _, post_largest = _trained_params(lg.post_ops, t, t, e)
    frozen_head = any(op.frozen for op in lg.post_ops)
    tied_trained = np.where((b.pp > 1) & (not frozen_head), res["tied_copy"], 0.0)  # the last stage's copy
    res["post_largest"] = np.maximum(post_largest, tied_trained)
    res["pre_grad_accum"] = accumulate(res["pre_train"], res["pre_tensors"])
    res["post_grad_accum"] = accumulate(res["post_train"] + tied_trained, res["post_tensors"])
    res["tokens"] = tokens
    res["act_bytes"] = act
    res["tp_ar"], res["tp_ag"], res["tp_rs"], res["tp_small"], res["tp_loss"] = ar, ag, rs, small, loss_tp
    res["cp_ring"], res["kv_bytes"] = cp_ring, kv * c

    # Pipeline p2p: each TP rank sends 1/t of the activation; without SP the receiver re-gathers it.
    p2p = p2p_time(cluster, act / t, b.pp, b.stride_pp)
    res["p2p_send"] = p2p
    res["p2p"] = p2p + np.where(sp | (b.tp == 1), 0.0, ag)

    # Gradient groups span two dimensions: dense weights are replicated over dp x cp ranks, expert
    # weights over (dp / ep) x cp ranks (expert groups are ep consecutive dp ranks).
    gpn = cluster.nvlink_domain  # the fast tier spans the NVLink domain (72 GPUs on an NVL72 rack)
    g_dp, k_dp, n_dp = product_layout([(b.dp, b.stride_dp), (b.cp, b.stride_cp)], gpn)
    # (folded rows, whose ep may exceed dp, take the layout below)
    g_edp, k_edp, n_edp = product_layout([(np.maximum(b.dp // b.ep, 1), b.stride_dp * b.ep), (b.cp, b.stride_cp)], gpn)
    if np.any(folded):  # the experts' data-parallel group: the tp x cp x dp ranks over etp x ep, after them
        fold = product_layout([(b.tp * b.cp * b.dp // (b.etp * b.ep), b.stride_tp * b.etp * b.ep)], gpn)
        g_edp, k_edp, n_edp = (np.where(folded, f, x) for f, x in zip(fold, (g_edp, k_edp, n_edp), strict=True))
    res["g_dp"], res["g_edp"] = g_dp.astype(np.float64), g_edp.astype(np.float64)
    res["k_dp"], res["n_dp"], res["k_edp"], res["n_edp"] = k_dp, n_dp, k_edp, n_edp
    # Hybrid sharding (HSDP): ZeRO shards over the f gradient ranks nearest in rank order and replicates
    # over the g / f such groups (FSDP2's (replicate, shard) mesh). A shard group holds min(f, k) ranks
    # per node; a replica group, f apart, k / f per node when f < k (else one).
    f_dp = np.where(b.shard > 0, np.minimum(b.shard, g_dp), g_dp)
    hybrid = f_dp < g_dp
    k_sh = np.minimum(f_dp, k_dp)
    n_sh = -(-f_dp // k_sh)
    r_dp = g_dp // f_dp
    k_rep = np.where(f_dp < k_dp, np.maximum(k_dp // f_dp, 1), 1)
    n_rep = -(-r_dp // k_rep)
    res["g_shard"] = f_dp.astype(np.float64)

    # Tied embeddings under pipelining: first and last stage all-reduce the embedding gradient.
    # The pair is stride_pp·(pp−1) ranks apart; when the whole pipeline group sits in one node so
    # do they (group_layout's gpus_per_node // stride would misplace e.g. a stride of 6 in 8).
    if model.tied_embeddings:
        pair_stride = np.where(b.stride_pp * b.pp <= gpn, b.stride_pp, b.stride_pp * (b.pp - 1))
        emb_bytes = model.vocab_size * h / t * grad_b
        emb = collective_time(cluster, "all_reduce", emb_bytes, np.full_like(b.pp, 2), pair_stride)
        res["emb_sync"] = np.where(b.pp > 1, emb, 0.0)
        res["emb_bytes"] = np.where(b.pp > 1, emb_bytes, 0.0)
    else:
        res["emb_sync"] = np.zeros_like(t)
        res["emb_bytes"] = np.zeros_like(t)

    # Stage classes: parameters, data-parallel collectives and the optimizer per class.
    classes = class_arrays(lg.pattern, len(lg.kinds), b.pp, b.vpp, b.first, b.last, b.account)
    single = (b.pp == 1)[:, None]
    layers = classes.layers  # (rows, C, K)
    dense = np.einsum("rck,rk->rc", layers, res["params_dense"]) \
        + np.where(classes.has_pre, res["pre_params"][:, None], 0.0) \
        + np.where(classes.has_post, res["post_params"][:, None], 0.0) \
        + np.where(classes.has_post & ~single, res["tied_copy"][:, None], 0.0)
    expert = np.einsum("rck,rk->rc", layers, res["params_expert"])
    n_layers = layers.sum(axis=2)
    res["class_layers"], res["class_size"], res["class_first_rank"] = layers, classes.size, classes.first_rank
    res["class_has_pre"], res["class_has_post"] = classes.has_pre, classes.has_post
    res["class_dense"], res["class_expert"] = dense, expert
    # Trained parameters (all of them, unless fine-tuning freezes the base weights): gradients,
    # optimizer states and their data-parallel reductions.
    train_dense = np.einsum("rck,rk->rc", layers, res["train_dense"]) \
        + np.where(classes.has_pre, res["pre_train"][:, None], 0.0) \
        + np.where(classes.has_post, res["post_train"][:, None], 0.0) \
        + np.where(classes.has_post, tied_trained[:, None], 0.0)
    train_expert = np.einsum("rck,rk->rc", layers, res["train_expert"])
    res["class_train_dense"], res["class_train_expert"] = train_dense, train_expert
    res["class_largest"] = np.maximum(
        np.max(np.where(layers > 0, res["largest"][:, None, :], 0.0), axis=2),
        np.maximum(np.where(classes.has_pre, res["pre_largest"][:, None], 0.0),
                   np.where(classes.has_post, res["post_largest"][:, None], 0.0)))
    res["class_lowp"] = np.einsum("rck,rk->rc", layers, res["lowp_copies"])
    res["critical"] = np.full(len(b), classes.critical)
    res["layer_weights"] = (res["params_dense"] + res["params_expert"]) * WEIGHT_BYTES[dt]
    # FSDP2's copies beside its collectives (Framework.fsdp_copy_passes), per layer and micro-batch, each
    # a read and a write: an all-gather's input (the rank's shard) and output (the unsharded layer, into
    # its parameters), a reduce-scatter's input (the layer's unsharded gradients, shard by shard)
    copies = fw.fsdp_copy_passes
    shard = res["layer_weights"] / res["g_shard"].reshape(-1, *([1] * (res["layer_weights"].ndim - 1)))
    res["fsdp_copy_ag"] = gpu.memory_time(2 * copies * (res["layer_weights"] + shard), 2 * copies,
                                          TRAINING_RESIDENT) * cluster.compute_slowdown
    res["fsdp_copy_rs"] = gpu.memory_time(2 * copies * res["layer_weights"], copies,
                                          TRAINING_RESIDENT) * cluster.compute_slowdown

    def dp_coll(op: str, per_param: float, per_layer: bool, trained: bool = True,
                per_call: Array | None = None) -> tuple[Array, Array]:
        """One DP collective over a class's (trained) parameters, issued in buckets (or per layer): its
        total time and that of its last bucket (the dense parameters', whose first layers and embedding
        the backward reaches last; the expert parameters' where a class has no dense ones). Under
        hybrid sharding ZeRO's reduce-scatter and all-gather run inside the shard group, and each
        reduced shard is all-reduced over the replicas (FSDP2's HSDP; Megatron's distributed-optimizer
        instances). `per_call`: the dense parameters go in that many calls instead (one per tensor)."""
        total = np.zeros_like(dense)
        last = np.zeros_like(dense)
        pd, pe = (train_dense, train_expert) if trained else (dense, expert)
        for params, g, k, n, dense_group in ((pd, g_dp, k_dp, n_dp, True), (pe, g_edp, k_edp, n_edp, False)):
            if not np.any(params):
                continue
            nbytes = params * per_param
            bucket = DDP_BUCKET_BYTES
            if fw.dp_bucket_params or fw.dp_bucket_params_per_rank:  # Megatron-Core: grows with dp
                bucket = np.maximum(fw.dp_bucket_params, fw.dp_bucket_params_per_rank * g)[:, None] * per_param
            calls = np.maximum(n_layers, 1.0) if per_layer else np.maximum(1.0, np.ceil(nbytes / bucket))
            if per_call is not None and dense_group:
                calls = np.maximum(per_call, 1.0)

            def col(x: Array, shape: tuple[int, ...] = params.shape) -> Array:
                return np.broadcast_to(x[:, None], shape)

            t = collective_time(cluster, op, nbytes / calls, col(g), layout=(col(k), col(n)))
            if per_call is not None and dense_group:  # one call per tensor, each right after the last
                t_next = collective_time(cluster, op, nbytes / calls, col(g), layout=(col(k), col(n)), burst=True)
                t = (t + (calls - 1.0) * t_next) / calls
            if dense_group and op != "all_reduce" and np.any(hybrid):
                shard = collective_time(cluster, op, nbytes / calls, col(f_dp), layout=(col(k_sh), col(n_sh)))
                if op == "reduce_scatter":
                    shard = shard + collective_time(cluster, "all_reduce", nbytes / calls / col(f_dp), col(r_dp),
                                                    layout=(col(k_rep), col(n_rep)))
                t = np.where(col(hybrid), shard, t)
            total = total + calls * t
            last = np.where(last > 0, last, np.where(params > 0, t, 0.0))
        return np.where((g_dp > 1)[:, None], total, 0.0), np.where((g_dp > 1)[:, None], last, 0.0)

    w_b = WEIGHT_BYTES[dt]
    res["dp_ar"], res["dp_ar_last"] = dp_coll("all_reduce", grad_b, False)
    res["dp_rs"], res["dp_rs_last"] = dp_coll("reduce_scatter", grad_b, False)
    # ZeRO-1's reduction: a reduce-scatter of the shard each rank updates, or the framework's all-reduce
    z1 = "dp_ar" if grads.reduce_op == "all_reduce" else "dp_rs"
    res["dp_reduce_z1"], res["dp_reduce_z1_last"] = res[z1], res[z1 + "_last"]
    res["dp_ag"] = dp_coll("all_gather", w_b, False)[0]
    res["dp_rs_layers"] = dp_coll("reduce_scatter", grad_b, True)[0]
    res["dp_ag_layers"] = dp_coll("all_gather", w_b, True, trained=False)[0]  # ZeRO-3 gathers frozen weights too
    tied_copy = np.where(classes.has_post & (tied_trained > 0)[:, None], 1.0, 0.0)  # one more trained tensor
    tensors, tp_tensors = (np.einsum("rck,rk->rc", layers, res[f"{kind}tensors"])
                           + np.where(classes.has_pre | single, res[f"pre_{kind}tensors"][:, None], 0.0)
                           + np.where(classes.has_post | single, res[f"post_{kind}tensors"][:, None], 0.0)
                           + tied_copy for kind in ("", "tp_"))
    # ZeRO-1's parameter sync after the step: an all-gather's bytes, in one call per parameter tensor
    # where the framework broadcasts tensor by tensor (torch's ZeroRedundancyOptimizer without
    # parameters_as_bucket_view), each paying the collective's latency
    res["dp_ag_z1"] = dp_coll("all_gather", w_b, False, per_call=tensors)[0] if fw.zero1_broadcast_per_tensor \
        else res["dp_ag"]
    # Optimizer: memory bound (the framework's bytes per parameter, else a fused AdamW's), plus one
    # launch per parameter tensor for each element-wise op; ZeRO-1+ steps only the local shard.
    # An unfused step (torch.optim's per-tensor loop) passes over each tensor several times: beyond the
    # first read and last write of each (a fused step's bytes) it re-reads what it just touched, which
    # a host's cache serves.
    kernels = fw.optimizer_launches_per_tensor * tensors
    fused_bytes = OPTIMIZER_STEP_BYTES[dt]
    step_bytes = fw.optimizer_bytes(base_dtype(dt)) or fused_bytes
    # Beside it, whole-gradient passes of the wrappers around the optimizer, each a read and a write of
    # every local gradient (framework profile): DDP's copies into and out of its buckets (ZeRO-0/1 with
    # data parallelism: full gradients), the pipeline schedule's division by the micro-batch count.
    pipeline_passes = fw.pipeline_grad_passes * ((b.pp > 1) & (m > 1))
    for held, gd, ge, ddp in (("full", 1.0, 1.0, b.dp > 1), ("sharded", f_dp, g_edp, False)):
        local = train_dense / np.asarray(gd, dtype=np.float64).reshape(-1, 1) \
            + train_expert / np.asarray(ge, dtype=np.float64).reshape(-1, 1)
        first = min(step_bytes, fused_bytes)
        res[f"opt_{held}"] = (gpu.memory_time(local * first, kernels, TRAINING_RESIDENT)
                              + gpu.memory_time(local * (step_bytes - first))) * cluster.compute_slowdown
        n_pass = (pipeline_passes + fw.dp_grad_passes * ddp)[:, None]
        res[f"grad_passes_{held}"] = gpu.memory_time(local * n_pass * 2 * grad_b, n_pass * tensors,
                                                     TRAINING_RESIDENT) * cluster.compute_slowdown
    # DTensor parameters (dtensor_params): the optimizer's host time per tensor beyond a plain one's. With
    # data parallelism every parameter is one under FSDP2 (ZeRO-2/3; ZeRO-1 with TP, PP or hybrid
    # sharding) and `replicate` (ZeRO-0 with TP or PP), executor.data_parallel.dp_kind; without it, TP's
    # own (`_tp_dtensor_tensors`); DDP and ZeroRedundancyOptimizer keep plain tensors.
    per_tensor = cluster.dtensor_optimizer_tensor_s * cluster.compute_slowdown if fw.dtensor_params else 0.0
    res["opt_dtensor"], res["opt_dtensor_tp"] = tensors * per_tensor, tp_tensors * per_tensor
    return res


def _graph(model: ModelSpec, cluster: ClusterSpec, b: PlanBatch) -> LayerGraph:
    """The layer graph the batch's plans run: its dtype, attention kernel, LoRA, and the framework's norms,
    elementwise kernels (fused, or eager PyTorch's) and what its low-precision linear layers save."""
    lg = build_graph(model, b.dtype, b.flash, b.lora)
    fw = framework(b.framework or default_framework(cluster))
    lg = with_fused_norms(lg) if fw.fused_norm else lg
    recipe = RECIPES[b.dtype]
    if fw.quantized_saved_inputs and recipe.low_precision:
        lg = with_quantized_saved_inputs(lg, recipe.element_bytes, lambda op: low_precision(op, b.dtype), b.flash)
    return lg if fw.compiled else with_eager_ops(lg, fw.composite_rms_norm)


def cost_grid(model: ModelSpec, cluster: ClusterSpec, structures: PlanBatch, recompute: Array,
              zero: Array, every: Array | None = None) -> CostTerms:
    """Terms of every structure (row of `structures`: sizes, SP, placement) under each recompute
    policy index in `recompute` (with `every[i]`: full recompute of 1 in every k layers) and each ZeRO
    stage in `zero`: leading shape (rows, R, Z)."""
    lg = _graph(model, cluster, structures)
    st = _structure(model, cluster, lg, structures)
    every = np.ones_like(np.asarray(recompute)) if every is None else np.asarray(every)
    return _variants(cluster, lg, structures, st, np.asarray(recompute), np.asarray(zero), every)


def recompute_variants(batch: PlanBatch) -> tuple[Array, Array, Array]:
    """The distinct (recompute index, every) pairs of `batch`, sorted, as two arrays, and each plan's pair."""
    r_vals, r_inv = unique_inverse(batch.rc)
    e_vals, e_inv = unique_inverse(batch.every)
    codes, inverse = unique_inverse(r_inv * len(e_vals) + e_inv)
    return r_vals[codes // len(e_vals)], e_vals[codes % len(e_vals)], inverse


def cost_terms(model: ModelSpec, cluster: ClusterSpec, batch: PlanBatch, volumes: bool = False) -> CostTerms:
    """Price every plan of `batch` (for `cluster.num_gpus` GPUs): leading shape (plans,).

    Structures are priced once. `volumes` also lists every communication (`CostTerms.comms`).
    """
    lg = _graph(model, cluster, batch)
    s_first, s_inv = group_index(batch, "structure")
    sb = batch.take(s_first)
    st = _structure(model, cluster, lg, sb)
    rc, every, r_inv = recompute_variants(batch)
    zeros, z_inv = unique_inverse(batch.zero)
    terms = _variants(cluster, lg, sb, st, rc, zeros, every).select((s_inv, r_inv, z_inv))
    if volumes:
        rows = {k: v[s_inv] for k, v in st.items()}
        terms = dataclasses.replace(terms, comms=_comms(model, lg, batch, rows, terms))
    return terms


def _plus(x: Array, extra: Array | float) -> Array:
    """x + extra, without a pass over x where the extra is a plain zero (the search's hot path)."""
    return x if isinstance(extra, float) and extra == 0.0 else x + extra


def _dtensor_optimizer(b: PlanBatch, st: dict[str, Array], s: Callable[[Array], Array], zc: Array) -> Array | float:
    """The optimizer's DTensor host time of each (structure, ZeRO stage) whose parameters are DTensors
    (0.0 where no plan pays any: the search's hot path). With data parallelism the executor wraps every
    parameter as one under FSDP2 (ZeRO-2/3; ZeRO-1 with TP, PP or hybrid sharding) and `replicate`
    (ZeRO-0 with TP or PP), as executor.data_parallel.dp_kind picks them; without it TP's own."""
    if not np.any(st["opt_dtensor"]):
        return 0.0
    has_dp = st["g_dp"] > 1
    any_zero = has_dp & ((b.tp > 1) | (b.pp > 1))
    hybrid = has_dp & (st["g_shard"] < st["g_dp"])
    wrapped = s(any_zero)[..., None] | ((zc >= 2) & s(has_dp)[..., None]) | ((zc == 1) & s(hybrid)[..., None])
    tp_only = np.where(s(b.tp > 1)[..., None], s(st["opt_dtensor_tp"]), 0.0)
    return np.where(wrapped, s(st["opt_dtensor"]), tp_only)


def _variants(cluster: ClusterSpec, lg: LayerGraph, b: PlanBatch, st: dict[str, Array], recompute: Array,
              zero: Array, every: Array) -> CostTerms:
    """Apply each recompute policy and ZeRO stage to the structures' terms (leading (n, R, Z))."""
    n = len(b)

    def s(x: Array) -> Array:  # a structure term, broadcast over the recompute and ZeRO axes
        x = np.asarray(x)
        return x.reshape((n, 1, 1, *x.shape[1:]))

    rc = recompute.reshape(1, -1, 1, 1)  # (1, R, 1, kinds)
    frac = 1.0 / every.reshape(1, -1, 1, 1)  # the share of layers full recompute repeats
    z = zero.reshape(1, 1, -1)
    zc = z[..., None]  # (1, 1, Z, classes)

    # One layer, one micro-batch. Selective recompute repeats the attention core in backward, full
    # recompute the whole forward (with its TP communication) of 1 in every k layers, per-op selective
    # the non-saved matmuls and every memory-bound op (and, without SP, the layer's all-reduces, whose
    # outputs it does not save).
    layer_f0 = s(st["fwd"] + st["tp_fwd"] + st["ep"] + st["cp_fwd"])
    layer_b0 = s(st["bwd"] + st["tp_bwd"] + st["ep"] + st["cp_bwd"])
    attn = s(st["attn_fwd"])
    # matmul checkpoint policies (RECOMPUTE[3:] = MATMUL_POLICIES): each recompute value's own terms
    pol = [max(int(r) - FIRST_MATMUL_POLICY, 0) for r in recompute]
    sac = st["policy_fwd"][:, :, pol].transpose(0, 2, 1)[:, :, None, :]  # (n, R, 1, kinds)
    # With SP a per-op policy's recomputed gathers are the backward re-gather (priced in tp_bwd, or here
    # where the framework saved the gathered inputs instead); full recompute may skip the last collective.
    sac_tp = s(np.where(b.sp[:, None], st["tp_regather"], st["tp_fwd"]))
    recompute_t = np.select([rc == 2, rc == 1, rc >= 3], [frac * (layer_f0 - s(st["tp_skipped"])), attn, sac + sac_tp],
                            0.0)
    has_dp = st["g_dp"] > 1
    # FSDP (ZeRO-2/3) hooks run around every layer of every micro-batch, and its copies beside each
    # all-gather (forward; ZeRO-3 gathers again in backward) and reduce-scatter (backward)
    sharded = ((z >= 2) & s(has_dp))[..., None]
    fsdp = np.where(sharded, cluster.fsdp_layer_overhead_s, 0.0)
    copy_fwd: Array | float = 0.0
    copy_bwd: Array | float = 0.0
    if np.any(st["fsdp_copy_ag"]):  # frameworks without such copies skip the passes (the search's hot path)
        copy_fwd = np.where(sharded, s(st["fsdp_copy_ag"]), 0.0)
        copy_bwd = np.where(sharded, s(st["fsdp_copy_rs"]), 0.0) + np.where(sharded & (z == 3)[..., None],
                                                                             s(st["fsdp_copy_ag"]), 0.0)
    cf = s(st["compute_fwd"])
    act_none = s(st["act_none"])
    layer_act = np.select([rc == 1, rc == 2, rc >= 3],
                          [s(st["act_selective"]), frac * s(st["act_full"]) + (1 - frac) * act_none,
                           st["act_policy"][:, :, pol].transpose(0, 2, 1)[:, :, None, :]], act_none)
    classes = ClassArrays(layers=s(st["class_layers"]), size=s(st["class_size"]),
                          first_rank=s(st["class_first_rank"]), has_pre=s(st["class_has_pre"]),
                          has_post=s(st["class_has_post"]), critical=int(st["critical"].max(initial=0)))
    pp = s(b.pp)
    fw = framework(b.framework or default_framework(cluster))
    # Gradient accumulation outside the GEMMs, every micro-batch's backward at ZeRO 0/1 (ZeRO-2/3
    # reduce-scatter each micro-batch's gradients instead)
    acc: Array | float = 0.0
    pre_acc: Array | float = 0.0
    post_acc: Array | float = 0.0
    if np.any(st["grad_accum"]) or np.any(st["pre_grad_accum"]) or np.any(st["post_grad_accum"]):
        keep = z < 2
        acc = np.where(zc < 2, s(st["grad_accum"]), 0.0)
        pre_acc = np.where(keep, s(st["pre_grad_accum"]), 0.0)
        post_acc = np.where(keep, s(st["post_grad_accum"]), 0.0)
    return CostTerms(
        grid=(n, len(recompute), len(zero)), dtype=b.dtype, framework=fw,
        axes=PlanAxes(pp=pp, vpp=s(b.vpp), m=s(b.gb // (b.dp * b.mb)), gb=s(b.gb), rc=recompute.reshape(1, -1, 1),
                      zero=z, every=every.reshape(1, -1, 1)),
        layer_fwd=_plus(layer_f0 + fsdp / 3, copy_fwd),
        layer_bwd=_plus(_plus(layer_b0 + recompute_t + 2 * fsdp / 3, copy_bwd), acc),
        layer_compute=_plus(_plus(s(st["compute_fwd"] + st["compute_bwd"])
                                  + np.select([rc == 2, rc == 1, rc >= 3], [frac * cf, attn, sac], 0.0) + fsdp,
                                  _plus(copy_fwd, copy_bwd)), acc),
        layer_tp=s(st["tp_fwd_total"] + st["tp_bwd_total"])
        + np.select([rc == 2, rc >= 3], [frac * s(st["tp_fwd_total"] - st["tp_skipped_total"]),
                                         s(np.where(b.sp[:, None], st["tp_regather_total"], st["tp_fwd"]))],
                    0.0),
        layer_cp=s(st["cp_total"]), layer_ep=s(2 * st["ep"]), layer_act=layer_act, layer_act_full=s(st["act_none"]),
        layer_weights=s(st["layer_weights"]), layer_lowp=s(st["lowp_copies"]),
        pre_fwd=s(st["pre_fwd"]), pre_bwd=_plus(s(st["pre_bwd"]), pre_acc),
        post_fwd=s(st["post_fwd"]), post_bwd=_plus(s(st["post_bwd"]), post_acc),
        pre_compute=_plus(s(st["pre_compute"]), pre_acc), post_compute=_plus(s(st["post_compute"]), post_acc),
        pre_tp=s(st["pre_tp"]),
        post_tp=s(st["post_tp"]), pre_saved=s(st["pre_saved"]),
        post_saved=s(st["post_saved"]), logits=s(st["logits"]),
        p2p=s(np.where((b.pp > 1) & (not fw.pp_overlap), st["p2p"], 0.0)),
        pp_host=s(np.where(b.pp > 1, cluster.pp_microbatch_overhead_s, 0.0)),
        classes=classes, params_dense=s(st["class_dense"]), params_expert=s(st["class_expert"]),
        lowp_copies=s(st["class_lowp"]), train_dense=s(st["class_train_dense"]),
        train_expert=s(st["class_train_expert"]), largest_trained=s(st["class_largest"]),
        dp_reduce=np.where(zc == 0, s(st["dp_ar"]), np.where(zc == 1, s(st["dp_reduce_z1"]), 0.0)),
        dp_reduce_last=np.where(zc == 0, s(st["dp_ar_last"]), np.where(zc == 1, s(st["dp_reduce_z1_last"]), 0.0)),
        dp_reduce_mb=np.where(zc >= 2, s(st["dp_rs_layers"]), 0.0),
        dp_gather=np.where(zc == 1, s(st["dp_ag_z1"]),
                           np.where((zc == 2) & ~gathers_per_microbatch(zc, fw), s(st["dp_ag"]), 0.0)),
        dp_gather_mb=np.where(gathers_per_microbatch(zc, fw), s(st["dp_ag_layers"]), 0.0),
        optimizer=_plus(np.where(zc >= 1, s(st["opt_sharded"]), s(st["opt_full"]))
                        + np.where(zc >= 2, s(st["grad_passes_sharded"]), s(st["grad_passes_full"])),
                        _dtensor_optimizer(b, st, s, zc)),
        emb_sync=s(st["emb_sync"]), has_dp=s(has_dp), dp_group=s(st["g_shard"]), edp_group=s(st["g_edp"]),
        total_layers=np.asarray(lg.kind_counts, dtype=np.float64), graph=lg,
    )


def _comms(model: ModelSpec, lg: LayerGraph, b: PlanBatch, st: dict[str, Array], terms: CostTerms) -> tuple[Comm, ...]:
    """Every communication of one step on one rank of the first stage (class 0 holds rank 0), per plan.

    Data-parallel collectives are counted as one call over the stage's parameters (their bucketing,
    or per-layer issue under ZeRO-2/3, is inside `seconds`)."""
    classes = terms.classes
    class_params = terms.params_dense + terms.params_expert
    trained = (terms.train_dense + terms.train_expert)[:, 0]
    has_dp = terms.has_dp
    dp = {"reduce": terms.dp_reduce[:, 0], "reduce_mb": terms.dp_reduce_mb[:, 0],
          "gather": terms.dp_gather[:, 0], "gather_mb": terms.dp_gather_mb[:, 0]}
    m = (b.gb // (b.dp * b.mb)).astype(np.float64)
    v = b.vpp.astype(np.float64)
    t = b.tp.astype(np.float64)
    sp = b.sp & (b.tp > 1)
    tp_on = b.tp > 1
    rc_full = b.rc == 2
    first = classes.layers[:, 0, :]  # (rows, K)
    layers = first.sum(axis=1)
    holds_head = b.pp == 1
    act = st["act_bytes"]
    z = b.zero
    grads = gradient_path(terms.framework, b.dtype)
    grad_b, w_b = float(grads.reduce_bytes), float(WEIGHT_BYTES[b.dtype])
    ar1 = grads.reduce_op == "all_reduce"  # ZeRO-1 all-reduces the gradients instead of reduce-scattering
    zero = np.zeros_like(t)

    def on(mask: Array, x: Array) -> Array:
        return np.where(mask, x, 0.0)

    routed = np.array([any(op.routed for op in k.ops) for k in lg.kinds])
    moe_layers = first[:, routed].sum(axis=1) if routed.any() else zero
    syncs = 4 + np.where(rc_full, 2, 0)  # forward, backward, recomputed forward
    # Full recompute that stops before the layer's last collective re-runs one reduce-scatter (all-reduce)
    # fewer (Framework.recompute_skips_last_collective).
    skipped = np.where(rc_full & terms.framework.recompute_skips_last_collective, 1, 0)
    unfused = unfused_input_linears(model, terms.framework)
    keeps = terms.framework.sp_keeps_gathered_input
    regather_layers = np.where(b.rc >= FIRST_MATMUL_POLICY, 1.0, 0.0) if keeps else 1.0
    gathered = terms.framework.gathered_logits
    logit_b = DTYPE_BYTES[base_dtype(b.dtype)]
    # With etp = 1 the experts' half of an MoE layer's sync points (and its re-gather) has no TP group
    # (over 1 < etp < tp the same buffers move inside the etp group: the same bytes).
    alone = np.where((b.etp == 1) & (b.tp > 1), moe_layers, 0.0)
    tp_layers = layers - alone / 2
    per_mb = gathers_per_microbatch(z, terms.framework)
    out = [
        # TP: per layer, an all-reduce (or with SP an all-gather + a reduce-scatter) per sync point.
        Comm("tp.layers", "all_reduce", act, on(tp_on & ~sp, m * tp_layers * (syncs - skipped)), st["tp_ar"]),
        Comm("tp.layers_sp_gather", "all_gather", act, on(sp, m * tp_layers * syncs), st["tp_ag"]),
        Comm("tp.layers_sp_scatter", "reduce_scatter", act, on(sp, m * tp_layers * (syncs - skipped)), st["tp_rs"]),
        # With SP, backward re-gathers the sequence-sharded inputs of QKV and MLP up (and the LM head),
        # unless the framework saved the gathered inputs; a per-op checkpoint policy then recomputes the
        # layers' gathers (not the LM head's, outside the checkpointed layers).
        Comm("tp.regather", "all_gather", act,
             on(sp, m * (2 * layers - alone) * regather_layers + m * holds_head * (not keeps)), st["tp_ag"]),
        # Separate q, k, v (and gate, up) linears reduce their input gradients one by one (no SP).
        Comm("tp.layers_unfused", "all_reduce", act,
             on(tp_on & ~sp, m * (unfused[0] * layers + unfused[1] * (layers - moe_layers))), st["tp_ar"]),
        Comm("tp.embedding", "all_reduce", act, on(tp_on & ~sp, m), st["tp_ar"]),
        Comm("tp.embedding_sp", "reduce_scatter", act, on(sp, m), st["tp_rs"]),
        Comm("tp.embedding_sp_grad", "all_gather", act, on(sp, m), st["tp_ag"]),
        Comm("tp.lm_head", "all_reduce", act, on(tp_on & ~sp & holds_head, m), st["tp_ar"]),
        Comm("tp.lm_head_sp", "all_gather", act, on(sp & holds_head, m), st["tp_ag"]),
        Comm("tp.lm_head_sp_grad", "reduce_scatter", act, on(sp & holds_head, m), st["tp_rs"]),
        Comm("tp.loss", "all_reduce", st["tokens"] * float(LOSS_BYTES),
             on(tp_on & holds_head & (not gathered), 3 * m), st["tp_small"]),
        Comm("tp.logits_gather", "all_gather", st["tokens"] * float(model.vocab_size * logit_b),
             on(tp_on & holds_head & gathered, m), st["tp_loss"]),
        # Without SP a pipeline receive arrives as 1/t per TP rank and is all-gathered over TP.
        Comm("tp.pp_gather", "all_gather", act, on(tp_on & ~sp & (b.pp > 1), m * (2 * v - 1)), st["tp_ag"]),
        Comm("pp.p2p", "p2p", act / t, on(b.pp > 1, m * (2 * v - 1)), st["p2p_send"]),
        Comm("cp.ring", "all_gather", st["kv_bytes"], on(b.cp > 1, m * layers * 3), st["cp_ring"]),
        Comm("ep.all_to_all", "all_to_all",
             act * model.top_k * model.capacity_factor / np.where(sp, t, 1),
             on(b.ep > 1, m * moe_layers * 4), st["ep"][:, 0] / 2 if routed.any() else zero),
    ]
    if lg.kinds and any(op.tp == "replicated" and op.params for k in lg.kinds for op in k.ops):
        # Once per step with SP: gradients of replicated weights (norms) are partial sums over the
        # sequence shards and are all-reduced (Megatron-LM's layernorm-gradient all-reduce).
        rep = np.einsum("rk,k->r", first, np.array([sum(op.params for op in k.ops if op.tp == "replicated")
                                                    for k in lg.kinds], dtype=np.float64))
        rep = rep + sum(op.params for op in lg.pre_ops if op.tp == "replicated") \
            + np.where(holds_head, sum(op.params for op in lg.post_ops if op.tp == "replicated"), 0.0)
        out.append(Comm("tp.sp_grads", "all_reduce", rep * grad_b, on(sp, np.ones_like(t)), zero))
    params = class_params[:, 0]
    out += [
        Comm("dp.grads", "all_reduce", trained * grad_b, on(has_dp & ((z == 0) | ((z == 1) & ar1)), np.ones_like(t)),
             dp["reduce"]),
        Comm("dp.grads_rs", "reduce_scatter", trained * grad_b,
             on(has_dp & (z >= 1) & ~((z == 1) & ar1), np.where(z >= 2, m, 1.0)),
             np.where(z >= 2, dp["reduce_mb"], dp["reduce"])),
        # Hybrid sharding: each reduce-scattered shard is all-reduced over the replicas (its time is in
        # dp.grads_rs's seconds).
        Comm("dp.grads_replicas", "all_reduce", trained * grad_b / st["g_shard"],
             on(has_dp & (z >= 1) & (st["g_shard"] < st["g_dp"]), np.where(z >= 2, m, 1.0)), zero),
        # ZeRO-1/2 gather the updated (trained) parameters once per step; ZeRO-3 gathers all of them
        # before every forward and backward, ZeRO-2 under FSDP2 before every forward.
        Comm("dp.weights", "all_gather", np.where(per_mb, params, trained) * w_b,
             on(has_dp & (z >= 1), np.where(z == 3, 2 * m, np.where(per_mb, m, 1.0))),
             np.where(per_mb, dp["gather_mb"], dp["gather"])),
        Comm("dp.tied_embedding", "all_reduce", st["emb_bytes"], on(st["emb_bytes"] > 0, np.ones_like(t)),
             st["emb_sync"]),
    ]
    return tuple(out)
