"""Worker for tests/test_dtensor_optimizer.py: which parameters of the executor's GPT are DTensors under
each data-parallel wrapper and under tensor parallelism, on two CPU ranks (gloo)."""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor
from two_ranks import run

from executor.data_parallel import apply_dp, dp_kind
from executor.model import Transformer
from executor.tensor_parallel import apply_tp
from planner.specs.catalog import model_preset


def measure(mesh: DeviceMesh) -> list[dict[str, Any]]:
    spec = model_preset("tiny")
    result = []
    # the wrapper the executor picks for (zero, tp, pp), applied over the two ranks as the data-parallel group
    for zero in (0, 1, 2, 3):
        for pp in (1, 2):
            model = Transformer(spec, True)
            apply_dp(model, mesh, zero, 1, pp, torch.device("cpu"))
            params = list(model.parameters())
            result.append({"layout": "dp", "zero": zero, "pp": pp, "wrapper": dp_kind(zero, 1, pp),
                           "tensors": len(params), "dtensors": sum(isinstance(p, DTensor) for p in params)})
    for sp in (False, True):  # tensor parallelism alone (dp = 1): no data-parallel wrapper
        model = Transformer(spec, True)
        apply_tp(model, mesh, sequence_parallel=sp)
        params = list(model.parameters())
        result.append({"layout": "tp_sp" if sp else "tp", "zero": 0, "pp": 1, "wrapper": "none",
                       "tensors": len(params), "dtensors": sum(isinstance(p, DTensor) for p in params)})
    return result


if __name__ == "__main__":
    run(measure)
