"""Budgets of the paper's comparison (Liu et al., ICLR 2019): the uniform-width twin at the same cost,
and the Scratch-E / Scratch-B training epochs.

* :func:`uniform_twin` — base widths x one multiplier, applied to every slot (residual-tied ones
  included), rounded and clamped by the space, solved so its MACs (or params) match a target within
  +-1%. This is the control every proposal is compared with. Small networks move in coarse steps when
  all widths round together, so the last step rounds up the ``k`` slots whose remainders are largest
  (each width stays within one rounding unit of base x multiplier). Head counts round to whole heads: a
  transformer with few heads (DeiT-Ti has 3) moves in coarse steps, and when no twin is within +-1% the
  closest one is returned with its error (:attr:`Twin.error`).
* :func:`scratch_epochs` — Scratch-E trains for the base schedule; Scratch-B for the same compute:
  ``int(base_epochs x MACs(base) / MACs(arch))`` (optionally capped, the paper caps at 2x on ImageNet),
  with the learning-rate milestones scaled by the same factor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from prunenas.arch import Architecture
from prunenas.cost import count
from prunenas.errors import BudgetError
from prunenas.recipes import Recipe, scale_milestones
from prunenas.spaces import Space

Match = Literal["macs", "params"]
TOLERANCE = 0.01


class CostFunction(Protocol):
    """A cost kind computed by an object, e.g. predicted latency on a device
    (:class:`prunenas.latency.cost.LatencyCost`): ``name`` labels it, ``tolerance`` is its twins' +- band."""

    name: str
    tolerance: float

    def __call__(self, arch: Architecture) -> float: ...


CostKind = Match | CostFunction
"""What a cost is counted in: ``"macs"``, ``"params"`` or a :class:`CostFunction`."""
REFINE_STEPS = 24


@dataclass(frozen=True)
class Twin:
    """A uniform-width architecture and how well it hits the target."""

    arch: Architecture
    multiplier: float
    target: float
    achieved: float
    match: CostKind

    @property
    def error(self) -> float:
        """Relative error ``achieved / target - 1``."""
        return cost_error(self.achieved, self.target)

    @property
    def within_tolerance(self) -> bool:
        return within_tolerance(self.error, tolerance_of(self.match))


def cost_error(achieved: float, target: float) -> float:
    """Relative cost error ``achieved / target - 1`` of a control network against the cost it was solved for."""
    return achieved / target - 1


def within_tolerance(error: float, tolerance: float = TOLERANCE) -> bool:
    """Whether a relative cost error is within the twins' band (+-1% for MACs and params)."""
    return abs(error) <= tolerance


def cost_of(arch: Architecture, match: CostKind) -> float:
    """Cost of ``arch``: MACs or params (exact integers), or what a :class:`CostFunction` says (e.g. ms)."""
    if not isinstance(match, str):
        return match(arch)
    if match not in ("macs", "params"):
        raise BudgetError(f"match {match!r} must be 'macs' or 'params'")
    return getattr(count(arch), match)


def cost_name(match: CostKind) -> str:
    """The label of a cost kind: ``macs``, ``params``, ``latency``."""
    return match if isinstance(match, str) else match.name


def tolerance_of(match: CostKind) -> float:
    """The relative band a twin of this cost kind is solved to: +-1% for counts, the function's own otherwise."""
    return TOLERANCE if isinstance(match, str) else match.tolerance


def uniform_widths(space: Space, multiplier: float, round_up: int | None = None,
                   shape: Sequence[float] | None = None) -> tuple[int, ...]:
    """Every base width times ``multiplier`` (and its ``shape`` factor), rounded and clamped by the space.

    ``round_up=None`` rounds to nearest; ``round_up=k`` rounds down all but the ``k`` slots with the largest
    remainders (ties: earlier slots first), which are rounded up.
    """
    scaled = [b * multiplier * (1.0 if shape is None else shape[i]) for i, b in enumerate(space.upper)]
    if round_up is None:
        return space.round_widths(scaled)
    units = [space.multiple(i) for i in range(len(scaled))]
    exact = [w / unit for w, unit in zip(scaled, units)]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - math.floor(exact[i])), i))
    up = set(order[:round_up])
    return tuple(space.round_width(i, (math.floor(x) + (i in up)) * units[i]) for i, x in enumerate(exact))


def uniform_twin(space: Space, target: float, match: CostKind = "macs", iterations: int = 60,
                 shape: Sequence[float] | None = None, at_most: bool = False) -> Twin:
    """The uniform architecture whose cost is closest to ``target`` (MACs or params).

    Cost is a non-decreasing step function of the multiplier; bisection finds the step that crosses the
    target, then a second bisection over how many slots round up refines it. The closest candidate is
    returned; ``Twin.within_tolerance`` says whether it is within +-1%. ``shape`` (one factor per slot in
    (0, 1]) scales slots unequally before the common multiplier — the random-widths control uses it.
    ``at_most`` prefers the closest candidate that costs at most ``target x (1 + 1%)`` (proposers whose
    result must respect a budget), when one exists.
    """
    if target <= 0:
        raise BudgetError(f"target {cost_name(match)} {target} must be positive")
    lo, hi = 0.0, 1.0 / min(shape) if shape else 1.0  # at hi every slot reaches its base width
    if _twin(space, hi, None, target, match, shape).achieved <= target:
        return _twin(space, hi, None, target, match, shape)
    if _twin(space, lo, None, target, match, shape).achieved >= target:
        return _twin(space, lo, None, target, match, shape)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        if _twin(space, mid, None, target, match, shape).achieved < target:
            lo = mid
        else:
            hi = mid
    candidates = [_twin(space, lo, None, target, match, shape), _twin(space, hi, None, target, match, shape)]
    if not any(t.within_tolerance for t in candidates):
        for j in range(REFINE_STEPS + 1):  # floor/ceil patterns of multipliers around the crossing
            candidates += _refine_rounding(space, lo * (0.85 + 0.15 * j / REFINE_STEPS), target, match, shape)
    if at_most:
        candidates = [t for t in candidates if t.error <= tolerance_of(match)] or candidates
    return min(candidates, key=lambda t: (abs(t.error), t.multiplier))


def _refine_rounding(space: Space, multiplier: float, target: float, match: CostKind,
                     shape: Sequence[float] | None) -> list[Twin]:
    """Bisect the number of rounded-up slots at ``multiplier``: cost is non-decreasing in it."""
    k_lo, k_hi = 0, len(space.upper)
    if _twin(space, multiplier, k_hi, target, match, shape).achieved < target:
        return [_twin(space, multiplier, k_hi, target, match, shape)]
    while k_hi - k_lo > 1:
        mid = (k_lo + k_hi) // 2
        if _twin(space, multiplier, mid, target, match, shape).achieved < target:
            k_lo = mid
        else:
            k_hi = mid
    return [_twin(space, multiplier, k, target, match, shape) for k in (k_lo, k_hi)]


def _twin(space: Space, multiplier: float, round_up: int | None, target: float, match: CostKind,
          shape: Sequence[float] | None = None) -> Twin:
    arch = space.arch(uniform_widths(space, multiplier, round_up, shape))
    return Twin(arch, multiplier, target, cost_of(arch, match), match)


def target_from_ratio(space: Space, ratio: float, match: CostKind = "macs") -> float:
    """Absolute cost target for a fraction ``ratio`` in (0, 1] of the base network's cost (counts: an integer)."""
    if not 0 < ratio <= 1:
        raise BudgetError(f"ratio {ratio} must be in (0, 1]")
    if not isinstance(match, str):
        return ratio * cost_of(space.base, match)
    return max(1, round(ratio * cost_of(space.base, match)))


@dataclass(frozen=True)
class Schedule:
    """Training length and learning-rate milestones (epochs)."""

    epochs: int
    milestones: tuple[int, ...]


def scratch_epochs(
    mode: str,
    base_epochs: int,
    base_macs: int,
    arch_macs: int,
    cap: float | None = None,
    base_milestones: Sequence[int] = (),
) -> Schedule:
    """Scratch-E or Scratch-B schedule (Liu et al., ICLR 2019, §4).

    Args:
        mode: ``"E"``/``"scratch-e"`` (same epochs) or ``"B"``/``"scratch-b"`` (same compute).
        base_epochs, base_milestones: the unpruned model's schedule.
        base_macs, arch_macs: MACs of the unpruned and the trained network.
        cap: largest epoch multiplier for Scratch-B (the paper uses 2 on ImageNet, none on CIFAR).

    Returns:
        ``int(base_epochs x min(ratio, cap))`` epochs for B, milestones ``int(m x epochs / base_epochs)``.
    """
    kind = mode.upper().removeprefix("SCRATCH-")
    if kind not in ("E", "B"):
        raise BudgetError(f"budget {mode!r} must be scratch-e or scratch-b")
    if base_epochs < 1 or base_macs <= 0 or arch_macs <= 0:
        raise BudgetError("base_epochs, base_macs and arch_macs must be positive")
    if kind == "E":
        return Schedule(base_epochs, tuple(base_milestones))
    factor = base_macs / arch_macs
    if cap is not None:
        factor = min(factor, cap)
    epochs = max(1, int(base_epochs * factor))
    return Schedule(epochs, scale_milestones(base_milestones, base_epochs, epochs))


def scratch_full_epochs(base_epochs: int, base_macs: int, arch_macs: int, finetune_epochs: int) -> int:
    """Epochs of the ``scratch-full`` arm: training ``arch`` from scratch with the compute of the whole prune
    pipeline it competes with — the base model's training plus the fine-tuning of the pruned network —
    converted to epochs the way Scratch-B converts MACs (same images per epoch, so epochs scale with MACs):
    ``floor((base_epochs x MACs(base) + finetune_epochs x MACs(arch)) / MACs(arch))``, never capped (the
    point is equal total compute). Integer arithmetic: no floating-point floor at exact multiples.
    """
    if base_epochs < 0 or finetune_epochs < 0 or base_macs <= 0 or arch_macs <= 0:
        raise BudgetError("base_epochs and finetune_epochs must be >= 0, base_macs and arch_macs positive")
    return max(1, (base_epochs * base_macs + finetune_epochs * arch_macs) // arch_macs)


def budget_recipe(recipe: Recipe, budget: str, space: Space, arch: Architecture, epochs: int | None = None,
                  pipeline: tuple[int, int] | None = None) -> Recipe:
    """The recipe ``arch`` trains with under ``budget`` (``scratch-e`` / ``scratch-b`` / ``scratch-full``):
    ``epochs`` (default: the recipe's) for Scratch-E, stretched by :func:`scratch_epochs` for Scratch-B and by
    :func:`scratch_full_epochs` for ``scratch-full``, whose ``pipeline`` is (base-model epochs, fine-tuning
    epochs); milestones scaled once, from the named recipe's (scaling already-floored milestones would floor
    twice). The one rule for the search's trials and ``prunenas train``."""
    epochs = epochs or recipe.epochs
    if budget in ("scratch-b", "B"):
        epochs = scratch_epochs("scratch-b", epochs, count(space.base).macs, count(arch).macs,
                                space.scratch_b_cap).epochs
    elif budget == "scratch-full":
        if pipeline is None:
            raise BudgetError("budget scratch-full needs the pipeline's (base epochs, fine-tuning epochs)")
        epochs = scratch_full_epochs(pipeline[0], count(space.base).macs, count(arch).macs, pipeline[1])
    elif budget not in ("scratch-e", "E"):
        raise BudgetError(f"budget {budget!r} must be scratch-e, scratch-b or scratch-full")
    return recipe.with_epochs(epochs)
