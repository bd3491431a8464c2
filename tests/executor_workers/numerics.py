"""torchrun worker: SGD steps under many layouts vs a single-process reference in the same process.

Usage: torchrun --standalone --nproc-per-node W tests/executor_workers/numerics.py --set w2 --out r.json
Rank 0 writes {layout: {"loss_err", "param_err", "n_params", "ok"}} as JSON; the pytest test asserts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import traceback
from typing import Any

import torch
import torch.distributed as dist
from families import FAMILIES, FAMILIES_PIPELINED

from executor.data import SyntheticData
from executor.lora import apply_lora
from executor.model import ModelSpec, Transformer, build_model, canonical_name, init_weights
from executor.parallel_dims import ParallelDims
from executor.plans import local_plan
from executor.rank_exit import exit_rank
from executor.trainer import Trainer, TrainOptions, loss_fn

BASE = ModelSpec(name="t", num_layers=4, hidden=64, num_heads=4, ffn_hidden=128, vocab_size=128, seq_len=16,
                 dtype="fp32")
LLAMA = dataclasses.replace(BASE, name="llama", norm="rmsnorm", position="rope", activation="swiglu",
                            bias=False, num_kv_heads=2, tied_embeddings=False)
MOE = dataclasses.replace(BASE, name="moe", norm="rmsnorm", position="rope", activation="swiglu", bias=False,
                          num_experts=4, top_k=2)
MODELS = {"gpt": BASE, "llama": LLAMA, "moe": MOE, **FAMILIES, **FAMILIES_PIPELINED}

# name: (model, plan fields). Global batch 8, micro-batch 2 unless given.
SETS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "w2": {
        "tp2": ("gpt", {"tp": 2}),
        "tp2-sp-llama": ("llama", {"tp": 2, "sequence_parallel": True}),
        "pp2-1f1b": ("gpt", {"pp": 2}),
        "pp2-gpipe-llama": ("llama", {"pp": 2, "schedule": "gpipe"}),
        "pp2-vpp2": ("gpt", {"pp": 2, "vpp": 2, "schedule": "interleaved-1f1b"}),
        "dp2-ddp": ("gpt", {"dp": 2}),
        "control-dp2-lr": ("gpt", {"dp": 2}),
        "dp2-zero1": ("gpt", {"dp": 2, "zero_stage": 1}),
        "dp2-zero2": ("llama", {"dp": 2, "zero_stage": 2}),
        "dp2-zero3": ("gpt", {"dp": 2, "zero_stage": 3}),
        "dp2-full-recompute": ("gpt", {"dp": 2, "recompute": "full"}),
        "tp2-selective-math": ("gpt", {"tp": 2, "recompute": "selective", "flash_attention": False}),
        "tp2-full-recompute-zero-mb1": ("llama", {"tp": 2, "recompute": "full", "micro_batch": 1}),
        "dp2-moe": ("moe", {"dp": 2}),
        "tp2-sp-moe": ("moe", {"tp": 2, "sequence_parallel": True}),
        "dp2-ep2-moe": ("moe", {"dp": 2, "ep": 2}),
        "dp2-ep2-zero1-moe": ("moe", {"dp": 2, "ep": 2, "zero_stage": 1}),
        "pp2-uneven-1-3": ("gpt", {"pp": 2, "first_stage_layers": 1, "last_stage_layers": 3}),
        "dp2-op-selective-llama": ("llama", {"dp": 2, "recompute": "op-selective"}),
        "pp2-full-every2": ("gpt", {"pp": 2, "recompute": "full", "recompute_every": 2}),
        "pp2-split-emb-loss": ("llama", {"pp": 2, "embedding_in_split": True, "loss_in_split": True}),
        "dp2-lora-llama": ("llama", {"dp": 2, "finetune": "lora", "lora_rank": 4}),
        "pp2-lora": ("gpt", {"pp": 2, "finetune": "lora", "lora_rank": 4, "lora_targets": ["qkv", "down"]}),
        # Context parallelism: ring attention, head-tail chunks, global RoPE / learned positions.
        "cp2-llama": ("llama", {"cp": 2}),
        "cp2-gpt-math": ("gpt", {"cp": 2, "flash_attention": False}),
        "cp2-selective-zero1-llama": ("llama", {"cp": 2, "recompute": "selective", "zero_stage": 1}),
        "cp2-lora-llama": ("llama", {"cp": 2, "finetune": "lora", "lora_rank": 4}),
    },
    "w4": {
        "tp2-pp2": ("gpt", {"tp": 2, "pp": 2}),
        "tp2-sp-pp2-vpp2": ("llama", {"tp": 2, "pp": 2, "vpp": 2, "schedule": "interleaved-1f1b",
                                      "sequence_parallel": True}),
        "tp2-dp2": ("gpt", {"tp": 2, "dp": 2}),
        "tp2-dp2-zero3": ("llama", {"tp": 2, "dp": 2, "zero_stage": 3}),
        "pp2-dp2": ("gpt", {"pp": 2, "dp": 2}),
        "pp4-1f1b-2microbatches": ("gpt", {"pp": 4, "micro_batch": 4}),  # fewer micro-batches than stages
        "pp2-dp2-zero1": ("llama", {"pp": 2, "dp": 2, "zero_stage": 1}),
        "pp2-dp2-zero3-full": ("gpt", {"pp": 2, "dp": 2, "zero_stage": 3, "recompute": "full"}),
        "dp-outer-tp2-dp2": ("gpt", {"tp": 2, "dp": 2, "placement": ["dp", "tp", "cp", "pp"]}),
        "dp4-ep2-moe": ("moe", {"dp": 4, "ep": 2}),
        "pp2-dp2-ep2-zero3-moe": ("moe", {"pp": 2, "dp": 2, "ep": 2, "zero_stage": 3}),
        "cp2-dp2-llama": ("llama", {"cp": 2, "dp": 2}),
        "cp4-gpt": ("gpt", {"cp": 4}),
        "tp2-sp-cp2-llama": ("llama", {"tp": 2, "cp": 2, "sequence_parallel": True}),
        "pp2-cp2-full-recompute-gpt": ("gpt", {"pp": 2, "cp": 2, "recompute": "full"}),
        "cp2-dp2-zero3-llama": ("llama", {"cp": 2, "dp": 2, "zero_stage": 3}),
        # Hybrid sharding: FSDP2 on a (replicate 2, shard 2) mesh of the four data-parallel ranks.
        "dp4-hsdp2-zero3": ("llama", {"dp": 4, "zero_stage": 3, "shard_group": 2}),
        "cp2-dp2-hsdp2-zero2": ("gpt", {"cp": 2, "dp": 2, "zero_stage": 2, "shard_group": 2}),
        "cp2-dp2-ep2-moe": ("moe", {"cp": 2, "dp": 2, "ep": 2}),
        # Expert parallelism with expert tensor parallelism.
        "ep2-tp2-moe": ("moe", {"tp": 2, "dp": 2, "ep": 2}),
        "ep2-tp2-sp-zero1-moe": ("moe", {"tp": 2, "dp": 2, "ep": 2, "sequence_parallel": True, "zero_stage": 1}),
    },
    # The 2025 families (tests/test_model_families_dist.py).
    "families-w2": {
        "tp2-sp-deepseek-v3": ("deepseek-v3", {"tp": 2, "sequence_parallel": True}),
        "tp2-mla-no-q-latent": ("mla-no-q-latent", {"tp": 2}),
        "dp2-ep2-deepseek-v3": ("deepseek-v3", {"dp": 2, "ep": 2}),
        "pp2-deepseek-v3-no-mtp": ("deepseek-v3-no-mtp", {"pp": 2}),
        "dp2-full-recompute-deepseek-v3": ("deepseek-v3", {"dp": 2, "recompute": "full"}),
        "tp2-sp-qwen3": ("qwen3", {"tp": 2, "sequence_parallel": True}),
        "tp2-qwen3-moe": ("qwen3-moe", {"tp": 2}),
        "pp2-qwen3-moe": ("qwen3-moe", {"pp": 2}),
        "dp2-zero3-qwen2-moe-shared": ("qwen2-moe-shared", {"dp": 2, "zero_stage": 3}),
        "tp2-gpt-oss-math": ("gpt-oss", {"tp": 2, "flash_attention": False}),
        "dp2-ep2-gpt-oss": ("gpt-oss", {"dp": 2, "ep": 2}),
        "tp2-sp-llama4": ("llama4", {"tp": 2, "sequence_parallel": True}),
        "pp2-vpp2-llama4": ("llama4", {"pp": 2, "vpp": 2, "schedule": "interleaved-1f1b"}),
        "cp2-mla-deepseek-v3-no-mtp": ("deepseek-v3-no-mtp", {"cp": 2}),  # MLA: math ring blocks (d_qk != d_v)
    },
    "families-w4": {
        "tp2-dp2-deepseek-v3": ("deepseek-v3", {"tp": 2, "dp": 2}),
        "tp2-pp2-llama4": ("llama4", {"tp": 2, "pp": 2}),
        "tp2-dp2-zero3-qwen3": ("qwen3", {"tp": 2, "dp": 2, "zero_stage": 3}),
        "pp2-dp2-ep2-gpt-oss": ("gpt-oss", {"pp": 2, "dp": 2, "ep": 2}),
        "ep2-tp2-qwen3-moe": ("qwen3-moe", {"tp": 2, "dp": 2, "ep": 2}),
    },
}

LR = 0.5
STEPS = 2  # the second step catches state that breaks after the first (DDP bucket rebuilds)
RTOL, ATOL = 1e-5, 1e-7  # fp32: parallel layouts only reorder sums


def reference(spec: ModelSpec, flash: bool, batches: list[torch.Tensor], lora: tuple[int, tuple[str, ...]] | None = None
              ) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Single process: one SGD step per global batch, each batch in one piece (LoRA: the same adapters)."""
    if lora:
        with torch.device("meta"):
            model = Transformer(spec, flash)
        apply_lora(model, *lora)
        model.to_empty(device="cpu")
        model.tie_weights()
        init_weights(model, spec, 0)
    else:
        model = build_model(spec, flash, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for batch in batches:
        loss = loss_fn(model(batch[:, :-1]), batch[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}


def run_layout(name: str, model_key: str, fields: dict[str, Any], world: int) -> dict[str, Any]:
    spec = MODELS[model_key]
    fields = {"micro_batch": 2, "global_batch": 8, **fields}
    doc = local_plan(spec, **fields)
    assert doc.plan.world_size == world, (name, doc.plan.world_size)
    dims = ParallelDims.from_plan(doc.plan)
    mesh = dims.build_mesh("cpu")
    data = SyntheticData(spec.vocab_size, spec.seq_len, seed=1)
    lora = (doc.plan.lora_rank, doc.plan.lora_targets) if doc.plan.finetune == "lora" else None
    ref_losses, ref_params = reference(spec, doc.plan.flash_attention,
                                       [data.rows(s, 0, doc.plan.global_batch) for s in range(STEPS)], lora)
    init_params = dict(reference(spec, doc.plan.flash_attention, [], lora)[1])
    lr = LR * (1.001 if name.startswith("control") else 1.0)  # a negative control must fail the check
    trainer = Trainer(doc, dims, mesh, torch.device("cpu"), TrainOptions(optimizer="sgd", lr=lr, seed=0))
    loss_err = 0.0
    for step in range(STEPS):
        loss, has_loss = trainer.train_step(trainer.batch(data, step))
        t = torch.tensor([float(loss) if has_loss else 0.0, 1.0 if has_loss else 0.0], dtype=torch.float64)
        dist.all_reduce(t)
        loss_err = max(loss_err, abs(float(t[0] / t[1]) - ref_losses[step]) / ref_losses[step])
    # allclose-style: |p - p_ref| <= ATOL + RTOL |p_ref| for every element (ratio <= 1 passes).
    worst, n, update = 0.0, 0, 0.0
    for pname, full in trainer.named_full_parameters():
        key = pname if pname in ref_params else canonical_name(spec, pname)
        ref, before = ref_params[key], init_params[key].detach()
        ratio = float(((full - ref).abs() / (ATOL + RTOL * ref.abs())).max())
        if os.environ.get("NUMERICS_VERBOSE") and ratio > 0.1:
            print(f"rank {dist.get_rank()} {name} {pname}: ratio {ratio:.3g}", flush=True)
        worst = max(worst, ratio)
        update = max(update, float((ref - before).abs().max()))
        n += 1
    stats = torch.tensor([worst, update, float(n)], dtype=torch.float64)
    dist.all_reduce(stats[:2], op=dist.ReduceOp.MAX)
    dist.all_reduce(stats[2:])
    return {"ref_losses": ref_losses, "loss_err": loss_err,
            "param_ratio": float(stats[0]), "max_update": float(stats[1]), "n_params": int(stats[2]),
            "dp": trainer.dp_description}



def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True, choices=sorted(SETS))
    ap.add_argument("--only", default="")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world, rank = dist.get_world_size(), dist.get_rank()
    results: dict[str, Any] = {}
    for name, (model_key, fields) in SETS[args.set].items():
        if args.only and name not in args.only.split(","):
            continue
        try:
            results[name] = run_layout(name, model_key, fields, world)
        except Exception as exc:  # report and stop: the other ranks may be stuck in a collective
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
            if rank == 0:
                with open(args.out, "w") as fh:
                    json.dump(results, fh, indent=1)
            sys.stderr.flush()
            os._exit(1)
        if rank == 0:
            print(name, json.dumps(results[name]), flush=True)
    if rank == 0:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    exit_rank(main())
