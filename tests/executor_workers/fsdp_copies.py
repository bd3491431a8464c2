"""Worker of tests/test_fsdp_copies.py (2 CPU ranks, torchrun): the bytes FSDP2's copies beside its
collectives write in one training step of the executor's GPT, per ZeRO stage and layer count.

A dispatch mode counts the outputs of FSDP2's own ops (torch/distributed/fsdp/_fully_shard/
_fsdp_collectives.py): `fsdp.all_gather_copy_in` (the rank's shard into the all-gather's input),
`fsdp.split_with_sizes_copy` (the all-gather's output into the unsharded parameters) and
`fsdp.chunk_cat` (the unsharded gradients into the reduce-scatter's input).
"""

from __future__ import annotations

import collections
from typing import Any

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.utils._python_dispatch import TorchDispatchMode
from two_ranks import run

from executor.data_parallel import apply_dp
from executor.model import Transformer, init_weights
from planner.specs.model import ModelSpec

SIZES = {"hidden": 64, "num_heads": 4, "ffn_hidden": 256, "vocab_size": 128, "seq_len": 16}


class CopyBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.bytes: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name == "all_gather_copy_in":  # returns (all-gather input, all-gather output)
            self.bytes["all_gather_in"] += out[0].numel() * out[0].element_size()
        elif name == "split_with_sizes_copy":
            self.bytes["all_gather_out"] += sum(t.numel() * t.element_size() for t in kwargs["out"])
        elif name == "chunk_cat":
            dst = kwargs.get("out", out)
            self.bytes["reduce_scatter_in"] += dst.numel() * dst.element_size()
        return out


def step_bytes(layers: int, zero: int, mesh: Any) -> dict[str, int]:
    torch.manual_seed(0)
    spec = ModelSpec(name="copies", num_layers=layers, dtype="fp32", **SIZES)
    model = Transformer(spec, True)
    init_weights(model, spec, 0)
    model = apply_dp(model, mesh, zero, 1, 1, torch.device("cpu"))
    tokens = torch.randint(0, spec.vocab_size, (1, spec.seq_len))

    def step() -> None:
        logits = model(tokens)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()

    step()  # FSDP2's lazy initialisation
    with CopyBytes() as counter:
        step()
    return dict(counter.bytes)


def measure(mesh: DeviceMesh) -> dict[str, Any]:
    result = {f"zero{z}_layers{n}": step_bytes(n, z, mesh) for z in (2, 3) for n in (2, 4)}
    return {"sizes": SIZES, "bytes": result}


if __name__ == "__main__":
    run(measure)
