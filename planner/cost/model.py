"""The analytic cost model: step time, memory and FLOPs of many plans in one vectorised pass.

step = pipeline time (compute + exposed communication of the busiest stage, over m micro-batches,
       plus the fill/drain bubble) + exposed data-parallel communication + optimizer step.

Pipeline (Narayanan et al. 2021, Sec. 2.2): with per-micro-batch stage times t_i and m micro-batches,
T = m·max_i t_i + (Σ_i t_i − max_i t_i) / v, which for uniform stages is (m + (p−1)/v)·t, i.e. the bubble
fraction (p−1)/m for 1F1B and GPipe and (p−1)/(v·m) for the interleaved schedule.
Tensor parallelism (Shoeybi et al. 2019; Korthikanti et al. 2022): per layer two all-reduces in
forward and two in backward (or all-gather + reduce-scatter pairs with sequence parallelism); the
backward reductions of the column-parallel input gradients overlap with the weight-gradient GEMMs.
Data parallelism: gradient all-reduce (ZeRO-0) or reduce-scatter + parameter all-gather (ZeRO-1/2),
per-micro-batch all-gathers and reduce-scatters for ZeRO-3, each hidden behind the backward (or
forward) compute of one micro-batch and exposed beyond it.
"""

from __future__ import annotations

import numpy as np

from planner.cost.batch import PlanBatch
from planner.cost.comm import collective_time, p2p_time, product_layout
from planner.cost.compute import ops_times
from planner.cost.memory import (
    GRAD_BYTES,
    OPTIMIZER_BYTES,
    OPTIMIZER_STEP_BYTES,
    WEIGHT_BYTES,
    in_flight_layers,
    layer_activation_bytes,
    layer_params,
    saved_bytes,
    stage_params,
)
from planner.graph import DTYPE_BYTES, LayerGraph, Op, build_graph
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

Array = np.ndarray
GRAD_REDUCE_BYTES = 4  # gradients are reduced in fp32 (Megatron-LM main_grad, FSDP2 reduce_dtype)
DEFAULT_HEADROOM = 0.05  # fraction of device memory kept free for allocator fragmentation
GIB = 2**30


TIMING_KEYS = ("step_time", "compute", "exposed", "bubble", "optimizer", "tp_comm", "pp_comm",
               "dp_comm", "cp_comm", "ep_comm", "model_flops", "hw_flops", "tokens", "layer_fwd",
               "layer_bwd")


class Scores:
    """Arrays over the plans of a batch: the time breakdown (s), memory breakdown (bytes), FLOPs.

    Time terms are stored once per timing group and gathered per plan on first access, so a search
    that only ranks by step time never materialises the rest.

    Attributes: step_time, compute, exposed, bubble, optimizer, tp_comm, pp_comm, dp_comm, cp_comm,
    ep_comm (s); mem_weights, mem_grads, mem_optimizer, mem_activations, mem_other, mem_total
    (bytes); mem_limit; fits; model_flops, hw_flops (per step, whole job); tokens (per step);
    layer_fwd, layer_bwd (one layer, one micro-batch, incl. exposed communication / recompute).
    """

    def __init__(self, timing: dict[str, Array], t_inv: Array | None, memory: dict[str, Array],
                 mem_limit: float) -> None:
        self._timing = timing
        self._t_inv = t_inv
        self.mem_limit = mem_limit
        for k, v in memory.items():
            setattr(self, k, v)

    def __getattr__(self, name: str) -> Array:
        timing = self.__dict__.get("_timing")
        if timing is None or name not in timing:
            raise AttributeError(name)
        inv = self.__dict__["_t_inv"]
        value = timing[name] if inv is None else timing[name][inv]
        setattr(self, name, value)
        return value

    def take(self, idx: Array) -> Scores:
        """The scores of plans `idx` (gathering only what they need)."""
        memory = {k: v[idx] for k, v in self.__dict__.items()
                  if (k.startswith("mem_") and k != "mem_limit") or k == "fits"}
        inv = idx if self._t_inv is None else self._t_inv[idx]
        return Scores(self._timing, inv, memory, self.mem_limit)


OPTIMIZER_KERNELS_PER_TENSOR = 8  # AdamW per tensor: lerp, mul, addcmul, sqrt, div, add, addcdiv + grad zeroing


def param_tensors(lg: LayerGraph, layers_per_stage: Array) -> Array:
    """Parameter tensors a first pipeline stage holds (a weight, plus a bias or a LayerNorm's beta)."""
    two_norm = lg.model.norm == "layernorm"

    def count(op: Op) -> int:
        if not op.params:
            return 0
        return 2 if op.bias or (two_norm and op.name.endswith("norm")) else 1

    per_layer = sum(count(op) for op in lg.layer_ops)
    rest = sum(count(op) for op in lg.pre_ops + lg.post_ops)
    return per_layer * layers_per_stage + rest


def _pad(cols: list[Array], n: int, like: Array) -> list[Array]:
    zero = np.zeros_like(like, dtype=np.float64)
    return (cols + [zero] * n)[:n]


DDP_BUCKET_BYTES = 25 * 2**20  # gradient bucket of DDP / Megatron-LM's overlapped reduction
STRUCTURE_FIELDS = ("tp", "pp", "dp", "cp", "ep", "vpp", "mb", "gb", "sp",
                    "stride_tp", "stride_cp", "stride_dp", "stride_pp")


TIMING_FIELDS = (*STRUCTURE_FIELDS, "rc", "zero")


def group_index(batch: PlanBatch, level: str) -> tuple[Array, Array]:
    """(first row of each group, inverse map) of the plans equal in the fields of `level`.

    "structure" groups share every size, SP and placement; "timing" groups also share the recompute
    mode and ZeRO stage (the schedule only changes memory). Enumerators may precompute these.
    """
    if batch.groups and level in batch.groups:
        return batch.groups[level]
    names = STRUCTURE_FIELDS if level == "structure" else TIMING_FIELDS
    key = np.zeros(len(batch), dtype=np.uint64)
    for f in names:
        col = getattr(batch, f).astype(np.uint64)
        key = (key * np.uint64(1_000_003)) ^ (col + np.uint64(0x9E3779B97F4A7C15))
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return first, inverse


def _structure_terms(model: ModelSpec, cluster: ClusterSpec, batch: PlanBatch) -> dict[str, Array]:
    """Every term that depends only on sizes, SP and placement (seconds per micro-batch, params)."""
    lg = build_graph(model, batch.dtype, batch.flash)
    gpu, dt = cluster.gpu, batch.dtype
    t = batch.tp.astype(np.float64)
    c = batch.cp.astype(np.float64)
    e = batch.ep.astype(np.float64)
    p = batch.pp.astype(np.float64)
    sp = batch.sp
    seq = np.full_like(t, model.seq_len)
    tokens = batch.mb * model.seq_len / c  # local tokens of one micro-batch
    h, beta = model.hidden, DTYPE_BYTES[dt]
    ov = cluster.overlap_slowdown

    def hide(comm: Array, window: Array) -> Array:
        """Exposed time of `comm` run alongside `window` of compute, which it slows by `ov`."""
        return np.maximum(0.0, comm - window) + ov * np.minimum(comm, window)

    # Compute times are those of one rank with the node to itself; when ranks share cores the
    # pipeline assembly (_timing_terms) bounds the step by the node's total work instead.
    lay = ops_times(lg.layer_ops, lg, gpu, dt, batch.flash, tokens, seq, t, sp, e)
    pre = ops_times(lg.pre_ops, lg, gpu, dt, batch.flash, tokens, seq, t, sp, e)
    post = ops_times(lg.post_ops, lg, gpu, dt, batch.flash, tokens, seq, t, sp, e)
    # Host-side cost of the framework (a third in forward, two in backward): per layer, per
    # micro-batch (split over the two ends), and the extra of the tensor-parallel implementation.
    host_l, host_mb = cluster.host_layer_overhead_s, cluster.host_microbatch_overhead_s / 2
    lay.fwd, lay.bwd = lay.fwd + host_l / 3, lay.bwd + 2 * host_l / 3
    pre.fwd, post.fwd = pre.fwd + host_mb / 3, post.fwd + host_mb / 3
    pre.bwd, post.bwd = pre.bwd + 2 * host_mb / 3, post.bwd + 2 * host_mb / 3
    tp_host = np.where(batch.tp > 1, cluster.tp_layer_overhead_s, 0.0) \
        + np.where((batch.tp > 1) & sp, cluster.sp_layer_overhead_s, 0.0)
    lay.fwd, lay.bwd = lay.fwd + tp_host / 3, lay.bwd + 2 * tp_host / 3
    tp_host_mb = np.where(batch.tp > 1, cluster.tp_microbatch_overhead_s / 2, 0.0)  # half each end
    pre.fwd, post.fwd = pre.fwd + tp_host_mb / 3, post.fwd + tp_host_mb / 3
    pre.bwd, post.bwd = pre.bwd + 2 * tp_host_mb / 3, post.bwd + 2 * tp_host_mb / 3

    # Tensor parallel: two sync points per layer in each direction.
    act = tokens * h * beta
    ar = collective_time(cluster, "all_reduce", act, batch.tp, batch.stride_tp)
    ag = collective_time(cluster, "all_gather", act, batch.tp, batch.stride_tp)
    rs = collective_time(cluster, "reduce_scatter", act, batch.tp, batch.stride_tp)
    cols = _pad(lay.col_gemm, 2, t)
    tp_fwd = np.where(sp, 2 * (ag + rs), 2 * ar)
    tp_bwd_total = np.where(sp, 4 * ag + 2 * rs, 2 * ar)
    # Backward: the column-parallel input-gradient reduction overlaps the weight-gradient GEMM; with
    # SP the re-gather of the saved input overlaps the input-gradient GEMM, and the gather of the
    # output gradient ahead of each row-parallel GEMM is exposed.
    tp_bwd = np.where(sp, 2 * ag + sum(hide(ag, w) + hide(rs, w) for w in cols),
                      sum(hide(ar, w) for w in cols))

    # Expert parallel: dispatch + combine all-to-all per MoE layer in each direction.
    if model.is_moe:
        routed = act * model.top_k * model.capacity_factor / np.where(sp, t, 1)
        a2a = collective_time(cluster, "all_to_all", routed, batch.ep, batch.stride_dp)
    else:
        a2a = np.zeros_like(t)

    # Context parallel: ring exchange of K and V chunks, overlapped with the attention core.
    kv = 2 * tokens * model.kv_hidden * beta / t
    cp_ring = collective_time(cluster, "all_gather", kv * c, batch.cp, batch.stride_cp)
    cp_fwd = hide(cp_ring, lay.attn_fwd)
    cp_bwd = hide(2 * cp_ring, lay.attn_bwd)

    # Embedding / LM head (vocabulary parallel) and the loss's small all-reduces.
    small = collective_time(cluster, "all_reduce", tokens * 4.0, batch.tp, batch.stride_tp)
    head_w = _pad(post.col_gemm, 1, t)[0]
    pre_f = pre.fwd + np.where(sp, rs, ar)
    pre_b = pre.bwd
    post_f = post.fwd + np.where(sp, ag, 0.0) + 3 * small
    post_b = post.bwd + np.where(sp, hide(rs, head_w), hide(ar, head_w))

    # Pipeline p2p: each TP rank sends 1/t of the activation (Narayanan et al. 2021, Sec. 4.1) and,
    # without SP, the receiver re-gathers it over TP.
    p2p = p2p_time(cluster, act / t, batch.pp, batch.stride_pp)
    p2p = p2p + np.where(sp | (batch.tp == 1), 0.0, ag)

    # Parameters per GPU and data-parallel collectives (over dp x cp; experts over dp x cp / ep).
    ps_first = stage_params(lg, t, p, e, first=True)
    ps_last = stage_params(lg, t, p, e, first=False)
    dense = np.maximum(ps_first.dense, ps_last.dense)
    expert = ps_first.expert
    gpn = cluster.gpus_per_node
    # Gradient groups span two dimensions: dense weights are replicated over dp x cp ranks, expert
    # weights over (dp / ep) x cp ranks (expert groups are ep consecutive dp ranks).
    g_dp, k_dp, n_dp = product_layout([(batch.dp, batch.stride_dp), (batch.cp, batch.stride_cp)], gpn)
    g_edp, k_edp, n_edp = product_layout([(batch.dp // batch.ep, batch.stride_dp * batch.ep),
                                          (batch.cp, batch.stride_cp)], gpn)
    lp = model.num_layers / p

    def dp_coll(op: str, per_param: float, chunks: Array | None) -> Array:
        """One DP collective over all of a stage's parameters, issued in buckets (or per layer)."""
        total = 0.0
        for params, g, layout in ((dense, g_dp, (k_dp, n_dp)), (expert, g_edp, (k_edp, n_edp))):
            if not np.any(params):
                continue
            nbytes = params * per_param
            n = np.maximum(1.0, np.ceil(nbytes / DDP_BUCKET_BYTES)) if chunks is None else chunks
            total = total + n * collective_time(cluster, op, nbytes / n, g, layout=layout)
        return total + np.zeros_like(t)

    one_layer = layer_params(lg, t, e)
    kept = [layer_activation_bytes(lg, tokens, seq, t, sp, np.full_like(batch.rc, r))[0] for r in range(3)]
    return {
        "act_none": kept[0], "act_selective": kept[1], "act_full": kept[2],
        "pre_saved": saved_bytes(lg.pre_ops, tokens, seq, t, sp),
        "post_saved": saved_bytes(lg.post_ops, tokens, seq, t, sp),
        "logits": beta * model.vocab_size * tokens / t,
        "tokens": tokens, "lp": lp,
        "lay_fwd": lay.fwd, "lay_bwd": lay.bwd, "attn_fwd": lay.attn_fwd,
        "tp_fwd": tp_fwd, "tp_bwd": tp_bwd, "tp_bwd_total": tp_bwd_total,
        "ep": 2 * a2a, "cp_fwd": cp_fwd, "cp_bwd": cp_bwd, "cp_total": 3 * cp_ring,
        "pre_f": pre_f, "pre_b": pre_b, "post_f": post_f, "post_b": post_b,
        "pre_t": pre_f + pre_b, "post_t": post_f + post_b, "pre_compute": pre.fwd + pre.bwd,
        "post_compute": post.fwd + post.bwd, "p2p": p2p,
        "dense_first": ps_first.dense, "dense_last": ps_last.dense, "expert": expert,
        "layer_params": one_layer.dense + one_layer.expert,
        "dp_ar": dp_coll("all_reduce", GRAD_REDUCE_BYTES, None),
        "dp_rs": dp_coll("reduce_scatter", GRAD_REDUCE_BYTES, None),
        "dp_ag": dp_coll("all_gather", WEIGHT_BYTES[dt], None),
        "dp_rs_layers": dp_coll("reduce_scatter", GRAD_REDUCE_BYTES, lp),
        "dp_ag_layers": dp_coll("all_gather", WEIGHT_BYTES[dt], lp),
        "g_dp": g_dp.astype(np.float64), "g_edp": g_edp.astype(np.float64),
    }


def evaluate(model: ModelSpec, cluster: ClusterSpec, batch: PlanBatch,
             headroom: float = DEFAULT_HEADROOM) -> Scores:
    """Score every plan of `batch` (all for `cluster.num_gpus` GPUs) and return the breakdowns.

    Terms are computed once per distinct structure (sizes, SP, placement), then once per
    structure x recompute x ZeRO stage (all the time terms), then per plan (memory, which the
    schedule changes), so that the cost of a plan is a few array operations.
    """
    lg = build_graph(model, batch.dtype, batch.flash)
    s_first, s_inv = group_index(batch, "structure")
    t_first, t_inv = group_index(batch, "timing")
    s_terms = _structure_terms(model, cluster, batch.take(s_first))
    tb = _Columns(batch, t_first)
    s_of_t = s_inv[t_first]
    timing = _timing_terms(model, cluster, tb, {k: s_terms[k][s_of_t] for k in TIMING_INPUTS})
    return _plan_terms(model, cluster, lg, batch, s_terms, s_inv, timing, t_inv, headroom)


# Structure terms the timing level reads (the rest only feed memory, per plan).
TIMING_INPUTS = ("attn_fwd", "cp_bwd", "cp_fwd", "cp_total", "dense_first", "dense_last", "dp_ag", "dp_ag_layers",
                 "dp_ar", "dp_rs", "dp_rs_layers", "ep", "expert", "g_dp", "g_edp", "lay_bwd", "lay_fwd", "lp", "p2p",
                 "post_compute", "post_t", "pre_compute", "pre_t", "tp_bwd", "tp_bwd_total", "tp_fwd")


class _Columns:
    """The columns of a PlanBatch at some rows, gathered on first use (cheaper than `take`)."""

    def __init__(self, batch: PlanBatch, rows: Array) -> None:
        self._batch, self._rows = batch, rows
        self.dtype, self.flash = batch.dtype, batch.flash

    def __getattr__(self, name: str) -> Array:
        value = getattr(self._batch, name)[self._rows]
        setattr(self, name, value)
        return value

    @property
    def m(self) -> Array:
        return self.gb // (self.dp * self.mb)


def _timing_terms(model: ModelSpec, cluster: ClusterSpec, tb: PlanBatch,
                  st: dict[str, Array]) -> dict[str, Array]:
    """Step time and its breakdown for each distinct structure x recompute x ZeRO stage."""
    ov = cluster.overlap_slowdown

    def hide(comm: Array, window: Array) -> Array:
        return np.maximum(0.0, comm - window) + ov * np.minimum(comm, window)

    t = tb.tp.astype(np.float64)
    p = tb.pp.astype(np.float64)
    v = tb.vpp.astype(np.float64)
    m = tb.m.astype(np.float64)
    rc, zero = tb.rc, tb.zero
    lp = st["lp"]

    # One layer, one micro-batch.
    layer_f = st["lay_fwd"] + st["tp_fwd"] + st["ep"] + st["cp_fwd"]
    recompute = np.select([rc == 2, rc == 1], [layer_f, st["attn_fwd"]], default=0.0)
    layer_b = st["lay_bwd"] + st["tp_bwd"] + st["ep"] + st["cp_bwd"] + recompute
    layer_compute = st["lay_fwd"] + st["lay_bwd"] \
        + np.select([rc == 2, rc == 1], [st["lay_fwd"], st["attn_fwd"]], 0.0)
    layer_tp_total = st["tp_fwd"] + st["tp_bwd_total"] + np.where(rc == 2, st["tp_fwd"], 0.0)

    # Stage times per micro-batch and the pipeline.
    single = tb.pp == 1
    p2p_mb = np.where(tb.pp > 1, 2 * v * st["p2p"] + v * cluster.pp_microbatch_overhead_s, 0.0)
    # FSDP (ZeRO-2/3) hooks run around every layer of every micro-batch.
    fsdp = np.where((zero >= 2) & (st["g_dp"] > 1), cluster.fsdp_layer_overhead_s, 0.0)
    layer_f, layer_b = layer_f + fsdp / 3, layer_b + 2 * fsdp / 3
    mid = lp * (layer_f + layer_b) + p2p_mb
    first = mid + st["pre_t"] + np.where(single, st["post_t"], 0.0)
    last = np.where(single, first, mid + st["post_t"])
    t_max = np.maximum(np.maximum(first, last), np.where(tb.pp > 2, mid, 0.0))
    total = np.where(single, first, first + last + (p - 2) * mid)
    pipeline = m * t_max + (total - t_max) / v
    bubble = pipeline - m * t_max
    crit_first = first >= last
    stage_compute = lp * layer_compute \
        + np.where(crit_first | single, st["pre_compute"], 0.0) \
        + np.where(~crit_first | single, st["post_compute"], 0.0)
    # Ranks sharing too few cores: a node cannot finish before its ranks' total busy time has run
    # on its cores (work conserving); pipeline fill and drain leave cores to the busy stages, so
    # they cost less than on dedicated devices. The breakdown stretches by the same factor.
    slow = cluster.compute_slowdown
    if slow > 1.0:
        busy = m * total / p  # the average rank's busy time per step
        stretch = np.maximum(1.0, slow * busy / pipeline)
        pipeline, bubble, stage_compute = pipeline * stretch, bubble * stretch, stage_compute * stretch

    # Data parallel: overlapped with one micro-batch's backward (or forward). Each ZeRO stage's
    # formula is evaluated only on its own rows.
    bwd_w, fwd_w = lp * layer_b, lp * layer_f
    ar, rs, ag = st["dp_ar"], st["dp_rs"], st["dp_ag"]
    rs_l, ag_l = st["dp_rs_layers"], st["dp_ag_layers"]
    has_dp = st["g_dp"] > 1
    dp_total = np.zeros_like(t)
    dp_exposed = np.zeros_like(t)
    dp_bwd_comm = np.zeros_like(t)
    dp_exposed_fwd = np.zeros_like(t)
    for stage in (0, 1, 2, 3):
        i = np.flatnonzero(has_dp & (zero == stage))
        if not len(i):
            continue
        bw, fw, mi = bwd_w[i], fwd_w[i], m[i]
        if stage == 0:
            dp_total[i] = ar[i]
            dp_exposed[i] = hide(ar[i], bw)
            dp_bwd_comm[i] = ar[i]
        elif stage == 1:
            dp_total[i] = rs[i] + ag[i]
            dp_exposed_fwd[i] = hide(ag[i], fw)
            dp_exposed[i] = hide(rs[i], bw) + dp_exposed_fwd[i]
            dp_bwd_comm[i] = rs[i]
        elif stage == 2:
            dp_total[i] = mi * rs_l[i] + ag[i]
            dp_exposed[i] = mi * hide(rs_l[i], bw) + hide(ag[i], fw)
        else:
            dp_total[i] = mi * (2 * ag_l[i] + rs_l[i])
            dp_exposed[i] = mi * (hide(ag_l[i], fw) + hide(ag_l[i] + rs_l[i], bw))

    # Tied embeddings under pipelining: first and last stage all-reduce the embedding gradient.
    # The pair is stride_pp·(pp−1) ranks apart; when the whole pipeline group sits in one node so
    # do they (group_layout's gpus_per_node // stride would misplace e.g. a stride of 6 in 8).
    if model.tied_embeddings:
        pair_stride = np.where(tb.stride_pp * tb.pp <= cluster.gpus_per_node, tb.stride_pp,
                               tb.stride_pp * (tb.pp - 1))
        emb = collective_time(cluster, "all_reduce", model.vocab_size * model.hidden / t * GRAD_REDUCE_BYTES,
                              np.full_like(tb.pp, 2), pair_stride)
        emb = np.where(tb.pp > 1, emb, 0.0)
    else:
        emb = np.zeros_like(t)

    dense = np.maximum(st["dense_first"], st["dense_last"])
    sharded = zero >= 1
    local = dense / np.where(sharded, st["g_dp"], 1) + st["expert"] / np.where(sharded, st["g_edp"], 1)
    # Memory bound, plus one launch per parameter tensor for each of the optimizer's element-wise ops.
    lg_t = build_graph(model, tb.dtype, tb.flash)
    kernels = OPTIMIZER_KERNELS_PER_TENSOR * param_tensors(lg_t, lp)
    optimizer = cluster.gpu.memory_time(local * OPTIMIZER_STEP_BYTES[tb.dtype], kernels) * cluster.compute_slowdown

    step = pipeline + dp_exposed + emb + optimizer
    compute = m * stage_compute

    # FLOPs (Narayanan et al. 2021 convention: backward = 2x forward).
    lg = build_graph(model, tb.dtype, tb.flash)
    seqs = tb.gb.astype(np.float64)
    s_len = model.seq_len
    fwd_per_seq = lg.forward_flops(1, s_len)
    layer_fwd_seq = s_len * sum(op.flops + op.flops_s * s_len for op in lg.layer_ops)
    attn_fwd_seq = s_len * sum(op.flops_s * s_len for op in lg.layer_ops)
    model_flops = 3.0 * fwd_per_seq * seqs
    extra = np.select([rc == 2, rc == 1], [layer_fwd_seq, attn_fwd_seq], 0.0) * model.num_layers * seqs
    return {
        # exposed is >= 0 by construction (t_max >= the critical stage's compute); clamp the rounding
        # residue (-1e-18 s) so predictions satisfy the schema's seconds >= 0.
        "step_time": step, "compute": compute,
        "exposed": np.maximum(step - compute - bubble - optimizer, 0.0),
        "bubble": bubble, "optimizer": optimizer, "tp_comm": m * lp * layer_tp_total,
        "pp_comm": m * p2p_mb, "dp_comm": dp_total + emb, "cp_comm": m * lp * st["cp_total"],
        "ep_comm": m * lp * 2 * st["ep"], "model_flops": model_flops, "hw_flops": model_flops + extra,
        "tokens": seqs * s_len, "layer_fwd": layer_f, "layer_bwd": layer_b,
        "emb": emb, "dp_exposed": dp_exposed, "dp_bwd_comm": dp_bwd_comm, "dp_exposed_fwd": dp_exposed_fwd,
    }


def _plan_terms(model: ModelSpec, cluster: ClusterSpec, lg: object, batch: PlanBatch,
                s_terms: dict[str, Array], s_inv: Array, timing: dict[str, Array], t_inv: Array,
                headroom: float) -> Scores:
    """Memory per GPU (the larger of the first and last pipeline stage) for every plan."""
    st = {k: s_terms[k][s_inv] for k in ("lp", "dense_first", "dense_last", "expert", "g_dp", "g_edp",
                                           "layer_params", "pre_saved", "post_saved", "logits")}
    rc, zero = batch.rc, batch.zero
    kept = np.select([rc == 0, rc == 1],
                     [s_terms["act_none"][s_inv], s_terms["act_selective"][s_inv]],
                     s_terms["act_full"][s_inv])
    no_rc = s_terms["act_none"][s_inv]
    p = batch.pp.astype(np.float64)
    v = batch.vpp.astype(np.float64)
    m = batch.m.astype(np.float64)
    single = batch.pp == 1
    lp, g_dp, g_edp = st["lp"], st["g_dp"], st["g_edp"]
    dt = batch.dtype
    wbytes = WEIGHT_BYTES[dt]
    d3, d2, d1 = (np.where(zero >= k, g_dp, 1) for k in (3, 2, 1))
    e3, e2, e1 = (np.where(zero >= k, g_edp, 1) for k in (3, 2, 1))
    # ZeRO-3 gathers two layers' full weights at a time (nothing to gather with one replica).
    base_other = cluster.reserved_memory_bytes + np.where(rc == 2, no_rc, 0.0) \
        + np.where((zero == 3) & (g_dp > 1), 2.0 * st["layer_params"] * wbytes, 0.0)

    def stage_memory(first_stage: bool) -> tuple[Array, ...]:
        dense_s = st["dense_first"] if first_stage else st["dense_last"]
        weights = (dense_s / d3 + st["expert"] / e3) * wbytes
        grads = (dense_s / d2 + st["expert"] / e2) * GRAD_BYTES[dt]
        opt = (dense_s / d1 + st["expert"] / e1) * OPTIMIZER_BYTES[dt]
        held = in_flight_layers(model.num_layers, p, v, m, batch.sched, first_stage)
        acts = kept * held
        if first_stage:
            acts = acts + st["pre_saved"] * held / lp + np.where(single, st["post_saved"], 0.0)
            other = base_other + np.where(single, st["logits"], 0.0)
        else:
            acts = acts + st["post_saved"] + np.where(single, st["pre_saved"], 0.0)
            other = base_other + st["logits"]
        return weights, grads, opt, acts, other

    mf, ml = stage_memory(True), stage_memory(False)
    tot_f, tot_l = sum(mf), sum(ml)
    use_first = tot_f >= tot_l
    mem = [np.where(use_first, a, b) for a, b in zip(mf, ml, strict=True)]
    mem_total = np.maximum(tot_f, tot_l)
    limit = cluster.gpu.memory_bytes * (1.0 - headroom)
    memory = {"mem_weights": mem[0], "mem_grads": mem[1], "mem_optimizer": mem[2],
              "mem_activations": mem[3], "mem_other": mem[4], "mem_total": mem_total,
              "fits": mem_total <= limit}
    return Scores(timing, t_inv, memory, limit)


def prediction(scores: Scores, i: int, cluster: ClusterSpec, dtype: str) -> dict:
    """The contract `prediction` object of plan i (units in the key names)."""
    n = cluster.num_gpus
    step = float(scores.step_time[i])
    peak = cluster.gpu.peak(dtype)
    tflops = float(scores.model_flops[i]) / step / n
    hw = float(scores.hw_flops[i]) / step / n
    tok = float(scores.tokens[i]) / step
    return {
        "step_time_s": step,
        "tokens_per_s": tok,
        "tokens_per_s_per_gpu": tok / n,
        "tflops_per_gpu": tflops / 1e12,
        "hw_tflops_per_gpu": hw / 1e12,
        "mfu": tflops / peak,
        "hfu": hw / peak,
        "memory_gib_per_gpu": float(scores.mem_total[i]) / GIB,
        "memory_limit_gib": scores.mem_limit / GIB,
        "fits": bool(scores.fits[i]),
        "time": {
            "compute": float(scores.compute[i]),
            "tp_comm": float(scores.tp_comm[i]),
            "pp_comm": float(scores.pp_comm[i]),
            "dp_comm": float(scores.dp_comm[i]),
            "cp_comm": float(scores.cp_comm[i]),
            "ep_comm": float(scores.ep_comm[i]),
            "bubble": float(scores.bubble[i]),
            "optimizer": float(scores.optimizer[i]),
            "exposed": float(scores.exposed[i]),
        },
        "memory": {
            "weights": float(scores.mem_weights[i]) / GIB,
            "grads": float(scores.mem_grads[i]) / GIB,
            "optimizer": float(scores.mem_optimizer[i]) / GIB,
            "activations": float(scores.mem_activations[i]) / GIB,
            "other": float(scores.mem_other[i]) / GIB,
        },
    }
