"""The architecture details a launch needs beyond the layer shapes: RoPE base and scaling, norm epsilon.

Why: the cost model does not depend on them, so `ModelSpec` does not carry them, but a framework
launched without them trains another model (Megatron's default RoPE base is 10000, Llama 3 uses
500000; Llama 3.1 rescales the low RoPE frequencies). They come from the model's `extra` fields
when present (`rope_theta`, `rope_scaling` in Hugging Face's form, `norm_eps`), else from the
published `config.json` of the catalog presets below, else from the conventional defaults, which the
export then states as assumptions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from planner.specs.model import ModelSpec


@dataclass(frozen=True)
class RopeScaling:
    """Llama 3.1's frequency-dependent RoPE scaling (Hugging Face `rope_type: llama3`)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position: int


@dataclass(frozen=True)
class Architecture:
    rope_theta: float | None  # None for learned absolute positions
    rope_scaling: RopeScaling | None
    norm_eps: float
    source: str  # where these numbers come from
    assumed: bool = False  # True when no source gave them (the export says so)


_LLAMA31_SCALING = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192)

# Catalog presets -> (rope_theta, rope_scaling, norm_eps, source): Hugging Face config.json of each
# (rope_theta, rope_scaling, rms_norm_eps / layer_norm_epsilon / layer_norm_eps).
_PRESETS: dict[str, tuple[float | None, RopeScaling | None, float, str]] = {
    **{n: (10000.0, None, 1e-5, f"Hugging Face meta-llama/Llama-2-{n[7:]}-hf config.json")
       for n in ("llama2-7b", "llama2-13b", "llama2-70b")},
    "llama3-8b": (500000.0, None, 1e-5, "Hugging Face meta-llama/Meta-Llama-3-8B config.json (no rope_scaling)"),
    "llama3-70b": (500000.0, None, 1e-5, "Hugging Face meta-llama/Meta-Llama-3-70B config.json (no rope_scaling)"),
    "llama3-405b": (500000.0, _LLAMA31_SCALING, 1e-5,
                    "Hugging Face meta-llama/Llama-3.1-405B config.json (rope_scaling llama3: factor 8, "
                    "low_freq_factor 1, high_freq_factor 4, original_max_position_embeddings 8192)"),
    "mixtral-8x7b": (1e6, None, 1e-5, "Hugging Face mistralai/Mixtral-8x7B-v0.1 config.json"),
    **{n: (None, None, 1e-5, f"Hugging Face openai-community/{n} config.json (layer_norm_epsilon)")
       for n in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")},
    "bert-base": (None, None, 1e-12, "Hugging Face google-bert/bert-base-uncased config.json (layer_norm_eps)"),
    "bert-large": (None, None, 1e-12, "Hugging Face google-bert/bert-large-uncased config.json (layer_norm_eps)"),
}


def _scaling_from_hf(value: Any) -> RopeScaling | None:
    if not isinstance(value, dict):
        return None
    kind = value.get("rope_type", value.get("type"))
    if kind != "llama3":
        return None
    return RopeScaling(float(value["factor"]), float(value.get("low_freq_factor", 1.0)),
                       float(value.get("high_freq_factor", 4.0)),
                       int(value.get("original_max_position_embeddings", 8192)))


def architecture(model: ModelSpec) -> Architecture:
    """RoPE base / scaling and norm epsilon of `model`, with where they come from."""
    extra = model.extra or {}
    rope = model.position == "rope"
    if any(k in extra for k in ("rope_theta", "rope_scaling", "norm_eps", "rms_norm_eps", "layer_norm_eps")):
        eps = extra.get("norm_eps", extra.get("rms_norm_eps", extra.get("layer_norm_eps", 1e-5)))
        return Architecture(float(extra.get("rope_theta", 10000.0)) if rope else None,
                            _scaling_from_hf(extra.get("rope_scaling")) if rope else None,
                            float(eps), f"{model.name}: the model's own fields (extra)")
    if model.name in _PRESETS:
        theta, scaling, eps, source = _PRESETS[model.name]
        return Architecture(theta if rope else None, scaling if rope else None, eps, source)
    # Megatron-LM's published configurations (Narayanan et al. 2021) and GPT-3 use Megatron's
    # LayerNorm epsilon 1e-5; anything else: the original RoPE paper's base (Su et al. 2021).
    assumed = not (model.name.startswith("megatron-") or model.name == "gpt3-175b")
    return Architecture(10000.0 if rope else None, None, 1e-5,
                        "Megatron-LM defaults (LayerNorm eps 1e-5)" if not assumed else
                        "assumed: RoPE base 10000 (Su et al. 2021), norm eps 1e-5; set rope_theta / "
                        "rope_scaling / norm_eps in the model's extra fields if yours differ",
                        assumed=assumed)
