"""Latency-constrained channel selection as a grouped (multiple-choice) knapsack, as in HALP (Shen et al.,
"Structural Pruning via Latency-Saliency Knapsack", NeurIPS 2022).

Each slot keeps a prefix of its channels sorted by importance (descending); keeping ``k`` channels is worth
the sum of the top-``k`` importances and costs a latency that depends on ``k``. One choice per slot, total
latency within the budget, total importance maximal. HALP solves it greedily; here it is solved exactly by
dynamic programming on a grid of ``resolution`` latency units per budget. Costs are rounded *up* to the grid,
so the chosen widths always fit the true budget; the result is optimal for the rounded costs (exactly optimal
when the costs are multiples of ``budget / resolution``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from prunenas.errors import BudgetError


def grouped_knapsack(values: Sequence[Sequence[float]], costs: Sequence[Sequence[float]], budget: float,
                     resolution: int = 1000) -> list[int]:
    """Index of the chosen option in each group: maximal total value with total cost <= ``budget``.

    ``values[g][i]`` and ``costs[g][i]`` describe option ``i`` of group ``g``; costs are >= 0. Raises
    :class:`~prunenas.errors.BudgetError` when even the cheapest options exceed the budget.
    """
    _check(values, costs, budget, resolution)
    unit = budget / resolution
    grid = [[math.ceil(c / unit - 1e-9) for c in group] for group in costs]
    if sum(min(group) for group in grid) > resolution:
        cheapest = sum(min(group) for group in costs)
        raise BudgetError(f"latency budget {budget:g} is below the cheapest choice ({cheapest:g} at the "
                          f"knapsack's resolution {resolution})")
    best = np.full(resolution + 1, -np.inf)
    best[0] = 0.0
    choices = []
    for group_values, group_cost in zip(values, grid):
        new, choice = np.full_like(best, -np.inf), np.full(resolution + 1, -1)
        for i, (value, cost) in enumerate(zip(group_values, group_cost)):
            if cost > resolution:
                continue
            shifted = np.full_like(best, -np.inf)
            shifted[cost:] = best[:resolution + 1 - cost] + value
            better = shifted > new
            new[better], choice[better] = shifted[better], i
        best = new
        choices.append(choice)
    used = int(np.argmax(best))
    picked = []
    for group_cost, choice in zip(reversed(grid), reversed(choices)):
        i = int(choice[used])
        picked.append(i)
        used -= group_cost[i]
    return picked[::-1]


def keep_counts(importances: Sequence[Sequence[float]], latency: Sequence[Sequence[float]], budget: float,
                min_keep: int = 1, resolution: int = 1000) -> list[int]:
    """Channels to keep per slot under a latency ``budget`` (HALP's problem).

    ``importances[s]`` are slot ``s``'s channel importances (any order: the top ones are kept);
    ``latency[s][k - 1]`` is the latency cost of slot ``s`` keeping ``k`` channels, for ``k`` = 1..channels.
    Every slot keeps at least ``min_keep`` channels (capped at its channel count).
    """
    if len(importances) != len(latency):
        raise BudgetError(f"{len(importances)} slots of importances but {len(latency)} of latency costs")
    values, costs, offsets = [], [], []
    for s, (scores, cost) in enumerate(zip(importances, latency)):
        if len(cost) != len(scores):
            raise BudgetError(f"slot {s}: {len(scores)} channel importances but {len(cost)} latency costs")
        first = max(1, min(min_keep, len(scores)))
        prefix = [0.0]
        for score in sorted(scores, reverse=True):
            prefix.append(prefix[-1] + score)
        values.append(prefix[first:])
        costs.append(list(cost[first - 1:]))
        offsets.append(first)
    return [first + i for first, i in zip(offsets, grouped_knapsack(values, costs, budget, resolution))]


def _check(values: Sequence[Sequence[float]], costs: Sequence[Sequence[float]], budget: float,
           resolution: int) -> None:
    if not (isinstance(budget, (int, float)) and math.isfinite(budget) and budget > 0):
        raise BudgetError(f"knapsack budget {budget!r} must be a positive number")
    if not isinstance(resolution, int) or resolution < 1:
        raise BudgetError(f"knapsack resolution {resolution!r} must be a positive integer")
    if len(values) != len(costs) or not values:
        raise BudgetError(f"knapsack needs one or more groups of values and costs, got {len(values)} and "
                          f"{len(costs)}")
    for g, (vs, cs) in enumerate(zip(values, costs)):
        if not vs or len(vs) != len(cs):
            raise BudgetError(f"knapsack group {g}: {len(vs)} values and {len(cs)} costs; need equal, >= 1")
        if any(not math.isfinite(c) or c < 0 for c in cs):
            raise BudgetError(f"knapsack group {g}: costs must be finite and >= 0")
