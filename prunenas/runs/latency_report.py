"""CPU latency of the discovered networks next to their uniform twins (the report's ``latency.md``), measured
on the machine that runs the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from prunenas.arch import from_dict
from prunenas.latency import get_device, measure
from prunenas.runs.groups import Group
from prunenas.runs.rundir import RunDir

LATENCY_REPEATS = 15


def latency_table(run: RunDir, groups: Sequence[Group], batches: Sequence[int] = (1, 64)) -> list[dict[str, Any]]:
    """Fastest of :data:`LATENCY_REPEATS` forward passes (ms) of each proposal and its uniform twin on the CPU
    (``cpu-torch`` with this process's threads), measured interleaved by :func:`prunenas.latency.measure`: both
    networks of a pair see the same interference, and the minimum is the least disturbed run."""
    out = []
    for g in groups:
        record: dict[str, Any] = {"method": g.method, "target": g.target_label, "macs": g.macs}
        rows = {arm: g.row(arm) for arm in ("proposed", "uniform") if g.row(arm) is not None}
        archs = [from_dict(row["arch"], base_dir=run.proposals_dir) for row in rows.values()]
        for b in batches:
            device = get_device("cpu-torch", b, torch.get_num_threads())
            for arm, m in zip(rows, measure(archs, device, LATENCY_REPEATS, warmup=2)):
                record[f"{arm}_ms_b{b}"] = m.min_ms
        out.append(record)
    return out


def markdown_latency(records: Sequence[Mapping[str, Any]], batches: Sequence[int] = (1, 64)) -> str:
    header = ["method", "target", "MACs"] + [f"{arm} b{b} (ms)" for b in batches for arm in ("proposed", "uniform")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        cells = [r["method"], r["target"], f"{r['macs'] / 1e6:.2f}M"]
        cells += [f"{r[k]:.2f}" if k in r else "-" for b in batches for k in (f"proposed_ms_b{b}", f"uniform_ms_b{b}")]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nFastest of {LATENCY_REPEATS} interleaved CPU forward passes on this machine "
                 f"({torch.get_num_threads()} threads); MACs are not speed.")
    return "\n".join(lines)
