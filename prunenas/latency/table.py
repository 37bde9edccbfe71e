"""Predicted latency: a per-layer latency table for one device, summed over a network's units, then calibrated
on whole networks (latency ~ scale x table sum + intercept, least squares).

The table is filled lazily: a prediction measures only the unit geometries (:mod:`prunenas.latency.units`)
it has not seen, so a search that calls it thousands of times measures each distinct layer once. Each entry
is the unit's median time minus the runtime's fixed per-call cost (:data:`~prunenas.latency.units.OVERHEAD_UNIT`),
which a whole network pays once. What the units do not cover (pooling, residual additions, shortcuts,
embeddings, layer fusion across units) is left to the calibration, fitted per network kind (family, options,
input, classes) on measured whole networks: :func:`prunenas.latency.calibration.calibrate`.

Tables live in one JSON file per device fingerprint under ``$PRUNENAS_CACHE/latency`` (default
``~/.cache/prunenas/latency``), written atomically under a lock so parallel trials can share them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunenas.fileio import atomic_write_text, locked
from prunenas.latency.devices import Device, LatencyError
from prunenas.latency.measure import check_counts, summarize, time_interleaved
from prunenas.latency.units import OVERHEAD_UNIT, Unit, units

if TYPE_CHECKING:
    from prunenas.arch import Architecture

FORMAT = "prunenas.latency-table/1"


@dataclass(frozen=True)
class Calibration:
    """Whole-network latency (ms) ~ ``scale`` x table sum (ms) + ``intercept`` (ms), fitted on ``samples``
    measured networks."""

    scale: float
    intercept: float
    samples: int

    def apply(self, table_sum_ms: float) -> float:
        return self.scale * table_sum_ms + self.intercept


def fit_line(x: Sequence[float], y: Sequence[float]) -> Calibration:
    """Least-squares line ``y ~ scale * x + intercept`` (closed form). Needs two or more distinct ``x``."""
    if len(x) != len(y) or len(x) < 2:
        raise LatencyError(f"a calibration needs two or more (x, y) pairs of equal count, got {len(x)} and {len(y)}")
    n = len(x)
    mean_x, mean_y = sum(x) / n, sum(y) / n
    sxx = sum((a - mean_x) ** 2 for a in x)
    if sxx == 0:
        raise LatencyError("a calibration needs networks of different sizes; all given ones have the same table sum "
                           "(every unit timed at or under the call overhead: networks too small to time apart on "
                           "this device, or a busy machine; try a larger --latency-batch)")
    scale = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y)) / sxx
    return Calibration(scale, mean_y - scale * mean_x, n)


def calibration_key(arch: Architecture) -> str:
    """Which calibration applies to ``arch``: its network kind (family, options, input, classes), not widths."""
    kind = json.dumps([arch.family, arch.options, arch.input_shape, arch.num_classes], sort_keys=True)
    return f"{arch.family}-{hashlib.sha256(kind.encode()).hexdigest()[:16]}"


def default_cache_dir() -> Path:
    return Path(os.environ.get("PRUNENAS_CACHE", "~/.cache/prunenas")).expanduser() / "latency"


class LatencyTable:
    """The per-layer latency table of one device, with its calibrations, backed by a JSON file.

    ``measured`` counts the unit timings this object has made (the overhead probe included).
    """

    def __init__(self, device: Device, cache_dir: str | os.PathLike | None = None, repeats: int = 15,
                 warmup: int = 3) -> None:
        check_counts(repeats, warmup)
        self.device, self.repeats, self.warmup = device, repeats, warmup
        self.path = Path(cache_dir or default_cache_dir()) / f"{device.runtime}-b{device.batch}-t{device.threads}-" \
                                                              f"{device.key()}.json"
        self.entries: dict[str, float] = {}
        self.calibrations: dict[str, Calibration] = {}
        self.overhead_ms: float | None = None
        self.measured = 0
        self._merge(self._read())

    # -- lookup -------------------------------------------------------------------------------------
    def unit_times(self, wanted: Sequence[Unit]) -> list[float]:
        """Table entries (ms, fixed call cost removed) of ``wanted``, measuring and saving the missing ones."""
        keys = [u.key for u in wanted]
        missing = list({k: u for k, u in zip(keys, wanted) if k not in self.entries}.values())
        if missing:
            self._fill(missing)
        return [self.entries[k] for k in keys]

    def table_sum(self, arch: Architecture) -> float:
        """Sum of the table entries of ``arch``'s units (ms): the uncalibrated prediction."""
        return sum(self.unit_times(units(arch.layers)))

    def predict(self, arch: Architecture) -> float:
        """Predicted latency (ms) of ``arch`` on this device: calibration applied to :meth:`table_sum`."""
        key = calibration_key(arch)
        if key not in self.calibrations:
            raise LatencyError(f"no latency calibration for {arch.family} {dict(arch.options)} on "
                               f"{self.device.name}; calibrate it on measured networks first")
        return self.calibrations[key].apply(self.table_sum(arch))

    def set_calibration(self, arch: Architecture, calibration: Calibration) -> None:
        """Store the calibration for ``arch``'s network kind and save the table."""
        self.calibrations[calibration_key(arch)] = calibration
        self.save()

    # -- filling and storage ------------------------------------------------------------------------
    def _fill(self, missing: Sequence[Unit]) -> None:
        probe = [OVERHEAD_UNIT] if self.overhead_ms is None else []
        todo = probe + list(missing)
        forwards = [self.device.prepare_unit(u) for u in todo]
        with self.device.threads_set():
            times = time_interleaved(forwards, self.repeats, self.warmup)
        medians = [summarize(t, self.device.name, "").median_ms for t in times]
        self.measured += len(todo)
        if probe:
            self.overhead_ms = medians.pop(0)
        for unit, ms in zip(missing, medians):
            self.entries[unit.key] = max(ms - self.overhead_ms, 0.0)
        self.save()

    def save(self) -> None:
        """Merge with what other processes wrote meanwhile (their entries win: one value per key) and write."""
        with locked(self.path.with_suffix(".lock")):
            self._merge(self._read(), prefer_theirs=True)
            data = {"format": FORMAT, "device": self.device.fingerprint(), "overhead_ms": self.overhead_ms,
                    "entries": dict(sorted(self.entries.items())),
                    "calibrations": {k: asdict(c) for k, c in sorted(self.calibrations.items())}}
            atomic_write_text(self.path, json.dumps(data, indent=1) + "\n")

    def _read(self) -> dict[str, Any]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise LatencyError(f"latency table {self.path} is unreadable ({err}); delete it to re-measure") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise LatencyError(f"latency table {self.path} is not a {FORMAT} file; delete it to re-measure")
        return data

    def _merge(self, data: dict[str, Any], prefer_theirs: bool = False) -> None:
        theirs = data.get("entries", {})
        self.entries = {**self.entries, **theirs} if prefer_theirs else {**theirs, **self.entries}
        if self.overhead_ms is None or prefer_theirs and data.get("overhead_ms") is not None:
            self.overhead_ms = data.get("overhead_ms", self.overhead_ms)
        for key, value in data.get("calibrations", {}).items():
            self.calibrations.setdefault(key, Calibration(**value))
