"""Reports of a run folder, finished or still running: the paper-style table (every arm, Scratch-E/B, mean
± std over seeds, the paired difference proposed − uniform with a 95% confidence interval), a verdict computed
from those numbers, CPU latency of the discovered networks next to their uniform twins, and plots.

Accuracies are final-epoch numbers: *test* accuracy for the report (read once, never used for selection) and
*validation* accuracy (what the search ranked by), each labelled. Files are written deterministically (no
timestamps), so a report regenerates byte for byte from the same rows; latency is a measurement of the
machine that runs the report and goes to its own file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prunenas.arch import from_dict
from prunenas.budget import TOLERANCE, cost_error, within_tolerance
from prunenas.cost import count
from prunenas.errors import PrunenasError
from prunenas.experiment import ARMS, CONTROLS
from prunenas.latency import get_device, measure
from prunenas.latency.cost import LATENCY_TOLERANCE
from prunenas.proposers import load_proposal
from prunenas.runs.rundir import RunDir
from prunenas.runs.stats import MIN_PAIRED_SEEDS, format_percent, has_interval, mean_std, paired_difference

ARM_ORDER = ARMS
METRICS = {"test_acc": "test accuracy", "val_acc": "validation accuracy"}


@dataclass
class Group:
    """One evaluated proposal and the rows of its arms: ``arms[(arm, budget)][seed] = row``."""

    pid: str
    method: str
    params: Mapping[str, Any]
    target: Mapping[str, Any]
    macs: int
    params_count: int
    base_val_acc: float | None
    widths: tuple[int, ...]
    base_widths: tuple[int, ...]
    slot_names: tuple[str, ...]
    arms: dict[tuple[str, str], dict[int, dict[str, Any]]] = field(default_factory=dict)
    # with lr_grid: every learning rate's rows, ``lr_arms[(arm, budget)][lr][seed] = row``; ``arms`` holds the best's
    lr_arms: dict[tuple[str, str], dict[float, dict[int, dict[str, Any]]]] = field(default_factory=dict)
    best_lr: dict[tuple[str, str], float] = field(default_factory=dict)

    def values(self, arm: str, budget: str, metric: str) -> dict[int, float]:
        rows = self.arms.get((arm, budget), {})
        # a search training reused by a running evaluation has no test accuracy until the evaluation reads it
        return {seed: row[metric] for seed, row in rows.items()
                if row.get("status") == "ok" and row.get(metric) is not None}

    def row(self, arm: str) -> dict[str, Any] | None:
        """Any row of ``arm`` (its architecture and cost are the same for every seed, random aside)."""
        return next((r for (a, _), rows in sorted(self.arms.items()) if a == arm for r in rows.values()), None)

    def twin_errors(self, arm: str) -> dict[int, float]:
        """Cost error of ``arm``'s network against the proposal's, per seed (``budget.cost_error``; the cost
        the twins were solved for: MACs, or params with ``match: params``; predicted latency with ``match:
        latency``, as the row recorded it: the predictor's table lives on the machine that ran the search)."""
        match = self.target.get("match", "macs")
        goal = self.macs if match == "macs" else self.params_count
        rows = {seed: row for (a, _), by_seed in sorted(self.arms.items()) if a == arm for seed, row in by_seed.items()}
        if match == "latency":
            return {seed: row["twin_error"] for seed, row in sorted(rows.items()) if "twin_error" in row}
        return {seed: cost_error(row[match], goal) for seed, row in sorted(rows.items())}

    @property
    def tolerance(self) -> float:
        """The band the twins were solved to: +-1% of MACs or params, +-2% of predicted latency."""
        return LATENCY_TOLERANCE if self.target.get("match") == "latency" else TOLERANCE

    def worst_twin_error(self, arm: str) -> float | None:
        """The largest cost error (in magnitude) of ``arm`` over seeds; None without rows of ``arm``."""
        return max(self.twin_errors(arm).values(), key=abs, default=None)

    @property
    def target_label(self) -> str:
        return str(self.target.get("preset") or self.target.get("ratio") or self.target.get("cost"))

    @property
    def budgets(self) -> list[str]:
        return sorted({b for _, b in self.arms if b != "finetune"}) or ["finetune"]


def collect(run: RunDir) -> list[Group]:
    """The evaluated proposals of a run with their rows, in the plan's order."""
    plan = run.read_json("plan.json") or {"selected": [], "proposals": {}}
    latest = run.results.latest()
    groups = []
    for pid in plan["selected"]:
        proposal = load_proposal(run.proposal_path(pid))
        rows: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
        by_lr: dict[tuple[str, str], dict[float, dict[int, dict[str, Any]]]] = {}
        for entry in plan["proposals"].get(pid, []):
            row = latest.get(entry["key"])
            if row is None:
                continue
            slot = (entry["arm"], entry["budget"])
            if "lr" in entry:  # an lr_grid run
                by_lr.setdefault(slot, {}).setdefault(entry["lr"], {})[entry["seed"]] = row
            else:
                rows.setdefault(slot, {})[entry["seed"]] = row
        best = {slot: best_learning_rate(rates) for slot, rates in by_lr.items()}
        rows.update({slot: by_lr[slot][rate] for slot, rate in best.items()})

        cost = count(proposal.arch)
        arch = proposal.arch
        groups.append(Group(pid, proposal.method, proposal.params, proposal.target.to_dict(), cost.macs,
                            cost.params, proposal.provenance.get("base_val_acc"), arch.widths, arch.base_widths,
                            tuple(s.name for s in arch.slots), rows, by_lr, best))
    return groups


def best_learning_rate(rates: Mapping[float, Mapping[int, Mapping[str, Any]]]) -> float:
    """The learning rate whose ok rows have the highest mean *validation* accuracy over seeds (the test set never
    picks); ties and rates without ok rows go to the smallest rate."""
    def score(rate: float) -> float:
        values = [r["val_acc"] for r in rates[rate].values() if r.get("status") == "ok"]
        return statistics.fmean(values) if values else float("-inf")
    return max(sorted(rates), key=score)


# -- table ------------------------------------------------------------------------------------------------


def table_rows(groups: Sequence[Group], metric: str) -> list[dict[str, Any]]:
    """One record per proposal and budget: every arm's mean/std/n and the paired difference."""
    arms = arms_present(groups)
    out = []
    for g in groups:
        for budget in g.budgets:
            record: dict[str, Any] = {"proposal": g.pid, "method": g.method, "target": g.target_label,
                                      "budget": budget, "macs": g.macs, "params": g.params_count,
                                      "base_val_acc": g.base_val_acc, "metric": metric}
            for arm in arms:
                values = g.values(arm, "finetune" if arm == "finetune" else budget, metric)
                mean, std, n = mean_std(list(values.values()))
                record[arm] = {"mean": mean, "std": std, "n": n}
            record["proposed_minus_uniform"] = paired_difference(g.values("proposed", budget, metric),
                                                                 g.values("uniform", budget, metric))
            record["twin_error"] = {arm: g.worst_twin_error(arm) for arm in CONTROLS}
            out.append(record)
    return out


def arms_present(groups: Sequence[Group]) -> list[str]:
    arms = {a for g in groups for a, _ in g.arms}
    return [a for a in ARM_ORDER if a in arms] + sorted(arms - set(ARM_ORDER))


def _cell(stat: Mapping[str, float]) -> str:
    return "-" if stat["n"] == 0 else f"{format_percent(stat['mean'])} ± {format_percent(stat['std'])} (n={stat['n']})"


def _diff(d: Mapping[str, float]) -> str:
    if d["n"] == 0:
        return "-"
    if not has_interval(d):
        return f"{100 * d['mean']:+.2f} (n={d['n']})"
    return f"{100 * d['mean']:+.2f} [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}] (n={d['n']})"


def markdown_table(groups: Sequence[Group], metric: str = "test_acc") -> str:
    arms = arms_present(groups)
    header = ["method", "target", "budget", "MACs", "params", "base val"] + arms + ["proposed − uniform (95% CI)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table_rows(groups, metric):
        cells = [r["method"], r["target"], r["budget"], f"{r['macs'] / 1e6:.2f}M", f"{r['params'] / 1e6:.3f}M",
                 format_percent(r["base_val_acc"])] + [_cell(r[a]) for a in arms] + [_diff(r["proposed_minus_uniform"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\n{METRICS[metric].capitalize()} in % at the final epoch, mean ± std over seeds (n); "
                 "proposed − uniform is paired by seed with a 95% t interval (none below "
                 f"{MIN_PAIRED_SEEDS} seeds or when every seed gives the same difference); base val = the base "
                 "model's validation accuracy.")
    return "\n".join(lines)


def results_table(run: RunDir, metric: str = "test_acc") -> str:
    groups = collect(run)
    return markdown_table(groups, metric) if groups else "(no evaluated proposals yet)"


# -- cost of the controls -------------------------------------------------------------------------------


def twin_flags(groups: Sequence[Group]) -> list[str]:
    """One line per control (uniform twin, random widths) whose cost misses its proposal's by more than ±1%:
    that comparison is not at equal cost."""
    flags = []
    for g in groups:
        uniform = g.worst_twin_error("uniform")  # one network for every seed
        misses = [("uniform twin", uniform)] if uniform is not None else []
        misses += [(f"random widths (seed {seed})", e) for seed, e in g.twin_errors("random").items()]
        flags += [f"{g.method} at target {g.target_label}: {which} {100 * error:+.2f}% off the proposal's "
                  f"{g.target.get('match', 'macs')}" for which, error in misses
                  if not within_tolerance(error, g.tolerance)]
    return flags


def markdown_controls(groups: Sequence[Group]) -> str:
    """The cost error of every proposal's controls; ones outside ±1% are marked."""
    def cell(error: float | None, tolerance: float) -> str:
        if error is None:
            return "-"
        return f"{100 * error:+.2f}%" + ("" if within_tolerance(error, tolerance) else
                                         f" **outside ±{100 * tolerance:g}%**")

    lines = ["| method | target | MACs | params | uniform twin | random widths (worst seed) |",
             "|---|---|---|---|---|---|"]
    for g in groups:
        lines.append(f"| {g.method} | {g.target_label} | {g.macs / 1e6:.2f}M | {g.params_count / 1e6:.3f}M | "
                     f"{cell(g.worst_twin_error('uniform'), g.tolerance)} | "
                     f"{cell(g.worst_twin_error('random'), g.tolerance)} |")
    lines.append("\nCost error = the control's cost / the proposal's cost − 1 (MACs, or params with `match: params`); "
                 "the design holds them to ±1%; larger errors are marked.")
    return "\n".join(lines)


# -- verdict ----------------------------------------------------------------------------------------------


def verdict(groups: Sequence[Group], metric: str = "test_acc") -> list[str]:
    """Sentences computed from the paired differences: where proposals beat uniform, significantly or not."""
    lines = []
    for r in table_rows(groups, metric):
        d = r["proposed_minus_uniform"]
        where = f"{r['method']} at target {r['target']} ({r['macs'] / 1e6:.2f}M MACs, {r['budget']})"
        if d["n"] == 0:
            lines.append(f"{where}: no paired proposed/uniform results yet.")
        elif d["n"] < MIN_PAIRED_SEEDS:
            lines.append(f"{where}: {100 * d['mean']:+.2f} points vs uniform from {d['n']} seed(s) — too few to "
                         f"test (a verdict needs {MIN_PAIRED_SEEDS}).")
        elif not has_interval(d):
            lines.append(f"{where}: {100 * d['mean']:+.2f} points vs uniform in every one of {d['n']} seeds — "
                         "identical differences give no interval; not tested.")
        elif d["low"] > 0:
            lines.append(f"{where}: beats the uniform twin by {100 * d['mean']:+.2f} points "
                         f"(95% CI [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}], n={d['n']}) — significant.")
        elif d["high"] < 0:
            lines.append(f"{where}: worse than the uniform twin by {100 * -d['mean']:.2f} points "
                         f"(95% CI [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}], n={d['n']}) — significant.")
        else:
            lines.append(f"{where}: {100 * d['mean']:+.2f} points vs uniform, 95% CI [{100 * d['low']:+.2f}, "
                         f"{100 * d['high']:+.2f}] includes 0 (n={d['n']}) — no significant difference.")
    return lines


# -- fine-tune / distill vs scratch ---------------------------------------------------------------------------

# (label, arm, its budget or None for each scratch budget, reference arm, its budget or None, compute regime)
COMPARISONS = (
    ("fine-tune − scratch", "finetune", "finetune", "proposed", None, "post-pruning"),
    ("distill − scratch", "distill", "finetune", "proposed", None, "post-pruning"),
    ("teacher, from scratch: distill-scratch − scratch", "distill-scratch", None, "proposed", None, "post-pruning"),
    ("inherited weights under a teacher: distill − distill-scratch", "distill", "finetune", "distill-scratch", None,
     "post-pruning"),
    ("widths under a teacher: distill-scratch − uniform-distill", "distill-scratch", None, "uniform-distill", None,
     "post-pruning"),
    ("fine-tune − scratch-full", "finetune", "finetune", "scratch-full", "scratch-full", "total"),
    ("distill − scratch-full", "distill", "finetune", "scratch-full", "scratch-full", "total"),
)


def comparison_rows(groups: Sequence[Group], metric: str = "test_acc") -> list[dict[str, Any]]:
    """Every :data:`COMPARISONS` entry a group has both arms of: the paired difference (95% CI) and the ratio of
    the two arms' mean compute — post-pruning (``train_macs``) and whole pipeline (``pipeline_macs``) — so a
    reader sees whether the comparison is at equal compute. Rows without ``compute`` give no ratio."""
    out = []
    for g in groups:
        for label, arm, budget, ref, ref_budget, regime in COMPARISONS:
            for scratch in g.budgets if budget is None or ref_budget is None else [None]:
                a, b = (budget or scratch, ref_budget or scratch)
                values, reference = g.values(arm, a, metric), g.values(ref, b, metric)
                if not values or not reference:
                    continue
                where = "" if scratch is None else f" ({scratch})"
                out.append({"method": g.method, "target": g.target_label, "comparison": label + where,
                            "regime": regime, "difference": paired_difference(values, reference),
                            "train_ratio": _compute_ratio(g, (arm, a), (ref, b), "train_macs"),
                            "pipeline_ratio": _compute_ratio(g, (arm, a), (ref, b), "pipeline_macs")})
    return out


def _compute_ratio(g: Group, first: tuple[str, str], second: tuple[str, str], key: str) -> float | None:
    means = [_mean_compute(g.arms.get(slot, {}), key) for slot in (first, second)]
    return None if None in means else means[0] / means[1]


def _mean_compute(rows: Mapping[int, Mapping[str, Any]], key: str) -> float | None:
    values = [r["compute"][key] for r in rows.values() if r.get("status") == "ok" and "compute" in r]
    return statistics.fmean(values) if values else None


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}×"


def _significance(d: Mapping[str, float]) -> str:
    if d["n"] < MIN_PAIRED_SEEDS or not has_interval(d):
        return "not tested"
    if d["low"] > 0 or d["high"] < 0:
        return "better" if d["low"] > 0 else "worse"
    return "no significant difference"


def markdown_comparisons(groups: Sequence[Group], metric: str = "test_acc") -> str:
    """The verdict table: fine-tune and distillation against scratch training, at post-pruning and total compute."""
    lines = ["| method | target | comparison | regime | compute (post-pruning) | compute (pipeline) | "
             "difference (95% CI) | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in comparison_rows(groups, metric):
        lines.append(f"| {r['method']} | {r['target']} | {r['comparison']} | {r['regime']} | "
                     f"{_ratio(r['train_ratio'])} | {_ratio(r['pipeline_ratio'])} | {_diff(r['difference'])} | "
                     f"{_significance(r['difference'])} |")
    lines.append(f"\n{METRICS[metric].capitalize()} difference in points, paired by seed, each arm at its best "
                 "validation learning rate (with `lr_grid`); compute = the first arm's mean compute / the second's "
                 "(post-pruning: this training in MAC × images, a teacher's forward pass included; pipeline: plus the "
                 "base-model training it depended on). A comparison is at equal compute where its ratio is ~1×; "
                 "`scratch-full` trains with the whole prune pipeline's compute (base training + fine-tuning).")
    return "\n".join(lines)


def teacher_lines(groups: Sequence[Group]) -> list[str]:
    """The teacher of each method's distillation arms: its base model and validation accuracy."""
    seen, lines = set(), []
    for g in groups:
        row = next((g.row(arm) for arm in ("distill", "distill-scratch", "uniform-distill") if g.row(arm)), None)
        key = (row or {}).get("compute", {}).get("base_model")
        if row is None or (g.method, key) in seen:
            continue
        seen.add((g.method, key))
        lines.append(f"{g.method}: the base model{f' {key}' if key else ''}, validation accuracy "
                     f"{format_percent(g.base_val_acc)}%")
    return lines


def markdown_lr_sensitivity(groups: Sequence[Group]) -> str:
    """Accuracy of every arm at every learning rate of ``lr_grid``; the rate each arm is reported at in bold."""
    rates = sorted({rate for g in groups for by_rate in g.lr_arms.values() for rate in by_rate})
    lines = ["| method | target | arm | budget | " + " | ".join(f"lr {rate:g}" for rate in rates) + " |",
             "|" + "---|" * (4 + len(rates))]
    for g in groups:
        for (arm, budget), by_rate in sorted(g.lr_arms.items(), key=lambda item: _arm_rank(item[0])):
            cells = []
            for rate in rates:
                test = mean_std(_ok(by_rate.get(rate, {}), "test_acc"))
                val = mean_std(_ok(by_rate.get(rate, {}), "val_acc"))
                cell = "-" if test[2] == 0 else f"{format_percent(test[0])} ± {format_percent(test[1])} " \
                                                f"(val {format_percent(val[0])})"
                cells.append(f"**{cell}**" if rate == g.best_lr[(arm, budget)] and cell != "-" else cell)
            lines.append(f"| {g.method} | {g.target_label} | {arm} | {budget} | " + " | ".join(cells) + " |")
    lines.append("\nTest accuracy in %, mean ± std over seeds (validation accuracy in brackets); each arm is reported "
                 "at the learning rate in bold, the best by mean validation accuracy — every arm is trained at every "
                 "rate.")
    return "\n".join(lines)


def _ok(rows: Mapping[int, Mapping[str, Any]], metric: str) -> list[float]:
    return [r[metric] for r in rows.values() if r.get("status") == "ok" and r.get(metric) is not None]


def _arm_rank(slot: tuple[str, str]) -> tuple[int, str]:
    arm, budget = slot
    return (ARM_ORDER.index(arm) if arm in ARM_ORDER else len(ARM_ORDER), budget)


def plot_accuracy_vs_compute(groups: Sequence[Group], path: Path, metric: str = "test_acc") -> list[Path]:
    """Accuracy vs compute of every arm (mean ± std over seeds): post-pruning training compute on the left, the
    whole pipeline's on the right."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, key, title in ((axes[0], "train_macs", "post-pruning training"), (axes[1], "pipeline_macs", "pipeline")):
        for arm in arms_present(groups):
            xs, ys, es = [], [], []
            for g in groups:
                for (a, budget), rows in sorted(g.arms.items()):
                    compute, values = _mean_compute(rows, key), list(g.values(a, budget, metric).values())
                    if a == arm and compute is not None and values:
                        mean, std, _ = mean_std(values)
                        xs.append(compute)
                        ys.append(100 * mean)
                        es.append(100 * std)
            if xs:
                ax.errorbar(xs, ys, yerr=es, fmt="o", capsize=3, label=arm)
        ax.set_xscale("log")
        ax.set_xlabel(f"{title} compute (MAC × images)")
        ax.set_title(f"{METRICS[metric].capitalize()} vs {title} compute")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{METRICS[metric]} (%)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plots_compute(groups: Sequence[Group]) -> bool:
    """Whether the report draws accuracy vs compute: rows carry their compute (rows written before compute
    accounting do not) and some arm is more than a scratch training and its controls."""
    return any("compute" in r for g in groups for rows in g.arms.values() for r in rows.values()) and \
        any(a not in (*CONTROLS, "proposed") for a in arms_present(groups))


# -- latency ----------------------------------------------------------------------------------------------


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


# -- plots ------------------------------------------------------------------------------------------------


def plot_accuracy_vs_macs(groups: Sequence[Group], path: Path, metric: str = "test_acc") -> list[Path]:
    """Accuracy vs MACs: one marker series per method, the uniform twins as a curve (dense and masked twins
    apart: they are different networks at the same MACs), the Pareto front."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    budget = _main_budget(groups)
    for masked, style, label in ((False, "k--o", "uniform twin"), (True, "k:s", "uniform-sparsity twin (masked)")):
        twins = sorted({(g.row("uniform")["macs"], _mean(g.values("uniform", budget, metric))) for g in groups
                        if g.row("uniform") and g.values("uniform", budget, metric)
                        and ("masks" in g.row("uniform")["arch"]) == masked})
        if twins:
            ax.plot([m / 1e6 for m, _ in twins], [100 * a for _, a in twins], style, ms=4, label=label)
    points = []
    for method in sorted({g.method for g in groups}):
        xs, ys, es = [], [], []
        for g in groups:
            values = list(g.values("proposed", budget, metric).values())
            if g.method == method and values:
                mean, std, _ = mean_std(values)
                xs.append(g.macs / 1e6)
                ys.append(100 * mean)
                es.append(100 * std)
                validation = list(g.values("proposed", budget, "val_acc").values())
                if validation:
                    points.append((g.macs / 1e6, statistics.fmean(validation), 100 * mean))
        if xs:
            ax.errorbar(xs, ys, yerr=es, fmt="o", capsize=3, label=method)
    front = [(x, y) for x, _, y in _pareto(points)]
    if len(front) > 1:
        ax.plot(*zip(*front), "-", color="tab:gray", alpha=0.5, lw=4, label="Pareto front (proposals, by validation)")
    ax.set_xlabel("MACs (millions, per image)")
    ax.set_ylabel(f"{METRICS[metric]} (%)")
    ax.set_title(f"{METRICS[metric].capitalize()} vs MACs ({budget}, mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_widths(groups: Sequence[Group], path: Path) -> list[Path]:
    """Kept fraction of every slot's base width, one line per proposal (the paper's Fig. 4 view)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(groups[0].widths)), 4))
    for g in groups:
        ratios = [w / b for w, b in zip(g.widths, g.base_widths)]
        ax.plot(range(len(ratios)), ratios, "o-", ms=3, label=f"{g.method} @ {g.target_label}")
    ax.set_xticks(range(len(groups[0].slot_names)))
    ax.set_xticklabels(groups[0].slot_names, rotation=90, fontsize=6)
    ax.set_ylabel("width / base width")
    ax.set_ylim(0, 1.05)
    ax.set_title("Per-slot widths of the discovered architectures")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _pareto(points: Sequence[tuple[float, float, Any]]) -> list[tuple[float, float, Any]]:
    """Points ``(cost, score, payload)`` that no cheaper point matches or beats on score (the selection
    score: validation accuracy; the payload is what is drawn)."""
    front, best = [], float("-inf")
    for point in sorted(points, key=lambda p: (p[0], -p[1])):
        if point[1] > best:
            front.append(point)
            best = point[1]
    return front


def _main_budget(groups: Sequence[Group]) -> str:
    budgets = {b for g in groups for b in g.budgets}
    return "scratch-e" if "scratch-e" in budgets else sorted(budgets)[0]


def _mean(values: Mapping[int, float]) -> float:
    return statistics.fmean(values.values())


def _pyplot():
    import matplotlib  # only the plots need it, and it is slow to import

    matplotlib.use("Agg")  # headless: set the backend before pyplot is imported
    import matplotlib.pyplot as plt  # after the backend is chosen

    plt.rcParams["svg.hashsalt"] = "prunenas"  # deterministic SVG ids
    return plt


def _save(fig: Any, path: Path) -> list[Path]:
    import matplotlib.pyplot as plt  # only the plots need it, and it is slow to import

    paths = []
    for suffix, metadata in ((".png", {"Software": None}), (".svg", {"Date": None, "Creator": None})):
        target = path.with_suffix(suffix)
        fig.savefig(target, dpi=120, metadata=metadata)
        paths.append(target)
    plt.close(fig)
    return paths


# -- the report -------------------------------------------------------------------------------------------


def write_report(run: RunDir, out: str | os.PathLike | None = None, fmt: str = "md",
                 latency: bool = True) -> dict[str, Any]:
    """Write the report of ``run`` into ``out`` (default ``RUN/report``); returns what was written: ``folder``,
    ``files``, ``data`` (:func:`report_data`) and, for ``fmt="md"``, the markdown ``text``."""
    out = Path(out) if out else run.path / "report"
    state = run.state()
    groups = collect(run)  # read (and reject a corrupt run) before the report folder exists
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"folder": str(out), "files": [], "data": report_data(state, groups)}
    if fmt == "md":
        text = _markdown(run, state, groups)
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
        if latency:
            records = latency_table(run, groups)
            (out / "latency.md").write_text(markdown_latency(records) + "\n")
            written["files"].append("latency.md")
    return written


def report_data(state: Mapping[str, Any], groups: Sequence[Group]) -> dict[str, Any]:
    """The report as one JSON-ready object (report.json, ``report --json``): run name and status, the test and
    validation tables (:func:`table_rows`) and the verdict. A number that is not finite (no interval below
    ``MIN_PAIRED_SEEDS`` pairs, no mean without values) is ``None``: JSON has no NaN."""
    return finite_or_none({"run": state.get("name"), "status": state.get("status"),
                           "test": table_rows(groups, "test_acc"), "validation": table_rows(groups, "val_acc"),
                           "verdict": verdict(groups), "comparisons": comparison_rows(groups)})


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


def _markdown(run: RunDir, state: Mapping[str, Any], groups: Sequence[Group]) -> str:
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
                  "## Verdict", "", *[f"- {line}" for line in verdict(groups)], "",
                  *_compute_fair_sections(groups),
                  "## Cost of the controls", "", markdown_controls(groups), "",
                  "Plots: `accuracy_vs_macs.png` (test accuracy vs MACs, uniform twins as a curve, the Pareto front "
                  "of the proposals by validation accuracy), "
                  "`widths.png` (kept fraction per slot). Latency: `latency.md`.", ""]
    if failed:
        parts += ["## Failed or diverged trainings", "", "| key | arm | method | status | error |",
                  "|---|---|---|---|---|"]
        parts += [f"| {r['key']} | {r['arm']} | {r.get('method')} | {r['status']} | "
                  f"{str(r.get('error', '')).replace('|', '/')[:120]} |" for r in failed]
        parts.append("")
    return "\n".join(parts)


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
