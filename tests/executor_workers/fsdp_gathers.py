"""Worker for tests/test_fsdp_gathers.py: how many parameter all-gathers FSDP2 issues in a step of the
executor's GPT on two CPU ranks, under ZeRO-2 and ZeRO-3, with one and with two micro-batches."""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from executor.data_parallel import apply_dp
from executor.model import Transformer
from planner.specs.catalog import model_preset


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    calls = {"n": 0}
    real = dist.all_gather_single

    def counted(*a, **kw):  # FSDP2's parameter all-gather (torch/distributed/fsdp/_fully_shard/_fsdp_collectives.py)
        calls["n"] += 1
        return real(*a, **kw)

    dist.all_gather_single = counted
    spec = model_preset("tiny")
    x = torch.randint(0, spec.vocab_size, (2, spec.seq_len))
    result = {"layers": spec.num_layers}
    for zero in (2, 3):
        model = Transformer(spec, True)
        apply_dp(model, mesh, zero, 1, 1, torch.device("cpu"))
        for micro_batches in (1, 2):
            calls["n"] = 0
            for _ in range(micro_batches):  # gradient accumulation, as the executor's step runs it
                torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten()).backward()
            result[f"zero{zero}_mb{micro_batches}"] = calls["n"]
    if dist.get_rank() == 0:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
