"""The report's ``latency.md``: the stored latency of the discovered networks next to their uniform twins
(:mod:`prunenas.runs.latency_measurements`; the report reads ``RUN/latency.json`` and measures nothing)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prunenas.runs.latency_measurements import MEASURED_TOLERANCE, unequal_pairs


def _ms(entry: Mapping[str, Any] | None) -> str:
    return "-" if entry is None else f"{entry['median_ms']:.3f} (IQR {entry['iqr_ms']:.3f})"


def _predicted(record: Mapping[str, Any]) -> str:
    values = [(record[arm] or {}).get("predicted_ms") for arm in ("proposed", "uniform")]
    return " / ".join("-" if v is None else f"{v:.3f}" for v in values)


def markdown_latency(records: Sequence[Mapping[str, Any]], fingerprints: Mapping[str, Mapping[str, Any]]) -> str:
    """The table of stored measurements (median and IQR per arm, proposed / uniform), the devices' fingerprints
    and, for latency targets, the pairs not at equal measured latency."""
    predicted = any((r[arm] or {}).get("predicted_ms") is not None for r in records for arm in ("proposed", "uniform"))
    header = ["method", "target", "MACs", "device", "proposed (ms)", "uniform (ms)", "proposed / uniform"]
    header += ["predicted, proposed / uniform (ms)"] if predicted else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        cells = [r["method"], r["target"], f"{r['macs'] / 1e6:.2f}M", r["device"], _ms(r["proposed"]),
                 _ms(r["uniform"]), "-" if r["ratio"] is None else f"{r['ratio']:.2f}"]
        lines.append("| " + " | ".join(cells + ([_predicted(r)] if predicted else [])) + " |")
    samples = sorted({r[arm]["samples"] for r in records for arm in ("proposed", "uniform") if r[arm]})
    lines.append(f"\nMedian (interquartile range) of {'/'.join(map(str, samples))} forward passes per network, "
                 "the networks of a device interleaved in one session (each proposal with its uniform twin), measured "
                 "once after training and stored in RUN/latency.json; MACs are not speed. Devices measured on:")
    used = sorted({r[arm]["fingerprint"] for r in records for arm in ("proposed", "uniform") if r[arm]})
    lines += [f"- {key}: {describe_fingerprint(fingerprints.get(key, {}))}" for key in used]
    unequal = unequal_pairs(records)
    if unequal:
        lines += ["", f"## Not at equal measured latency (more than ±{100 * MEASURED_TOLERANCE:g}% apart; "
                  "excluded from the verdict)", "", *[f"- {line}" for line in unequal_lines(unequal)]]
    return "\n".join(lines)


def describe_fingerprint(fingerprint: Mapping[str, Any]) -> str:
    """A device fingerprint in one line: runtime, batch, threads, hardware and package versions."""
    if not fingerprint:
        return "(fingerprint not stored)"
    head = f"{fingerprint['runtime']} batch {fingerprint['batch']}, {fingerprint['threads']} thread(s)"
    rest = [f"{k} {v}" for k, v in fingerprint.items() if k not in ("runtime", "batch", "threads")]
    return ", ".join([head, *rest])


def unequal_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """One sentence per pair whose measured medians differ by more than the tolerance."""
    return [f"{r['method']} at target {r['target']} on {r['device']}: uniform twin "
            f"{100 * r['measured_twin_error']:+.1f}% off the proposal's measured latency "
            f"({r['proposed']['median_ms']:.3f} vs {r['uniform']['median_ms']:.3f} ms)" for r in records]
