"""Tensor (and sequence) parallelism with DTensor, as Megatron-LM splits a Transformer layer.

Column-parallel q/k/v and MLP up (whole heads / ffn columns per rank), row-parallel attention output
and MLP down, vocabulary-parallel embedding and LM head. With sequence parallelism (Korthikanti et
al. 2022) the norms run on sequence shards and the all-reduces become all-gather + reduce-scatter;
the residual stream between layers is then this rank's sequence shard (a plain tensor).

MoE experts are split the same way (expert tensor parallelism): each rank holds a column slice of
every expert's up/gate and the matching row slice of its down projection; the router is replicated,
a shared expert is split like a dense MLP. Multi-head latent attention (DeepSeek-V3) keeps its down
projections replicated and splits its up projections by heads (as Megatron-LM does); attention sinks
split with the heads; per-head q/k norm weights are replicated and their gradients reduced.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from executor.model import MLP, LatentAttention, Transformer


class _CopyToTP(torch.autograd.Function):
    """Identity forward, all-reduce backward (Megatron's `f`): input of a tensor-parallel region."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """All-reduce forward, identity backward (Megatron's `g`): output of a tensor-parallel region."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        x = x.contiguous()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def _shard_param(module: nn.Module, name: str, mesh: DeviceMesh, dim: int) -> None:
    p = getattr(module, name)
    if p is not None:
        module.register_parameter(name, nn.Parameter(distribute_tensor(p, mesh, [Shard(dim)])))


def parallelize_experts(experts: nn.Module, mesh: DeviceMesh) -> None:
    """Expert tensor parallelism for `GroupedExperts`: column-split up/gate, row-split down."""
    for name in ("w_up", "w_gate"):
        _shard_param(experts.up, name, mesh, 2)
    for name in ("b_up", "b_gate"):
        _shard_param(experts.up, name, mesh, 1)
    _shard_param(experts.down, "w_down", mesh, 1)  # its bias is added by MoE after the reduction
    group = mesh.get_group()

    def pre(_mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (_CopyToTP.apply(args[0], group), *args[1:])

    def post(_mod: nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        return _ReduceFromTP.apply(out, group)

    experts.register_forward_pre_hook(pre)
    experts.register_forward_hook(post)


def _block_plan(p: str, layer: nn.Module, sp: bool) -> dict[str, Any]:
    """The plan of one Transformer block at module path `p` (a layer, or an MTP module's layer)."""
    seq = Shard(1) if sp else Replicate()
    gather = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),),
                                use_local_output=True)  # the full sequence as a plain tensor
    plan: dict[str, Any] = {}
    if sp:
        plan[f"{p}.attn.norm"] = SequenceParallel()
        plan[f"{p}.mlp.norm"] = SequenceParallel()
    if isinstance(layer.attn, LatentAttention):
        # The down projections (and the latents' norms) are replicated: every rank computes them on the
        # full sequence; the up projections split whole heads.
        first = "q_down" if hasattr(layer.attn, "q_down") else "q"
        if first == "q":
            plan[f"{p}.attn.q"] = ColwiseParallel(input_layouts=seq)
        else:
            if sp:
                plan[f"{p}.attn.q_down"] = gather
            plan[f"{p}.attn.q_up"] = ColwiseParallel()
        if sp:
            plan[f"{p}.attn.kv_down"] = gather
        plan[f"{p}.attn.kv_up"] = ColwiseParallel()
    else:
        if sp:
            plan[f"{p}.attn.qkv"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
        for x in ("q", "k", "v"):
            plan[f"{p}.attn.qkv.{x}"] = ColwiseParallel()
        qk = layer.attn.qk_norm
        if qk is not None and qk.q.weight is not None:
            # Replicated weights applied to this rank's heads (dim 2 of (b, t, heads, d)): as a norm over
            # a sharded sequence, so the weight's gradient (a partial sum over heads) is reduced.
            for x in ("q", "k"):
                plan[f"{p}.attn.qk_norm.{x}"] = SequenceParallel(sequence_dim=2, use_local_output=True)
    plan[f"{p}.attn.proj"] = RowwiseParallel(output_layouts=seq)
    if isinstance(layer.mlp, MLP):
        if layer.mlp.gated:
            if sp:
                plan[f"{p}.mlp.up"] = PrepareModuleInput(input_layouts=(Shard(1),),
                                                        desired_input_layouts=(Replicate(),))
            plan[f"{p}.mlp.up.gate"] = ColwiseParallel()
            plan[f"{p}.mlp.up.up"] = ColwiseParallel()
        else:
            plan[f"{p}.mlp.up"] = ColwiseParallel(input_layouts=seq)
        plan[f"{p}.mlp.down"] = RowwiseParallel(output_layouts=seq)
    else:
        if sp:  # MoE: gather the sequence for routing, scatter the combined output back
            plan[f"{p}.moe"] = gather
        shared = layer.moe.shared
        if shared is not None:  # a dense MLP on the (full) routed input, reduced before the sum
            for name in (("up.gate", "up.up") if shared.gated else ("up",)):
                plan[f"{p}.moe.shared.{name}"] = ColwiseParallel()
            plan[f"{p}.moe.shared.down"] = RowwiseParallel(output_layouts=Replicate())
    return plan


def tp_plan(model: Transformer, tp: int, sequence_parallel: bool) -> dict[str, Any]:
    """The `parallelize_module` plan for the parts of `model` present (a pipeline stage may lack some)."""
    sp = sequence_parallel
    seq = Shard(1) if sp else Replicate()
    plan: dict[str, Any] = {}
    vocab_split = model.spec.vocab_size % tp == 0
    if model.embed is not None:
        if vocab_split:
            plan["embed.tok"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
        if sp:
            plan["embed"] = PrepareModuleOutput(output_layouts=Replicate(), desired_output_layouts=Shard(1))
    for i, layer in model.layers.items():
        plan.update(_block_plan(f"layers.{i}", layer, sp))
    if model.final_norm is not None and sp:
        plan["final_norm"] = SequenceParallel()
    if model.lm_head is not None:
        if vocab_split:
            plan["lm_head"] = ColwiseParallel(input_layouts=seq, output_layouts=Replicate())
        elif sp:
            plan["lm_head"] = PrepareModuleInput(input_layouts=(Shard(1),),
                                                 desired_input_layouts=(Replicate(),), use_local_output=True)
    for d, module in enumerate(model.mtp or ()):
        # Multi-token prediction (with the head, so on the last stage): its norms sequence-parallel, the
        # 2h -> h projection column-parallel with its output gathered (Megatron-LM's MTP), then a block.
        p = f"mtp.{d}"
        if sp:
            for name in ("enorm", "hnorm", "norm"):
                plan[f"{p}.{name}"] = SequenceParallel()
        plan[f"{p}.proj"] = ColwiseParallel(input_layouts=seq, output_layouts=seq)
        plan.update(_block_plan(f"{p}.layer", module.layer, sp))
    return plan


def apply_tp(model: Transformer, mesh: DeviceMesh, sequence_parallel: bool) -> None:
    """Shard `model` (a whole model or a pipeline stage, usually still on the meta device) in place."""
    tp = mesh.size()
    if model.spec.tied_embeddings and model.lm_head is not None and model.embed is not None:
        # Untie while the two modules are sharded (each gets its own DTensor), re-tie afterwards.
        model.lm_head.weight = nn.Parameter(model.lm_head.weight.detach().clone())
    parallelize_module(model, mesh, tp_plan(model, tp, sequence_parallel))
    blocks = [*model.layers.values(), *(m.layer for m in model.mtp or ())]
    for layer in blocks:
        if layer.moe is not None:
            parallelize_experts(layer.moe.experts, mesh)
            if sequence_parallel:
                parallelize_module(layer.moe, mesh, PrepareModuleOutput(
                    output_layouts=Replicate(), desired_output_layouts=Shard(1)))
        core = layer.attn.core
        if core.sinks is not None:  # one logit per head: split with the heads
            _shard_param(core, "sinks", mesh, 0)
        if isinstance(layer.attn, LatentAttention):
            _share_rotary_key(layer.attn, mesh.get_group())
    model.tie_weights()


def _share_rotary_key(attn: LatentAttention, group: dist.ProcessGroup) -> None:
    """MLA's rotary key is one head every query head uses: each rank's heads give it a partial
    gradient, summed over the TP ranks (Megatron's `f` on that slice of kv_down's output; the latent
    part's gradient arrives reduced already, through the column-parallel kv_up)."""
    widths = [attn.kv_rank, attn.rope_dim]

    def post(_mod: nn.Module, _args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
        latent, rope = out.split(widths, dim=-1)
        return torch.cat([latent, _CopyToTP.apply(rope, group)], dim=-1)

    attn.kv_down.register_forward_hook(post)

