"""Latency as a cost: devices, interleaved measurement, the per-layer latency table and its calibration, and
the latency-constrained knapsack of HALP. Ray-free; ``torch``/``onnxruntime`` load only when measuring."""

from prunenas.latency.calibration import calibrate, calibration_report, prediction_scores, random_architectures
from prunenas.latency.devices import RUNTIMES, Device, LatencyError, get_device
from prunenas.latency.knapsack import grouped_knapsack, keep_counts
from prunenas.latency.measure import Measurement, measure
from prunenas.latency.table import Calibration, LatencyTable, calibration_key, fit_line
from prunenas.latency.units import Unit, units

__all__ = [
    "RUNTIMES", "Calibration", "Device", "LatencyError", "LatencyTable", "Measurement", "Unit", "calibrate",
    "calibration_key", "calibration_report", "fit_line", "get_device", "grouped_knapsack", "keep_counts",
    "measure", "prediction_scores", "random_architectures", "units",
]
