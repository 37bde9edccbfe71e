"""The report's plots: accuracy vs MACs (with the uniform twins and the Pareto front), per-slot widths and
accuracy vs compute. Files are deterministic (no dates, fixed SVG ids)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prunenas.experiment import CONTROLS
from prunenas.runs.groups import METRICS, Group, arms_present, mean_compute
from prunenas.runs.stats import finite_number, mean_std


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
                    compute, values = mean_compute(rows, key), list(g.values(a, budget, metric).values())
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


def plot_fidelity(candidates: Sequence[Mapping[str, Any]], proxy: str, path: Path) -> list[Path]:
    """Proxy score vs full validation accuracy of the trained candidates, promoted and audit apart."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for role, marker in (("promoted", "o"), ("audit", "s")):
        points = [(c["proxy_score"], 100 * c["val_acc"]) for c in candidates
                  if c["role"] == role and finite_number(c["proxy_score"])]
        if points:
            ax.scatter(*zip(*points), marker=marker, label=f"{role} ({len(points)})")
    ax.set_xlabel(f"proxy score ({proxy})")
    ax.set_ylabel("validation accuracy, fully trained (%)")
    ax.set_title("Proxy score vs full training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plots_compute(groups: Sequence[Group]) -> bool:
    """Whether the report draws accuracy vs compute: rows carry their compute (rows written before compute
    accounting do not) and some arm is more than a scratch training and its controls."""
    return any("compute" in r for g in groups for rows in g.arms.values() for r in rows.values()) and \
        any(a not in (*CONTROLS, "proposed") for a in arms_present(groups))


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
