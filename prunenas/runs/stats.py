"""Statistics of the results rows: mean and standard deviation over seeds, the paired difference of two arms
with a 95% Student's t confidence interval, significance, and the formatting of an accuracy as a percentage."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

MIN_PAIRED_SEEDS = 3  # fewer pairs give no usable interval (two equal differences give a zero-width one)


def finite_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (not a bool) and finite — a usable metric."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_percent(value: Any, digits: int = 2, suffix: str = "") -> str:
    """A fraction as a percentage (``0.8765`` -> ``87.65``), ``"-"`` when missing or not finite."""
    return f"{100 * value:.{digits}f}{suffix}" if finite_number(value) else "-"


def t_quantile(df: int) -> float:
    """Student's t 97.5% quantile with ``df`` degrees of freedom (the half-width factor of a 95% interval)."""
    from scipy.stats import t  # here, not at the top: importing scipy.stats costs ~1 s on every CLI start

    return float(t.ppf(0.975, df))


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan"), 0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, float]:
    """Mean of ``a[seed] - b[seed]`` over the seeds both have, with a 95% t confidence interval.

    ``low`` and ``high`` are NaN where no interval is meaningful: fewer than ``MIN_PAIRED_SEEDS`` pairs, or
    differences that are all equal (a zero-width interval says nothing about the spread of the method).
    """
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    mean, std, n = mean_std(diffs)
    usable = n >= MIN_PAIRED_SEEDS and not _all_equal(diffs)
    half = t_quantile(n - 1) * std / math.sqrt(n) if usable else float("nan")
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def _all_equal(values: Sequence[float]) -> bool:
    # equal up to rounding: 0.90 - 0.85 and 0.80 - 0.75 differ in their last bits in floating point
    return math.isclose(min(values), max(values), rel_tol=1e-9, abs_tol=1e-12)


def has_interval(difference: Mapping[str, float]) -> bool:
    """Whether a :func:`paired_difference` carries a confidence interval."""
    return math.isfinite(difference["low"]) and math.isfinite(difference["high"])


def significant(difference: Mapping[str, float]) -> bool:
    """Whether a :func:`paired_difference`'s 95% interval excludes 0 (never without an interval)."""
    return has_interval(difference) and (difference["low"] > 0 or difference["high"] < 0)

