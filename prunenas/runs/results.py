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

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (for 95% confidence intervals).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045,
         2.042]


def finite_number(value: Any) -> bool:
    """Whether ``value`` is an int or float (not a bool) and finite — a usable metric."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_percent(value: Any, digits: int = 2, suffix: str = "") -> str:
    """A fraction as a percentage (``0.8765`` -> ``87.65``), ``"-"`` when missing or not finite."""
    return f"{100 * value:.{digits}f}{suffix}" if finite_number(value) else "-"


def t_quantile(df: int) -> float:
    """Student's t 97.5% quantile (1.96 beyond 30 degrees of freedom)."""
    return _T975[df - 1] if 1 <= df <= 30 else 1.96


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan"), 0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> dict[str, float]:
    """Mean of ``a[seed] - b[seed]`` over the seeds both have, with a 95% t confidence interval."""
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    mean, std, n = mean_std(diffs)
    half = t_quantile(n - 1) * std / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": mean, "low": mean - half, "high": mean + half, "n": n}


def by_key(rows: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {row["key"]: row for row in rows}
