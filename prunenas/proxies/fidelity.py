"""How well a proxy ranks candidates: rank correlations with bootstrap intervals, top-1 regret, and the choice of
which screened candidates to train fully.

A multi-fidelity search screens N candidates by proxy, trains the top K (*promoted*) and R more drawn uniformly
at random from the rest (*audit*). Fidelity measured on all trained candidates is biased (the promoted ones are
the proxy's favourites, a narrow slice of the range); on the audit sample it is an unbiased estimate of the
proxy's fidelity over the non-promoted candidates. Both are reported.

Conventions: a missing or non-finite proxy score ranks last (``-inf``: the proxy failed on that candidate); a
missing or non-finite accuracy drops the candidate (it has no full result). Kendall's tau is tau-b (ties
corrected), as :func:`scipy.stats.kendalltau` computes it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from prunenas.proxies.registry import ProxyError

MIN_PAIRS = 5  # fewer candidates give no interval: resamples of 4 points have at most 4 distinct values
RESAMPLES = 2000
ROLES = ("promoted", "audit")


def rank_correlation(proxy: Sequence[float | None], accuracy: Sequence[float | None], method: str = "kendall",
                     resamples: int = RESAMPLES, seed: int = 0) -> dict[str, float]:
    """Kendall's tau or Spearman's rho between proxy scores and accuracies, with a 95% percentile bootstrap.

    Returns ``value``, ``low``, ``high`` (NaN without an interval: fewer than ``MIN_PAIRS`` candidates) and
    ``n``. Pairs are resampled with replacement; resamples in which either side is constant have no rank
    correlation and are drawn again (the interval is conditional on a defined statistic).
    """
    statistic = _statistic(method)
    x, y = _paired(proxy, accuracy)
    n = len(x)
    value = statistic(x, y) if n >= 2 and _varies(x) and _varies(y) else math.nan
    low = high = math.nan
    if n >= MIN_PAIRS and math.isfinite(value):
        low, high = _bootstrap(method, x, y, resamples, seed)
    return {"value": value, "low": low, "high": high, "n": n}


def top1_regret(proxy: Sequence[float | None], accuracy: Sequence[float | None]) -> float:
    """Best accuracy minus the accuracy of the proxy's best candidate (ties: the first in order); 0 is perfect."""
    x, y = _paired(proxy, accuracy)
    if not len(x):
        return math.nan
    return float(y.max() - y[int(np.argmax(x))])


def fidelity(proxy: Sequence[float | None], accuracy: Sequence[float | None], resamples: int = RESAMPLES,
             seed: int = 0) -> dict[str, Any]:
    """Kendall's tau and Spearman's rho (with intervals) and top-1 regret of one set of candidates."""
    return {"n": len(_paired(proxy, accuracy)[0]),
            "kendall": rank_correlation(proxy, accuracy, "kendall", resamples, seed),
            "spearman": rank_correlation(proxy, accuracy, "spearman", resamples, seed),
            "top1_regret": top1_regret(proxy, accuracy)}


def fidelity_summary(rows: Sequence[Mapping[str, Any]], score_key: str = "score", accuracy_key: str = "val_acc",
                     resamples: int = RESAMPLES, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Fidelity on the ``audit`` rows (unbiased) and on every ``trained`` row (promoted and audit).

    Each row is one fully trained candidate with its proxy score, its accuracy and its ``role``
    (``promoted`` or ``audit``).
    """
    for row in rows:
        if row.get("role") not in ROLES:
            raise ProxyError(f"fidelity row {row.get('index', '?')}: role {row.get('role')!r} must be one of "
                             f"{', '.join(ROLES)}")
    audit = [row for row in rows if row["role"] == "audit"]

    def of(chosen: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return fidelity([r.get(score_key) for r in chosen], [r.get(accuracy_key) for r in chosen], resamples, seed)

    return {"audit": of(audit), "trained": of(rows)}


@dataclass(frozen=True)
class Promotion:
    """Which screened candidates are trained fully (indices into the screened list).

    Attributes:
        promoted: the ``promote`` best by proxy score, best first (ties: lower index first).
        audited: ``audit`` of the others drawn uniformly without replacement, ascending.
    """

    promoted: tuple[int, ...]
    audited: tuple[int, ...]


def check_phases(screen: int, promote: int, audit: int) -> None:
    """Raise unless ``promote + audit`` candidates can be trained out of ``screen`` screened ones."""
    for name, value in (("screen", screen), ("promote", promote), ("audit", audit)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ProxyError(f"{name} {value!r} must be a non-negative integer")
    if promote + audit > screen:
        raise ProxyError(f"promote {promote} + audit {audit} = {promote + audit} exceeds screen {screen}: at most "
                         f"{screen} of the screened candidates can be trained")


def choose_promoted(scores: Sequence[float | None], promote: int, audit: int, seed: int = 0) -> Promotion:
    """The top ``promote`` candidates by proxy score and ``audit`` random others; the same for the same seed."""
    check_phases(len(scores), promote, audit)
    ranked = sorted(range(len(scores)), key=lambda i: (-_rank_value(scores[i]), i))
    rest = sorted(ranked[promote:])
    drawn = np.random.default_rng(seed).choice(len(rest), size=audit, replace=False)
    return Promotion(tuple(ranked[:promote]), tuple(sorted(rest[int(i)] for i in drawn)))


# -- internals -----------------------------------------------------------------------------------------
def _statistic(method: str) -> Callable[[np.ndarray, np.ndarray], float]:
    from scipy import stats  # here, not at the top: importing scipy.stats costs ~1 s on every CLI start

    functions = {"kendall": stats.kendalltau, "spearman": stats.spearmanr}
    if method not in functions:
        raise ProxyError(f"rank correlation {method!r} must be one of {', '.join(functions)}")
    return lambda x, y: float(functions[method](x, y).statistic)


def _rank_value(score: float | None) -> float:
    return float(score) if score is not None and math.isfinite(score) else -math.inf


def _paired(proxy: Sequence[float | None], accuracy: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    if len(proxy) != len(accuracy):
        raise ProxyError(f"{len(proxy)} proxy scores but {len(accuracy)} accuracies")
    pairs = [(_rank_value(p), float(a)) for p, a in zip(proxy, accuracy) if a is not None and math.isfinite(a)]
    return np.array([p for p, _ in pairs], dtype=float), np.array([a for _, a in pairs], dtype=float)


def _varies(values: np.ndarray) -> bool:
    return bool(values.size) and bool((values != values[0]).any())


def _bootstrap(method: str, x: np.ndarray, y: np.ndarray, resamples: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    statistic = _ROW_STATISTICS[method]
    values: list[np.ndarray] = []
    needed = resamples
    while needed > 0:  # resamples with a constant side have no rank correlation: draw again
        chunk = min(needed, max(1, 4_000_000 // len(x) ** 2))  # ~100 MB of pairwise signs at most
        pick = rng.integers(0, len(x), size=(chunk, len(x)))
        with np.errstate(invalid="ignore", divide="ignore"):
            found = statistic(x[pick], y[pick])
        found = found[np.isfinite(found)]
        values.append(found)
        needed -= len(found)
    low, high = np.percentile(np.concatenate(values)[:resamples], [2.5, 97.5])
    return float(low), float(high)


def kendall_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row pair: ``sum sx*sy / sqrt(sum sx^2 * sum sy^2)`` over the pairwise signs
    ``sx = sign(x_i - x_j)`` — (concordant - discordant) over the geometric mean of the untied pairs."""
    sx, sy = (np.sign(v[:, :, None] - v[:, None, :]) for v in (x, y))
    return (sx * sy).sum((1, 2)) / np.sqrt((sx * sx).sum((1, 2)) * (sy * sy).sum((1, 2)))


def spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair: Pearson's correlation of the average ranks."""
    from scipy.stats import rankdata  # scipy.stats costs ~1 s to import; only fidelity reports need it

    rx, ry = (rankdata(v, axis=1) for v in (x, y))
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    return (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))


# vectorised over resamples (one row each): scipy's functions take ~1 ms a call, 2,000 resamples per interval
_ROW_STATISTICS = {"kendall": kendall_rows, "spearman": spearman_rows}
