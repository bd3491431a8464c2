"""What a training run costs: days, GPU-hours and dollars to train N tokens with a plan.

The arithmetic is exact given a throughput: time = tokens / (tokens per second of the whole job),
GPU-hours = time x GPUs, dollars = GPU-hours x price per GPU-hour. The default prices are on-demand
list prices (planner/data/gpu_prices.json), each with its vendor, page and the date it was read;
real contracts differ, so every caller lets the user set the price.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

from planner.errors import PlannerError

SECONDS_PER_DAY = 86_400.0
TOKEN_SUFFIXES = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}
MAX_TOKENS = 1e18  # a thousand times today's largest runs: beyond it a typo is likelier than a plan
_TOKENS = re.compile(r"^\s*([0-9][0-9_,]*(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)\s*([kKmMbBgGtT]?)\s*$")


@dataclass(frozen=True)
class GpuPrice:
    """One GPU's default price: an on-demand offer, where it was read and when."""

    gpu: str
    usd_per_gpu_hour: float
    vendor: str
    offer: str
    source: str  # the vendor's pricing page
    read: str  # ISO date the price was read
    via: str | None = None  # the public transcription the number came from, when not the page itself

    def citation(self) -> str:
        via = f"; via {self.via}" if self.via else ""
        return f"{self.vendor}, {self.offer}: {self.source} (read {self.read}{via})"


@cache
def price_catalog() -> dict[str, GpuPrice]:
    """Default prices by GPU name (the names of planner/data/gpus.json)."""
    raw = json.loads(resources.files("planner.data").joinpath("gpu_prices.json").read_text(encoding="utf-8"))
    return {gpu: GpuPrice(gpu=gpu, **entry) for gpu, entry in raw["prices"].items()}


def default_price(gpu: str) -> GpuPrice | None:
    """The catalog's price for this GPU, or None (CPU clusters, calibrated profiles of other GPUs)."""
    return price_catalog().get(gpu)


def parse_tokens(text: str | float | int) -> float:
    """A token count from '15T', '300B', '2.5e12', '1,000,000' or a number; PlannerError otherwise."""
    if isinstance(text, bool):
        raise PlannerError(f"expected a token count such as 15T or 300B, got {text!r}", field="tokens")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        m = _TOKENS.match(str(text))
        if not m:
            raise PlannerError(f"expected a token count such as 15T or 300B, got {str(text)[:40]!r}",
                               field="tokens")
        value = float(m.group(1).replace(",", "").replace("_", "")) * TOKEN_SUFFIXES[m.group(2).upper()]
    if not math.isfinite(value) or value <= 0 or value > MAX_TOKENS:
        raise PlannerError(f"must be a positive token count up to {MAX_TOKENS:.0e}, got {str(text)[:40]}",
                           field="tokens")
    return value


def format_tokens(tokens: float) -> str:
    """15e12 -> '15T', 3e11 -> '300B', 1.5e9 -> '1.5B' (three significant digits)."""
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if tokens >= scale:
            return f"{tokens / scale:.3g}{suffix}"
    return f"{tokens:.3g}"


@dataclass(frozen=True)
class TrainingCost:
    """Time and money to train `tokens` at a plan's predicted throughput."""

    tokens: float
    seconds: float
    gpu_hours: float
    usd: float | None  # None without a price
    usd_per_gpu_hour: float | None

    @property
    def days(self) -> float:
        return self.seconds / SECONDS_PER_DAY

    @property
    def usd_per_million_tokens(self) -> float | None:
        return None if self.usd is None else self.usd / self.tokens * 1e6


def training_cost(tokens: float, tokens_per_s: float, num_gpus: int,
                  usd_per_gpu_hour: float | None = None) -> TrainingCost:
    """Days, GPU-hours and dollars to train `tokens` at `tokens_per_s` (the whole job's throughput)
    on `num_gpus` GPUs, each billed `usd_per_gpu_hour` for the whole time (None: no dollars)."""
    if not (math.isfinite(tokens_per_s) and tokens_per_s > 0):
        raise PlannerError(f"must be a positive throughput, got {tokens_per_s!r}", field="tokens_per_s")
    if usd_per_gpu_hour is not None and not (math.isfinite(usd_per_gpu_hour) and usd_per_gpu_hour >= 0):
        raise PlannerError(f"must be a non-negative price, got {usd_per_gpu_hour!r}", field="usd_per_gpu_hour")
    seconds = tokens / tokens_per_s
    gpu_hours = seconds / 3600.0 * num_gpus
    usd = None if usd_per_gpu_hour is None else gpu_hours * usd_per_gpu_hour
    return TrainingCost(tokens=tokens, seconds=seconds, gpu_hours=gpu_hours, usd=usd,
                        usd_per_gpu_hour=usd_per_gpu_hour)
