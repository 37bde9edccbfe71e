"""Reports of a run folder: the paper-style table (proposed vs uniform and the other arms, Scratch-E/B,
mean ± std over seeds, paired difference with a 95% confidence interval)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prunenas.proposers import load_proposal
from prunenas.results import mean_std, paired_difference
from prunenas.rundir import RunDir


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
    arms: dict[tuple[str, str], dict[int, dict[str, Any]]] = field(default_factory=dict)

    def values(self, arm: str, budget: str, metric: str) -> dict[int, float]:
        rows = self.arms.get((arm, budget), {})
        return {seed: row[metric] for seed, row in rows.items() if row.get("status") == "ok"}


def collect(run: RunDir) -> list[Group]:
    """The evaluated proposals of a run (finished or still running) with their rows."""
    plan = run.read_json("plan.json") or {"selected": [], "proposals": {}}
    latest = run.results.latest()
    groups = []
    for pid in plan["selected"]:
        proposal = load_proposal(run.proposal_path(pid))
        rows = {}
        for entry in plan["proposals"].get(pid, []):
            row = latest.get(entry["key"])
            if row is not None:
                rows.setdefault((entry["arm"], entry["budget"]), {})[entry["seed"]] = row
        first = next((r for arm in rows.values() for r in arm.values()), None)
        groups.append(Group(pid, proposal.method, proposal.params, proposal.target.to_dict(),
                            first["macs"] if first else 0, first["params"] if first else 0,
                            proposal.provenance.get("base_val_acc"), rows))
    return groups


def _cell(values: Mapping[int, float]) -> str:
    mean, std, n = mean_std(list(values.values()))
    return "-" if n == 0 else f"{100 * mean:.2f} ± {100 * std:.2f} (n={n})"


def results_table(run: RunDir, metric: str = "test_acc") -> str:
    """Markdown table: one line per proposal and budget, accuracies in % (final epoch)."""
    groups = collect(run)
    if not groups:
        return "(no evaluated proposals yet)"
    arms = sorted({a for g in groups for a, _ in g.arms}, key=_arm_order)
    header = ["method", "target", "budget", "MACs", "params"] + arms + ["proposed − uniform (95% CI)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g in groups:
        for budget in sorted({b for _, b in g.arms if b != "finetune"}) or ["finetune"]:
            cells = [_cell(g.values(arm, "finetune" if arm == "finetune" else budget, metric)) for arm in arms]
            diff = paired_difference(g.values("proposed", budget, metric), g.values("uniform", budget, metric))
            ci = "-" if diff["n"] == 0 else (f"{100 * diff['mean']:+.2f} [{100 * diff['low']:+.2f}, "
                                             f"{100 * diff['high']:+.2f}]" if diff["n"] > 1 else
                                             f"{100 * diff['mean']:+.2f}")
            target = g.target.get("preset") or g.target.get("ratio") or g.target.get("cost")
            lines.append("| " + " | ".join([g.method, str(target), budget, f"{g.macs / 1e6:.2f}M",
                                            f"{g.params_count / 1e6:.3f}M", *cells, ci]) + " |")
    lines.append(f"\n{metric.replace('_', ' ')} in %, final epoch, mean ± std over seeds; "
                 "proposed − uniform: paired by seed, 95% t interval.")
    return "\n".join(lines)


def _arm_order(arm: str) -> tuple[int, str]:
    order = ["proposed", "uniform", "random", "finetune", "lottery"]
    return (order.index(arm) if arm in order else len(order), arm)
