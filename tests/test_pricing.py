"""planner.pricing: token counts, the price catalog and the cost of a training run (worked examples)."""

from __future__ import annotations

import datetime
import json
from importlib import resources

import pytest

from planner.errors import PlannerError
from planner.pricing import default_price, format_tokens, parse_tokens, price_catalog, training_cost
from planner.specs.catalog import gpu_names


@pytest.mark.parametrize(("text", "tokens"), [
    ("15T", 15e12), ("15 t", 15e12), ("300B", 3e11), ("1.5e12", 1.5e12), ("2M", 2e6), ("1,000,000", 1e6),
    ("7_000k", 7e6), (2e9, 2e9), ("0.5T", 5e11),
])
def test_parse_tokens(text: str, tokens: float) -> None:
    assert parse_tokens(text) == pytest.approx(tokens)


@pytest.mark.parametrize("text", ["", "T", "15X", "-3B", "0", "nan", "inf", "1e400", "15TB", "2e18", True])
def test_bad_token_counts_name_the_field(text: object) -> None:
    with pytest.raises(PlannerError, match="tokens"):
        parse_tokens(text)  # type: ignore[arg-type]


def test_format_tokens() -> None:
    assert [format_tokens(x) for x in (15e12, 3e11, 1.5e9, 2e6, 999.0)] == ["15T", "300B", "1.5B", "2M", "999"]


def test_training_cost_worked_example() -> None:
    """15T tokens at 1M tokens/s on 1024 GPUs at $2 per GPU-hour: 1.5e7 s = 173.6 days,
    1.5e7 / 3600 x 1024 = 4,266,667 GPU-hours, $8,533,333, i.e. $0.5689 per million tokens."""
    c = training_cost(15e12, 1e6, 1024, 2.0)
    assert c.seconds == pytest.approx(1.5e7) and c.days == pytest.approx(173.611, abs=1e-3)
    assert c.gpu_hours == pytest.approx(4_266_666.67, abs=0.01) and c.usd == pytest.approx(8_533_333.33, abs=0.01)
    assert c.usd_per_million_tokens == pytest.approx(0.568889, abs=1e-6)
    assert training_cost(15e12, 1e6, 1024).usd is None
    with pytest.raises(PlannerError, match="tokens_per_s"):
        training_cost(1e9, 0.0, 8)
    with pytest.raises(PlannerError, match="usd_per_gpu_hour"):
        training_cost(1e9, 1.0, 8, -1.0)


def test_every_catalog_gpu_has_a_dated_sourced_price_or_a_reason_why_not() -> None:
    catalog = price_catalog()
    raw = json.loads(resources.files("planner.data").joinpath("gpu_prices.json").read_text())
    unpriced = raw.get("unpriced", {})
    assert set(catalog) | set(unpriced) == set(gpu_names()) and not set(catalog) & set(unpriced)
    assert all(isinstance(why, str) and len(why) > 20 for why in unpriced.values())
    assert all(default_price(gpu) is None for gpu in unpriced)
    for gpu, p in catalog.items():
        assert 0.1 < p.usd_per_gpu_hour < 50 and p.source.startswith("https://")
        assert datetime.date.fromisoformat(p.read) <= datetime.date.today()
        assert raw["prices"][gpu]["usd_per_gpu_hour"] == p.usd_per_gpu_hour
        assert p.vendor in p.citation() and p.read in p.citation()
    assert default_price("cpu-core") is None
