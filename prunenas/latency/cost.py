"""Latency as a cost kind: the calibrated per-layer predictor of one device behind the callable that budgets,
twins and selectors take in place of ``"macs"`` / ``"params"`` (:data:`prunenas.budget.CostKind`).

Predicted latency is a step function of the widths with measurement noise in every step, so twins at equal
latency are solved to the nearest achievable prediction within :data:`LATENCY_TOLERANCE` (+-2%), not the
+-1% of MACs. The predictor's own error against measured networks is a separate, published figure
(``prunenas latency calibrate``): on the busy development machine it did not beat a MAC-only line in most
settings, so a latency target is a target on *this predictor*, not a guarantee on the measured clock.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from prunenas.latency.calibration import calibrate, random_architectures
from prunenas.latency.devices import Device, LatencyError, get_device
from prunenas.latency.table import LatencyTable, calibration_key, default_cache_dir

if TYPE_CHECKING:
    from prunenas.arch import Architecture
    from prunenas.spaces import Space

LATENCY_TOLERANCE = 0.02
CALIBRATION_NETWORKS = 8
"""Random architectures measured to calibrate a network kind that has no calibration yet (``prunenas latency
calibrate`` fits on more and reports the error)."""
CALIBRATION_REPEATS = 10


class LatencyCost:
    """Predicted latency (ms) of an architecture on one device: a cost kind named ``latency``."""

    name = "latency"
    tolerance = LATENCY_TOLERANCE

    def __init__(self, table: LatencyTable) -> None:
        self.table = table

    @property
    def device(self) -> Device:
        return self.table.device

    def __call__(self, arch: Architecture) -> float:
        return self.table.predict(arch)

    def __repr__(self) -> str:
        return f"LatencyCost({self.device.name})"

    def calibrated(self, space: Space, n: int = CALIBRATION_NETWORKS, repeats: int = CALIBRATION_REPEATS
                   ) -> LatencyCost:
        """This cost, with ``space``'s network kind calibrated (on ``n`` measured random architectures when the
        table has no calibration for it yet). A calibration whose latency falls as the table sum grows cannot
        rank widths (the networks are too small for the device's timing noise): :class:`LatencyError`."""
        key = calibration_key(space.base)
        if key not in self.table.calibrations:
            calibrate(self.table, random_architectures(space, n), repeats=repeats)
        fit = self.table.calibrations[key]
        if fit.scale <= 0:
            raise LatencyError(f"the latency calibration of {space.name} on {self.device.name} has slope "
                               f"{fit.scale:.3g} <= 0: its networks are too small to time apart here; use a larger "
                               f"--latency-batch, or delete {self.table.path} to re-measure")
        return self

    def floor(self, space: Space) -> float:
        """Predicted latency (ms) of the smallest architecture of ``space`` (every slot at its lower bound)."""
        return self(space.arch(space.lower))


def latency_cost(runtime: str, batch: int = 1, threads: int = 1,
                 cache_dir: str | os.PathLike | None = None) -> LatencyCost:
    """The latency cost of device (``runtime``, ``batch``, ``threads``), its table in ``cache_dir`` (default
    ``$PRUNENAS_CACHE/latency``). One object per device and folder in a process, so a search that resolves the
    same target many times measures each layer once. Raises :class:`LatencyError` for a bad or absent device."""
    return _latency_cost(runtime, batch, threads, str(Path(cache_dir or default_cache_dir()).resolve()))


@lru_cache(maxsize=16)
def _latency_cost(runtime: str, batch: int, threads: int, cache_dir: str) -> LatencyCost:
    return LatencyCost(LatencyTable(get_device(runtime, batch, threads), cache_dir))


def check_latency_target(cost: LatencyCost, space: Space, ms: float) -> None:
    """Raise :class:`LatencyError` when ``ms`` is below the predicted latency of ``space``'s smallest
    architecture (the floor no width choice goes under)."""
    floor = cost.floor(space)
    if ms < floor:
        raise LatencyError(f"latency target {ms:.4g} ms is below the floor of {space.name} on {cost.device.name}: "
                           f"its smallest architecture predicts {floor:.4g} ms")
