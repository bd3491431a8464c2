"""The closed-form step time and memory of many plans in one vectorised pass.

step = pipeline time (compute + exposed communication of the busiest stage, over m micro-batches,
       plus the fill/drain bubble) + exposed data-parallel communication + optimizer step.

Pipeline (Narayanan et al. 2021, Sec. 2.2): with per-micro-batch rank times t_r (all of a rank's
model chunks) and m micro-batches, T = m·max_r t_r + (Σ_r t_r − max_r t_r) / v, which for uniform
stages is (m + (p−1)/v)·t, i.e. the bubble fraction (p−1)/m for 1F1B and GPipe and (p−1)/(v·m) for
the interleaved schedule. The per-micro-batch terms come from `planner.cost.terms` (the contract the
simulation and the trace read too); the overlap rules from `planner.cost.overlap`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.cost.batch import PlanBatch, group_index, unique_inverse
from planner.cost.memory import (
    MATMUL_POLICIES,
    OPTIMIZER_BYTES,
    WEIGHT_BYTES,
    gradient_path,
    in_flight_microbatches,
    policy_recomputed,
)
from planner.cost.overlap import core_sharing_stretch, data_parallel
from planner.cost.terms import FIRST_MATMUL_POLICY, CostTerms, cost_grid, recompute_variants
from planner.plan import SCHEDULES
from planner.precision import base_dtype
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

Array = np.ndarray
DEFAULT_HEADROOM = 0.05  # fraction of device memory kept free for allocator fragmentation
GIB = 2**30


@dataclass(frozen=True)
class MemoryParts:
    """Per-GPU memory of each cost-grid cell and stage class (bytes), before the schedule is known.

    A plan's memory on a class is state + held · per_microbatch + head · head_held, where held (and
    head_held, for the head's saved tensors) are the micro-batches its schedule keeps in flight on the
    class's first rank; its memory per GPU is the largest over the classes. Totals are computed for every
    cell under its structure's own schedule (a search gives each structure one); the parts stay in the
    shape they vary in (broadcastable to the grid x classes) and are read only for the plans asked about.
    """

    weights: Array  # broadcastable to (*grid, C)
    grads: Array
    optimizer: Array
    other_fixed: Array  # ZeRO-3 gather buffers, logits (broadcastable to (*grid, C))
    working: Array  # runtime reserve and full recompute's working set (broadcastable to (*grid, C))
    fixed: Array  # weights + grads + optimizer + other_fixed; -inf for padding classes
    step_grads: Array  # the optimizer step's gradient copies (GradientPath.step_bytes, zero0_step_bytes), else 0
    reduce_bucket: Array  # the reduction's bucket where it is allocated after the backward, else 0
    step_held: Array  # gradients still held beside the step's copies (ZeRO-0), else 0
    step: Array  # the optimizer step's peak: weights + optimizer + step_grads + step_held + the reserve
    per_microbatch: Array  # broadcastable to (*grid, C): activations of one in-flight micro-batch
    layer_microbatch: Array  # the transformer layers' part of per_microbatch (the embedding's left out)
    head: Array  # broadcastable to (*grid, C): what the head and loss save per micro-batch (last class)
    pipeline: tuple[Array, Array, Array, Array]  # per structure: pp, vpp, m (structures, 1), first ranks (.., C)
    schedule: Array  # (structures,): the schedule `totals` are computed under
    totals: Array  # (cells,): the memory per GPU of every cell under its structure's schedule
    grid: tuple[int, ...] = ()

    reserve: float = 0.0  # the runtime reserve (ClusterSpec.reserved_memory_bytes), part of `step`
    capacity: float = np.inf  # the GPU's memory (bytes): what the caching allocator can reserve at most

    @property
    def cells_per_structure(self) -> int:
        return int(np.prod(self.grid[1:]))

    def _at(self, part: Array, rows: Array) -> Array:
        """(len(rows), C): a broadcastable part at the flattened cells `rows`."""
        index = np.unravel_index(rows, self.grid)
        return np.broadcast_to(part, (*self.grid, self.fixed.shape[-1]))[index]

    def plan_memory(self, rows: Array, sched: Array, breakdown: bool) -> dict[str, Array]:
        """Memory of plans whose cells are `rows` under schedules `sched`: mem_total (and the breakdown
        of its largest class)."""
        structure = rows // self.cells_per_structure
        if not breakdown and (sched == self.schedule[structure]).all():
            return {"mem_total": self.totals[rows]}
        held, head_held = _in_flight(self.pipeline, structure, sched)
        acts = held * self._at(self.per_microbatch, rows) + self._at(self.head, rows) * head_held[:, None]
        working = self._at(self.working, rows)
        training = self._at(self.fixed, rows) + working + acts
        step = self._at(self.step, rows)
        total = np.maximum(training, step)
        out = {"mem_total": _max_last(total)}
        if breakdown:  # the largest class at its peak: in the backward, or at the optimizer step
            out["mem_reserved"] = _max_last(self._reserved(training, total, rows))
            pick = _argmax_last(total)
            at_step = _pick(step > training, pick)
            other = self._at(self.other_fixed, rows) + working
            out.update({"mem_weights": _pick(self._at(self.weights, rows), pick),
                        "mem_grads": np.where(at_step, _pick(self._at(self.step_grads, rows)
                                                             + self._at(self.step_held, rows), pick),
                                              _pick(self._at(self.grads, rows), pick)),
                        "mem_optimizer": _pick(self._at(self.optimizer, rows), pick),
                        "mem_activations": np.where(at_step, 0.0, _pick(acts, pick)),
                        "mem_layer_activations": np.where(at_step, 0.0, _pick(
                            held * self._at(self.layer_microbatch, rows), pick)),
                        "mem_other": np.where(at_step, self.reserve, _pick(other, pick))})
        return out

    def _reserved(self, training: Array, total: Array, rows: Array) -> Array:
        """What PyTorch's CUDA caching allocator holds at the peak, with the runtime reserve (nvidia-smi).

        Without expandable segments (PyTorch's default) each cudaMalloc is its own segment, blocks of
        different segments never merge, and a request larger than every free cached block takes a new
        segment (Yang, "When does fragmentation occur in the CUDA caching allocator?", pytorch/devlogs
        2026-06-01). Blocks freed after the backward (activations, per-parameter gradients) stay cached in
        their segments, so an optimizer step that copies the gradients of its shard (`step_grads`:
        DeepSpeed ZeRO-1/2 flattens and casts the whole partition) places those copies in new segments on
        top of the backward's peak, and so does a reduction that allocates its bucket after the backward
        (`reduce_bucket`; freed before the step's copies, whose segment they reuse only if they fit in it,
        which a whole shard's copies rarely do); where that reaches the GPU's capacity the allocator frees
        its cached blocks and retries, so the reserve never exceeds the GPU. Without such allocations: the
        allocated peak."""
        fresh = self._at(self.step_grads, rows) + self._at(self.reduce_bucket, rows)
        return np.maximum(total, np.where(fresh > 0, np.minimum(training + fresh, self.capacity), total))


def _in_flight(pipeline: tuple[Array, Array, Array, Array], structure: Array, sched: Array) -> tuple[Array, Array]:
    """(held (len, C), head_held (len,)): micro-batches in flight on each class's first rank, and of the
    head's saved tensors, for structures `structure` (rows of `pipeline`: pp, vpp, m, first ranks) under
    schedules `sched`."""
    pp, vpp, m, first_rank = (x[structure] for x in pipeline)
    held = in_flight_microbatches(pp, vpp, m, sched[:, None], first_rank)
    # The head's saved tensors stay in flight for every micro-batch under GPipe (all forwards run
    # before the first backward); 1F1B runs the last stage's backward right after its forward.
    head_held = np.where((sched == SCHEDULES.index("gpipe")) & (pp[:, 0] > 1), m[:, 0], 1).astype(np.float64)
    return held, head_held


class Scores:
    """Arrays over the plans of a batch: the time breakdown (s), memory breakdown (bytes), FLOPs.

    Time terms are stored once per cost-grid cell (plans equal in everything but the schedule) and
    gathered per plan on first access, so a search that only ranks by step time never materialises
    the rest; memory per plan is computed from the cells' `MemoryParts` (the breakdown only for the
    plans asked about).

    Attributes: step_time, compute, exposed, bubble, optimizer, tp_comm, pp_comm, dp_comm, cp_comm,
    ep_comm (s); mem_weights, mem_grads, mem_optimizer, mem_activations (of which mem_layer_activations: the
    transformer layers'), mem_other, mem_total, mem_reserved (bytes); mem_limit; fits; model_flops, hw_flops
    (per step, whole job); tokens (per step).
    """

    MEMORY = ("mem_weights", "mem_grads", "mem_optimizer", "mem_activations", "mem_other", "mem_reserved",
              "mem_layer_activations")

    def __init__(self, timing: dict[str, Array], memory: MemoryParts, rows: Array, sched: Array,
                 mem_limit: float, timing_rows: Array | None = None) -> None:
        self._timing = timing  # (cells,), or (timed cells + 1,) read through timing_rows
        self._memory = memory
        self._rows = rows  # the cell of each plan
        self._trows = rows if timing_rows is None else timing_rows  # each plan's row of the timing arrays
        self._sched = sched  # the schedule of each plan
        self.mem_limit = mem_limit

    def __len__(self) -> int:
        return len(self._rows)

    def __getattr__(self, name: str) -> Array:
        d = self.__dict__
        if "_timing" not in d:
            raise AttributeError(name)
        if name in d["_timing"]:
            value = d["_timing"][name][d["_trows"]]
        elif name == "fits":
            value = self.mem_total <= self.mem_limit
        elif name == "mem_total" or name in self.MEMORY:
            parts = self._memory.plan_memory(d["_rows"], d["_sched"], breakdown=name != "mem_total")
            for k, v in parts.items():
                d.setdefault(k, v)
            return d[name]
        else:
            raise AttributeError(name)
        setattr(self, name, value)
        return value

    def take(self, idx: Array) -> Scores:
        """The scores of plans `idx` (gathering only what they need)."""
        d = self.__dict__
        out = Scores(d["_timing"], d["_memory"], d["_rows"][idx], d["_sched"][idx], self.mem_limit, d["_trows"][idx])
        for name in ("mem_total", "fits", *self.MEMORY):
            if name in d:
                out.__dict__[name] = d[name][idx]
        return out

    def compact(self, idx: Array) -> Scores:
        """The scores of plans `idx`, every field gathered, holding none of this batch's cell arrays: a
        search keeps a few plans of each chunk, and `take` would keep every chunk's cells alive."""
        d = self.__dict__
        rows, sched = d["_rows"][idx], d["_sched"][idx]
        timing = {k: v[d["_trows"][idx]] for k, v in d["_timing"].items()}
        out = Scores(timing, d["_memory"], np.arange(len(rows)), sched, self.mem_limit)
        out.__dict__.update(d["_memory"].plan_memory(rows, sched, breakdown=True))
        out.__dict__["_memory"] = None  # every memory field is gathered above
        return out


def _per_class(layers: Array, per_layer: Array) -> Array:
    """(..., C): a per-layer-kind term (..., K) summed over the layers each stage class holds (..., C, K)."""
    if layers.shape[-1] == 1:
        return layers[..., 0] * per_layer[..., :1]
    return _sum_last(layers * per_layer[..., None, :])


def _pick(x: Array, index: Array) -> Array:
    """x[..., index] along the last (class) axis, for an `index` of the leading shape (few classes:
    a chain of where is much faster than take_along_axis)."""
    x = np.broadcast_to(x, index.shape + x.shape[-1:])
    out = x[..., 0]
    for i in range(1, x.shape[-1]):
        out = np.where(index == i, x[..., i], out)
    return out


def _over_kinds(counts: Array, per_layer: Array) -> Array:
    """(...): a per-layer-kind term (..., K) summed over `counts` layers of each kind (..., K)."""
    return _sum_last(counts * per_layer)


def _sum_last(x: Array) -> Array:
    """Sum over a short last axis (numpy's strided reductions are slow on axes of 1-4 elements)."""
    out = x[..., 0]
    for i in range(1, x.shape[-1]):
        out = out + x[..., i]
    return out


def _max_last(x: Array) -> Array:
    """Maximum over a short last axis (see `_sum_last`)."""
    out = x[..., 0]
    for i in range(1, x.shape[-1]):
        out = np.maximum(out, x[..., i])
    return out


def _argmax_last(x: Array) -> Array:
    """First index of the maximum over a short last axis."""
    best, out = x[..., 0], np.zeros(x.shape[:-1], dtype=np.int64)
    for i in range(1, x.shape[-1]):
        better = x[..., i] > best
        best = np.where(better, x[..., i], best)
        out = np.where(better, i, out)
    return out


def step_times(model: ModelSpec, cluster: ClusterSpec, terms: CostTerms) -> dict[str, Array]:
    """The closed-form step time and its breakdown, arrays of the terms' leading shape."""
    lg = terms.graph
    ax = terms.axes
    p = ax.pp.astype(np.float64)
    v = ax.vpp.astype(np.float64)
    m = ax.m.astype(np.float64)
    cls = terms.classes.head()  # the non-dominated classes hold every maximum
    pre, post = cls.has_pre, cls.has_post
    e = (..., None)

    # Rank time per micro-batch for each stage class, and the pipeline.
    p2p_mb = np.where(ax.pp > 1, 2 * v * terms.p2p + v * terms.pp_host, 0.0)
    pre_t, post_t = terms.pre_fwd + terms.pre_bwd, terms.post_fwd + terms.post_bwd
    fwd_w = _per_class(cls.layers, terms.layer_fwd)
    bwd_w = _per_class(cls.layers, terms.layer_bwd)
    rank = fwd_w + bwd_w + np.where(pre, pre_t[e], 0.0) + np.where(post, post_t[e], 0.0) + p2p_mb[e]
    rank = np.where(cls.valid, rank, -np.inf)
    crit = _argmax_last(rank)
    t_max = _max_last(rank)
    # Σ over all ranks of their time: every layer once, the two extras once, p ranks' sends.
    total = _over_kinds(terms.total_layers, terms.layer_fwd + terms.layer_bwd) + pre_t + post_t + p * p2p_mb
    total = np.maximum(total, t_max)  # equal for one stage: keep the rounding from making a bubble
    pipeline = m * t_max + (total - t_max) / v
    bubble = pipeline - m * t_max
    # busy time: the layers' compute and host work, and the pipeline schedule's host work per chunk
    compute_c = _per_class(cls.layers, terms.layer_compute) + np.where(pre, terms.pre_compute[e], 0.0) \
        + np.where(post, terms.post_compute[e], 0.0) + (v * terms.pp_host)[e]
    stage_compute = _pick(compute_c, crit)
    stretch = core_sharing_stretch(m * total / p, pipeline, cluster.compute_slowdown)
    pipeline, bubble, stage_compute = pipeline * stretch, bubble * stretch, stage_compute * stretch

    # Data parallel: per class, overlapped with one micro-batch's backward (or forward).
    c = cls.size.shape[-1]
    fw = terms.framework  # without overlap the collectives have no window to hide in
    dp = data_parallel(ax.zero[e], terms.has_dp[e], m[e], terms.dp_reduce[..., :c], terms.dp_reduce_mb[..., :c],
                       terms.dp_gather[..., :c], terms.dp_gather_mb[..., :c],
                       fwd_w if fw.param_gather_overlap else 0.0 * fwd_w, bwd_w if fw.dp_overlap else 0.0 * bwd_w,
                       cluster.overlap_slowdown_for(fw), terms.dp_reduce_last[..., :c])
    valid = cls.valid
    dp_exposed = _max_last(np.where(valid, dp.exposed, 0.0))
    dp_total = _max_last(np.where(valid, dp.total, 0.0))
    optimizer = _max_last(np.where(valid, terms.optimizer[..., :c], 0.0))
    emb = terms.emb_sync

    step = pipeline + dp_exposed + emb + optimizer
    compute = m * stage_compute
    crit_layers = np.stack([_pick(cls.layers[..., k], crit) for k in range(cls.layers.shape[-1])], axis=-1)
    crit_pre, crit_post = _pick(pre, crit), _pick(post, crit)

    # FLOPs (Narayanan et al. 2021 convention: backward = 2x forward).
    seqs = ax.gb.astype(np.float64)
    s_len = model.seq_len
    layer_fwd_seq = np.array([s_len * sum(op.flops + op.flops_s * s_len for op in k.ops) for k in lg.kinds])
    attn_fwd_seq = np.array([s_len * sum(op.flops_s * s_len for op in k.ops) for k in lg.kinds])
    # the forward FLOPs each matmul checkpoint policy repeats (RECOMPUTE from FIRST_MATMUL_POLICY, in order)
    policy_fwd_seq = []
    for pol in MATMUL_POLICIES:
        fracs = [policy_recomputed(pol, k.ops, model) for k in lg.kinds]
        policy_fwd_seq.append(np.array([s_len * sum((op.flops + op.flops_s * s_len) * frac.get(op.name, 0.0)
                                                    for op in k.ops) for k, frac in zip(lg.kinds, fracs, strict=True)]))
    model_flops = lg.train_flops(1, s_len) * seqs
    rc = ax.rc
    extra = np.select([rc == 2, rc == 1] + [rc == FIRST_MATMUL_POLICY + i for i in range(len(MATMUL_POLICIES))],
                      [terms.total_layers @ layer_fwd_seq / ax.every, terms.total_layers @ attn_fwd_seq]
                      + [terms.total_layers @ x for x in policy_fwd_seq], 0.0) * seqs
    shape = step.shape

    def full(x: Array) -> Array:
        return np.broadcast_to(x, shape)

    # exposed is >= 0 by construction (t_max >= the critical stage's compute); what the subtraction
    # leaves below 1e-12 of the step is rounding (+-1e-18 s), not time, and reads as 0.
    exposed = step - compute - bubble - optimizer
    return {
        "step_time": step, "compute": full(compute),
        "exposed": np.where(exposed > 1e-12 * step, exposed, 0.0),
        "bubble": full(bubble), "optimizer": full(optimizer),
        "tp_comm": full(m * (_over_kinds(crit_layers, terms.layer_tp) + np.where(crit_pre, terms.pre_tp, 0.0)
                             + np.where(crit_post, terms.post_tp, 0.0))),
        "pp_comm": full(m * p2p_mb), "dp_comm": full(dp_total + emb),
        "cp_comm": full(m * _over_kinds(crit_layers, terms.layer_cp)),
        "ep_comm": full(m * _over_kinds(crit_layers, terms.layer_ep)),
        "model_flops": full(model_flops), "hw_flops": full(model_flops + extra), "tokens": full(seqs * s_len),
    }


def evaluate(model: ModelSpec, cluster: ClusterSpec, batch: PlanBatch, headroom: float = DEFAULT_HEADROOM,
             only_fitting: bool = False) -> Scores:
    """Score every plan of `batch` (all for `cluster.num_gpus` GPUs) and return the breakdowns.

    Terms are computed once per distinct structure (sizes, SP, placement), then for every recompute
    x ZeRO variant of it at once (the time terms and the memory), then gathered per plan, so that the
    cost of a plan is a few array operations. `only_fitting` (the search) times only the variants
    that have a plan fitting in memory; the others read +inf.
    """
    s_first, s_inv = group_index(batch, "structure")
    rc, every, r_inv = recompute_variants(batch)
    zeros, z_inv = unique_inverse(batch.zero)
    terms = cost_grid(model, cluster, batch.take(s_first), rc, zeros, every)
    cell = (s_inv * len(rc) + r_inv) * len(zeros) + z_inv
    limit = cluster.gpu.memory_bytes * (1.0 - headroom)
    memory = memory_parts(cluster, terms, batch.sched[s_first])
    n_cells = int(np.prod(terms.grid))
    needed = mem_total = None
    if only_fitting:
        mem_total = memory.plan_memory(cell, batch.sched, breakdown=False)["mem_total"]
        mask = np.zeros(n_cells, dtype=bool)
        mask[cell[mem_total <= limit]] = True
        needed = np.flatnonzero(mask) if mask.sum() < 0.4 * n_cells else None
    if needed is None:
        timing = {k: v.reshape(-1) for k, v in step_times(model, cluster, terms).items()}
        rows = cell
    else:  # time the needed cells alone (a gather of their terms is cheaper than timing them all)
        index = np.unravel_index(needed, terms.grid)
        part = step_times(model, cluster, terms.select(index))
        # compact rows: the needed cells in order, then one +inf row that every other cell reads
        timing = {k: np.append(np.broadcast_to(v, (len(needed),)), np.inf) for k, v in part.items()}
        compact = np.full(n_cells, len(needed), dtype=np.int64)
        compact[needed] = np.arange(len(needed))
        rows = compact[cell]
    scores = Scores(timing, memory, cell, batch.sched, limit, timing_rows=rows)
    if mem_total is not None:  # (what the fitting mask read: the plans' fits need it again)
        scores.mem_total = mem_total
    return scores


def memory_parts(cluster: ClusterSpec, terms: CostTerms, schedule: Array | None = None) -> MemoryParts:
    """The schedule-independent memory of every cell of `terms` per stage class (flattened cells), and
    the totals of every cell under its structure's schedule (`schedule`, one index into SCHEDULES per
    structure, the grid's first axis; default 1F1B)."""
    cls = terms.classes.head()
    c = cls.size.shape[-1]
    ax = terms.axes
    e = (..., None)
    zero = ax.zero[e]
    has_dp = terms.has_dp[e]
    # ZeRO shards over the gradient group: dp x cp ranks (experts: dp / ep x cp), as in the terms.
    d3, d2, d1 = (np.where(zero >= k, terms.dp_group[e], 1.0) for k in (3, 2, 1))
    e3, e2, e1 = (np.where(zero >= k, terms.edp_group[e], 1.0) for k in (3, 2, 1))
    fw = terms.framework
    if fw.pipeline_unsharded_grads:  # pipelined stages accumulate unsharded gradients
        d2, e2 = (np.where(ax.pp[e] > 1, 1.0, d) for d in (d2, e2))
    dense, expert = terms.params_dense[..., :c], terms.params_expert[..., :c]
    t_dense, t_expert = terms.train_dense[..., :c], terms.train_expert[..., :c]
    trained = t_dense + t_expert  # the class's trained parameters on one GPU
    shard = t_dense / d1 + t_expert / e1  # of them, the rank's optimizer shard
    dt_w, dt_g, dt_o = _state_bytes(terms)
    rc = ax.rc[e]
    full_ws = _max_last(terms.layer_act_full)[e]
    zero3_buffer = 2.0 * _max_last(terms.layer_weights)[e]

    # Low-precision weight copies: for every local layer, or under ZeRO-3 for the two gathered ones.
    zero3 = (zero == 3) & has_dp
    lowp = np.where(zero3, 0.0, terms.lowp_copies[..., :c])
    lowp_buffer = np.where(zero3, 2.0 * _max_last(terms.layer_lowp)[e], 0.0)
    weights = (dense / d3 + expert / e3) * dt_w + lowp
    grads = (t_dense / d2 + t_expert / e2) * dt_g
    optimizer = shard * dt_o
    other_fixed = np.where(zero3, zero3_buffer + lowp_buffer, 0.0) + np.where(cls.has_post, terms.logits[e], 0.0)
    fixed = np.where(cls.valid, weights + grads + optimizer + other_fixed, -np.inf)
    path = gradient_path(fw, terms.dtype)
    # Beside the in-flight activations: full recompute's working set during a layer's backward, or after
    # each micro-batch's backward the accumulation's converted copy of one gradient tensor (the largest)
    accumulation_copy = path.accumulation_copy_bytes * terms.largest_trained[..., :c]
    working = cluster.reserved_memory_bytes + np.maximum(np.where(rc == 2, full_ws, 0.0), accumulation_copy)
    # The optimizer step, where it copies the gradients of the rank's optimizer shard (ZeRO >= 1), or under
    # ZeRO-0 all of them while the 16-bit gradients are still held
    step_grads = np.where(zero >= 1, shard * path.step_bytes, trained * path.zero0_step_bytes)
    step_held = np.where((zero == 0) & (step_grads > 0), grads, 0.0)  # the 16-bit gradients beside the copies
    step = np.where(cls.valid & (step_grads > 0),
                    weights + optimizer + step_grads + step_held + cluster.reserved_memory_bytes, -np.inf)
    # The reduction's copy after the backward: one bucket, or the whole buffer cast at once
    reduce_bucket = ((trained if path.reduction_casts_buffer else np.minimum(fw.dp_bucket_params, trained))
                     * path.reduce_bytes if fw.reduction_bucket_after_backward else np.zeros_like(step_grads))
    layer_mb = _per_class(cls.layers, terms.layer_act)
    per_mb = layer_mb + np.where(cls.has_pre, terms.pre_saved[e], 0.0)
    head = np.where(cls.has_post, terms.post_saved[e], 0.0)
    # Every cell under its structure's schedule: the largest class.
    struct = (slice(None), 0, 0)
    pp, vpp, m = (np.broadcast_to(x, terms.grid)[struct][:, None] for x in (ax.pp, ax.vpp, ax.m))
    pipeline = (pp, vpp, m, np.broadcast_to(cls.first_rank, (*terms.grid, c))[struct])
    n_s = terms.grid[0]
    own = np.zeros(n_s, dtype=np.int64) if schedule is None else np.asarray(schedule, dtype=np.int64)
    held, head_held = _in_flight(pipeline, np.arange(n_s), own)
    lead = (n_s,) + (1,) * (len(terms.grid) - 1)
    total = np.maximum(fixed + working + held.reshape(*lead, c) * per_mb + head * head_held.reshape(*lead, 1), step)
    return MemoryParts(weights=weights, grads=grads, optimizer=optimizer, other_fixed=other_fixed, working=working,
                       fixed=fixed, step_grads=step_grads, step_held=step_held, reduce_bucket=reduce_bucket,
                       step=step, reserve=cluster.reserved_memory_bytes, capacity=cluster.gpu.memory_bytes,
                       per_microbatch=per_mb, layer_microbatch=layer_mb, head=head, pipeline=pipeline, schedule=own,
                       totals=_max_last(np.broadcast_to(total, (*terms.grid, c))).reshape(-1), grid=tuple(terms.grid))


def _state_bytes(terms: CostTerms) -> tuple[float, float, float]:
    """Bytes per parameter of weights, gradients and optimizer state (the terms' training dtype)."""
    return (WEIGHT_BYTES[terms.dtype], gradient_path(terms.framework, terms.dtype).buffer_bytes,
            OPTIMIZER_BYTES[terms.dtype])


def prediction(scores: Scores, i: int, cluster: ClusterSpec, dtype: str) -> dict:
    """The contract `prediction` object of plan i (units in the key names)."""
    n = cluster.num_gpus
    step = float(scores.step_time[i])
    peak = cluster.gpu.peak(base_dtype(dtype))  # MFU against the 16-bit peak, also for FP8 / FP4 recipes
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
        # what the caching allocator reserves at the peak (nvidia-smi): above the allocated peak where the
        # optimizer step copies gradients into new segments (MemoryParts._reserved)
        "memory_reserved_gib_per_gpu": float(scores.mem_reserved[i]) / GIB,
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
