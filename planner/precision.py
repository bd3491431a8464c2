"""Training precision recipes: which ops run in low precision, what that costs, what it stores.

A plan's `dtype` names a recipe. fp32 / fp16 / bf16 run every op in that format. The low-precision
recipes run the linear layers' GEMMs in 8 or 4 bits and keep everything else (attention core, norms,
embedding, LM head, router) in bf16, as NVIDIA Transformer Engine and torchao do (the LM head and
router are excluded from low precision in both by default):

- fp8: FP8 (E4M3 forward, E5M2 gradients) with one scale per tensor, delayed or current scaling
  (Micikevicius et al. 2022, "FP8 Formats for Deep Learning"; Transformer Engine's DelayedScaling /
  Float8CurrentScaling; torchao float8 "tensorwise"). Hopper's FP8 tensor cores need both GEMM
  operands K-major, so backward also writes transposed FP8 copies of the saved input and the weight.
- fp8-rowwise: FP8 with one fp32 scale per row of each operand (per token for activations and
  gradients, per output channel for weights: torchao float8's "rowwise" recipe, as torchtitan runs
  it). The scales run along the reduction axis, so on Hopper the backward GEMMs re-quantise the saved
  input and the weight along the other axis, as fp8 writes its transposes; the scale bytes (4 per row
  of K >= 1,024 elements) are under 0.4% and left out. Its GEMMs run at the FP8 peak at the GPU's fp8
  efficiency: rowwise-scaled kernels are not separately measured (an assumption). The recipe leaves
  fast accumulation off for the two backward GEMMs (torchao Float8LinearConfig: gemm_config_grad_input
  and gemm_config_grad_weight default use_fast_accum=False), and for rowwise scales without it torchao
  runs the per-tensor cuBLAS GEMM at unit scales and then multiplies its output by the outer product of
  the row scales in a separate op ("The rowwise CUTLASS-based kernel is so slow without fast-accum that
  we'd rather use the tensorwise cuBLAS-based kernel and do the scaling manually afterwards":
  torchao/float8/float8_ops.py addmm_float8_unwrapped, from pytorch/ao#1325, Nov 2024, through 0.18):
  a read and a write of each backward GEMM's 16-bit output (`rescale_passes_bwd`).
- mxfp8: OCP Microscaling MXFP8 (Rouhani et al. 2023; OCP MX spec v1.0): FP8 elements with one
  E8M0 scale per 32 elements, on Blackwell's block-scaled tensor cores (no transpose copies: the
  hardware reads either layout, but the scales run along the reduction axis, so the operands are
  quantised once per direction).
- nvfp4: NVIDIA NVFP4 (E2M1 elements, one E4M3 scale per 16 elements plus a per-tensor fp32 scale;
  NVIDIA Blackwell architecture technical brief, and "Pretraining LLMs with NVFP4", NVIDIA 2025), the
  GEMMs at the FP4 peak.

Costs beyond the GEMM: every low-precision GEMM operand is quantised by a memory-bound kernel that
reads the bf16 tensor and writes the low-precision one plus its scales (and computes an amax): in
forward the input and the weight, in backward the output gradient, plus (fp8) the transposed input
and weight (`quantise_traffic`, the default). A framework whose quantisation kernels stream other
bytes states its own per recipe (`QuantiseTraffic`, a profile's `quantise_bytes`: torchao's, which
torchtitan runs, computes each tensor-wise amax in a separate pass). What is stored: the low-precision
weight copy (and, for fp8, its transpose) beside the bf16 weight and the fp32 master weights,
gradients and Adam moments, which are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from planner.errors import PlanError, SpecError

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


@dataclass(frozen=True)
class Recipe:
    """How a training precision runs (see the module docstring)."""

    name: str
    base: str  # the format of activations, weights and every op outside the low-precision GEMMs
    gemm_peak: str  # the GPU peak_flops key the linear layers' GEMMs run at
    element_bytes: float  # bytes per low-precision GEMM operand element, scales included
    weight_copies: int  # low-precision copies of each linear weight kept (fp8: rowwise + transpose)
    quantise_passes_bwd: int  # backward quantisations beyond the output gradient (transposed copies)
    # element-wise passes (a read and a write) over each backward GEMM's 16-bit output after the GEMM
    rescale_passes_bwd: int = 0
    # Its GEMMs are a kernel family the GPU's efficiency for `gemm_peak` was not measured on (priced at
    # it by assumption), so runs in this recipe are no evidence for that efficiency (planner fit).
    assumed_rate: bool = False

    @property
    def low_precision(self) -> bool:
        return self.name != self.base


RECIPES: dict[str, Recipe] = {
    "fp32": Recipe("fp32", "fp32", "fp32", 4.0, 0, 0),
    "fp16": Recipe("fp16", "fp16", "fp16", 2.0, 0, 0),
    "bf16": Recipe("bf16", "bf16", "bf16", 2.0, 0, 0),
    # one byte per element; one fp32 scale per tensor (negligible)
    "fp8": Recipe("fp8", "bf16", "fp8", 1.0, 2, 2),
    # one byte per element; one fp32 scale per row (negligible); backward outputs rescaled (see above)
    "fp8-rowwise": Recipe("fp8-rowwise", "bf16", "fp8", 1.0, 2, 2, rescale_passes_bwd=1, assumed_rate=True),
    # one byte per element + one E8M0 scale byte per 32 elements
    "mxfp8": Recipe("mxfp8", "bf16", "fp8", 1.0 + 1.0 / 32, 2, 0),
    # half a byte per element + one E4M3 scale byte per 16 elements
    "nvfp4": Recipe("nvfp4", "bf16", "fp4", 0.5 + 1.0 / 16, 2, 0),
}
PRECISIONS = tuple(RECIPES)
# The hardware each low-precision format needs, as GPU architectures (for refusals that name them).
NEEDS = {
    "fp8": "FP8 tensor cores (Hopper, Ada, Blackwell; MI300)",
    "fp8-rowwise": "FP8 tensor cores (Hopper, Ada, Blackwell; MI300)",
    "mxfp8": "block-scaled MXFP8 tensor cores (Blackwell)",
    "nvfp4": "FP4 tensor cores (Blackwell)",
}


@dataclass(frozen=True)
class QuantiseTraffic:
    """What quantising one low-precision linear layer's GEMM operands streams per micro-batch beyond the
    GEMMs: bytes read and written per element of each operand (the input, m x k; the weight, k x n; the
    output gradient, m x n) by the quantisation kernels in forward and in backward, and the kernels
    each direction launches (each pays the GPU's kernel overhead)."""

    input_fwd: float
    weight_fwd: float
    input_bwd: float
    weight_bwd: float
    grad_output_bwd: float
    kernels_fwd: int
    kernels_bwd: int

    def check(self, where: str) -> None:
        """Raise SpecError naming `where` unless every count is a byte count in 0..100 per element and
        every kernel count a whole number in 0..50."""
        for f in fields(self):
            value = getattr(self, f.name)
            kernels = f.name.startswith("kernels")
            limit = 50 if kernels else 100
            # the type first: a non-number must not reach float()
            if not (isinstance(value, (int, float)) and 0 <= value <= limit
                    and (not kernels or float(value).is_integer())):
                unit = "a whole kernel count" if kernels else "bytes per element"
                raise SpecError(f"must be {unit} in 0..{limit}, got {value!r}", field=f"{where}.{f.name}")


QUANTISE_KEYS = tuple(f.name for f in fields(QuantiseTraffic))


def quantise_traffic(dtype: str) -> QuantiseTraffic:
    """The default quantisation traffic of recipe `dtype` (a low-precision one): one kernel per operand
    and direction reading the 16-bit tensor and writing the low-precision one with its amax fused
    (Transformer Engine's casts: forward the input and the weight, backward the output gradient), and
    under the fp8 recipes, whose Hopper GEMMs need K-major operands, backward transposes of the
    low-precision input and weight (a read and a write of the low-precision copy each)."""
    r = RECIPES[dtype]
    b, e = DTYPE_BYTES[r.base], r.element_bytes
    transpose = 2 * e if r.quantise_passes_bwd else 0.0
    return QuantiseTraffic(input_fwd=b + e, weight_fwd=b + e, input_bwd=transpose, weight_bwd=transpose,
                           grad_output_bwd=b + e, kernels_fwd=2, kernels_bwd=1 + r.quantise_passes_bwd)


def extra_weight_bytes(dtype: str, fp8_primary: bool = False) -> float:
    """Bytes per parameter of a low-precision linear layer held beyond its 16-bit weight: the recipe's
    low-precision copies (fp8: the weight and its transpose), or, with FP8 primary weights (`fp8_primary`
    under the per-tensor fp8 recipe: no 16-bit copy is kept, NeMo's fp8_param_gather), those copies less
    the 16-bit weight they replace. 0 outside the low-precision recipes."""
    r = RECIPES[dtype]
    if not r.low_precision:
        return 0.0
    copies = r.weight_copies * r.element_bytes
    return copies - DTYPE_BYTES[r.base] if fp8_primary and dtype == "fp8" else copies


def recipe(dtype: str) -> Recipe:
    """The recipe a plan's `dtype` names (KeyError for an unknown name)."""
    return RECIPES[dtype]


def base_dtype(dtype: str) -> str:
    """The 16/32-bit format of activations and weights under `dtype`."""
    return RECIPES[dtype].base


# The GPU peak_flops keys that advertise each low-precision format (MXFP8 runs at the FP8 rate on
# Blackwell; a GPU lists "mxfp8" to say it has block-scaled tensor cores).
PEAK_KEYS = {"fp8": ("fp8",), "fp8-rowwise": ("fp8",), "mxfp8": ("mxfp8",), "nvfp4": ("nvfp4", "fp4")}


def gemm_peak_key(dtype: str, peak_flops: dict[str, float]) -> str:
    """The peak_flops key of `dtype`'s low-precision GEMMs on a GPU with `peak_flops`."""
    r = RECIPES[dtype]
    for key in PEAK_KEYS.get(dtype, (r.gemm_peak,)):
        if key in peak_flops:
            return key
    return r.gemm_peak


def supports(peak_flops: dict[str, float], dtype: str) -> bool:
    """Whether a GPU with these peaks can train in `dtype`."""
    r = RECIPES[dtype]
    if not r.low_precision:
        return r.base in peak_flops
    return r.base in peak_flops and any(k in peak_flops for k in PEAK_KEYS[dtype])


def check_precision(dtype: str, cluster: Any) -> None:
    """Raise PlanError naming the catalog GPUs that support `dtype` if `cluster`'s GPU does not."""
    gpu = cluster.gpu
    if supports(gpu.peak_flops, dtype):
        return
    from planner.specs.catalog import gpu_names, gpu_preset

    able = [name for name in gpu_names() if supports(gpu_preset(name).peak_flops, dtype)]
    need = NEEDS.get(dtype, f"a {dtype} peak FLOP/s")
    raise PlanError(f"{dtype} needs {need}; {gpu.name} has none (GPUs that do: "
                    f"{', '.join(able) if able else 'none in the catalog'})", field="dtype")
