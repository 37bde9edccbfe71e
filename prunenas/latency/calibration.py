"""Calibrating the latency predictor on whole networks, and how good it is next to a MAC-only baseline.

:func:`calibration_report` measures random architectures of a space (whole networks, interleaved), fits the
predictor's calibration (latency ~ a x table sum + b) and the baseline (latency ~ a x MACs + b) on one half,
and scores both on the other half: median absolute % error, share within +-10%, Kendall tau against the
measured latencies, and the ordering of architectures of (nearly) equal MACs, which MACs alone cannot rank.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np

from prunenas.arch import Architecture
from prunenas.budget import target_from_ratio, uniform_twin
from prunenas.cost import macs
from prunenas.errors import ArchitectureError
from prunenas.latency.devices import LatencyError
from prunenas.latency.measure import measure
from prunenas.latency.table import Calibration, LatencyTable, fit_line
from prunenas.spaces import Space

RATIOS = (0.3, 0.5, 0.7, 0.9)
"""MAC ratios the random architectures are drawn at, in turn: several architectures share each MAC level."""
EQUAL_MACS = 0.05
"""Two architectures have "equal MACs" when their MACs differ by at most this fraction."""


def random_architectures(space: Space, n: int, seed: int = 0, ratios: Sequence[float] = RATIOS,
                         low: float = 0.2) -> list[Architecture]:
    """``n`` architectures of ``space``: random per-slot factors in [``low``, 1] scaled together to MAC ratios
    taken from ``ratios`` in turn (as the ``random`` proposer draws its widths), all different."""
    rng = random.Random(seed)
    out: list[Architecture] = []
    for _ in range(100 * n):
        if len(out) == n:
            break
        shape = [rng.uniform(low, 1.0) for _ in space.upper]
        goal = target_from_ratio(space, ratios[len(out) % len(ratios)])
        try:
            arch = uniform_twin(space, goal, "macs", shape=shape).arch
        except ArchitectureError:  # a family rule the shape breaks (e.g. decreasing option-A stages)
            continue
        if arch not in out:
            out.append(arch)
    if len(out) == n:
        return out
    raise LatencyError(f"could draw only {len(out)} distinct random architectures of {space.name}, not {n}")


def calibrate(table: LatencyTable, archs: Sequence[Architecture], repeats: int = 20, warmup: int = 3) -> Calibration:
    """Measure ``archs`` (one network kind) on the table's device, fit and store the calibration."""
    measured = [m.median_ms for m in measure(archs, table.device, repeats, warmup)]
    calibration = fit_line([table.table_sum(a) for a in archs], measured)
    table.set_calibration(archs[0], calibration)
    return calibration


def calibration_report(space: Space, table: LatencyTable, n: int = 50, seed: int = 0, repeats: int = 20,
                       warmup: int = 3) -> dict[str, Any]:
    """Predictor vs MAC baseline on ``n`` random architectures of ``space`` (see the module docstring).

    Even-indexed architectures fit, odd-indexed ones are scored. The stored calibration is then refitted on all
    ``n`` (what later predictions use); the scores are those of the half-data fit.
    """
    if n < 4:
        raise LatencyError(f"a calibration report needs n >= 4 architectures, got {n}")
    archs = random_architectures(space, n, seed)
    measured = [m.median_ms for m in measure(archs, table.device, repeats, warmup)]
    sums = [table.table_sum(a) for a in archs]
    counts = [macs(a) for a in archs]
    fit, test = range(0, n, 2), range(1, n, 2)
    predictor = fit_line([sums[i] for i in fit], [measured[i] for i in fit])
    baseline = fit_line([counts[i] for i in fit], [measured[i] for i in fit])
    truth, test_macs = [measured[i] for i in test], [counts[i] for i in test]
    table.set_calibration(archs[0], fit_line(sums, measured))
    return {
        "space": space.name, "device": table.device.name, "fingerprint": table.device.key(), "n": n,
        "fit": len(fit), "test": len(test), "measured_ms": {"min": min(measured), "max": max(measured)},
        "predictor": {"scale": predictor.scale, "intercept_ms": predictor.intercept,
                      **prediction_scores([predictor.apply(sums[i]) for i in test], truth, test_macs)},
        "macs_baseline": {"ms_per_mmac": 1e6 * baseline.scale, "intercept_ms": baseline.intercept,
                          **prediction_scores([baseline.apply(counts[i]) for i in test], truth, test_macs)},
    }


def prediction_scores(predicted: Sequence[float], measured: Sequence[float],
                      mac_counts: Sequence[int]) -> dict[str, float | int]:
    """How well ``predicted`` latencies match ``measured`` ones: median absolute % error, share within +-10%,
    Kendall tau, and the share of equal-MACs pairs (:data:`EQUAL_MACS`) ordered as measured."""
    from scipy.stats import kendalltau  # scipy.stats costs ~1 s to import; only calibration reports need it

    pred, true = np.asarray(predicted, float), np.asarray(measured, float)
    rel = np.abs(pred / true - 1)
    agree, pairs = equal_macs_ordering(predicted, measured, mac_counts)
    return {"median_abs_pct": float(100 * np.median(rel)), "within_10pct": float(np.mean(rel <= 0.10)),
            "kendall_tau": float(kendalltau(pred, true).statistic), "equal_macs_pairs": pairs,
            "equal_macs_order_acc": agree / pairs if pairs else float("nan")}


def equal_macs_ordering(predicted: Sequence[float], measured: Sequence[float],
                        mac_counts: Sequence[int]) -> tuple[int, int]:
    """(pairs ordered as measured, pairs) over pairs whose MACs differ by at most :data:`EQUAL_MACS`."""
    agree = pairs = 0
    for i in range(len(measured)):
        for j in range(i + 1, len(measured)):
            if abs(mac_counts[i] / mac_counts[j] - 1) <= EQUAL_MACS and measured[i] != measured[j]:
                pairs += 1
                agree += (predicted[i] - predicted[j]) * (measured[i] - measured[j]) > 0
    return agree, pairs
