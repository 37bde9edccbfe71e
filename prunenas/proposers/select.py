"""From channel scores to widths: per-slot scores, then widths by threshold, cost target, fraction or preset.

A proposer scores the channels of the layers of a base network (BN scale factors, filter norms, ...).
:func:`slot_scores` turns those per-layer scores into one score per channel of each width slot. The
selectors then choose how many channels each slot keeps, and which:

* :func:`select_by_threshold` — every channel scoring above one global threshold;
* :func:`select_by_cost` — the global threshold whose architecture meets a MAC or parameter target;
* :func:`select_fraction` — Network Slimming's rule: the threshold below which a fraction of all pooled
  scores lies;
* :func:`select_widths` — given widths (e.g. a preset), keeping each slot's highest-scoring channels.

Slots that grouped convolutions read keep whole groups (fixed group width: the groups of highest mean score)
or as many channels of every group (fixed group count: the best of each group); a threshold sees such a slot
through :func:`threshold_scores`.
Widths are rounded up to the space's ``multiple_of`` (head counts: to whole heads) and clamped into the space's
bounds; slots that would fall below their lower bound are raised to it (itself rounded up to ``multiple_of``,
capped at the base width) and reported (the seed crashed on zero-width layers).
Removable blocks are removed only on request. Cross-slot rules of the family (e.g. non-decreasing
option-A stream widths) are restored with :meth:`Family.repair_widths
<prunenas.families.base.Family.repair_widths>`, which only raises widths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from prunenas.arch import Architecture
from prunenas.budget import Match, cost_of
from prunenas.errors import ArchitectureError, BudgetError, UnknownNameError
from prunenas.families.base import Slot
from prunenas.spaces import Space

NORMALIZATIONS = ("none", "max", "mean", "l2")


@dataclass(frozen=True)
class Selection:
    """Chosen widths and channels.

    Attributes:
        widths: one width per slot (a valid architecture of the space: ``space.arch(widths)``).
        kept: every slot -> the indices of its ``widths[s]`` kept channels, ascending: the highest-scoring
            channels (ties: lower index first); unscored slots keep their first channels. This is the
            ``kept`` argument of :func:`prunenas.proposers.channels.inherit`.
        threshold: the global score threshold (channels scoring strictly above it count); ``None`` when the
            widths were given, ``-inf`` when every channel counts.
        floored: slots whose count above the threshold was below the slot's lower bound and were raised to it.
    """

    widths: tuple[int, ...]
    kept: dict[int, tuple[int, ...]]
    threshold: float | None
    floored: tuple[int, ...]


def slot_scores(
    arch: Architecture, layer_scores: Mapping[str, Tensor | Sequence[float]], normalization: str = "max"
) -> dict[int, Tensor]:
    """Per-slot channel scores from per-layer ones.

    Args:
        arch: the scored network's architecture.
        layer_scores: layer name -> one score per output channel of a producer conv/linear layer, or per
            channel of a batch norm over a single slot.
        normalization: applied per layer before summing: ``"none"``, ``"max"`` (divide by the largest
            magnitude), ``"mean"`` (by the mean magnitude) or ``"l2"`` (by the L2 norm). All-zero scores stay 0.

    Returns:
        Slot -> float64 scores, the sum over the scored layers of the slot (the producers of a tied slot and
        their batch norms add up). Slots without a scored layer are absent.
    """
    if normalization not in NORMALIZATIONS:
        raise UnknownNameError("normalization", normalization, list(NORMALIZATIONS))
    layers = {layer.name: layer for layer in arch.layers}
    out: dict[int, Tensor] = {}
    for name, scores in layer_scores.items():
        layer = layers.get(name)
        if layer is None:
            raise ArchitectureError(f"scored layer {name!r} is not a conv, linear or batch-norm layer of the network")
        if layer.is_norm and len(layer.inputs) != 1:
            raise ArchitectureError(f"scored layer {name!r} normalises {len(layer.inputs)} concatenated slots; "
                                    "score the producers of those slots instead")
        if not layer.is_norm and layer.output is None:
            raise ArchitectureError(f"scored layer {name!r} produces the network's outputs, not a width slot")
        slot = layer.inputs[0] if layer.is_norm else layer.output
        values = _vector(scores, layer.slot_channels, f"scores of layer {name!r}")
        out[slot] = out.get(slot, 0) + normalize(values, normalization)
    return out


def select_by_threshold(
    space: Space, scores: Mapping[int, Tensor | Sequence[float]], threshold: float, remove_blocks: bool = False
) -> Selection:
    """Keep the channels scoring strictly above ``threshold``.

    Each scored slot's count is rounded up to ``space.multiple_of`` and clamped into
    ``[space.lower[s], space.upper[s]]``, the lower bound also rounded up to ``multiple_of`` so that every
    width below the base is a multiple (raised slots are reported in ``floored``); unscored slots keep
    ``space.upper[s]``. With ``remove_blocks``, a removable block whose slots all count 0 channels is removed
    (its widths 0) instead of floored.
    """
    checked = _checked(space, scores)
    widths, floored = _widths_at(space, _sorted(threshold_scores(space, checked)), float(threshold), remove_blocks)
    space.arch(widths)
    return _selection(space, checked, widths, float(threshold), floored)


def select_by_cost(
    space: Space,
    scores: Mapping[int, Tensor | Sequence[float]],
    target: int,
    match: Match = "macs",
    tolerance: float = 0.01,
    remove_blocks: bool = False,
) -> Selection:
    """The global threshold whose architecture costs at most ``target x (1 + tolerance)``, closest to target.

    Cost (``"macs"`` or ``"params"``, :func:`prunenas.cost.count`) does not increase with the threshold, so a
    bisection over the distinct score values (plus ``-inf``: keep everything) finds it with
    ``log2(#channels) + 2`` cost evaluations. Widths follow :func:`select_by_threshold`.

    Raises:
        BudgetError: even the smallest reachable architecture (every scored slot at its lower bound) costs
            more than ``target x (1 + tolerance)``; the message gives that minimum.
    """
    if target <= 0:
        raise BudgetError(f"target {match} {target} must be positive")
    if tolerance < 0:
        raise BudgetError(f"tolerance {tolerance} must be >= 0")
    checked = _checked(space, scores)
    seen = threshold_scores(space, checked)
    ordered = _sorted(seen)
    values = torch.unique(torch.cat(list(seen.values()))).tolist() if seen else []
    thresholds = [float("-inf"), *values]
    evaluated: dict[int, tuple[tuple[int, ...], tuple[int, ...], int]] = {}

    def at(i: int) -> tuple[tuple[int, ...], tuple[int, ...], int]:
        if i not in evaluated:
            widths, floored = _widths_at(space, ordered, thresholds[i], remove_blocks)
            evaluated[i] = widths, floored, cost_of(space.arch(widths), match)
        return evaluated[i]

    limit, last = target * (1 + tolerance), len(thresholds) - 1
    if at(last)[2] > limit:
        extra = ", removable blocks removed" if remove_blocks else ""
        unscored = "; unscored slots at full width" if len(checked) < len(space.upper) else ""
        raise BudgetError(f"target {match} {target} is unreachable: the smallest architecture these scores select "
                          f"(every scored slot at its lower bound{extra}{unscored}) has {at(last)[2]} {match}, "
                          f"above target x (1 + {tolerance}) = {limit:.0f}")
    if at(0)[2] <= target or at(last)[2] > target:
        best = 0 if at(0)[2] <= target else last
    else:
        lo, hi = 0, last  # cost(lo) > target >= cost(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if at(mid)[2] <= target else (mid, hi)
        best = lo if at(lo)[2] <= limit and at(lo)[2] - target < target - at(hi)[2] else hi
    widths, floored, _ = at(best)
    return _selection(space, checked, widths, thresholds[best], floored)


def select_fraction(
    space: Space, scores: Mapping[int, Tensor | Sequence[float]], fraction: float, remove_blocks: bool = False
) -> Selection:
    """Network Slimming's rule (the seed's): pool all scores, sort ascending, ``threshold =
    sorted[int(total x fraction)]``, keep the channels scoring strictly above it (:func:`select_by_threshold`)."""
    if not 0 <= fraction < 1:
        raise BudgetError(f"fraction {fraction} must be in [0, 1)")
    checked = _checked(space, scores)
    if not checked:
        raise ArchitectureError("no slot is scored: nothing to pool")
    pooled = torch.cat(list(threshold_scores(space, checked).values())).sort().values
    return select_by_threshold(space, checked, float(pooled[int(pooled.numel() * fraction)]), remove_blocks)


def select_widths(space: Space, scores: Mapping[int, Tensor | Sequence[float]], widths: Sequence[int]) -> Selection:
    """Given widths (e.g. a preset's): keep each scored slot's highest-scoring channels, else its first ones."""
    arch = space.arch(widths)
    return _selection(space, _checked(space, scores), arch.widths, None, ())


def top_channels(scores: Tensor, width: int) -> tuple[int, ...]:
    """Indices of the ``width`` highest scores, ascending (ties: lower index first)."""
    order = torch.sort(-scores, stable=True).indices[:width]
    return tuple(sorted(order.tolist()))


def keep_channels(slot: Slot, scores: Tensor, width: int) -> tuple[int, ...]:
    """The ``width`` channels of a slot with these scores to keep, ascending: the highest-scoring ones
    (:func:`top_channels`) within the slot's group rule — whole groups, those of highest mean score (fixed group
    width), or the ``width / group_count`` highest-scoring channels of every group (fixed group count)."""
    groups = slot.groups_of(len(scores))
    if slot.group_width > 1:
        means = torch.stack([scores[g.start:g.stop].mean() for g in groups])
        return tuple(c for i in top_channels(means, width // slot.group_width) for c in groups[i])
    if slot.group_count > 1:
        per_group = width // slot.group_count
        return tuple(g.start + c for g in groups for c in top_channels(scores[g.start:g.stop], per_group))
    return top_channels(scores, width)


def threshold_scores(space: Space, scores: Mapping[int, Tensor]) -> dict[int, Tensor]:
    """The scores a global threshold compares: unchanged, except on slots that grouped convs read — every
    channel gets its group's mean score (fixed group width: a threshold keeps whole groups), or the mean over
    the groups of the scores of its rank within its group (fixed group count: as many of every group)."""
    out = {}
    for s, values in scores.items():
        slot = space.slots[s]
        if slot.group_width > 1:
            out[s] = values.view(-1, slot.group_width).mean(1).repeat_interleave(slot.group_width)
        elif slot.group_count > 1:
            blocks = values.view(slot.group_count, -1)
            order = blocks.argsort(dim=1, descending=True, stable=True)
            by_rank = blocks.gather(1, order).mean(0).expand_as(blocks)
            out[s] = torch.empty_like(blocks).scatter_(1, order, by_rank).flatten()
        else:
            out[s] = values
    return out


# -- internals -----------------------------------------------------------------------------------------
def _vector(values: Tensor | Sequence[float], length: int, what: str) -> Tensor:
    tensor = torch.as_tensor(values).detach().to("cpu", torch.float64)
    if tensor.shape != (length,):
        raise ArchitectureError(f"{what} have shape {list(tensor.shape)}, expected [{length}]")
    if not torch.isfinite(tensor).all():
        raise ArchitectureError(f"{what} contain NaN or infinite values")
    return tensor


def normalize(values: Tensor, normalization: str) -> Tensor:
    """One layer's scores divided by their largest magnitude, mean magnitude or L2 norm (``"none"``: unchanged)."""
    if normalization == "none":
        return values
    scale = {"max": values.abs().max(), "mean": values.abs().mean(), "l2": values.norm()}[normalization]
    return values / scale if scale > 0 else values


def _checked(space: Space, scores: Mapping[int, Tensor | Sequence[float]]) -> dict[int, Tensor]:
    n, out = len(space.upper), {}
    for slot, values in scores.items():
        if not isinstance(slot, int) or not 0 <= slot < n:
            raise ArchitectureError(f"scores name slot {slot!r}; space {space.name!r} has slots 0..{n - 1}")
        out[slot] = _vector(values, space.upper[slot], f"scores of slot {slot} ({space.slots[slot].name!r})")
    return out


def _sorted(scores: Mapping[int, Tensor]) -> dict[int, Tensor]:
    return {slot: values.sort().values for slot, values in scores.items()}


def _widths_at(
    space: Space, ordered: Mapping[int, Tensor], threshold: float, remove_blocks: bool
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Widths (and floored slots) for a threshold; ``ordered`` holds each slot's scores sorted ascending."""
    key = torch.tensor([threshold], dtype=torch.float64)
    counts = {s: len(v) - int(torch.searchsorted(v, key, right=True)) for s, v in ordered.items()}
    widths, floored = list(space.upper), []
    for s, count in counts.items():
        width, floor = space.round_up(s, count), space.round_up(s, space.lower[s])
        if width < floor:
            floored.append(s)
            width = floor
        widths[s] = width
    if remove_blocks:
        blocks: dict[int, list[int]] = {}
        for s, slot in enumerate(space.slots):
            if slot.block is not None:
                blocks.setdefault(slot.block, []).append(s)
        for slots in blocks.values():
            if all(counts.get(s) == 0 for s in slots):
                for s in slots:
                    widths[s] = 0
        floored = [s for s in floored if widths[s]]
    base = space.base
    return base.family_obj.repair_widths(base.opts, widths), tuple(sorted(floored))


def _selection(space: Space, scores: Mapping[int, Tensor], widths: Sequence[int], threshold: float | None,
               floored: tuple[int, ...]) -> Selection:
    kept = {s: keep_channels(space.slots[s], scores[s], w) if s in scores else tuple(range(w))
            for s, w in enumerate(widths)}
    return Selection(tuple(widths), kept, threshold, floored)
