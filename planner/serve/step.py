"""Seconds of one serving engine step, and memory per GPU, from the training cost model's building blocks.

One engine step (continuous batching, Yu et al. 2022 "Orca"; chunked prefill, Agrawal et al. 2024
"Sarathi-Serve") runs every running sequence's next token (decode) plus up to a token budget of
prompt tokens (prefill chunks) through the model as one flattened batch:

- linear layers: the layer graph's GEMM ops at their roofline, max(FLOPs / achieved FLOP/s, bytes /
  achieved bandwidth), bytes = weights + activations (`planner.cost.compute.gemm_op_times`). At
  decode sizes the weight bytes dominate, so a step is memory bound (Pope et al. 2023, "Efficiently
  Scaling Transformer Inference"); prefill chunks make it compute bound.
- attention core, prefill: the fused kernel's causal FLOPs, 4 h per query x key pair, for a chunk of
  c tokens after p cached ones c (p + c/2) pairs (`attention_times`, quadratic in the prompt).
- attention core, decode: every sequence reads its whole KV cache (PagedAttention, Kwon et al. 2023):
  max(4 h ctx FLOPs, KV bytes / bandwidth) summed over sequences, memory bound.
- MoE experts: only the experts some token was routed to are read; with T tokens each picking top_k
  of E experts uniformly, E (1 - (1 - k/E)^T) experts are touched (balanced routing, as the training
  model assumes).
- GEMM kernels at serving sizes: inference GEMM libraries split skinny GEMMs over all SMs (split-K,
  stream-K: Osama et al. 2023), so the training model's wave quantisation of 256 x 128 output tiles
  is left out (the GPU's `num_sms` is set to 0 for serving). A CPU GEMV (one decode token) computes
  one dot product per weight row with a fixed cost each (`gemv_row_s`, measured with the bandwidth by
  `executor.serve --calibrate` over eight weight shapes): its weights stream in bytes / bandwidth +
  output rows x gemv_row_s.
- element-wise kernels: the serving engines the plans are exported to fuse them (vLLM's
  fused_add_rms_norm, rotary_embedding and silu_and_mul custom ops): one kernel per norm, rotary
  embedding and activation, the residual add inside the next norm (`fused_kernels=True`, the default
  on CUDA clusters). The local executor runs PyTorch eagerly: the layer graph's kernel counts.
- tensor parallelism: one all-reduce of T x h activations after each row-parallel op (attention
  output, MLP down; Shoeybi et al. 2019), plus the vocabulary-parallel embedding's all-reduce and the
  LM head's logit all-gather: `planner.cost.comm.collective_time`, whose alpha x steps term makes
  decode-sized all-reduces latency bound. Inside an NVLink node, engines run small all-reduces as a
  one-shot all-reduce (vLLM's custom all-reduce, from TensorRT-LLM: every GPU reads its peers' buffers
  once, 2 alpha + (g-1) S / bandwidth); the faster of that and the ring is taken.
- expert parallelism: a dispatch and a combine all-to-all of each GPU's T / (tp x attention_dp)
  tokens x top_k x h (DeepEP / vLLM all2all); without EP, experts are tensor parallel and reduce.
- pipeline parallelism: vLLM's virtual engines keep `pp` batches in flight, so one scheduler's step
  takes pp x the slowest stage + (pp - 1) activation transfers (`p2p_time`).
- host time the op costs leave out (`Overheads`): per step (scheduling, sampling), per layer, per
  layer with tensor parallelism, per sequence and layer (per-sequence attention launches). 0 on GPUs,
  whose host runs ahead with CUDA graphs; measured by `planner validate --serve` on CPU hosts.

Memory per GPU: weights (the layer graph's parameters per GPU, `planner.cost.memory.op_params_per_gpu`,
at the recipe's bytes: fp8 linear weights 1 B), the largest activations of a step of `chunk_size`
tokens plus fp32 logits of `max_batch` sequences, the runtime's reserved memory, and the KV-cache pool:
what `memory_utilization` (vLLM's --gpu-memory-utilization, default 0.9) of device memory leaves.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from planner.cost.comm import back_to_back_prices, collective_time, p2p_time
from planner.cost.compute import attention_times, elementwise_times, gemm_op_times, low_precision
from planner.cost.memory import op_params_per_gpu
from planner.graph import DTYPE_BYTES, LayerGraph, Op, build_graph
from planner.precision import RECIPES, base_dtype, gemm_peak_key
from planner.serve.kv import LayerKV, model_kv, request_kv_bytes_per_gpu, stage_layers
from planner.specs.cluster import ClusterSpec
from planner.specs.model import ModelSpec

Array = np.ndarray


@dataclass(frozen=True)
class Overheads:
    """Host seconds an engine step spends beyond its ops (see the module docstring)."""

    step_s: float = 0.0  # per engine step: scheduling, input preparation, sampling
    tp_step_s: float = 0.0  # per step with tp > 1: the scheduler's broadcast of the batch to the other ranks
    layer_s: float = 0.0  # per layer and step: the framework's dispatch of the layer's ops
    tp_layer_s: float = 0.0  # per layer and step with tp > 1: DTensor dispatch and redistribution
    sequence_layer_s: float = 0.0  # per sequence, layer and step: per-sequence attention calls
    # The first step at a token count the process has not run before, tp > 1: DTensor propagates the
    # sharding of every op schema (shapes included) once and caches it; per step (embedding) and per layer.
    tp_new_shape_s: float = 0.0
    tp_new_shape_layer_s: float = 0.0
    source: str = "none: the host runs ahead of the device (CUDA graphs)"

    NAMES = ("step_s", "tp_step_s", "layer_s", "tp_layer_s", "sequence_layer_s", "tp_new_shape_s",
             "tp_new_shape_layer_s")

    def to_dict(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in self.NAMES}, "source": self.source}


SERVING_PROVENANCE_KEY = "serving"


def _serving_measurements(cluster: ClusterSpec) -> dict[str, Any] | None:
    """What `planner validate --serve` recorded in the profile (`provenance["serving"]`), or None."""
    raw = cluster.provenance.get(SERVING_PROVENANCE_KEY) if isinstance(cluster.provenance, dict) else None
    return raw if isinstance(raw, dict) else None


def overheads_for(cluster: ClusterSpec) -> Overheads:
    """The serving host overheads a calibrated profile carries (`provenance["serving"]`), else none."""
    raw = _serving_measurements(cluster)
    if raw is not None:
        return Overheads(**{k: float(raw.get(k, 0.0)) for k in Overheads.NAMES},
                         source=str(raw.get("source", "measured")))
    return Overheads()


def serving_gpu(cluster: ClusterSpec) -> Any:
    """The cluster's GPU as a serving step sees it: no wave quantisation (see the module docstring) and,
    when the profile carries serving measurements (`planner validate --serve`), the forward-only GEMM
    efficiency curve and the weight-streaming bandwidth measured for inference instead of the training
    calibration's (autograd GEMMs, cache-sized copies)."""
    gpu = dataclasses.replace(cluster.gpu, num_sms=0)
    if gpu.cache_bandwidth:  # a serving step streams the weights it just streamed: the training
        # calibration's cache rate, one level (what profiles measured before the cache level was)
        gpu = dataclasses.replace(gpu, memory_bandwidth=gpu.cache_bandwidth, memory_efficiency=1.0,
                                  cache_bytes=0.0, cache_bandwidth=0.0)
    raw = _serving_measurements(cluster)
    if raw is None:
        return gpu
    if raw.get("gemm_curve"):
        gpu = dataclasses.replace(gpu, gemm_curve=tuple(tuple(p) for p in raw["gemm_curve"]))
    if raw.get("memory_bandwidth"):
        gpu = dataclasses.replace(gpu, memory_bandwidth=float(raw["memory_bandwidth"]), memory_efficiency=1.0)
    return gpu


def decode_attention_rate(cluster: ClusterSpec) -> float:
    """Achieved FLOP/s of the decode attention kernel (one query against a cached context) when the
    profile measured it (`planner validate --serve`), else 0: the GPU's attention efficiency applies."""
    return float((_serving_measurements(cluster) or {}).get("decode_attention_flops_per_s", 0.0))


def gemv_row_seconds(cluster: ClusterSpec) -> float:
    """Fixed seconds per output row of a weight-streaming linear layer, when the profile measured it
    (CPU GEMVs, `planner.serve.calibrate.fit_gemv`); 0: bytes / bandwidth alone (GPUs)."""
    return float((_serving_measurements(cluster) or {}).get("gemv_row_s", 0.0))


def gemm_rows_curve(cluster: ClusterSpec) -> tuple[tuple[float, float], ...]:
    """Measured GEMM efficiency by row count (tokens), when the profile has it: CPU BLAS libraries run a
    one-row GEMM as a streaming GEMV and a few-row GEMM on a slower small-m kernel, which an efficiency
    indexed by FLOPs cannot tell apart. Empty: the GPU's FLOP-indexed curve applies."""
    pts = (_serving_measurements(cluster) or {}).get("gemm_rows_curve")
    return tuple(sorted((float(m), float(e)) for m, e in pts)) if pts else ()


def experts_touched(num_experts: int, top_k: int, tokens: Array) -> Array:
    """Expected distinct experts that `tokens` tokens route to (top_k of num_experts, uniform)."""
    t = np.asarray(tokens, dtype=np.float64)
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** t)


def full_attention(op: Op) -> Op:
    """The attention core without its local window / chunk: serving passes the pairs with the window
    already applied (a prefill chunk's queries start at its prior context, not at position 0)."""
    fields = {f: 0 for f in ("window", "chunk") if getattr(op, f, 0)}
    return dataclasses.replace(op, **fields) if fields else op


def _prequantised_gemm(op: Op, gpu: Any, dtype: str, tokens: Array, tp: Array, ep: Array,
                       num_experts: Array) -> Array:
    """Forward roofline of a linear layer whose weights are stored in the low-precision format (a
    quantised checkpoint): only the activations are quantised per step, unlike training, which
    quantises the weights from their masters every step (`gemm_op_times`)."""
    base = base_dtype(dtype)
    r = RECIPES[dtype]
    fin, fout, copies = op.gemm  # type: ignore[misc]
    k = np.full_like(tp, fin, dtype=np.float64)
    n = np.full_like(tp, fout, dtype=np.float64)
    if op.tp == "row":
        k = k / tp
    elif op.tp in ("column", "vocab"):
        n = n / tp
    inst = (num_experts / ep) if op.routed else np.ones_like(tp, dtype=np.float64)
    m = tokens * copies / inst
    b, e = DTYPE_BYTES[base], r.element_bytes
    flops = 2.0 * m * k * n
    nbytes = gpu.memory_time(e * (m * k + k * n) + b * m * n)
    t = inst * np.maximum(gpu.gemm_time(flops, gemm_peak_key(dtype, gpu.peak_flops), (m, n)), nbytes)
    return t + inst * gpu.memory_time((b + e) * m * k, 1)


class StepCost:
    """Step time and memory of serving pools, vectorised over pool configurations (numpy arrays of
    equal shape for tp, pp, ep, attention_dp; scalars broadcast)."""

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, dtype: str, kv_dtype: str,
                 tp: Any, pp: Any, ep: Any = 1, attention_dp: Any = 1,
                 overheads: Overheads | None = None, flash: bool = True,
                 fused_kernels: bool | None = None) -> None:
        shape = np.broadcast(np.asarray(tp), np.asarray(pp), np.asarray(ep), np.asarray(attention_dp)).shape
        self.tp = np.broadcast_to(np.asarray(tp, dtype=np.int64), shape).copy()
        self.pp = np.broadcast_to(np.asarray(pp, dtype=np.int64), shape).copy()
        self.ep = np.broadcast_to(np.asarray(ep, dtype=np.int64), shape).copy()
        self.adp = np.broadcast_to(np.asarray(attention_dp, dtype=np.int64), shape).copy()
        self.stage_gpus = self.tp * self.adp
        self.expert_tp = self.stage_gpus // self.ep
        # A serving step's layers compute well under a millisecond between their collectives on CPU ranks,
        # where gloo runs them as back to back: its collectives take those prices (GPU profiles as they are)
        self.model, self.cluster, self.dtype, self.kv_dtype = model, back_to_back_prices(cluster), dtype, kv_dtype
        self.gpu = serving_gpu(cluster)
        self.decode_rate = decode_attention_rate(cluster)
        self.rows_curve = gemm_rows_curve(cluster)
        self.gemv_row_s = gemv_row_seconds(cluster)
        self.fused_kernels = cluster.device == "cuda" if fused_kernels is None else fused_kernels
        self.base = base_dtype(dtype)
        self.act_bytes = DTYPE_BYTES[self.base]
        self.lg: LayerGraph = build_graph(model, self.base, flash)
        self.flash = flash
        self.kv_layers: tuple[LayerKV, ...] = model_kv(model, kv_dtype)
        self.overheads = overheads if overheads is not None else overheads_for(cluster)
        # Ranks that outnumber a node's compute slots (CPU cores) share them: every rank's kernels run
        # that much slower while all compute at once, as the ranks of one step do (1 on GPUs).
        self.core_sharing = cluster.compute_slowdown
        self._cache: dict[tuple[str, str], Any] = {}

    # ---- which layers a stage holds -------------------------------------------------------------

    def stage_kind_counts(self, stage: str) -> Array:
        """Layers of each kind on the `first` or `last` pipeline stage, shape (kinds, *plans)."""
        key = ("counts", stage)
        if key not in self._cache:
            self._cache[key] = self._kind_counts(stage)
        return self._cache[key]

    def _kind_counts(self, stage: str) -> Array:
        out = np.zeros((len(self.lg.kinds), *self.pp.shape))
        for p in np.unique(self.pp):
            idx = stage_layers(self.model.num_layers, int(p), 0 if stage == "first" else int(p) - 1)
            counts = np.bincount([self.lg.pattern[i] for i in idx], minlength=len(self.lg.kinds))
            out[:, self.pp == p] = counts[:, None]
        return out

    @property
    def window(self) -> int | None:
        """The sliding window of the model's windowed layers (None: none)."""
        ws = {x.window for x in self.kv_layers if x.window is not None}
        return min(ws) if ws else None

    # ---- compute ------------------------------------------------------------------------------

    def _rows_gemm(self, op: Op, tokens: Array, tp: Array, ep: Array, experts: Array | float) -> Array:
        """A linear layer's roofline with the efficiency of its row count (`gemm_rows_curve`)."""
        fin, fout, copies = op.gemm  # type: ignore[misc]
        k = np.full_like(tp, fin, dtype=np.float64)
        n = np.full_like(tp, fout, dtype=np.float64)
        if op.tp == "row":
            k = k / tp
        elif op.tp in ("column", "vocab"):
            n = n / tp
        inst = (np.asarray(experts, dtype=np.float64) / ep) if op.routed else np.ones_like(tp, dtype=np.float64)
        m = tokens * copies / inst
        b = DTYPE_BYTES[self.base]
        xs = np.log([p[0] for p in self.rows_curve])
        eff = np.interp(np.log(np.maximum(m, 1.0)), xs, [p[1] for p in self.rows_curve])
        compute = 2.0 * m * k * n / (self.gpu.sustained_peak(self.base) * eff)
        # streaming the weights: their bytes, and (CPU GEMV) a fixed cost per weight row
        stream = self.gpu.memory_time(b * (m * k + k * n + m * n)) + n * self.gemv_row_s
        t = inst * np.maximum(compute, stream)
        return np.where(m > 0, t, 0.0)

    def _gemm(self, op: Op, tokens: Array, tp: Array, ep: Array, experts: Array | float) -> Array:
        if self.rows_curve and not low_precision(op, self.dtype):
            return self._rows_gemm(op, tokens, tp.astype(np.float64), ep.astype(np.float64), experts)
        if low_precision(op, self.dtype):
            return _prequantised_gemm(op, self.gpu, self.dtype, tokens, tp.astype(np.float64),
                                      ep.astype(np.float64), np.asarray(experts, dtype=np.float64))
        return gemm_op_times(op, self.gpu, self.dtype, tokens, tp.astype(np.float64), ep.astype(np.float64),
                             experts).fwd

    def ops_time(self, ops: tuple[Op, ...], tokens: Array, seqs: Array) -> Array:
        """Forward seconds of `ops` (one layer, or the embedding / head) except the attention core, on
        one GPU, for `tokens` tokens and `seqs` sampled sequences per attention group."""
        tokens = np.asarray(tokens, dtype=np.float64)
        t = np.zeros(np.broadcast(tokens, self.tp).shape)
        total = tokens * self.adp  # tokens of the whole stage (all attention groups)
        no_sp = np.zeros(self.tp.shape, dtype=bool)
        m = self.model
        if m.is_moe:
            touched = np.maximum(experts_touched(m.num_experts, m.top_k, total), self.ep)
        for op in ops:
            if op.kind == "attention" or op.kind == "loss":
                continue
            if self.fused_kernels and op.kind == "elementwise":
                op = dataclasses.replace(op, kernels=0 if op.name.endswith("residual") else 1)
            if op.kind == "gemm":
                if op.routed:
                    t = t + self._gemm(op, total / self.ep, self.expert_tp, self.ep, touched)
                elif op.name == "lm_head":  # only the sequences that sample a token
                    n_seq = np.asarray(seqs, dtype=np.float64)
                    head = self._gemm(op, n_seq, self.tp, np.ones_like(self.ep), 1.0)
                    t = t + np.where(n_seq > 0, head, 0.0)
                else:
                    t = t + self._gemm(op, tokens, self.tp, np.ones_like(self.ep), 1.0)
            elif op.routed:
                t = t + elementwise_times(op, self.gpu, total / self.ep, self.expert_tp.astype(np.float64),
                                          no_sp).fwd
            else:
                t = t + elementwise_times(op, self.gpu, tokens, self.tp.astype(np.float64), no_sp).fwd
        return t * self.core_sharing

    def kind_kv(self, kind_index: int) -> LayerKV:
        """What one layer of layer kind `kind_index` caches (its first layer's description)."""
        return self.kv_layers[self.lg.pattern.index(kind_index)]

    def _kind_kv_bytes(self, kind_index: int) -> Array:
        """KV bytes per cached token one GPU holds for one layer of the kind (vectorised over tp)."""
        layer = self.kind_kv(kind_index)
        out = np.zeros(self.tp.shape)
        for t in np.unique(self.tp):
            out[self.tp == t] = layer.bytes_per_gpu_token(int(t))
        return out

    def attention_time(self, stage: str, decode_seqs: Array, decode_ctx: Array, prefill_tokens: Array,
                       prefill_pairs: Array, prefill_pairs_window: Array | None = None) -> Array:
        """Attention cores of a stage's layers: decode KV reads and prefill FLOPs.

        `decode_ctx`: summed context of the decoding sequences; `prefill_pairs`: sum over prefill
        chunks of c (p + c/2) causal query-key pairs (`prefill_pairs_window` the same with each
        query's keys capped at the window, for local-attention layers). A local-attention layer reads
        min(ctx, window) keys per decoding sequence, taken as min(decode_ctx, decode_seqs x window).
        """
        gpu, dt = self.gpu, self.base
        dec_n = np.asarray(decode_seqs, dtype=np.float64)
        dec_ctx = np.asarray(decode_ctx, dtype=np.float64)
        pre_c = np.asarray(prefill_tokens, dtype=np.float64)
        pairs = np.asarray(prefill_pairs, dtype=np.float64)
        pairs_w = pairs if prefill_pairs_window is None else np.asarray(prefill_pairs_window, dtype=np.float64)
        counts = self.stage_kind_counts(stage)
        tp = self.tp.astype(np.float64)
        total = np.zeros(np.broadcast(dec_ctx, pre_c, tp).shape)
        for kind_i, kind in enumerate(self.lg.kinds):
            core = next((op for op in kind.ops if op.kind == "attention"), None)
            if core is None:
                continue
            layer = self.kind_kv(kind_i)
            local = layer.window is not None
            ctx = np.minimum(dec_ctx, dec_n * layer.window) if local else dec_ctx
            # decode: the fused kernel's FLOPs (no causal mask: one query sees every key) against the
            # KV bytes it reads
            flops = core.flops_s * ctx / tp
            if self.decode_rate:
                compute = flops / self.decode_rate
            elif gpu.attention_efficiency:
                compute = flops / (gpu.sustained_peak(dt) * gpu.attention_efficiency)
            else:
                compute = gpu.gemm_time(flops, dt)
            kv_read = self._kind_kv_bytes(kind_i) * ctx
            decode = np.where(dec_n > 0, np.maximum(compute, gpu.memory_time(kv_read, 1)), 0.0)
            # prefill: the chunk's causal pairs (the window already applied to them), priced by
            # attention_times as `tokens` queries of a causal sequence of `seq` = 2 pairs / tokens keys
            eff_pairs = pairs_w if local else pairs
            seq = np.where(pre_c > 0, 2.0 * eff_pairs / np.maximum(pre_c, 1.0), 1.0)
            pre = attention_times(full_attention(core), gpu, dt, self.flash, True, pre_c, np.maximum(seq, 1.0), tp,
                                  self.model.num_heads, self.model.kv_hidden, self.model.hidden,
                                  head_dims=(self.model.qk_head_dim, self.model.head_dim)).fwd
            pre = np.where(pre_c > 0, pre, 0.0)
            total = total + counts[kind_i] * (decode + pre)
        return total * self.core_sharing

    # ---- communication ------------------------------------------------------------------------

    def tp_all_reduce(self, nbytes: Array, group: Array) -> Array:
        """All-reduce over a tensor-parallel group: the ring, or on CUDA inside one node the one-shot
        all-reduce when it is faster (small messages)."""
        one = np.ones(self.tp.shape)
        ring = collective_time(self.cluster, "all_reduce", nbytes, group, one)
        if self.cluster.device != "cuda":
            return ring
        link = self.cluster.intra_node
        g = np.asarray(group, dtype=np.float64)
        one_shot = 2.0 * link.latency + np.asarray(nbytes) * (g - 1) / link.bus_bandwidth
        inside = g <= self.cluster.nvlink_domain
        return np.where((g > 1) & inside, np.minimum(ring, one_shot), ring)

    def layer_comm(self, kind_ops: tuple[Op, ...], tokens: Array) -> Array:
        """Seconds of one layer's collectives for `tokens` tokens per attention group."""
        cl, h, b = self.cluster, self.model.hidden, self.act_bytes
        tokens = np.asarray(tokens, dtype=np.float64)
        one = np.ones(self.tp.shape)
        rows = sum(1 for op in kind_ops if op.tp == "row" and not op.routed)
        t = rows * self.tp_all_reduce(tokens * h * b, self.tp)
        if any(op.routed for op in kind_ops):
            m = self.model
            per_gpu = tokens * self.adp / self.stage_gpus  # tokens each GPU dispatches
            a2a = 2.0 * collective_time(cl, "all_to_all", per_gpu * m.top_k * h * b, self.ep, one)
            gathered = tokens * self.adp * h * b
            # no EP: experts tensor parallel over the stage; attention groups gather and scatter tokens
            et_comm = np.where(self.adp > 1,
                               collective_time(cl, "all_gather", gathered, self.stage_gpus, one)
                               + collective_time(cl, "reduce_scatter", gathered, self.stage_gpus, one),
                               self.tp_all_reduce(tokens * h * b, self.tp))
            t = t + np.where(self.ep > 1, a2a, et_comm)
        return t

    # ---- one step -----------------------------------------------------------------------------

    def stage_time(self, stage: str, tokens: Array, seqs: Array, decode_seqs: Array, decode_ctx: Array,
                   prefill_tokens: Array, prefill_pairs: Array,
                   prefill_pairs_window: Array | None = None) -> Array:
        """Seconds of the `first` or `last` pipeline stage for one scheduler's batch (per attention
        group: `tokens` tokens of which `decode_seqs` decode, `seqs` sequences sampled)."""
        lg, o = self.lg, self.overheads
        counts = self.stage_kind_counts(stage)
        t = np.zeros(np.broadcast(np.asarray(tokens, dtype=np.float64), self.tp).shape)
        for kind_i, kind in enumerate(lg.kinds):
            per_layer = self.ops_time(kind.ops, tokens, seqs) + self.layer_comm(kind.ops, tokens)
            t = t + counts[kind_i] * per_layer
        t = t + self.attention_time(stage, decode_seqs, decode_ctx, prefill_tokens, prefill_pairs,
                                    prefill_pairs_window)
        single = self.pp == 1
        cl, h, b = self.cluster, self.model.hidden, self.act_bytes
        one = np.ones(self.tp.shape)
        tok = np.asarray(tokens, dtype=np.float64)
        pre = self.ops_time(lg.pre_ops, tokens, seqs) + self.tp_all_reduce(tok * h * b, self.tp)
        post = self.ops_time(lg.post_ops, tokens, seqs) + collective_time(
            cl, "all_gather", np.asarray(seqs, dtype=np.float64) * self.model.vocab_size * b, self.tp, one)
        ends = pre + np.where(single, post, 0.0) if stage == "first" else post + np.where(single, pre, 0.0)
        t = t + ends
        n_layers = counts.sum(axis=0)
        seq_n = np.asarray(seqs, dtype=np.float64)
        host = n_layers * (o.layer_s + np.where(self.tp > 1, o.tp_layer_s, 0.0) + o.sequence_layer_s * seq_n)
        return t + host

    def step_time(self, tokens: Array, seqs: Array, decode_seqs: Array, decode_ctx: Array,
                  prefill_tokens: Array, prefill_pairs: Array, prefill_pairs_window: Array | None = None) -> Array:
        """Seconds between two steps of one scheduler: pp x the slowest stage + (pp - 1) transfers +
        the per-step host time (arguments per attention group, as `stage_time`)."""
        args = (tokens, seqs, decode_seqs, decode_ctx, prefill_tokens, prefill_pairs, prefill_pairs_window)
        first = self.stage_time("first", *args)
        slowest = np.where(self.pp > 1, np.maximum(first, self.stage_time("last", *args)), first)
        nbytes = np.asarray(tokens, dtype=np.float64) * self.model.hidden * self.act_bytes
        hop = p2p_time(self.cluster, nbytes, self.pp, self.stage_gpus)
        o = self.overheads
        return self.pp * slowest + (self.pp - 1) * hop + o.step_s + np.where(self.tp > 1, o.tp_step_s, 0.0)

    # ---- memory -------------------------------------------------------------------------------

    def _param_bytes(self, op: Op) -> Array:
        """Bytes of `op`'s parameters on one GPU."""
        if op.routed:
            n = op_params_per_gpu(op, self.expert_tp.astype(np.float64), self.ep.astype(np.float64))
        else:
            n = op_params_per_gpu(op, self.tp.astype(np.float64), np.ones(self.tp.shape))
        per = RECIPES[self.dtype].element_bytes if low_precision(op, self.dtype) else DTYPE_BYTES[self.base]
        return n * per

    def weight_bytes(self, stage: str) -> Array:
        """Weights one GPU of the `first` / `last` stage holds."""
        lg = self.lg
        counts = self.stage_kind_counts(stage)
        w = np.zeros(self.tp.shape)
        for kind_i, kind in enumerate(lg.kinds):
            w = w + counts[kind_i] * sum((self._param_bytes(op) for op in kind.ops), np.zeros(self.tp.shape))
        pre = sum((self._param_bytes(op) for op in lg.pre_ops), np.zeros(self.tp.shape))
        post = sum((self._param_bytes(op) for op in lg.post_ops), np.zeros(self.tp.shape))
        m = self.model
        tied = m.vocab_size * m.hidden * DTYPE_BYTES[self.base] / self.tp if m.tied_embeddings else 0.0
        single = self.pp == 1
        if stage == "first":
            return w + pre + np.where(single, post, 0.0)
        return w + post + np.where(single, pre, tied)  # the last stage keeps its own tied head

    def activation_bytes(self, chunk: Array, max_batch: Array) -> Array:
        """Largest live activations of one step: the residual stream and a norm output of `chunk`
        tokens, the widest GEMM output, and fp32 logits of `max_batch` sequences (vLLM sizes this by
        profiling a dummy step of max_num_batched_tokens)."""
        m, b = self.model, self.act_bytes
        widest = np.zeros(self.tp.shape)
        for kind in self.lg.kinds:
            for op in kind.ops:
                if op.kind != "gemm" or op.tp == "vocab":
                    continue
                fout, copies = op.gemm[1], op.gemm[2]  # type: ignore[index]
                if op.routed:
                    width = fout * copies / np.where(op.tp == "column", self.expert_tp, 1)
                else:
                    width = fout / np.where(op.tp == "column", self.tp, 1)
                widest = np.maximum(widest, width)
        chunk = np.asarray(chunk, dtype=np.float64)
        return chunk * b * (2.0 * m.hidden + widest) + 4.0 * np.asarray(max_batch) * m.vocab_size

    def kv_pool_bytes(self, chunk: Array, max_batch: Array, memory_utilization: float) -> Array:
        """KV-cache pool per GPU on the tighter of the first and last stage (may be negative)."""
        usable = memory_utilization * self.gpu.memory_bytes - self.cluster.reserved_memory_bytes
        act = self.activation_bytes(chunk, max_batch)
        return np.minimum(usable - self.weight_bytes("first") - act, usable - self.weight_bytes("last") - act)

    def request_kv_bytes(self, context: int, block_size: int) -> Array:
        """KV bytes one GPU holds for one request of `context` tokens (the fuller of first / last stage)."""
        out = np.zeros(self.tp.shape)
        for p in np.unique(self.pp):
            for t in np.unique(self.tp):
                mask = (self.pp == p) & (self.tp == t)
                if not mask.any():
                    continue
                worst = 0.0
                for stage in {0, int(p) - 1}:
                    layers = tuple(self.kv_layers[i] for i in stage_layers(self.model.num_layers, int(p), stage))
                    worst = max(worst, request_kv_bytes_per_gpu(layers, context, int(t), block_size))
                out[mask] = worst
        return out

    # ---- the fast path the stream simulation calls once per step -------------------------------

    def timer(self, max_tokens: int, max_seqs: int) -> StepTimer:
        """A scalar step-time function for this (single) pool configuration, exact against
        `step_time`: per-token-count tables for the linear layers, collectives and host time, and
        scalar attention arithmetic."""
        if self.tp.size != 1:
            raise ValueError("timer() needs a StepCost of one configuration")
        return StepTimer(self, max_tokens, max_seqs)


class StepTimer:
    """`StepCost.step_time` for one configuration as plain Python arithmetic (see `StepCost.timer`)."""

    def __init__(self, cost: StepCost, max_tokens: int, max_seqs: int) -> None:
        lg, o, cl = cost.lg, cost.overheads, cost.cluster
        one = np.ones(cost.tp.shape)
        tokens = np.arange(max_tokens + 1, dtype=np.float64)
        seqs = np.arange(max_seqs + 1, dtype=np.float64)
        zeros_t = np.zeros_like(tokens)
        h, b = cost.model.hidden, cost.act_bytes
        self.pp = int(cost.pp.reshape(-1)[0])
        tp = int(cost.tp.reshape(-1)[0])
        self.step_s = o.step_s + (o.tp_step_s if tp > 1 else 0.0)
        self.hop = ((self.pp - 1) * p2p_time(cl, tokens * h * b, cost.pp.reshape(-1), cost.stage_gpus.reshape(-1))
                    ).tolist()
        final = tuple(op for op in lg.post_ops if op.name != "lm_head")
        head = tuple(op for op in lg.post_ops if op.name == "lm_head")
        pre = (cost.ops_time(lg.pre_ops, tokens, zeros_t) + cost.tp_all_reduce(tokens * h * b, cost.tp)).reshape(-1)
        post_t = cost.ops_time(final, tokens, zeros_t).reshape(-1)
        post_s = (cost.ops_time(head, np.zeros_like(seqs), seqs)
                  + collective_time(cl, "all_gather", seqs * cost.model.vocab_size * b, cost.tp, one)).reshape(-1)
        stages = ("first",) if self.pp == 1 else ("first", "last")
        self.layers: list[list[float]] = []
        self.seq_host: list[float] = []
        self.ends_s: list[list[float]] = []
        self.decode: list[list[tuple[float, float, float, float]]] = []
        self.prefill: list[list[tuple[float, float, float, bool]]] = []
        gpu = cost.gpu
        self.window = cost.window
        self.mem_rate = gpu.memory_bandwidth * gpu.memory_efficiency
        self.kernel_s = gpu.kernel_overhead_s
        self.att_rate = gpu.sustained_peak(cost.base) * gpu.attention_efficiency if gpu.attention_efficiency else 0.0
        self.decode_rate = cost.decode_rate
        self.sharing = cost.core_sharing
        # GEMM-curve compute time of attention FLOPs when no attention efficiency is measured:
        # tabulated on a fine log grid (interpolated in log FLOPs, as GPUSpec.gemm_time does)
        self.log_flops = np.linspace(0.0, 18.0, 1801)
        self.flops_arr = gpu.gemm_time(10.0 ** self.log_flops, cost.base)
        self.flops_time = self.flops_arr.tolist()
        for stage in stages:
            counts = cost.stage_kind_counts(stage).reshape(len(lg.kinds), -1)[:, 0]
            layers = np.zeros_like(tokens)
            for kind_i, kind in enumerate(lg.kinds):
                per = cost.ops_time(kind.ops, tokens, zeros_t) + cost.layer_comm(kind.ops, tokens)
                layers = layers + counts[kind_i] * per.reshape(-1)
            n_layers = float(counts.sum())
            layers = layers + n_layers * (o.layer_s + (o.tp_layer_s if tp > 1 else 0.0))
            if stage == "first":
                ends = pre + (post_t if self.pp == 1 else 0.0)
            else:
                ends = post_t + (pre if self.pp == 1 else 0.0)
            self.layers.append((layers + ends).tolist())
            with_head = stage == "last" or self.pp == 1
            self.ends_s.append((post_s if with_head else np.zeros_like(post_s)).tolist())
            self.seq_host.append(n_layers * o.sequence_layer_s)
            dec, pref = [], []
            for kind_i, kind in enumerate(lg.kinds):
                core = next((op for op in kind.ops if op.kind == "attention"), None)
                if core is None or not counts[kind_i]:
                    continue
                layer = cost.kind_kv(kind_i)
                window = float(layer.window) if layer.window is not None else 0.0
                per_ctx_flops = core.flops_s / tp
                dec.append((float(counts[kind_i]), per_ctx_flops, layer.bytes_per_gpu_token(tp), window))
                if getattr(core, "heads", 0):
                    qk, vo = core.qk_width, core.vo_width
                else:
                    qk = vo = cost.model.hidden + cost.model.kv_hidden
                pref.append((float(counts[kind_i]), per_ctx_flops, b * (qk + vo) / tp, bool(window)))
            self.decode.append(dec)
            self.prefill.append(pref)

    def _decode_compute(self, flops: float) -> float:
        return flops / self.decode_rate if self.decode_rate else self._compute(flops)

    def _compute(self, flops: float) -> float:
        if flops <= 0:
            return 0.0
        if self.att_rate:
            return flops / self.att_rate
        x = max(0.0, min(18.0, math.log10(flops)))
        i = min(int(x * 100), len(self.flops_time) - 2)
        f = x * 100 - i
        return self.flops_time[i] * (1 - f) + self.flops_time[i + 1] * f

    def __call__(self, tokens: int, seqs: int, decode_seqs: int, decode_ctx: float, prefill_tokens: int,
                 prefill_pairs: float, prefill_pairs_window: float | None = None) -> float:
        """Seconds of one scheduler step (arguments as `StepCost.step_time`)."""
        pairs_w = prefill_pairs if prefill_pairs_window is None else prefill_pairs_window
        slowest = 0.0
        for s in range(len(self.layers)):
            t = self.layers[s][tokens] + self.ends_s[s][seqs] + self.seq_host[s] * seqs
            if decode_seqs:
                for n, per_ctx, kv_bytes, window in self.decode[s]:
                    ctx = min(decode_ctx, decode_seqs * window) if window else decode_ctx
                    t += n * self.sharing * max(self._decode_compute(per_ctx * ctx),
                                                kv_bytes * ctx / self.mem_rate + self.kernel_s)
            if prefill_tokens:
                for n, per_ctx, io_per_token, local in self.prefill[s]:
                    flops = per_ctx * (pairs_w if local else prefill_pairs)
                    t += n * self.sharing * max(self._compute(flops), io_per_token * prefill_tokens / self.mem_rate)
            slowest = max(slowest, t)
        return self.pp * slowest + self.hop[tokens] + self.step_s

    def decode_stretch(self, decode_seqs: int, decode_ctx: float, steps: int) -> np.ndarray:
        """Seconds of `steps` consecutive pure-decode steps of the same `decode_seqs` sequences, the
        first at summed context `decode_ctx` (each step adds one token per sequence): the simulation's
        fast-forward between events, equal to calling the timer once per step."""
        n = decode_seqs
        if steps <= 8:  # numpy's fixed costs exceed a few scalar calls
            return np.array([self(n, n, n, decode_ctx + n * i, 0, 0.0) for i in range(steps)])
        ctx0 = decode_ctx + n * np.arange(steps, dtype=np.float64)
        slowest = np.zeros(steps)
        for s in range(len(self.layers)):
            t = np.full(steps, self.layers[s][n] + self.ends_s[s][n] + self.seq_host[s] * n)
            for k, per_ctx, kv_bytes, window in self.decode[s]:
                ctx = np.minimum(ctx0, n * window) if window else ctx0
                flops = per_ctx * ctx
                if self.decode_rate:
                    compute = flops / self.decode_rate
                elif self.att_rate:
                    compute = flops / self.att_rate
                else:
                    x = np.clip(np.log10(np.maximum(flops, 1.0)), 0.0, 18.0)
                    compute = np.where(flops > 0, np.interp(x, self.log_flops, self.flops_arr), 0.0)
                t = t + k * self.sharing * np.maximum(compute, kv_bytes * ctx / self.mem_rate + self.kernel_s)
            slowest = np.maximum(slowest, t)
        return self.pp * slowest + self.hop[n] + self.step_s
