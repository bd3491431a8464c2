"""Framework profiles: what the training framework that runs a plan overlaps and fuses.

The same plan costs differently under Megatron-LM, Megatron-Core / NeMo, torchtitan, DeepSpeed or
FSDP because they overlap different communication with compute (TP, DP, pipeline p2p), fuse different
kernels and default to different recompute policies. A profile states those as switches and counts
with a meaning and a source (planner/data/frameworks.json); the cost model (planner/cost/terms.py)
reads them like it reads the cluster:

- tp_overlap: "none" (every TP collective on the compute stream, exposed), "backward" (the
  column-parallel input-gradient all-reduce overlaps the weight-gradient GEMM: Megatron-LM's async
  TP all-reduce), "all" (all-gather / reduce-scatter chunked and pipelined with the GEMMs they feed,
  forward and backward: Megatron-Core's TP communication overlap), "micro-pipeline" (torch's async TP:
  Inductor's micro_pipeline_tp pass fuses each all-gather with the matmuls it feeds and each
  reduce-scatter with the one matmul that produces it, torch/_inductor/fx_passes/micro_pipeline_tp.py
  fuse_matmul_reduce_scatter / _find_producer_matmul; in backward the input gradient of separate linears
  on one input, q / k / v or gate / up, is a sum of matmuls, so its reduce-scatter is not fused and stays
  exposed; needs SP, without which the all-reduces stay exposed);
- dp_overlap / param_gather_overlap: the gradient reduction overlaps the backward, the parameter
  all-gather the forward (else they run after the backward / before the forward, exposed);
- pp_overlap: pipeline sends overlap compute (Megatron-Core's --overlap-p2p-communication);
- optimizer_launches_per_tensor: kernel launches of one optimizer step per parameter tensor (8 for
  an unfused per-tensor AdamW; a fused multi-tensor Adam launches once per dozens of tensors);
- optimizer_step_bytes: bytes per parameter one optimizer step streams; 0 for a fused AdamW, which
  reads and writes each state once (planner.cost.memory.OPTIMIZER_STEP_BYTES); torch.optim.AdamW's
  seven element-wise passes over fp32 states stream 72 without weight decay (docs/cost-model.md);
  a mapping {dtype: bytes} where the step's passes depend on the training dtype (Megatron-LM's fp16
  step unscales the gradients, its bf16 step does not);
- dp_grad_passes / pipeline_grad_passes: whole-gradient passes (a read and a write) beside the
  collectives: PyTorch DDP's copies into and out of its buckets (2), torch.distributed.pipelining's
  division by the micro-batch count (1); priced as memory-bound traffic with the optimizer;
- dtensor_params: parameters under TP, FSDP2 and `replicate` are DTensors, each costing the optimizer
  the cluster's `dtensor_optimizer_tensor_s` per step (this project's executor; measured by calibrate);
- zero2_gather_per_microbatch: under ZeRO-2 the layers' parameters are all-gathered layer by layer
  before every micro-batch's forward (FSDP2, FSDP's SHARD_GRAD_OP), not once per step;
- fsdp_copy_passes: under ZeRO-2/3, copies (a read and a write) of a layer's bytes beside each of the
  sharded wrapper's collectives: FSDP2's (1) of the rank's shard into the all-gather's input, of the
  all-gather's output into the unsharded parameters and of the unsharded gradients into the
  reduce-scatter's input (torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py:
  all_gather_copy_in, split_with_sizes_copy, _chunk_cat); priced as memory-bound traffic per layer and
  micro-batch (planner.cost.terms);
- zero1_broadcast_per_tensor: ZeRO-1's parameter sync is one broadcast per parameter tensor, each
  paying the collective's latency (torch's ZeroRedundancyOptimizer as the executor runs it);
- fused_qkv: q, k, v (and gate, up) as one linear each; false: separate linears, whose weights the
  optimizer launches on one by one and which, without SP, each all-reduce their input gradient;
- functional_tp_collectives: TP runs through torch's functional collectives (DTensor), which the cost
  model prices by a link's `<op>_functional` measurements where a calibrated profile has them;
- gathered_logits: under TP the LM head's output is gathered over the TP ranks and each computes an
  ordinary cross-entropy (DTensor's ColwiseParallel(output_layouts=Replicate()) without loss_parallel:
  one all-gather of the logits per micro-batch), not a vocabulary-parallel one;
- eager_grad_accumulation: each micro-batch after the first adds its gradients into `.grad` in place
  (autograd's AccumulateGrad: 3 x the gradient bytes, one launch per tensor);
- recompute: the activation-checkpointing policies the framework offers (what the search tries);
- attention_kernel: the fused attention kernel it calls: "" for the GPU's default (cuDNN fused attention /
  FlashAttention-3 class, the catalog's `attention_efficiency`), "fa2" for FlashAttention-2 (PyTorch's
  scaled_dot_product_attention flash backend, the flash-attn 2 package), priced at the GPU's
  `attention_efficiency_by_kernel["fa2"]` where the catalog cites one;
- grad_reduce_in_fp32: gradients kept and reduced in fp32 (else in the 16-bit training dtype);
- fp8_param_gather: under the per-tensor fp8 recipe, the linear layers' weights are kept in FP8 only
  (with their transposes), not beside a 16-bit copy (planner.precision.extra_weight_bytes);
- fused_norm: the RMSNorm before QKV and before the MLP runs fused with that linear layer (Transformer
  Engine's LayerNormLinear / LayerNormMLP) and saves its input only (planner.graph.with_fused_norms);
- quantized_saved_inputs: under a low-precision recipe each low-precision linear layer saves the
  quantised copy of its input for the weight gradient, not the 16-bit input (Transformer Engine's Linear /
  LayerNormLinear; torchao's float8 linear saves the 16-bit input): planner.graph.with_quantized_saved_inputs;
- compiled: the norms' and RoPE's elementwise chains run as fused kernels (torch.compile, Transformer
  Engine, Apex); false: eager PyTorch, each op's kernels and fp32 round trips as PyTorch dispatches
  them (planner.graph.with_eager_ops), with composite_rms_norm: F.rms_norm as PyTorch's composite
  (PyTorch before its fused RMSNorm kernel of May 2025);
- gradients: per 16-bit training dtype, how the framework keeps, accumulates and reduces gradients
  where that differs from grad_reduce_in_fp32's one buffer (`GradientPath`: DeepSpeed runs fp16 through
  its ZeRO optimizer and bf16 through its BF16_Optimizer, which keep and move different bytes);
- cross_entropy: how the loss is computed, which sets what it holds per logit at its peak
  (planner.cost.memory.loss_peak_bytes): "fused" (Megatron's vocabulary-parallel cross-entropy: one
  fp32 copy of the logits, softmaxed and differentiated in place), "eager-fp32" (torch's
  F.cross_entropy on `.float()` logits in eager autograd: the fp32 log-probabilities saved, and the
  loss's and log_softmax's fp32 gradients beside them in backward; under tensor parallelism DTensor's
  loss_parallel, which keeps more temporaries), "compiled" (the same loss compiled by Inductor: it saves
  the 16-bit logits and a per-token log-sum-exp and writes a 16-bit gradient);
- pipeline_unsharded_grads: under pipeline parallelism the sharded data-parallel wrapper skips its
  gradient reduction until the step's last backward, so each stage's gradients accumulate unsharded in
  the reduce dtype across the micro-batches (torch.distributed.pipelining calls
  set_requires_gradient_sync(False) on FSDP2 stages, PipelineStage.backward_maybe_with_nosync; FSDP2
  accumulates unsharded gradients in its reduce_dtype, FSDPParam.to_accumulated_grad_if_needed): ZeRO-2/3
  shard no gradient memory there;
- reduction_bucket_after_backward: the data-parallel reduction, run after the step's last backward,
  allocates its bucket of dp_bucket_params elements (at most the rank's gradients) in the reduction
  dtype as a new tensor: DeepSpeed's ZeRO-1 `reduce_gradients(pipeline_parallel=True)` flattens each
  bucket of up to reduce_bucket_size elements (5e8 by default) into a new tensor to all-reduce it
  (`buffered_reduce_fallback`: ZeRO stage 1 ignores contiguous_gradients until DeepSpeed #4887, 2024), and
  its ZeRO-0 path's `buffered_allreduce_fallback` flattens buckets of 5e8 elements
  (MEMORY_OPT_ALLREDUCE_SIZE); the caching allocator gives it a segment of its own (MemoryParts._reserved);
- sp_keeps_gathered_input: with SP, each column-parallel linear saves the all-gathered input for its
  weight gradient instead of its sequence shard (autograd of DTensor's redistribute then the matmul:
  torchtitan, this project's executor), so backward does not re-gather it but the saved activation is
  t times larger; Megatron-LM saves the shard and re-gathers it (Korthikanti et al. 2022, Sec. 4.2.2).
  A per-op checkpoint policy that does not save the gather's output recomputes it (the re-gather again);
- recompute_skips_last_collective: full recompute stops once the last tensor backward needs is rebuilt
  (torch.utils.checkpoint's non-reentrant early stop, on by default), so a layer's last forward
  collective (after the MLP's down projection) is not re-run; Megatron-LM's checkpoint re-runs the whole
  layer forward;
- repeated_kv: K and V are repeated to every query head before the attention kernel (torchtitan's
  repeat_kv), so context parallelism's ring passes n_heads / n_kv_heads times the GQA projections' bytes;
- cp_rotation: how context parallelism moves K and V between the ranks (CP_ROTATIONS): "ring" (each step
  sends the chunk it holds to the next rank while it computes with it: Megatron-Core / Transformer
  Engine's ring attention, this project's executor) or "allgather" (torch's context_parallel with its
  default rotate_method ALL_GATHER, which torchtitan keeps: one all-gather of all ranks' K and V issued
  before the first step, which only the local causal block, 1/cp of a rank's attention under load
  balancing, runs beside; torch/distributed/tensor/experimental/_attention.py, _AllGatherRotater);
- cp_grads_fp32: the ring attention's backward accumulates dK and dV in fp32 and passes them to the
  next rank in fp32 (torch's _ContextParallelOptions.convert_to_f32, on by default; the dK/dV exchange
  runs one step behind the compute, the last step's after it);
- cp_ring_bytes: what the ring attention streams outside its kernels, per layer pass (forward, backward)
  on the last context-parallel rank (whose steps load balancing never halves): {"fwd_once", "fwd_step",
  "bwd_once", "bwd_step"}, each [bytes per local query element, bytes per local key / value element],
  once per pass and per ring step after the first: torch's context_parallel merges each step's output
  into a running fp32 output through its log-sum-exp, copies K and V (and the fp32 dK / dV) into the
  exchange buffers and accumulates the fp32 gradients with separate element-wise kernels; empty: none
  (Transformer Engine's ring attention corrects the output in its own fused kernels);
- quantise_bytes: per low-precision recipe, what the framework's quantisation kernels stream per linear
  layer (`planner.precision.QuantiseTraffic`: bytes per element of the input, weight and output gradient
  in forward and backward, and the kernels launched), where it differs from the recipe's default
  (`planner.precision.quantise_traffic`, Transformer Engine's casts with their amax fused): torchao's
  float8 training, which torchtitan runs, computes each tensor-wise amax in a pass of its own and
  (row-wise) writes a 16-bit transposed copy before its column-wise cast, as its roofline model counts
  them (torchao/testing/training/roofline_utils.py, get_tensor_memory_traffic_ovhd_s);
- overlap_slowdown: the fraction of an overlapped collective's time by which it slows the compute beside
  it under this framework's overlap implementation (its communication kernels' share of the SMs and of
  memory bandwidth, and what its chunking leaves unhidden); unset: the cluster's `overlap_slowdown`.
  Fitted per framework (its profile and every release that extends it) by `planner fit --overlaps` on
  measured runs and kept apart from the profiles, in planner/data/framework_fits.json, which
  `python benchmarks/fit_catalog.py` writes (docs/cost-model.md section 6); a profile that states its
  own value in frameworks.json keeps it;
- extends (in frameworks.json only): the profile this one copies, stating only what differs (a release
  of the same framework; a mapping such as `gradients` key by key);
- dp_bucket_params, dp_bucket_params_per_rank: the data-parallel gradient bucket in parameters,
  max(dp_bucket_params, dp_bucket_params_per_rank x data-parallel ranks) (Megatron-Core grows it with
  the data-parallel size so the collectives do not turn latency bound); 0: PyTorch DDP's 25 MiB.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from importlib import resources

from planner.errors import SpecError
from planner.precision import QUANTISE_KEYS, RECIPES, QuantiseTraffic

TP_OVERLAPS = ("none", "backward", "all", "micro-pipeline")
# Attention kernels a profile may name, with what they are ("": the GPU's default fused kernel).
ATTENTION_KERNELS = {"": "the GPU's default fused kernel", "fa2": "FlashAttention-2"}
# Cross-entropy implementations a profile may name (see the module docstring).
CROSS_ENTROPY_KERNELS = {"fused": "fused vocabulary-parallel cross-entropy (fp32, in place)",
                         "eager-fp32": "eager F.cross_entropy on fp32 logits",
                         "compiled": "F.cross_entropy compiled by torch.compile (Inductor)"}
# How context parallelism exchanges K and V (see the module docstring).
CP_ROTATIONS = {"ring": "each step passes its K/V chunk to the next rank beside that step's attention",
                "allgather": "one all-gather of every rank's K/V per layer pass, beside the local block only"}
# The entries of a profile's cp_ring_bytes, in the order Framework.cp_ring_bytes keeps them.
CP_RING_BYTES_KEYS = ("fwd_once", "fwd_step", "bwd_once", "bwd_step")
# The recipes a profile's quantise_bytes may name.
LOW_PRECISION = tuple(name for name, r in RECIPES.items() if r.low_precision)
DEFAULT_FRAMEWORK = "megatron-lm"
REDUCE_OPS = ("reduce_scatter", "all_reduce")


@dataclass(frozen=True)
class GradientPath:
    """The gradients' bytes under one training dtype, per trained parameter.

    - buffer_bytes: held through the backward (16-bit `.grad` and / or an fp32 accumulation buffer);
    - reduce_bytes: per element of the data-parallel reduction (and of the tied-embedding sync);
    - reduce_op: the reduction under ZeRO-1: "reduce_scatter" (each rank reduces the shard it
      updates) or "all_reduce" (every rank gets every reduced gradient, e.g. DeepSpeed's
      BF16_Optimizer);
    - accumulation_bytes: streamed by every micro-batch's backward to accumulate its gradient outside
      the weight-gradient GEMM (autograd's in-place `grad += new`, a copy into an fp32 buffer); 0 where
      the GEMM accumulates in place (Megatron's gradient_accumulation_fusion, Transformer Engine's
      fuse_wgrad_accumulation) or ZeRO-2/3 reduce-scatter each micro-batch's gradient.
    - step_bytes: under ZeRO (stage >= 1), the gradients' bytes per parameter of the rank's optimizer
      shard at the optimizer step, where the step copies them (0: the held buffer, no copy). DeepSpeed's
      ZeRO-1/2 fp16 step frees the gradients outside the rank's partition, then flattens the partition's
      16-bit gradients (a 2-byte copy beside the 2-byte originals) and casts the copy to fp32 (4 bytes)
      for the fp32 master weights (`stage_1_and_2.py`, `step`: `self.flatten(self.averaged_gradients[i])
      .to(fp32)` before `free_grad_in_param_list(params_in_partition)`): 8. With few data-parallel ranks
      that moment is the rank's peak (activations freed, every gradient of a large shard copied twice).
    - zero0_step_bytes: under ZeRO-0, the bytes per parameter the optimizer step copies the gradients into
      while the 16-bit gradients are still held: DeepSpeed's FP16_Optimizer (`runtime/fp16/fused_optimizer.py`,
      `step`) converts every gradient to fp32 in a list (`p.grad.to(data_type) for p in group`) and flattens
      the list (`_flatten_dense_tensors`) before it frees the 16-bit ones: 4 + 4 = 8.
    - accumulation_copy_bytes: bytes per element of the one gradient tensor the accumulation copies at a
      time, held beside the in-flight activations after each micro-batch's backward: DeepSpeed's
      BF16_Optimizer adds each bf16 gradient into its fp32 buffer through a converted copy
      (`update_hp_grads`: `hp_grad.data.add_(lp.grad.data.to(hp_grad.dtype))`): 4, of the largest tensor.
    - reduction_casts_buffer: the data-parallel reduction is handed the gradients as one flat buffer, which
      no bucket splits (a bucket of one tensor flattens to a view), and converts all of it to the
      reduction's dtype in one copy (reduce_bytes per parameter) where that differs from the buffer's:
      DeepSpeed's BF16_Optimizer hands its fp32 buffer (`get_grads_for_reduction`) to
      `buffered_allreduce_fallback`, whose `allreduce_bucket` runs `tensor.to(communication_data_type)`,
      bf16 under ZeRO stage 0 where the config names none. The copy is allocated after the backward
      (Framework.reduction_bucket_after_backward) in place of a bucket.
    """

    buffer_bytes: float
    reduce_bytes: float
    reduce_op: str = "reduce_scatter"
    accumulation_bytes: float = 0.0
    step_bytes: float = 0.0
    accumulation_copy_bytes: float = 0.0
    zero0_step_bytes: float = 0.0
    reduction_casts_buffer: bool = False

    def check(self, where: str) -> None:
        if self.reduce_op not in REDUCE_OPS:
            raise SpecError(f"must be one of {', '.join(REDUCE_OPS)}, got {self.reduce_op!r}",
                            field=f"{where}.reduce_op")
        for f in fields(self):  # every float field is bytes per parameter, every bool field a switch
            value = getattr(self, f.name)
            if f.type == "float" and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                          and 0 <= value <= 100):
                raise SpecError(f"must be bytes per parameter in 0..100, got {value!r}", field=f"{where}.{f.name}")
            if f.type == "bool" and not isinstance(value, bool):
                raise SpecError(f"must be true or false, got {value!r}", field=f"{where}.{f.name}")


@dataclass(frozen=True)
class Framework:
    name: str
    description: str
    tp_overlap: str
    dp_overlap: bool
    param_gather_overlap: bool
    pp_overlap: bool
    optimizer_launches_per_tensor: float
    recompute: tuple[str, ...]
    source: str
    dp_bucket_params: float = 0.0
    dp_bucket_params_per_rank: float = 0.0
    attention_kernel: str = ""
    # Gradients kept and reduced in fp32 (Megatron's main_grad, FSDP2's reduce_dtype) or, when False,
    # in the 16-bit training dtype (NeMo's performance recipes: grad_reduce_in_fp32 = False)
    grad_reduce_in_fp32: bool = True
    # FP8 primary weights: under the per-tensor fp8 recipe the linear layers keep their weights only in
    # FP8 (no 16-bit copy; Transformer Engine's fp8_model_init) and all-gather them in FP8 (NeMo's FP8
    # precision plugins: fp8_param_gather = True)
    fp8_param_gather: bool = False
    # The RMSNorm before QKV and before the MLP is fused with that linear layer (Transformer Engine's
    # LayerNormLinear / LayerNormMLP): it saves its input only, not also its normalised output
    fused_norm: bool = False
    # Under a low-precision recipe each low-precision linear layer keeps, for its weight-gradient GEMM, the
    # quantised copy of its input it ran the forward GEMM on instead of the 16-bit input (Transformer
    # Engine's Linear / LayerNormLinear: planner.graph.with_quantized_saved_inputs); False: the 16-bit
    # input, re-quantised in backward (torchao's float8 linear saves input_hp)
    quantized_saved_inputs: bool = False
    # The elementwise chains (norms, RoPE) run fused (torch.compile's Inductor, or the framework's fused
    # kernels); False: eager PyTorch, each op as PyTorch dispatches it (planner.graph.with_eager_ops)
    compiled: bool = True
    # Eager F.rms_norm is PyTorch's composite of fp32 round trips (before its fused RMSNorm kernel,
    # pytorch/pytorch#153666, May 2025); only read when not compiled
    composite_rms_norm: bool = False
    # (dtype, GradientPath) pairs where the framework's gradients differ from grad_reduce_in_fp32's
    gradients: tuple[tuple[str, GradientPath], ...] = ()
    # How the loss is computed (CROSS_ENTROPY_KERNELS): what it holds per logit at its peak
    cross_entropy: str = "fused"
    # Under pipelining, gradients accumulate unsharded until the step's last backward (FSDP2 stages of
    # torch.distributed.pipelining)
    pipeline_unsharded_grads: bool = False
    # The gradient reduction after the backward allocates its bucket (dp_bucket_params elements of the
    # reduction dtype) anew: DeepSpeed's ZeRO-1/2 under its pipeline engine and its BF16_Optimizer
    reduction_bucket_after_backward: bool = False
    # Bytes per parameter one optimizer step streams (0: a fused AdamW's, OPTIMIZER_STEP_BYTES)
    optimizer_step_bytes: float = 0.0
    # (base dtype, bytes) pairs where the step streams a dtype-dependent count (else optimizer_step_bytes)
    optimizer_step_bytes_by_dtype: tuple[tuple[str, float], ...] = ()
    # Passes over the local gradients (a read and a write each) that the data-parallel wrapper makes
    # beside its collective under ZeRO-0/1: 2 for PyTorch DDP, which copies each gradient into its
    # bucket (scaled by 1 / dp) and back after the all-reduce unless gradient_as_bucket_view=True
    dp_grad_passes: float = 0.0
    # q, k and v as one linear layer (Megatron's linear_qkv) or, False, three (torchtitan's wq / wk / wv,
    # this project's executor): three weight (and bias) tensors for the optimizer's launches, and (gate
    # and up likewise) without SP one backward all-reduce of the layer input's gradient per linear
    fused_qkv: bool = True
    # TP's collectives are torch's functional collectives (DTensor), priced by the link's
    # `<op>_functional` measurements where `planner calibrate` took them (they cost more on gloo)
    functional_tp_collectives: bool = False
    # Under TP the LM head's logits are gathered and every rank computes the loss over the whole
    # vocabulary (an all-gather of the logits per micro-batch) instead of Megatron-LM's vocabulary-
    # parallel cross-entropy (three all-reduces of one fp32 value per token)
    gathered_logits: bool = False
    # ZeRO-1 syncs the updated parameters by one broadcast per tensor (torch's ZeroRedundancyOptimizer
    # with its default parameters_as_bucket_view=False) instead of bucketed all-gathers
    zero1_broadcast_per_tensor: bool = False
    # Gradients accumulate across micro-batches by autograd's in-place `.grad += new` (eager PyTorch
    # without a fused accumulation buffer), where the gradient path states no accumulation of its own
    eager_grad_accumulation: bool = False
    # Passes over the stage's gradients the pipeline schedule makes per step: 1 for
    # torch.distributed.pipelining's scale_grads (a division by the micro-batch count)
    pipeline_grad_passes: float = 0.0
    # Copies (a read and a write each) of a layer's bytes that the sharded data-parallel wrapper makes
    # beside each of its collectives under ZeRO-2/3: 1 for FSDP2 (fully_shard), which copies the rank's
    # shard into the all-gather's input, the all-gather's output into the unsharded parameters
    # (split_with_sizes_copy) and the unsharded gradients into the reduce-scatter's input (_chunk_cat)
    fsdp_copy_passes: float = 0.0
    # Parameters under tensor parallelism, FSDP2 (ZeRO-2/3; ZeRO-1 under TP, PP or hybrid sharding) and
    # `replicate` (ZeRO-0 under TP or PP) are DTensors, which the optimizer steps one tensor at a time
    # through DTensor's dispatch (torch.optim's per-tensor AdamW): priced at the cluster's
    # `dtensor_optimizer_tensor_s` per parameter tensor and step; plain data parallelism (DDP,
    # ZeroRedundancyOptimizer) keeps plain tensors
    dtensor_params: bool = False
    # Under ZeRO-2 the sharded wrapper all-gathers each layer's parameters before every micro-batch's
    # forward, as it reshards them after each backward (FSDP2's reshard_after_forward=False, FSDP's
    # SHARD_GRAD_OP: "does not reshard them after the forward, and only reshards them after the backward
    # computation", torch.distributed.fsdp ShardingStrategy docs), instead of gathering the updated
    # parameters once per step after the optimizer (DeepSpeed's and Megatron's ZeRO-2)
    zero2_gather_per_microbatch: bool = False
    # K and V are repeated to every query head before the attention kernel (torchtitan's repeat_kv,
    # torchtitan/models/llama3/model/model.py: an expand and a reshape, then F.scaled_dot_product_attention
    # on the expanded tensors), so context parallelism's ring passes the expanded K and V, n_heads /
    # n_kv_heads times the GQA projections' bytes (torch.distributed.tensor.experimental's ring attention
    # rotates the key and value the kernel is called with)
    repeated_kv: bool = False
    # With SP the column-parallel linears save the gathered input (no backward re-gather; t times the
    # shard's bytes saved): DTensor's ColwiseParallel
    sp_keeps_gathered_input: bool = False
    # Full recompute does not re-run a layer's last forward collective (non-reentrant checkpoint's early stop)
    recompute_skips_last_collective: bool = False
    # How context parallelism exchanges K and V (CP_ROTATIONS) and whether its backward passes dK / dV
    # in fp32 (torch's context_parallel: ALL_GATHER and convert_to_f32 by default)
    cp_rotation: str = "ring"
    cp_grads_fp32: bool = False
    # The ring attention's element-wise passes outside its kernels (CP_RING_BYTES_KEYS order): per entry
    # (bytes per local query element, bytes per local key / value element); () where there are none
    cp_ring_bytes: tuple[tuple[float, float], ...] = ()
    # Fraction of an overlapped collective's time by which it slows the compute beside it under this
    # framework's overlap implementation; None: the cluster's `overlap_slowdown` (`planner fit --overlaps`)
    overlap_slowdown: float | None = None
    # (recipe, QuantiseTraffic) pairs where the framework's quantisation kernels stream other bytes than
    # the recipe's default (planner.precision.quantise_traffic)
    quantise_bytes: tuple[tuple[str, QuantiseTraffic], ...] = ()

    def __post_init__(self) -> None:
        if self.overlap_slowdown is not None and not (
                isinstance(self.overlap_slowdown, (int, float)) and 0.0 <= self.overlap_slowdown <= 1.0):
            raise SpecError(f"must be a fraction in 0..1 or null, got {self.overlap_slowdown!r}",
                            field=f"framework[{self.name}].overlap_slowdown")
        if self.cross_entropy not in CROSS_ENTROPY_KERNELS:
            raise SpecError(f"must be one of {', '.join(CROSS_ENTROPY_KERNELS)}, got {self.cross_entropy!r}",
                            field=f"framework[{self.name}].cross_entropy")
        if self.attention_kernel not in ATTENTION_KERNELS:
            raise SpecError(f"must be one of {', '.join(repr(k) for k in ATTENTION_KERNELS)}, got "
                            f"{self.attention_kernel!r}", field=f"framework[{self.name}].attention_kernel")
        if self.cp_rotation not in CP_ROTATIONS:
            raise SpecError(f"must be one of {', '.join(CP_ROTATIONS)}, got {self.cp_rotation!r}",
                            field=f"framework[{self.name}].cp_rotation")
        if self.tp_overlap not in TP_OVERLAPS:
            raise SpecError(f"must be one of {', '.join(TP_OVERLAPS)}, got {self.tp_overlap!r}",
                            field=f"framework[{self.name}].tp_overlap")
        if not 0 <= self.optimizer_launches_per_tensor <= 100:
            raise SpecError("must be a launch count in 0..100", field=f"framework[{self.name}].optimizer_launches")
        if not (0 <= self.dp_grad_passes <= 10 and 0 <= self.pipeline_grad_passes <= 10
                and 0 <= self.fsdp_copy_passes <= 10):
            raise SpecError("must be a pass count in 0..10", field=f"framework[{self.name}].dp_grad_passes")
        for dtype, value in (("", self.optimizer_step_bytes), *self.optimizer_step_bytes_by_dtype):
            if not (isinstance(value, (int, float)) and 0 <= value <= 1000):
                raise SpecError(f"must be bytes per parameter in 0..1000, got {value!r}",
                                field=f"framework[{self.name}].optimizer_step_bytes" + (f".{dtype}" if dtype else ""))
            if dtype and dtype not in ("fp32", "fp16", "bf16"):
                raise SpecError(f"must name fp32, fp16 or bf16, got {dtype!r}",
                                field=f"framework[{self.name}].optimizer_step_bytes")
        if not (0 <= self.dp_bucket_params <= 1e12 and 0 <= self.dp_bucket_params_per_rank <= 1e12):
            raise SpecError("must be a parameter count in 0..1e12", field=f"framework[{self.name}].dp_bucket_params")
        if self.reduction_bucket_after_backward and not self.dp_bucket_params:
            raise SpecError("reduction_bucket_after_backward needs the bucket's size in dp_bucket_params",
                            field=f"framework[{self.name}].dp_bucket_params")
        if self.cp_ring_bytes and (len(self.cp_ring_bytes) != len(CP_RING_BYTES_KEYS) or not all(
                len(pair) == 2 and all(isinstance(x, (int, float)) and 0 <= x <= 1000 for x in pair)
                for pair in self.cp_ring_bytes)):
            raise SpecError(f"must map {', '.join(CP_RING_BYTES_KEYS)} each to [bytes per query element, bytes per "
                            "key / value element] in 0..1000", field=f"framework[{self.name}].cp_ring_bytes")
        for dtype, traffic in self.quantise_bytes:
            if dtype not in LOW_PRECISION:
                raise SpecError(f"must name a low-precision recipe ({', '.join(LOW_PRECISION)}), got {dtype!r}",
                                field=f"framework[{self.name}].quantise_bytes")
            traffic.check(f"framework[{self.name}].quantise_bytes.{dtype}")
        for dtype, path in self.gradients:
            if dtype not in ("fp16", "bf16"):
                raise SpecError(f"must name fp16 or bf16, got {dtype!r}", field=f"framework[{self.name}].gradients")
            path.check(f"framework[{self.name}].gradients.{dtype}")
            if path.reduction_casts_buffer and not self.reduction_bucket_after_backward:
                raise SpecError("a reduction that casts the whole buffer needs reduction_bucket_after_backward (when "
                                "its copy is allocated)", field=f"framework[{self.name}].gradients.{dtype}"
                                ".reduction_casts_buffer")

    def slowdown_beside(self, cluster_slowdown: float) -> float:
        """The overlap slowdown the cost model applies: this profile's where it states one, else the
        cluster's (`cluster_slowdown`)."""
        return cluster_slowdown if self.overlap_slowdown is None else float(self.overlap_slowdown)

    def optimizer_bytes(self, dtype: str) -> float:
        """Bytes per parameter the optimizer step streams under base dtype `dtype` (0: a fused AdamW's)."""
        return dict(self.optimizer_step_bytes_by_dtype).get(dtype, self.optimizer_step_bytes)

    def quantise_traffic(self, dtype: str) -> QuantiseTraffic | None:
        """The profile's own quantisation traffic under recipe `dtype`, if it states one (else the cost
        model uses the recipe's default)."""
        return dict(self.quantise_bytes).get(dtype)

    def gradient_override(self, dtype: str) -> GradientPath | None:
        """The profile's own gradient path under the 16-bit training dtype `dtype`, if it states one."""
        return dict(self.gradients).get(dtype)


@lru_cache(maxsize=1)
def fitted_overlaps() -> dict[str, dict]:
    """The overlap slowdowns fitted per framework root (planner/data/framework_fits.json): root ->
    {"value", "runs", "note"}; empty where none was fitted."""
    res = resources.files("planner.data").joinpath("framework_fits.json")
    if not res.is_file():
        return {}
    return json.loads(res.read_text(encoding="utf-8")).get("overlap_slowdown", {})


@lru_cache(maxsize=1)
def _catalog() -> dict[str, dict]:
    text = resources.files("planner.data").joinpath("frameworks.json").read_text(encoding="utf-8")
    return json.loads(text)["frameworks"]


def framework_names() -> list[str]:
    return list(_catalog())


def _entry(name: str, seen: tuple[str, ...] = ()) -> dict:
    """The catalog entry of `name` with what it `extends` filled in from that profile."""
    entry = _entry_raw(name)
    parent = entry.get("extends")
    if parent is None:
        return entry
    if parent in seen or parent == name:
        raise SpecError(f"extends itself through {' -> '.join((*seen, name, parent))}",
                        field=f"framework[{name}].extends")
    base = _entry(parent, (*seen, name))
    own = {k: v for k, v in entry.items() if k != "extends"}
    # a mapping (gradients per dtype) is extended key by key, like the profile itself
    own.update({k: {**base[k], **v} for k, v in own.items() if isinstance(v, dict) and isinstance(base.get(k), dict)})
    return {**base, **own}


def framework_root(name: str) -> str:
    """The profile `name` extends, through every release, to the one that extends none (itself if none):
    what a parameter fitted per framework belongs to."""
    seen = [name]
    while (parent := _entry_raw(seen[-1]).get("extends")) is not None and parent not in seen:
        seen.append(parent)
    return seen[-1]


def _entry_raw(name: str) -> dict:
    entry = _catalog().get(name)
    if entry is None:
        raise SpecError(f"unknown framework {name!r} (one of {', '.join(framework_names())})", field="framework")
    return entry


# Per framework root: an overlap slowdown to use instead of the catalog's while `overlap_slowdowns` is
# active (None: the cluster's). `planner fit --overlaps` prices runs at candidate values this way.
_OVERLAP_OVERRIDES: dict[str, float | None] = {}


@contextmanager
def overlap_slowdowns(values: Mapping[str, float | None]) -> Iterator[None]:
    """While the block runs, every profile whose root (`framework_root`) `values` names has that overlap
    slowdown (None: the cluster's) in place of the catalog's; the previous values come back after."""
    saved = dict(_OVERLAP_OVERRIDES)
    _OVERLAP_OVERRIDES.update(values)
    try:
        yield
    finally:
        _OVERLAP_OVERRIDES.clear()
        _OVERLAP_OVERRIDES.update(saved)


def framework(name: str) -> Framework:
    """The profile `name` (SpecError naming the known ones otherwise)."""
    fw = _framework(name)
    if _OVERLAP_OVERRIDES:
        root = framework_root(name)
        if root in _OVERLAP_OVERRIDES:
            return replace(fw, overlap_slowdown=_OVERLAP_OVERRIDES[root])
    return fw


@lru_cache(maxsize=32)
def _framework(name: str) -> Framework:
    entry = _entry(name)
    where = f"framework[{name}].gradients"
    try:
        gradients = tuple((dtype, GradientPath(**path)) for dtype, path in sorted(entry.get("gradients", {}).items()))
    except TypeError as exc:
        optional = ", ".join(f.name for f in fields(GradientPath)[2:])
        raise SpecError(f"each dtype must map to buffer_bytes, reduce_bytes and optionally {optional} ({exc})",
                        field=where) from None
    step_bytes = entry.get("optimizer_step_bytes", 0.0)
    by_dtype = tuple(sorted(step_bytes.items())) if isinstance(step_bytes, dict) else ()
    ring = entry.get("cp_ring_bytes") or {}
    if not isinstance(ring, dict) or (ring and set(ring) != set(CP_RING_BYTES_KEYS)):
        raise SpecError(f"must map exactly {', '.join(CP_RING_BYTES_KEYS)}", field=f"framework[{name}].cp_ring_bytes")
    try:
        ring_bytes = tuple(tuple(float(x) for x in ring[k]) for k in CP_RING_BYTES_KEYS) if ring else ()
    except (TypeError, ValueError):
        raise SpecError("each entry must be [bytes per query element, bytes per key / value element]",
                        field=f"framework[{name}].cp_ring_bytes") from None
    quantise = entry.get("quantise_bytes") or {}
    where = f"framework[{name}].quantise_bytes"
    if not isinstance(quantise, dict) or not all(isinstance(v, dict) for v in quantise.values()):
        raise SpecError(f"must map each recipe to {{{', '.join(QUANTISE_KEYS)}}}", field=where)
    for dtype, counts in quantise.items():
        if set(counts) != set(QUANTISE_KEYS):
            raise SpecError(f"must map exactly {', '.join(QUANTISE_KEYS)}", field=f"{where}.{dtype}")
    quantise_bytes = tuple((dtype, QuantiseTraffic(**counts)) for dtype, counts in sorted(quantise.items()))
    extra: dict[str, object] = {}
    fitted = fitted_overlaps().get(framework_root(name))
    if entry.get("overlap_slowdown") is None and fitted is not None:
        extra = {"overlap_slowdown": fitted["value"],
                 "source": entry["source"] + f" | overlap_slowdown {fitted['value']:.2f}: {fitted['note']}"}
    return Framework(name=name, **{**entry, "recompute": tuple(entry["recompute"]), "gradients": gradients,
                                   "cp_ring_bytes": ring_bytes, "quantise_bytes": quantise_bytes,
                                   "optimizer_step_bytes": 0.0 if by_dtype else step_bytes,
                                   "optimizer_step_bytes_by_dtype": by_dtype, **extra})


framework.cache_clear = _framework.cache_clear  # type: ignore[attr-defined]  # (tests swap the catalog)


def default_framework(cluster: object) -> str:
    """The profile assumed when none is named: this project's executor on CPU hosts (what `planner
    calibrate` measured), Megatron-LM on GPU clusters (the settings of the published runs the catalog's
    efficiencies reproduce)."""
    return "this" if getattr(cluster, "device", "cuda") == "cpu" else DEFAULT_FRAMEWORK
