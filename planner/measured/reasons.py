"""Why a published run is not (yet) a planner plan: short, stable strings that tabulate.

Two kinds: the *source* does not define the run fully (no fix in the planner can help), or the
*planner* lacks a feature the run uses (the string names the feature, so the counts say what to build).
A reason never contains row-specific numbers, so equal causes count together.
"""

from __future__ import annotations

import re

SOURCE = "source"
PLANNER = "planner"

# key -> (kind, template). Templates take only names that repeat across rows (a precision, a system).
TEMPLATES: dict[str, tuple[str, str]] = {
    # the source does not define the run
    "shape": (SOURCE, "model layer count not printed"),
    "sku": (SOURCE, "GPU SKU not printed"),
    "recompute_unknown": (SOURCE, "activation checkpointing not printed"),
    "sizes": (SOURCE, "printed parallel sizes do not divide the GPU count"),
    "batch": (SOURCE, "printed global batch not divisible by data-parallel size x micro-batch"),
    # the planner lacks a feature
    "precision": (PLANNER, "precision {name} not supported by the planner yet"),
    "system": (PLANNER, "system {name} not in the catalog"),
    "model": (PLANNER, "model {name} not in the catalog"),
    "lora": (PLANNER, "LoRA fine-tuning not supported by the planner yet"),
    "uneven": (PLANNER, "uneven pipeline stages not supported by the planner yet"),
    "uneven_virtual": (PLANNER, "uneven virtual pipeline stages (embedding / loss counted as layers) not supported"),
    "op_selective": (PLANNER, "per-op selective activation checkpointing not supported by the planner yet"),
    "every_k": (PLANNER, "activation checkpointing of every k-th layer not supported by the planner yet"),
    "remat": (PLANNER, "remat policy {name} not supported by the planner yet"),
    "hsdp": (PLANNER, "hybrid sharded data parallel (FSDP group < data-parallel size) not supported"),
    "etp": (PLANNER, "expert tensor-parallel size different from tp not supported"),
    "rejected": (PLANNER, "plan rejected by the planner ({name})"),
}


def reason(key: str, **names: str) -> str:
    """The reason string of `key` (KeyError for an unknown key: every reason is declared above)."""
    return TEMPLATES[key][1].format(**names)


def _pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{\w+\\\}", "(.+)", re.escape(template)) + "$")


PATTERNS = {key: _pattern(template) for key, (_, template) in TEMPLATES.items()}


def key_of(text: str) -> str:
    """The TEMPLATES key a reason string was made from (ValueError if none)."""
    for key, pattern in PATTERNS.items():
        if pattern.match(text):
            return key
    raise ValueError(f"not a reason made by planner.measured.reasons: {text!r}")


def kind(text: str) -> str:
    """SOURCE or PLANNER for a reason string made by `reason`."""
    return TEMPLATES[key_of(text)][0]
