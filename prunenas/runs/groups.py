"""The evaluated proposals of a run folder with their result rows, grouped for the report (:class:`Group`).

With ``lr_grid`` every arm is trained at every learning rate; a group holds each rate's rows and reports the
rate of best mean *validation* accuracy.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prunenas.budget import TOLERANCE, cost_error
from prunenas.cost import count
from prunenas.experiment import ARMS
from prunenas.latency.cost import LATENCY_TOLERANCE
from prunenas.proposers import load_proposal
from prunenas.runs.rundir import RunDir

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
            if "twin_error" in entry:  # a twin several proposals share is one row: its error is this proposal's
                row = {**row, "twin_error": entry["twin_error"]}
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


def arms_present(groups: Sequence[Group]) -> list[str]:
    arms = {a for g in groups for a, _ in g.arms}
    return [a for a in ARM_ORDER if a in arms] + sorted(arms - set(ARM_ORDER))


def mean_compute(rows: Mapping[int, Mapping[str, Any]], key: str) -> float | None:
    """Mean compute ``key`` (``train_macs``, ``pipeline_macs``) of the ok rows that record it; None without."""
    values = [r["compute"][key] for r in rows.values() if r.get("status") == "ok" and "compute" in r]
    return statistics.fmean(values) if values else None
