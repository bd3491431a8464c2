"""Optimizer and learning-rate schedule every export sets explicitly (no framework default inherited silently).

Why: the plan fixes parallelism and batch, not the optimizer, but a launch needs one, and each
framework's defaults differ (Megatron's Adam beta2 0.999, torchtitan's registry learning rates, ...).
AdamW with beta1 0.9, beta2 0.95, eps 1e-8, weight decay 0.1, gradient clipping 1.0 and a cosine
decay to 10% of the peak is the recipe of GPT-3 (Brown et al. 2020, Appendix B) and of Llama 2 / 3
(Touvron et al. 2023 §2.2; Dubey et al. 2024 §3.4.1); the peak learning rates are those papers'.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.specs.model import ModelSpec


@dataclass(frozen=True)
class OptimizerSettings:
    lr: float
    min_lr: float
    warmup_steps: int
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    clip_grad: float
    source: str


# Peak learning rates by preset: Brown et al. 2020 Table 2.1 (GPT-3 175B: 0.6e-4), Touvron et al. 2023
# Table 1 (Llama 2 7B / 13B: 3e-4, 70B: 1.5e-4), Dubey et al. 2024 §3.4.1 (Llama 3 405B: 8e-5);
# Llama 3 8B / 70B: the Llama 2 rates of the same size (the Llama 3 paper gives the 405B's only).
_PEAK_LR = {"gpt3-175b": 6e-5, "llama2-7b": 3e-4, "llama2-13b": 3e-4, "llama2-70b": 1.5e-4,
            "llama3-8b": 3e-4, "llama3-70b": 1.5e-4, "llama3-405b": 8e-5}


def optimizer_settings(model: ModelSpec) -> OptimizerSettings:
    lr = _PEAK_LR.get(model.name, 3e-4)
    source = (f"AdamW, cosine decay to 10%, peak lr {lr:g} from the {model.name} paper" if model.name in _PEAK_LR
              else f"AdamW, cosine decay to 10%, peak lr {lr:g}: a placeholder, tune it for {model.name}")
    return OptimizerSettings(lr=lr, min_lr=round(lr / 10, 12), warmup_steps=2000, betas=(0.9, 0.95), eps=1e-8,
                             weight_decay=0.1, clip_grad=1.0, source=source)
