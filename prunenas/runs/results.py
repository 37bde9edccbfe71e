"""The results store: one JSON row per trained model in ``results.jsonl``, append-only, the run's truth.

Rows are keyed by the *trial key* — a digest of everything that determines a training (architecture, arm,
epochs, seed, recipe, data, initial weights) — so resume skips keys that already have a final row, and two
proposals that yield the same network train it once. Many processes (Ray trials) append at once: each row
is one ``write`` under an exclusive file lock, then fsync. A crash mid-write leaves a truncated last line,
which readers detect and ignore with a warning.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import statistics
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

FINAL = ("ok", "diverged")  # statuses that are never retrained; "failed" rows are retried


class ResultsStore:
    """Append-only JSON-lines file of training rows."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def append(self, row: Mapping[str, Any]) -> None:
        line = json.dumps(row, sort_keys=True, default=_jsonable) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.seek(0, os.SEEK_END)
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":  # a previous writer died mid-line: start a fresh line
                        fh.write(b"\n")
                fh.write(line.encode())
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def rows(self) -> list[dict[str, Any]]:
        """Every complete row in order; an unparsable line is skipped with a warning."""
        if not self.path.exists():
            return []
        out = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{self.path}:{number}: ignoring a truncated or corrupt row", stacklevel=2)
        return out

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last row of every key."""
        return {row["key"]: row for row in self.rows()}

    def final(self, key: str) -> dict[str, Any] | None:
        """The row of ``key`` if it is final (ok or diverged)."""
        row = self.latest().get(key)
        return row if row is not None and row.get("status") in FINAL else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- statistics -------------------------------------------------------------------------------------------

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


def by_key(rows: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {row["key"]: row for row in rows}
