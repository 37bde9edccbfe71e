"""Controls that need no trained network: ``uniform`` (the twin) and ``random`` widths at the same cost."""

from __future__ import annotations

import random as _random
from collections.abc import Mapping
from typing import Any

import torch

from prunenas.budget import Twin, cost_of, uniform_twin
from prunenas.errors import ArchitectureError
from prunenas.families.base import Slot
from prunenas.proposers.proposal import Proposal, Target, achieved
from prunenas.proposers.registry import Param, ProposerError, register_proposer
from prunenas.proposers.select import keep_channels
from prunenas.spaces import Space


def _cost_target(space: Space, target: Target, method: str) -> float:
    if not target.is_cost:
        raise ProposerError(f"proposer {method!r} needs a cost target (ratio or MACs)")
    return target.absolute(space)


def twin_provenance(space: Space, target: Target, twin: Twin) -> dict[str, Any]:
    """What a proposal built by :func:`prunenas.budget.uniform_twin` records: requested and achieved cost, the
    multiplier and the twin's error."""
    return {"requested_ratio": twin.target / cost_of(space.base, twin.match),
            **achieved(space, twin.arch, twin.match), "multiplier": twin.multiplier, "twin_error": twin.error}


@register_proposer("uniform", needs_base=False)
def uniform(space: Space, target: Target, provider: Any, params: Mapping[str, Any], seed: int) -> Proposal:
    """Base widths x one multiplier at the target cost (budget.uniform_twin)."""
    twin = uniform_twin(space, _cost_target(space, target, "uniform"), target.cost_kind(space))
    return Proposal(twin.arch, "uniform", params, target, seed, None, twin_provenance(space, target, twin))


@register_proposer("random", needs_base=False, params={
    "low": Param(0.2, kind=float, help="smallest per-slot factor before the common multiplier", low=0.01, high=1.0),
})
def random_widths(space: Space, target: Target, provider: Any, params: Mapping[str, Any], seed: int) -> Proposal:
    """Random per-slot width factors in [low, 1], scaled together to the target cost; random kept channels."""
    goal = _cost_target(space, target, "random")
    rng = _random.Random(seed)
    for _ in range(100):  # some families reject some shapes (e.g. decreasing option-A stage widths)
        shape = [rng.uniform(params["low"], 1.0) for _ in space.upper]
        try:
            twin = uniform_twin(space, goal, target.cost_kind(space), shape=shape)
            break
        except ArchitectureError:
            continue
    else:
        raise ProposerError(f"could not draw random widths valid for {space.family} in 100 tries")
    kept = {s: _random_channels(space.slots[s], base, w, rng) for s, (w, base) in
            enumerate(zip(twin.arch.widths, space.upper))}
    return Proposal(twin.arch, "random", params, target, seed, kept, twin_provenance(space, target, twin))


def _random_channels(slot: Slot, base: int, width: int, rng: _random.Random) -> tuple[int, ...]:
    """``width`` random channels of the slot, ascending; whole groups or as many of every group where grouped
    convs read it (:func:`prunenas.proposers.select.keep_channels` with random scores)."""
    if slot.step == 1:
        return tuple(sorted(rng.sample(range(base), width)))
    return keep_channels(slot, torch.tensor([rng.random() for _ in range(base)]), width)
