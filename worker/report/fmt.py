"""Numbers as text for report.pdf and report.html: sensible precision, no float noise."""

from __future__ import annotations

import math

NOISE = 1e-9  # |x| below this prints as 0 (sums of rounded terms: -4.4e-16 is a zero)


def fmt_num(x, digits: int = 4) -> str:
    """A number for a table cell: None -> 'n/a', ints with thousands separators, floats with
    `digits` significant digits (scientific only for very large or small magnitudes)."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}"
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(x):
        return "n/a"
    if abs(x) < NOISE:
        return "0"
    if abs(x) >= 10 ** (digits + 2) or abs(x) < 1e-3:
        return f"{x:.{max(digits - 1, 1)}e}"
    if abs(x) >= 10**digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_p(p) -> str:
    """A p-value: 'p = 0.012', 'p < 0.001', 'n/a'."""
    if p is None:
        return "n/a"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def fmt_pct(x, digits: int = 0) -> str:
    """A share in [0, 1] as a percentage: 0.375 -> '38%'."""
    if x is None:
        return "n/a"
    return f"{100 * x:.{digits}f}%"


def fmt_ratio(x) -> str:
    """A ratio to a yardstick: 0.95 -> '0.95×', 12.3 -> '12.3×' (never 0.95 -> '1.0×')."""
    if x is None:
        return "n/a"
    return f"{x:.3g}×"


def fmt_signed_pct(x) -> str:
    """A relative change: 0.059 -> '+5.9%'."""
    if x is None:
        return "n/a"
    if abs(x) < NOISE:
        return "0%"
    return f"{100 * x:+.1f}%"
