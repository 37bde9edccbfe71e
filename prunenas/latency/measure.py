"""Whole-network latency, measured: warm-up, many repeats, median and interquartile range.

Networks compared with each other are measured *interleaved*: every repeat runs each network once, round
robin, starting one network later each repeat. On a shared, noisy machine every network then sees the same
interference, so the ratio of two medians is what the measurement can be trusted for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from prunenas.latency.devices import Device, Forward, LatencyError

if TYPE_CHECKING:
    from torch import nn

    from prunenas.arch import Architecture

Network = Union["Architecture", tuple["nn.Module", Sequence[int]]]
"""An Architecture (built fresh), or an ``nn.Module`` with its input shape (C, H, W) for one image."""


@dataclass(frozen=True)
class Measurement:
    """Forward-pass latency of one network on one device: median and interquartile range (ms) of ``samples``
    timed repeats, the fastest repeat, and the device's fingerprint key."""

    median_ms: float
    iqr_ms: float
    min_ms: float
    samples: int
    device: str
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return {"median_ms": self.median_ms, "iqr_ms": self.iqr_ms, "min_ms": self.min_ms, "samples": self.samples,
                "device": self.device, "fingerprint": self.fingerprint}


def measure(networks: Sequence[Network], device: Device, repeats: int = 30, warmup: int = 5) -> list[Measurement]:
    """Latency of each network on ``device``, measured interleaved (see the module docstring).

    ``warmup`` rounds run every network but are not recorded (first-call allocations, caches, lazy kernels).
    """
    check_counts(repeats, warmup)
    forwards = [prepare(net, device) for net in networks]
    with device.threads_set():
        times = time_interleaved(forwards, repeats, warmup)
    key = device.key()
    return [summarize(t, device.name, key) for t in times]


def prepare(network: Network, device: Device) -> Forward:
    """``network`` ready to run on ``device``."""
    if isinstance(network, tuple):
        model, input_shape = network
        return device.prepare_module(model, input_shape)
    return device.prepare_module(network.build(), network.input_shape)


def check_counts(repeats: int, warmup: int) -> None:
    """Raise :class:`LatencyError` unless ``repeats`` >= 1 and ``warmup`` >= 0 are integers."""
    for what, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise LatencyError(f"latency {what} {value!r} must be an integer >= {low}")


def time_interleaved(forwards: Sequence[Forward], repeats: int, warmup: int) -> list[list[float]]:
    """Seconds of each forward in each of ``repeats`` round-robin rounds, after ``warmup`` unrecorded rounds;
    each round starts one network later than the previous one, so no network always runs first."""
    n = len(forwards)
    times: list[list[float]] = [[] for _ in range(n)]
    for round_ in range(warmup + repeats):
        for offset in range(n):
            k = (round_ + offset) % n
            start = time.perf_counter()
            forwards[k]()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[k].append(elapsed)
    return times


def summarize(seconds: Sequence[float], device: str, fingerprint: str) -> Measurement:
    """Median, interquartile range and minimum of timed repeats, in milliseconds."""
    ms = 1000 * np.asarray(seconds, dtype=float)
    q1, median, q3 = np.percentile(ms, [25, 50, 75])
    return Measurement(float(median), float(q3 - q1), float(ms.min()), len(ms), device, fingerprint)
