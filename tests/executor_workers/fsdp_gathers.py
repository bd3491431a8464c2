"""Worker for tests/test_fsdp_gathers.py: how many parameter all-gathers FSDP2 issues in a step of the
executor's GPT on two CPU ranks, under ZeRO-2 and ZeRO-3, with one and with two micro-batches."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from two_ranks import run

from executor.data_parallel import apply_dp
from executor.model import Transformer
from planner.specs.catalog import model_preset


def measure(mesh: DeviceMesh) -> dict[str, int]:
    calls = {"n": 0}
    real = dist.all_gather_single

    def counted(*a: Any, **kw: Any) -> Any:  # FSDP2's parameter all-gather (fsdp/_fully_shard/_fsdp_collectives.py)
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
    return result


if __name__ == "__main__":
    run(measure)
