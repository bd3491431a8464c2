"""The dashboard's one state, and its URL.

Everything the page shows derives from `DashboardState` (the problem, the selected plan, the plans
compared, the what-if plan and the open view) plus the search result it implies. The state is
written to the page URL after every change and read from it on load, so a copied link reproduces
the page and a reload keeps it. `from_query` never raises: every parameter it cannot use becomes one
warning naming it, and the default stands in for it.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from planner.dashboard.codes import looks_like_code
from planner.errors import PlannerError
from planner.framework import framework_names
from planner.plan import RECOMPUTE, SCHEDULES
from planner.pricing import parse_tokens
from planner.search import OBJECTIVES
from planner.specs.catalog import cluster_names, model_names
from planner.whatif import KNOBS

DEFAULT_MODEL, DEFAULT_CLUSTER, DEFAULT_GPUS, DEFAULT_BATCH = "llama3-8b", "dgx-h100", 64, 512
VIEWS = ("Plans", "Pareto front", "Selected plan", "Compare", "Pipeline schedule", "What-if", "Measured")
SP_CHOICES = ("any", "on", "off")
MAX_SPEC_CHARS = 16_000  # an embedded (uploaded) spec longer than this is not carried in links
MAX_INT = 1 << 20
TOP_K = (5, 50)


@dataclass(frozen=True)
class DashboardState:
    """What the user chose. None means "the default" (the model's sequence length, the catalog price)."""

    model: str = DEFAULT_MODEL  # preset name (ignored when model_spec is set)
    model_spec: str | None = None  # an uploaded model, embedded (see pack_spec)
    seq_len: int | None = None
    cluster: str = DEFAULT_CLUSTER
    cluster_spec: str | None = None
    gpus: int = DEFAULT_GPUS
    global_batch: int = DEFAULT_BATCH
    objective: str = "time"
    top_k: int = 20
    tp: int | None = None  # fixed by the user, else searched
    pp: int | None = None
    max_memory_gib: float | None = None
    zero: tuple[int, ...] = (0, 1, 2, 3)
    recompute: tuple[str, ...] | None = None  # None: the framework's policies, as `planner plan` searches
    schedules: tuple[str, ...] = SCHEDULES
    sp: str = "any"
    framework: str | None = None  # None: the cluster's default framework, as `planner plan`
    tokens: str | None = None  # e.g. "15T"; None: 20 tokens per parameter
    price: float | None = None  # USD per GPU-hour; None: the catalog's for the GPU
    plan: str | None = None  # plan code of the selected plan; None: the best
    compare: tuple[str, ...] = ()
    whatif: str | None = None  # the what-if plan's changes to the selected plan ("pp=4,vpp=2,gpus=128")
    view: str = VIEWS[0]
    folder: str | None = None  # the Measured view's folder of runs (uploaded files cannot travel in a link)


# ---- parameter codecs: text -> value (ValueError with the reason) and value -> text ------------------


def _int(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) <= MAX_INT:
        raise ValueError(f"not a positive integer up to {MAX_INT:,}")
    return int(text)


def _top_k(text: str) -> int:
    v = _int(text)
    if not TOP_K[0] <= v <= TOP_K[1]:
        raise ValueError(f"not between {TOP_K[0]} and {TOP_K[1]}")
    return v


def _gib(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError("not a number of GiB") from None
    if not math.isfinite(v) or v <= 0 or v > 1e6:
        raise ValueError("not a positive number of GiB")
    return v


def _price(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError("not a price in USD per GPU-hour") from None
    if not math.isfinite(v) or v < 0 or v > 1e4:
        raise ValueError("not a price in USD per GPU-hour (0 to 10,000)")
    return v


def _one_of(choices: tuple[Any, ...] | Callable[[], list[str]], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        options = choices() if callable(choices) else choices
        if text not in [str(c) for c in options]:
            raise ValueError(f"not a known {what}")
        return text

    return parse


def _subset(choices: tuple[Any, ...], convert: Callable[[str], Any] = str) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        if not items or any(x not in [str(c) for c in choices] for x in items):
            raise ValueError(f"not a comma-separated list of {', '.join(map(str, choices))}")
        return tuple(c for c in choices if str(c) in items)

    return parse


def _tokens(text: str) -> str:
    try:
        parse_tokens(text)
    except PlannerError as exc:
        raise ValueError(str(exc).removeprefix("tokens: ")) from None
    return text.strip()


def _code(text: str) -> str:
    code = " ".join(text.split())
    if not looks_like_code(code):
        raise ValueError("not a plan code (e.g. tp4 pp2 dp8 mb1 z1)")
    return code


WHATIF_TYPES: dict[str, Callable[[str], Any]] = {
    **{k: int for k in ("tp", "pp", "cp", "ep", "vpp", "micro_batch", "zero_stage", "gpus")},
    "schedule": str, "recompute": str, "sequence_parallel": lambda v: {"on": True, "off": False}[v]}


def parse_whatif(text: str) -> dict[str, Any]:
    """The changes a `whatif` parameter names ("pp=4,vpp=2,gpus=128"; ValueError naming the bad part)."""
    out: dict[str, Any] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        key, _, value = part.partition("=")
        if key not in WHATIF_TYPES or key in out:
            raise ValueError(f"{part[:30]!r} is not a what-if change (one of {', '.join(WHATIF_TYPES)}, once each)")
        try:
            v = WHATIF_TYPES[key](value)
        except (ValueError, KeyError):
            raise ValueError(f"{part[:30]!r} has a bad value") from None
        if isinstance(v, int) and not isinstance(v, bool) and not 0 <= v <= MAX_INT:
            raise ValueError(f"{part[:30]!r} is out of range")
        out[key] = v
    if not out:
        raise ValueError("no changes named")
    return out


def format_whatif(changes: dict[str, Any]) -> str | None:
    """`changes` as a `whatif` parameter (None for no change); the inverse of parse_whatif."""
    order = [*KNOBS, "gpus"]
    parts = [f"{k}={('on' if v else 'off') if isinstance(v, bool) else v}"
             for k, v in sorted(changes.items(), key=lambda kv: order.index(kv[0]))]
    return ",".join(parts) or None


def _whatif(text: str) -> str:
    return format_whatif(parse_whatif(text)) or ""


def _codes(text: str) -> tuple[str, ...]:
    codes = tuple(_code(c) for c in text.split(";") if c.strip())
    if not 1 <= len(codes) <= 3:
        raise ValueError("not one to three plan codes separated by ';'")
    return codes


def _spec(text: str) -> str:
    unpack_spec(text)  # raises ValueError
    return text


def _folder(text: str) -> str:
    if not text.strip() or len(text) > 500 or "\0" in text:
        raise ValueError("not a folder path")
    return text.strip()


def _view(text: str) -> str:
    if text not in VIEWS:
        raise ValueError(f"not one of {', '.join(VIEWS)}")
    return text


PARSERS: dict[str, Callable[[str], Any]] = {
    "model": _one_of(model_names, "model preset"), "model_spec": _spec, "seq_len": _int,
    "cluster": _one_of(cluster_names, "cluster preset"), "cluster_spec": _spec, "gpus": _int,
    "global_batch": _int, "objective": _one_of(OBJECTIVES, "objective"), "top_k": _top_k,
    "tp": _int, "pp": _int, "max_memory_gib": _gib, "zero": _subset((0, 1, 2, 3)),
    "recompute": _subset(RECOMPUTE), "schedules": _subset(SCHEDULES), "sp": _one_of(SP_CHOICES, "setting"),
    "framework": _one_of(framework_names, "framework"), "tokens": _tokens, "price": _price, "plan": _code,
    "compare": _codes, "whatif": _whatif, "view": _view, "folder": _folder,
}
ALIASES = {"batch": "global_batch", "max_mem": "max_memory_gib", "top": "top_k"}


def _text(value: Any) -> str:
    if isinstance(value, tuple):
        return (";" if value and isinstance(value[0], str) and " " in value[0] else ",").join(map(str, value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def from_query(params: Mapping[str, str | list[str]]) -> tuple[DashboardState, list[str]]:
    """The state a URL's query names, and one warning per parameter that could not be used."""
    values: dict[str, Any] = {}
    warnings = []
    for raw_key, raw in params.items():
        key = ALIASES.get(raw_key, raw_key)
        text = raw[-1] if isinstance(raw, list) else raw
        shown = f"?{raw_key}={str(text)[:40]}"
        if key not in PARSERS:
            warnings.append(f"ignoring {shown}: not a dashboard setting (known: {', '.join(PARSERS)})")
            continue
        try:
            values[key] = PARSERS[key](str(text))
        except ValueError as exc:
            warnings.append(f"ignoring {shown}: {exc}")
    return DashboardState(**values), warnings


def to_query(state: DashboardState) -> dict[str, str]:
    """The query parameters naming `state` (defaults left out, so links stay short)."""
    default = DashboardState()
    out = {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if value is None or value == getattr(default, f.name):
            continue
        out[f.name] = _text(value)
    if state.model_spec is not None:
        out.pop("model", None)
    if state.cluster_spec is not None:
        out.pop("cluster", None)
    return out


# ---- uploaded specs in links ---------------------------------------------------------------------------


def pack_spec(spec: dict[str, Any]) -> str | None:
    """An uploaded ModelSpec / ClusterSpec as URL-safe text (zlib + base64); None when too long."""
    raw = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    text = base64.urlsafe_b64encode(zlib.compress(raw, 9)).decode().rstrip("=")
    return text if len(text) <= MAX_SPEC_CHARS else None


def unpack_spec(text: str) -> dict[str, Any]:
    """The JSON object `pack_spec` packed (ValueError when the text is not one)."""
    if len(text) > MAX_SPEC_CHARS:
        raise ValueError("embedded spec is too long")
    inflate = zlib.decompressobj()
    try:
        raw = inflate.decompress(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), 1 << 20)
    except (binascii.Error, zlib.error, ValueError) as exc:
        raise ValueError(f"not an embedded spec ({type(exc).__name__})") from None
    if inflate.unconsumed_tail:  # more than 1 MiB inflated: no spec is that large
        raise ValueError("embedded spec is too large")
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not an embedded spec ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise ValueError("not an embedded spec (not a JSON object)")
    return obj
