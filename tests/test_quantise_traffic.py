"""What a framework's quantisation kernels stream (planner.precision.QuantiseTraffic, a profile's
quantise_bytes): torchtitan's profiles carry torchao's own count of its float8 kernels' traffic, checked
here against torchao's roofline model where torchao is installed (scripts/test.sh installs it), and the
cost model charges each count to the operand it names.

Worked example: Llama 3 8B's MLP down projection on 8,192 tokens, m = 8,192, k = 14,336, n = 4,096
(input m x k = 117,440,512 elements, weight k x n = 58,720,256, output gradient m x n = 33,554,432),
per-tensor fp8 under torchtitan-compile (input 4 B per element forward, weight 5 forward and 3 backward,
output gradient 4 backward; 6 kernels forward, 4 backward):
  forward:  4 x 117,440,512 + 5 x 58,720,256 = 763,363,328 bytes
  backward: 3 x 58,720,256 + 4 x 33,554,432 = 310,378,496 bytes
at the GPU's achieved memory bandwidth, plus one kernel overhead per launch."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from planner.cost.compute import gemm_op_times
from planner.errors import SpecError
from planner.framework import framework
from planner.graph import build_graph
from planner.precision import QUANTISE_KEYS, QuantiseTraffic, quantise_traffic
from planner.specs.catalog import cluster_preset, model_preset

H100 = cluster_preset("dgx-h100")
NONE = QuantiseTraffic(0, 0, 0, 0, 0, 0, 0)


def _down_projection_times(traffic: QuantiseTraffic | None, dtype: str = "fp8"):
    op = next(o for o in build_graph(model_preset("llama3-8b")).layer_ops if o.name == "mlp.down")
    assert (op.gemm[0], op.gemm[1]) == (14336, 4096)
    one = np.array([1.0])
    return gemm_op_times(op, H100.gpu, dtype, np.array([8192.0]), one, one, 0, traffic)


def test_each_count_is_charged_to_the_operand_it_names() -> None:
    gpu = H100.gpu
    bw = gpu.memory_bandwidth * gpu.memory_efficiency
    fw = framework("torchtitan-compile")
    traffic = fw.quantise_traffic("fp8")
    assert traffic == QuantiseTraffic(4, 5, 0, 3, 4, 6, 4)
    bare, priced = _down_projection_times(NONE), _down_projection_times(traffic)
    assert priced.fwd[0] - bare.fwd[0] == pytest.approx(763_363_328 / bw + 6 * gpu.kernel_overhead_s, rel=1e-9)
    assert priced.bwd[0] - bare.bwd[0] == pytest.approx(310_378_496 / bw + 4 * gpu.kernel_overhead_s, rel=1e-9)
    assert priced.wgrad[0] == bare.wgrad[0]  # the casts are not weight-gradient work (skipped when frozen)


def test_the_default_is_transformer_engines_casts() -> None:
    """Without a profile's count: forward reads the 16-bit input and weight and writes FP8 copies (3 B per
    element, 2 kernels); backward casts the output gradient (3 B) and writes FP8 transposes of the input
    and weight (2 B each), 3 kernels; MXFP8's block scales are read along either axis, so no transposes."""
    assert quantise_traffic("fp8") == QuantiseTraffic(3, 3, 2, 2, 3, 2, 3)
    assert _down_projection_times(None).bwd[0] == _down_projection_times(quantise_traffic("fp8")).bwd[0]
    mx = quantise_traffic("mxfp8")
    assert (mx.input_bwd, mx.weight_bwd, mx.kernels_bwd) == (0, 0, 1)
    assert mx.input_fwd == pytest.approx(2 + 1 + 1 / 32)
    assert framework("nemo").quantise_traffic("fp8") is None


# torchao's roofline (torchao/testing/training/roofline_utils.py) lists each operand's quantisation kernels
# with their bytes; the profiles split those kernels between forward and backward, so compare per operand.
ROLES = {"input": ("input_fwd", "input_bwd"), "weight": ("weight_fwd", "weight_bwd"),
         "grad_output": ("grad_output_bwd",)}


@pytest.mark.parametrize(("profile", "fused"), [("torchtitan", False), ("torchtitan-compile", True),
                                                 ("torchtitan-async-tp", True)])
@pytest.mark.parametrize(("dtype", "recipe"), [("fp8", "tensorwise"), ("fp8-rowwise", "rowwise")])
def test_torchtitan_profiles_count_what_torchaos_roofline_counts(profile: str, fused: bool, dtype: str,
                                                                  recipe: str) -> None:
    pytest.importorskip("torchao", reason="torchao is not installed (scripts/test.sh installs it)")
    roofline = pytest.importorskip("torchao.testing.training.roofline_utils")
    unit = {"peak_mem_bw_bytes_sec": 1.0, "pct_achievable_mem_bw": 1.0}  # seconds = bytes per element
    traffic = framework(profile).quantise_traffic(dtype)
    launches = 0
    for role, names in ROLES.items():
        # the weight is never fused with the op before it (get_float8_mem_sympy: fuse_with_prev=False)
        kernels = roofline.get_tensor_memory_traffic_ovhd_s(unit, 1, 1, role, recipe, None,
                                                            fuse_with_prev=fused and role != "weight")
        launches += len(kernels)
        # a kernel that moves no bytes is charged the roofline's launch overhead in its place
        nbytes = sum(round(float(x)) for x in kernels)
        assert sum(getattr(traffic, n) for n in names) == nbytes, (role, [float(x) for x in kernels])
    assert traffic.kernels_fwd + traffic.kernels_bwd == launches


def test_the_december_2024_profiles_count_that_releases_roofline() -> None:
    """torchao eab345c (the torchtitan December 2024 runs) modelled dynamic scaling as an amax pass (2 B per
    element, fused into the producing op for the input and the output gradient under torch.compile) and one
    cast writing both layouts (2 + 2 x 1 B), the weight's in forward (torchao/float8/roofline_utils.py):
    input 4, weight 6, output gradient 4 compiled; 6, 6, 6 eager."""
    for profile, (inp, out) in (("torchtitan-compile-2024", (4, 4)), ("torchtitan-async-tp-2024", (4, 4)),
                                ("torchtitan-2024", (6, 6))):
        t = framework(profile).quantise_traffic("fp8")
        assert (t.input_fwd + t.input_bwd, t.weight_fwd, t.weight_bwd, t.grad_output_bwd) == (inp, 6, 0, out)


@pytest.mark.parametrize(("bad", "match"), [
    ({"int8": dict.fromkeys(QUANTISE_KEYS, 1)}, "low-precision recipe"),
    ({"bf16": dict.fromkeys(QUANTISE_KEYS, 1)}, "low-precision recipe"),
    ({"fp8": {"input_fwd": 1}}, "must map exactly"),
    ({"fp8": {**dict.fromkeys(QUANTISE_KEYS, 1), "input_fwd": -1}}, r"fp8\.input_fwd: must be bytes per element"),
    ({"fp8": {**dict.fromkeys(QUANTISE_KEYS, 1), "kernels_bwd": 1.5}}, r"fp8\.kernels_bwd: must be a whole"),
    ({"fp8": {**dict.fromkeys(QUANTISE_KEYS, 1), "kernels_fwd": "two"}}, r"fp8\.kernels_fwd: must be a whole"),
    ([1, 2], "must map each recipe"),
])
def test_a_bad_count_is_one_clear_error(bad: object, match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import planner.framework as fwmod

    base = dict(fwmod._catalog()["torchtitan"])
    monkeypatch.setattr(fwmod, "_catalog", lambda: {"x": {**base, "quantise_bytes": bad}})
    fwmod.framework.cache_clear()
    try:
        with pytest.raises(SpecError, match=match) as err:
            fwmod.framework("x")
        assert "framework[x].quantise_bytes" in str(err.value)
    finally:
        fwmod.framework.cache_clear()


def test_rowwise_under_torchtitan_costs_more_than_per_tensor_beside_the_same_gemms() -> None:
    """Row-wise casts stream more (a 16-bit transposed copy before each column-wise cast) and its backward
    GEMMs' outputs are rescaled: both on top of the same FP8 GEMMs."""
    fw = framework("torchtitan-compile")
    fp8 = _down_projection_times(fw.quantise_traffic("fp8"), "fp8")
    rowwise = _down_projection_times(fw.quantise_traffic("fp8-rowwise"), "fp8-rowwise")
    assert rowwise.bwd[0] > fp8.bwd[0]
    assert dataclasses.astuple(fw.quantise_traffic("fp8-rowwise")) == (3, 3, 3, 7, 6, 2, 5)
