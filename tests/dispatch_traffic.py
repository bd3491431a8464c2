"""A TorchDispatchMode that counts what PyTorch moves: the reference for the cost model's byte counts of
eager elementwise ops (tests/test_eager_ops.py) and of gradient accumulation (tests/test_gradient_paths.py)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class Traffic(TorchDispatchMode):
    """Bytes of the tensors each dispatched (non-view) op reads and writes, and the ops dispatched."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        if not func.is_view and func is not torch.ops.aten.detach.default:
            def size(x: object) -> int:
                return x.untyped_storage().nbytes() if isinstance(x, torch.Tensor) else 0
            self.bytes += sum(map(size, tree_leaves((args, kwargs)))) + sum(map(size, tree_leaves(out)))
            self.ops.append(str(func))
        return out
