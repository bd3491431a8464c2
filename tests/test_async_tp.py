"""torch's async TP (torchtitan's enable_async_tensor_parallel) as the cost model prices it: every all-gather
hidden behind the matmuls it feeds, every reduce-scatter behind the one matmul producing it, and the
backward reduce-scatter of an input gradient that sums several matmuls (separate q / k / v, gate / up)
exposed, because Inductor's micro-pipeline pass cannot fuse it (checked on the installed torch)."""

from __future__ import annotations

import numpy as np
import pytest

from planner.cost.terms import tp_exposure
from planner.framework import framework

SP = np.array([True])
NO_SP = np.array([False])


def _exposure(mode: str, sp: np.ndarray = SP, summed: tuple[bool, bool] = (True, True),
              regather: bool = True) -> tuple[float, float]:
    """Worked example (milliseconds): all-gather 2, reduce-scatter 3, all-reduce 4; all of a layer's
    collectives exposed: 20 forward, 30 backward (26 without the two re-gathers); column-parallel forward
    windows 10 and 10, row-parallel 1 and 10, weight-gradient windows 5 and 1; overlap slows the compute
    beside it by 0.1 of the overlap."""
    one = np.ones(1)
    fwd, bwd = tp_exposure(mode, sp, 2 * one, 3 * one, 4 * one, 20 * one, (30 if regather else 26) * one,
                           [10 * one, 10 * one], [1 * one, 10 * one], [5 * one, 1 * one], summed, 0.1,
                           regather=regather)
    return float(fwd[0]), float(bwd[0])


def test_async_tp_exposes_the_summed_input_gradients_reduce_scatters() -> None:
    # hide(c, w) = max(0, c - w) + 0.1 min(c, w)
    # forward: gathers behind 10 and 10 (0.2 + 0.2), reduce-scatters behind 1 and 10 (2.1 + 0.3) = 2.8
    # backward: gathers behind the row GEMMs 1 and 10 (1.1 + 0.2) and the weight gradients 5 and 1
    # (0.2 + 1.1) = 2.6; under "all" the reduce-scatters behind 5 and 1 (0.3 + 2.1) = 5.0 in all;
    # under async TP both input gradients sum several matmuls: 3 + 3 exposed = 8.6
    assert _exposure("all") == pytest.approx((2.8, 5.0))
    assert _exposure("micro-pipeline") == pytest.approx((2.8, 8.6))
    # one fused input projection (a single matmul) per group: nothing left exposed beyond "all"
    assert _exposure("micro-pipeline", summed=(False, False)) == pytest.approx(_exposure("all"))
    assert _exposure("micro-pipeline", summed=(True, False)) == pytest.approx((2.8, 5.0 - 0.3 + 3))
    # without SP there are all-reduces only, which the pass never fuses: everything exposed
    assert _exposure("micro-pipeline", NO_SP) == pytest.approx((20.0, 30.0))
    assert _exposure("none") == pytest.approx((20.0, 30.0))


def test_no_backward_regather_where_the_gathered_input_was_saved() -> None:
    """DTensor's column-parallel linears save the gathered input (Framework.sp_keeps_gathered_input): the
    two re-gathers hidden behind the weight-gradient windows 5 and 1 (0.2 + 1.1) are gone, in every mode
    that hides them; exposed, they leave the backward total."""
    assert _exposure("all", regather=False) == pytest.approx((2.8, 5.0 - 1.3))
    assert _exposure("micro-pipeline", regather=False) == pytest.approx((2.8, 8.6 - 1.3))
    # "backward": output-gradient gathers exposed (2 + 2), the re-gathers (0.2 + 1.1) and the reduce-scatters
    # (0.3 + 2.1) behind the weight gradients
    assert _exposure("backward") == pytest.approx((20.0, 4 + 1.3 + 2.4))
    assert _exposure("backward", regather=False) == pytest.approx((20.0, 4 + 2.4))
    assert _exposure("none", regather=False) == pytest.approx((20.0, 26.0))
    # without SP nothing is gathered
    assert _exposure("all", NO_SP, regather=False) == _exposure("all", NO_SP)


def test_torchtitans_async_tp_profile_is_the_micro_pipeline() -> None:
    fw = framework("torchtitan-async-tp")
    assert fw.tp_overlap == "micro-pipeline" and not fw.fused_qkv
    assert framework("torchtitan-async-tp-2024").tp_overlap == "micro-pipeline"


def test_inductors_micro_pipeline_pass_fuses_a_reduce_scatter_only_with_one_producing_matmul() -> None:
    """What the pricing rests on, read from the installed torch: the pass looks for the matmul producing a
    reduce-scatter's input (`_find_producer_matmul`, used by `fuse_matmul_reduce_scatter`), which finds one
    for a matmul and none for a sum of two."""
    import inspect

    import torch

    mp = pytest.importorskip("torch._inductor.fx_passes.micro_pipeline_tp")
    aten = torch.ops.aten
    g = torch.fx.Graph()
    a, b1, b2 = g.placeholder("a"), g.placeholder("b1"), g.placeholder("b2")
    mm1 = g.call_function(aten.mm.default, (a, b1))
    mm2 = g.call_function(aten.mm.default, (a, b2))
    summed = g.call_function(aten.add.Tensor, (mm1, mm2))
    assert mp._find_producer_matmul(mm1) is not None
    assert mp._find_producer_matmul(summed) is None
    assert "_find_producer_matmul(" in inspect.getsource(mp.fuse_matmul_reduce_scatter)
