"""What every worker of this folder does around its measurement: take `--out`, join the two-rank gloo group
over a 1-D mesh, and have rank 0 write the result as JSON (tests/two_rank_worker.py runs them)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from executor.rank_exit import exit_rank


def run(measure: Callable[[DeviceMesh], Any]) -> None:
    """measure(mesh) on every rank; rank 0 writes what it returns to `--out`."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dist.init_process_group("gloo")
    result = measure(init_device_mesh("cpu", (dist.get_world_size(),)))
    if dist.get_rank() == 0:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f)
    dist.destroy_process_group()
    exit_rank(0)
