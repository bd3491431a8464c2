"""Text for the dashboard: numbers with units, signed differences, and messages made safe for
Streamlit's markdown (an error such as "pp*vpp = 8*4" must not turn into italics)."""

from __future__ import annotations

import math
import re

# Every ASCII punctuation character may be backslash-escaped in CommonMark; these are the ones
# Streamlit's markdown gives a meaning to (emphasis, code, links, HTML, math, lists, tables, emoji
# and colour directives, headings).
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~$:=^&])")


def md_escape(text: object) -> str:
    """`text` as literal characters in st.markdown / st.error / st.caption (no markup, no newlines lost)."""
    return _MARKDOWN.sub(r"\\\1", str(text)).replace("\n", "  \n")


def seconds(v: float | None) -> str:
    """A duration: 850 ms, 6.70 s, 12.4 min, 3.2 h, 173.6 days."""
    if v is None or not math.isfinite(v):
        return "-"
    a = abs(v)
    if a < 1:
        return f"{v * 1e3:#.3g} ms".replace(". ", " ")
    if a < 120:
        return f"{v:#.3g} s".replace(". ", " ")
    if a < 7200:
        return f"{v / 60:#.3g} min".replace(". ", " ")
    if a < 2 * 86400:
        return f"{v / 3600:#.3g} h".replace(". ", " ")
    return f"{v / 86400:,.1f} days"


def money(usd: float | None) -> str:
    """$950, $12.3k, $8.53M, $1.2B."""
    if usd is None or not math.isfinite(usd):
        return "-"
    a = abs(usd)
    sign = "-" if usd < 0 else ""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if a >= scale:
            return f"{sign}${a / scale:.3g}{suffix}"
    return f"{sign}${a:.3g}" if a < 100 else f"{sign}${a:,.0f}"


def compact(v: float) -> str:
    """A number in at most ~4 characters of digits, never in exponent notation: 0.0123, 4.56, 789,
    1,234, 14.4k, 4.27M, 1.2B."""
    a = abs(v)
    sign = "-" if v < 0 else ""
    if a >= 9999.5:
        for scale, suffix in ((1e3, "k"), (1e6, "M"), (1e9, "B"), (1e12, "T")):
            text = f"{a / scale:.3g}"
            if float(text) < 1000 or suffix == "T":
                return f"{sign}{text}{suffix}"
    if a >= 100:
        return f"{sign}{a:,.0f}"
    if a >= 1e-3 or a == 0:
        return f"{sign}{a:.3g}"
    return f"{sign}{a:.2e}"


def count(v: float | None, unit: str = "") -> str:
    """A count with an optional unit: 1,234 tokens/s, 14.4k, 4.27M GPU-hours."""
    if v is None or not math.isfinite(v):
        return "-"
    return f"{compact(v)} {unit}".rstrip()


def delta(new: float, old: float | None, unit: str, scale: float = 1.0) -> str | None:
    """The signed change with its unit and relative size, e.g. "+0.12 s (+1.8%)", "-14.4k tokens/s
    (-3.1%)"; "+1.2 pp" for percentages (`unit` "pp"); None when unchanged."""
    if old is None or not math.isfinite(old) or abs(new - old) <= 1e-9 * max(abs(old), 1e-300):
        return None
    d = (new - old) * scale
    text = ("+" if d > 0 else "") + compact(d)
    if unit == "pp":
        return f"{text} pp"
    rel = f" ({(new - old) / old * 100:+.1f}%)" if old else ""
    return f"{text} {unit}{rel}" if unit else f"{text}{rel}"
