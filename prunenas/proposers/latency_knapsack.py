"""Latency-aware channel selection as a knapsack (HALP: Shen et al., "Structural Pruning via Latency-Saliency
Knapsack", NeurIPS 2022).

Importance of a channel = the L1 norm of its filter in the trained base network (as ``l1-norm``, per-layer
normalised, tied producers summed). Each slot keeps its top-``k`` channels; keeping ``k`` is worth the sum of
their importances and costs what the target counts — predicted latency on the target's device (the per-layer
table), or MACs/params. One choice of ``k`` per slot, total cost within the target, total importance maximal:
a grouped knapsack, solved exactly by :func:`prunenas.latency.knapsack.grouped_knapsack`.

The cost of a slot's ``k`` depends on its neighbours' widths (a conv costs in x out), so, as HALP does, the
per-slot costs are linearised around the current widths: ``c_s(k) = cost(widths with slot s at k) - cost(widths
with slot s at its smallest option)``, starting from the base widths and re-linearised around each answer for
``rounds`` rounds. When the linearisation underestimates (shrinking two neighbours saves less than the sum of
shrinking each), the knapsack budget is bisected down until the true cost fits. For a cost that is a sum of
per-slot terms the first round is exact, and the widths are the knapsack optimum.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from prunenas.budget import CostKind, cost_of, tolerance_of
from prunenas.errors import ArchitectureError, BudgetError
from prunenas.latency.knapsack import grouped_knapsack
from prunenas.proposers.proposal import Proposal, Target
from prunenas.proposers.registry import Param, ProposerError, register_proposer
from prunenas.proposers.scoring import filter_norms, to_proposal, untied
from prunenas.proposers.select import NORMALIZATIONS, select_widths, slot_scores
from prunenas.spaces import Space

BUDGET_BISECTIONS = 12
"""Halvings of the knapsack budget's shrink factor when a round's answer costs more than the target."""


@dataclass(frozen=True)
class KnapsackChoice:
    """Widths chosen by :func:`knapsack_widths`, their total importance, true cost and the rounds it took."""

    widths: tuple[int, ...]
    importance: float
    cost: float
    rounds: int


def width_options(space: Space, slot: int) -> list[int]:
    """Widths a slot may keep: multiples of the slot's rounding unit (:meth:`Space.multiple
    <prunenas.spaces.Space.multiple>`) from its lower bound (at least 1, rounded up) to its base width, and the
    base width itself."""
    unit, upper = space.multiple(slot), space.upper[slot]
    floor = min(upper, max(unit, -(-max(1, space.lower[slot]) // unit) * unit))
    return sorted({*range(floor, upper + 1, unit), upper})


def top_k_values(scores: Tensor, options: Sequence[int]) -> list[float]:
    """Sum of the ``k`` largest scores for each ``k`` in ``options``."""
    ordered = scores.sort(descending=True).values.cumsum(0)
    return [float(ordered[k - 1]) for k in options]


def knapsack_widths(space: Space, scores: Mapping[int, Tensor], cost: CostKind, goal: float, rounds: int = 3,
                    resolution: int = 1000) -> KnapsackChoice:
    """Widths maximising the summed importance of kept channels with ``cost`` at most ``goal`` (+ the cost
    kind's tolerance), by the linearised grouped knapsack of the module docstring. Unscored slots keep their
    base width. Raises :class:`BudgetError` when no answer fits."""
    options = {s: width_options(space, s) for s in scores}
    values = {s: top_k_values(scores[s], options[s]) for s in scores}
    limit = goal * (1 + tolerance_of(cost))
    widths, best = tuple(space.upper), None
    for round_ in range(1, rounds + 1):
        costs, fixed = linearised_costs(space, widths, options, cost)
        found = _fitting_answer(space, scores, options, values, costs, goal - fixed, cost, limit, resolution)
        if found is None:
            break
        choice = KnapsackChoice(found[0], found[1], found[2], round_)
        if best is None or choice.importance > best.importance:
            best = choice
        if choice.widths == widths:
            break
        widths = choice.widths
    if best is None:
        raise BudgetError(f"no widths of {space.name} that this knapsack reaches cost at most {limit:.6g}")
    return best


def linearised_costs(space: Space, widths: Sequence[int], options: Mapping[int, Sequence[int]],
                     cost: CostKind) -> tuple[dict[int, list[float]], float]:
    """Per-slot option costs around ``widths`` (``c_s(k)``, >= 0; ``inf`` for widths the family rejects there)
    and the fixed part, so that cost(widths') ~ fixed + sum_s c_s(widths'_s)."""
    current = cost_of(space.arch(widths), cost)
    out: dict[int, list[float]] = {}
    fixed = current
    for s, opts in options.items():
        row = [_cost_with(space, widths, s, k, cost) for k in opts]
        low = min(row)
        out[s] = [max(c - low, 0.0) for c in row]
        fixed -= max(current - low, 0.0)
    return out, fixed


def _cost_with(space: Space, widths: Sequence[int], slot: int, k: int, cost: CostKind) -> float:
    changed = list(widths)
    changed[slot] = k
    try:
        return cost_of(space.arch(changed), cost)
    except ArchitectureError:  # a family rule (e.g. non-decreasing option-A stages) rejects it here
        return float("inf")


def _fitting_answer(space: Space, scores: Mapping[int, Tensor], options: Mapping[int, Sequence[int]],
                    values: Mapping[int, Sequence[float]], costs: Mapping[int, Sequence[float]], budget: float,
                    cost: CostKind, limit: float, resolution: int) -> tuple[tuple[int, ...], float, float] | None:
    """The knapsack answer at ``budget``, or, when its true cost exceeds ``limit``, at the largest bisected
    fraction of ``budget`` whose answer fits; None when nothing fits."""

    def solve(fraction: float) -> tuple[tuple[int, ...], float, float] | None:
        slots = list(options)
        keep = [[i for i, c in enumerate(costs[s]) if c != float("inf")] for s in slots]
        try:
            picked = grouped_knapsack([[values[s][i] for i in k] for s, k in zip(slots, keep)],
                                      [[costs[s][i] for i in k] for s, k in zip(slots, keep)],
                                      budget * fraction, resolution)
        except BudgetError:
            return None
        widths = list(space.upper)
        for s, k, i in zip(slots, keep, picked):
            widths[s] = options[s][k[i]]
        try:
            arch = space.arch(space.base.family_obj.repair_widths(space.base.opts, widths))
        except ArchitectureError:
            return None
        importance = sum(top_k_values(scores[s], [arch.widths[s]])[0] for s in slots)
        return arch.widths, importance, cost_of(arch, cost)

    if budget <= 0:
        return None
    full = solve(1.0)
    if full is not None and full[2] <= limit:
        return full
    lo, hi, best = 0.0, 1.0, None
    for _ in range(BUDGET_BISECTIONS):
        mid = (lo + hi) / 2
        answer = solve(mid)
        if answer is not None and answer[2] <= limit:
            lo, best = mid, answer
        else:
            hi = mid
    return best


@register_proposer("latency-knapsack", params={
    "normalization": Param("mean", NORMALIZATIONS, str, "per-layer normalisation of the L1 norms (as l1-norm)"),
    "prune_tied": Param(False, kind=bool, help="also prune residual streams"),
    "rounds": Param(3, kind=int, help="re-linearisations of the per-slot costs around the chosen widths",
                    low=1, high=10),
})
def latency_knapsack(space: Space, target: Target, provider: Any, params: Mapping[str, Any],
                     seed: int) -> Proposal:
    """Keep the channels of most L1 importance that fit a latency (or MAC) budget: HALP's knapsack (Shen et al.
    2022)."""
    if not target.is_cost:
        raise ProposerError("proposer 'latency-knapsack' needs a cost target (a latency, ratio or MACs)")
    base = provider.get(None)
    norms = filter_norms(base.arch, base.architecture_state(), p=1)
    scores = untied(base.arch, slot_scores(base.arch, norms, params["normalization"]), params["prune_tied"])
    choice = knapsack_widths(space, scores, target.cost_kind(space), target.absolute(space), params["rounds"])
    selection = select_widths(space, scores, choice.widths)
    return to_proposal(space, "latency-knapsack", target, selection, base, params, seed,
                       knapsack_importance=choice.importance, knapsack_round=choice.rounds)
