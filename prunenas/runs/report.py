"""Reports of a run folder, finished or still running: the paper-style table (every arm, Scratch-E/B, mean
± std over seeds, the paired difference proposed − uniform with a 95% confidence interval), a verdict computed
from those numbers, the stored latency of the discovered networks next to their uniform twins, and plots.

Accuracies are final-epoch numbers: *test* accuracy for the report (read once, never used for selection) and
*validation* accuracy (what the search ranked by), each labelled. Files are written deterministically (no
timestamps), so a report regenerates byte for byte from the same run folder: latency is read from the
measurements the search stored in ``RUN/latency.json`` (:mod:`prunenas.runs.latency_measurements`), never
measured here. Pairs of a latency target whose measured latencies differ by more than 5% are listed apart and
left out of the verdict.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prunenas.errors import PrunenasError
from prunenas.experiment import CONTROLS
from prunenas.runs.groups import Group, arms_present, collect
from prunenas.runs.latency_measurements import comparable, pair_records, read_measurements, unequal_pairs
from prunenas.runs.latency_report import markdown_latency, unequal_lines
from prunenas.runs.plots import (
    plot_accuracy_vs_compute,
    plot_accuracy_vs_macs,
    plot_fidelity,
    plot_widths,
    plots_compute,
)
from prunenas.runs.rundir import RunDir
from prunenas.runs.screening import markdown_fidelity, proxy_fidelity
from prunenas.runs.tables import (
    comparison_rows,
    markdown_comparisons,
    markdown_controls,
    markdown_lr_sensitivity,
    markdown_table,
    table_rows,
    teacher_lines,
    twin_flags,
    verdict,
)


def write_report(run: RunDir, out: str | os.PathLike | None = None, fmt: str = "md",
                 latency: bool = True) -> dict[str, Any]:
    """Write the report of ``run`` into ``out`` (default ``RUN/report``); returns what was written: ``folder``,
    ``files``, ``data`` (:func:`report_data`) and, for ``fmt="md"``, the markdown ``text``. ``latency``: write
    ``latency.md`` from ``RUN/latency.json`` when the run has one; without one no ``latency.md`` is written and
    one already in ``out`` (measured by an older prunenas's report) is left as it is."""
    out = Path(out) if out else run.path / "report"
    state = run.state()
    groups = collect(run)  # read (and reject a corrupt run) before the report folder exists
    measurements = read_measurements(run)
    records = None if measurements is None else pair_records(run, groups, measurements)
    out.mkdir(parents=True, exist_ok=True)
    fidelity = proxy_fidelity(run)
    written: dict[str, Any] = {"folder": str(out), "files": [], "data": report_data(state, groups, records)}
    if fidelity:
        written["data"]["proxy_fidelity"] = finite_or_none(fidelity)
        written["files"] += [p.name for p in plot_fidelity(fidelity["candidates"], fidelity["proxies"][0]["proxy"],
                                                          out / "proxy_fidelity")]
    if fmt == "md":
        text = _markdown(run, state, groups, records, fidelity)
        (out / "report.md").write_text(text)
        written["files"].append("report.md")
        written["text"] = text
    elif fmt == "csv":
        (out / "report.csv").write_text(_csv(groups))
        written["files"].append("report.csv")
    elif fmt == "json":
        (out / "report.json").write_text(report_json(written["data"]))
        written["files"].append("report.json")
    else:
        raise PrunenasError(f"--format {fmt!r} must be md, csv or json")
    if groups:
        for paths in (plot_accuracy_vs_macs(groups, out / "accuracy_vs_macs"), plot_widths(groups, out / "widths")):
            written["files"] += [p.name for p in paths]
        if plots_compute(groups):
            written["files"] += [p.name for p in plot_accuracy_vs_compute(groups, out / "accuracy_vs_compute")]
        if latency and records is not None:
            (out / "latency.md").write_text(markdown_latency(records, measurements["fingerprints"]) + "\n")
            written["files"].append("latency.md")
    return written


def report_data(state: Mapping[str, Any], groups: Sequence[Group],
                latency: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The report as one JSON-ready object (report.json, ``report --json``): run name and status, the test and
    validation tables (:func:`table_rows`), the verdict (without the pairs not at equal measured latency) and
    ``latency``: the stored measurements of each pair (:func:`pair_records`; None when the run has none). A number
    that is not finite (no interval below ``MIN_PAIRED_SEEDS`` pairs, no mean without values) is ``None``: JSON
    has no NaN."""
    return finite_or_none({"run": state.get("name"), "status": state.get("status"),
                           "test": table_rows(groups, "test_acc"), "validation": table_rows(groups, "val_acc"),
                           "verdict": verdict(comparable(groups, latency or [])),
                           "comparisons": comparison_rows(groups),
                           "latency": None if latency is None else list(latency)})


def finite_or_none(value: Any) -> Any:
    """``value`` with every float that is NaN or infinite, at any depth of dicts and lists, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def report_json(data: Mapping[str, Any]) -> str:
    """:func:`report_data` as text; ``allow_nan=False`` makes a NaN that slips past :func:`finite_or_none` an
    error instead of invalid JSON."""
    return json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"


def _markdown(run: RunDir, state: Mapping[str, Any], groups: Sequence[Group],
              latency: Sequence[Mapping[str, Any]] | None, fidelity: Mapping[str, Any] | None = None) -> str:
    rows = run.results.rows()
    failed = [r for r in run.results.latest().values() if r["status"] in ("failed", "diverged")]
    parts = [f"# Report: {state.get('name', run.path.name)}",
             f"Run status: {state.get('status')}, phase {state.get('phase')}; {len(rows)} result rows; "
             f"{len(groups)} evaluated proposal(s).", ""]
    flags = twin_flags(groups)
    if flags:
        parts += [f"**Warning: {len(flags)} control(s) not at the proposal's cost within ±1%** (see Cost of the "
                  "controls):", "", *[f"- {line}" for line in flags], ""]
    if groups:
        parts += ["## Test accuracy (the report's number; never used for selection)", "",
                  markdown_table(groups, "test_acc"), "",
                  "## Validation accuracy (what the search ranked by)", "", markdown_table(groups, "val_acc"), "",
                  "## Verdict", "", *[f"- {line}" for line in verdict(comparable(groups, latency or []))], "",
                  *_unequal_latency_section(latency or []),
                  *_compute_fair_sections(groups),
                  "## Cost of the controls", "", markdown_controls(groups), "",
                  "Plots: `accuracy_vs_macs.png` (test accuracy vs MACs, uniform twins as a curve, the Pareto front "
                  "of the proposals by validation accuracy), "
                  f"`widths.png` (kept fraction per slot). {_latency_sentence(latency)}", ""]
    if fidelity:
        parts += ["## Proxy fidelity", "", markdown_fidelity(fidelity), "",
                  "Plot: `proxy_fidelity.png` (proxy score vs full validation accuracy, promoted and audit).", ""]
    if failed:
        parts += ["## Failed or diverged trainings", "", "| key | arm | method | status | error |",
                  "|---|---|---|---|---|"]
        parts += [f"| {r['key']} | {r['arm']} | {r.get('method')} | {r['status']} | "
                  f"{str(r.get('error', '')).replace('|', '/')[:120]} |" for r in failed]
        parts.append("")
    return "\n".join(parts)


def _latency_sentence(latency: Sequence[Mapping[str, Any]] | None) -> str:
    if latency is None:
        return ("Latency: not in this run folder (no latency.json); `prunenas latency measure RUN` measures each "
                "proposal and its uniform twin once and stores them, and the report then writes `latency.md` from "
                "them (a `latency.md` already in the report folder was measured by an older prunenas and is left as "
                "it is).")
    return ("Latency: `latency.md` (the medians and IQR stored in RUN/latency.json, measured once after training; "
            "the report measures nothing).")


def _unequal_latency_section(latency: Sequence[Mapping[str, Any]]) -> list[str]:
    """The latency-target pairs left out of the verdict: their measured latencies are more than 5% apart."""
    unequal = unequal_pairs(latency)
    if not unequal:
        return []
    return ["Left out of the verdict, not at equal measured latency (`latency.md`):", "",
            *[f"- {line}" for line in unequal_lines(unequal)], ""]


def _compute_fair_sections(groups: Sequence[Group]) -> list[str]:
    """The fine-tune / distillation verdict table, the teachers and the LR sensitivity — for the runs that have
    those arms or an ``lr_grid`` (nothing for the others, whose reports stay as they were)."""
    parts = []
    if comparison_rows(groups):
        teachers = teacher_lines(groups)
        parts += ["## Fine-tune and distillation vs scratch training", "", markdown_comparisons(groups), ""]
        if teachers:
            parts += ["Teachers (the methods' base models): " + "; ".join(teachers) + ".", ""]
    if any(g.lr_arms for g in groups):
        parts += ["## Learning-rate sensitivity", "", markdown_lr_sensitivity(groups), ""]
    if plots_compute(groups):
        parts += ["Plot: `accuracy_vs_compute.png` (every arm's accuracy vs its post-pruning and pipeline compute).",
                  ""]
    return parts


def _csv(groups: Sequence[Group]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    arms = arms_present(groups)
    writer.writerow(["metric", "method", "target", "budget", "macs", "params", "base_val_acc"]
                    + [f"{a}_{k}" for a in arms for k in ("mean", "std", "n")]
                    + ["diff_mean", "diff_low", "diff_high", "diff_n"]
                    + [f"{arm}_twin_error" for arm in CONTROLS])
    for metric in ("test_acc", "val_acc"):
        for r in table_rows(groups, metric):
            d = r["proposed_minus_uniform"]
            writer.writerow([metric, r["method"], r["target"], r["budget"], r["macs"], r["params"], r["base_val_acc"]]
                            + [r[a][k] for a in arms for k in ("mean", "std", "n")]
                            + [d["mean"], d["low"], d["high"], d["n"]]
                            + [r["twin_error"][arm] for arm in CONTROLS])
    return buffer.getvalue()
