"""Percentiles as the bench reports them (linear interpolation between the two nearest values)."""

from __future__ import annotations


def pct(values: list[float], q: float, *, digits: int = 1) -> float | None:
    """The ``q`` quantile of ``values`` (None for none), rounded to ``digits``."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo), digits)
