"""What the cross-entropy holds per logit at its peak (planner.cost.memory.loss_peak_bytes), measured.

torch's MemTracker (torch.distributed._tools.mem_tracker) follows every tensor a region allocates and
reports the peak; saved-tensor hooks see what a compiled loss keeps for backward. The losses run as
torchtitan runs them (F.cross_entropy on `.float()` logits, the logits deleted before backward), on
logits much larger than anything else in the region, so the peak per logit is the loss's own.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from planner.cost import estimate
from planner.cost.memory import loss_peak_bytes
from planner.plan import Plan
from planner.specs.catalog import cluster_preset, model_preset

TOKENS, VOCAB, HIDDEN = 2048, 4096, 16


def _inputs() -> tuple[torch.Tensor, torch.nn.Parameter, torch.Tensor]:
    torch.manual_seed(0)
    x = torch.randn(TOKENS, HIDDEN, dtype=torch.bfloat16)
    w = torch.nn.Parameter(torch.randn(VOCAB, HIDDEN, dtype=torch.bfloat16))
    return x, w, torch.randint(0, VOCAB, (TOKENS,))


def _eager_peak_per_logit() -> float:
    from torch.distributed._tools.mem_tracker import MemTracker

    x, w, labels = _inputs()
    tracker = MemTracker()
    with tracker:
        pred = x @ w.t()  # the LM head's 16-bit logits
        loss = F.cross_entropy(pred.float(), labels)
        del pred  # torchtitan frees the logits before backward
        loss.backward()
    snap = tracker.get_tracker_snapshot("peak")
    peak = sum(v for by in snap.values() for k, v in by.items() if str(k) == "Total")
    return peak / (TOKENS * VOCAB)


def _compiled_peak_per_logit() -> float:
    """What the compiled loss saves for backward plus the gradient it writes, per logit."""
    _, _, labels = _inputs()
    pred = torch.randn(TOKENS, VOCAB, dtype=torch.bfloat16, requires_grad=True)
    loss_fn = torch.compile(lambda p, t: F.cross_entropy(p.float(), t))
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(pred, labels)
    loss.backward()
    return (sum(saved.values()) + pred.grad.numel() * pred.grad.element_size()) / (TOKENS * VOCAB)


@pytest.fixture(scope="module")
def eager_peak() -> float:
    return _eager_peak_per_logit()


@pytest.fixture(scope="module")
def compiled_peak() -> float:
    return _compiled_peak_per_logit()


def test_eager_cross_entropy_peak_is_three_fp32_logit_buffers(eager_peak: float) -> None:
    assert eager_peak == pytest.approx(float(loss_peak_bytes("eager-fp32", 2)), abs=0.3)


def test_compiled_cross_entropy_keeps_the_16_bit_logits_and_writes_a_16_bit_gradient(compiled_peak: float) -> None:
    assert compiled_peak == pytest.approx(float(loss_peak_bytes("compiled", 2)), abs=0.05)


LOSS_PARALLEL = textwrap.dedent(f"""
    import torch, torch.distributed as dist, torch.nn.functional as F
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor.parallel import loss_parallel
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    mesh = init_device_mesh("cpu", (1,))
    torch.manual_seed(0)
    x = torch.randn({TOKENS}, {HIDDEN}, dtype=torch.bfloat16)
    w = torch.nn.Parameter(torch.randn({VOCAB}, {HIDDEN}, dtype=torch.bfloat16))
    labels = torch.randint(0, {VOCAB}, ({TOKENS},))
    tracker = MemTracker()
    with tracker:
        pred = DTensor.from_local(x @ w.t(), mesh, [Shard(-1)])  # vocabulary-sharded logits
        with loss_parallel():
            loss = F.cross_entropy(pred.float(), labels)
            del pred
            loss.backward()
    snap = tracker.get_tracker_snapshot("peak")
    print(sum(v for by in snap.values() for k, v in by.items() if str(k) == "Total") / ({TOKENS} * {VOCAB}))
    dist.destroy_process_group()
    import os, sys  # leave as executor.rank_exit does: the mesh's gloo threads may abort the exit otherwise
    sys.stdout.flush()
    os._exit(0)
""")


def test_loss_parallel_cross_entropy_peak() -> None:
    """torchtitan under tensor parallelism runs the loss through DTensor's loss_parallel (its own process
    group, so in a child process)."""
    out = subprocess.run([sys.executable, "-c", LOSS_PARALLEL], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    measured = float(out.stdout.strip().splitlines()[-1])
    assert measured == pytest.approx(float(loss_peak_bytes("eager-fp32", 2, True)), abs=0.3)


def test_predicted_memory_differs_between_loss_kernels_by_the_measured_bytes(eager_peak: float,
                                                                             compiled_peak: float) -> None:
    """The same torchtitan plan under its December 2024 release (eager loss) and a 2025 one (compiled loss)
    differs in predicted memory by what the two losses were measured to hold, per logit of the last stage."""
    model, cluster = model_preset("llama3-8b"), cluster_preset("dgx-h100")
    plan = Plan(dp=8, micro_batch=2, global_batch=16, recompute="full", zero_stage=3)
    gib = {fw: estimate(model, cluster, Plan(**{**plan.__dict__, "framework": fw}))["memory_gib_per_gpu"]
           for fw in ("torchtitan-compile-2024", "torchtitan-compile")}
    logits = plan.micro_batch * model.seq_len * model.vocab_size
    measured = (eager_peak - compiled_peak) * logits / 2**30
    assert gib["torchtitan-compile-2024"] - gib["torchtitan-compile"] == pytest.approx(measured, rel=0.05)
