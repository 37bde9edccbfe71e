"""Guided and transferred pruning (Liu et al., "Rethinking the Value of Network Pruning", ICLR 2019, §5).

The paper takes the average number of channels per *stage* (layers sharing a feature-map size) of
architectures found by a pruning method and builds new networks with those stage widths: on the same
network (*guided*) or on another network of the same kind (*transferred*, e.g. VGG-16/CIFAR-10 patterns
used for VGG-19/CIFAR-100).

Here a source architecture gives a *stage pattern* (:func:`stage_pattern`): the mean keep ratio
``width / base`` of its slots per (stage, role), roles being ``stream`` (residual-tied slots), ``fc``
(hidden fully connected layers) and ``conv`` (the rest) — averaging a residual stream with the inner widths
beside it would spread one's ratio onto the other. Slots of removed blocks are left out (the pattern is
about widths). The pattern gives every slot of the target space a shape factor (:func:`pattern_shape`),
and :func:`prunenas.budget.uniform_twin` scales those factors by one multiplier to the MAC (or parameter)
target — the uniform twin's rule with a non-uniform shape (the closest result at most 1% above the
target). Without a cost target the pattern's widths are returned as they are (multiplier 1).

Stage matching for ``transferred``: a target slot takes the ratio of the source group with the same role
whose stage index (the number of downsamplings before it) is nearest (ties: the lower stage); a role the
source lacks takes the source's overall mean keep ratio. Networks of one family share their stage
numbering (VGG-16 and VGG-19 both have five conv stages), so deeper networks reuse a stage's ratio for all
its layers, and a stage the source lacks takes its nearest one's.

``source``: an architecture JSON, a proposal JSON (its architecture), or ``SPACE:PRESET`` (e.g.
``vgg16-cifar10:A``). Not offered: the paper's guided *sparsification* (per-stage 3x3 sparsity patterns of
unstructured proposals); masked sources are refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunenas.arch import Architecture, from_dict
from prunenas.budget import uniform_twin
from prunenas.errors import PrunenasError
from prunenas.fileio import read_text
from prunenas.proposers.proposal import PROPOSAL_FORMAT, Proposal, Target, achieved
from prunenas.proposers.registry import Param, ProposerError, register_proposer
from prunenas.proposers.uniform import twin_provenance
from prunenas.spaces import Space, load_space

Group = tuple[int, str]


def slot_roles(arch: Architecture) -> list[str]:
    """Per slot: ``stream`` (residual-tied), ``fc`` (produced by a linear layer) or ``conv``."""
    linear = {layer.output for layer in arch.layers if layer.kind == "linear" and layer.output is not None}
    return ["stream" if slot.tied else "fc" if s in linear else "conv" for s, slot in enumerate(arch.slots)]


def stage_pattern(arch: Architecture) -> dict[Group, float]:
    """Mean keep ratio ``width / base`` per (stage, role) over the slots of ``arch`` that are present."""
    sums: dict[Group, list[float]] = {}
    for slot, role, width in zip(arch.slots, slot_roles(arch), arch.widths):
        if width > 0:
            sums.setdefault((slot.stage, role), []).append(width / slot.base)
    return {group: sum(v) / len(v) for group, v in sorted(sums.items())}


def match_group(pattern: Mapping[Group, float], group: Group) -> Group | None:
    """The source group for a target ``(stage, role)``: same role, nearest stage (ties: lower); ``None`` if the
    source has no group of that role."""
    stage, role = group
    same_role = [g for g in pattern if g[1] == role]
    return min(same_role, key=lambda g: (abs(g[0] - stage), g[0])) if same_role else None


def pattern_shape(pattern: Mapping[Group, float], arch: Architecture) -> tuple[list[float], dict[str, str]]:
    """Shape factor per slot of ``arch`` from a source pattern, and which source group each target group used."""
    overall = sum(pattern.values()) / len(pattern)
    shape, used = [], {}
    for slot, role in zip(arch.slots, slot_roles(arch)):
        source = match_group(pattern, (slot.stage, role))
        shape.append(pattern[source] if source is not None else overall)
        used[f"stage{slot.stage}.{role}"] = f"stage{source[0]}.{source[1]}" if source is not None else "overall mean"
    return shape, used


def load_source(text: str) -> Architecture:
    """An architecture from a JSON file (architecture or proposal) or ``SPACE:PRESET``."""
    if not text:
        raise ProposerError("give the source architecture: --param source=FILE.json (an architecture or a proposal) "
                            "or source=SPACE:PRESET")
    path = Path(text)
    try:
        if path.is_file():
            data = json.loads(read_text(path, "source file"))
            if isinstance(data, dict) and data.get("format") == PROPOSAL_FORMAT:
                return Proposal.from_dict(data, base_dir=path.parent).arch
            return from_dict(data, base_dir=path.parent)
        if ":" in text:
            space, preset = text.rsplit(":", 1)
            return load_space(space).preset(preset)
    except json.JSONDecodeError as err:
        raise ProposerError(f"source {text}: not valid JSON ({err.msg})") from None
    except PrunenasError as err:
        raise ProposerError(f"source {text}: {err}") from None
    raise ProposerError(f"source {text!r} is neither a file nor SPACE:PRESET")


def guided_proposal(method: str, space: Space, target: Target, source: Architecture, params: Mapping[str, Any],
                    seed: int) -> Proposal:
    """The target space's architecture following the source's stage pattern, at the target cost."""
    if source.masks is not None:
        raise ProposerError(f"proposer {method!r}: the source has weight masks; guided sparsification (per-stage "
                            "sparsity patterns) is not offered, only channel patterns")
    pattern = stage_pattern(source)
    shape, used = pattern_shape(pattern, space.base)
    facts: dict[str, Any] = {"source": params["source"], "source_digest": source.digest(),
                             "source_pattern": {f"stage{g[0]}.{g[1]}": round(r, 6) for g, r in pattern.items()},
                             "stage_match": used}
    try:
        if target.is_cost:
            twin = uniform_twin(space, target.absolute(space), target.cost_kind(space), shape=shape, at_most=True)
            arch = twin.arch
            facts.update(twin_provenance(space, target, twin))
        else:
            arch = space.arch(space.round_widths([b * f for b, f in zip(space.upper, shape)]))
            facts.update(achieved(space, arch, target.cost_kind(space)))
    except PrunenasError as err:
        raise ProposerError(f"proposer {method!r}: the source's stage pattern gives no valid {space.family} "
                            f"architecture ({err})") from None
    return Proposal(arch, method, params, target, seed, None, facts)


SOURCE = {"source": Param("", kind=str, help="source architecture: FILE.json (architecture or proposal) or "
                          "SPACE:PRESET")}


@register_proposer("guided", params=SOURCE, needs_base=False)
def guided(space: Space, target: Target, provider: Any, params: Mapping[str, Any], seed: int) -> Proposal:
    """Stage-averaged widths of a source architecture of the same network, scaled to the target (Liu et al. §5)."""
    source = load_source(params["source"])
    if source.family != space.family or source.opts != space.base.opts:
        raise ProposerError(f"proposer 'guided' needs a source of the same network as space {space.name!r} "
                            f"({space.family} {_options(space.base.opts)}), got {source.family} "
                            f"{_options(source.opts)}; use 'transferred' for another network of the family")
    return guided_proposal("guided", space, target, source, params, seed)


@register_proposer("transferred", params=SOURCE, needs_base=False)
def transferred(space: Space, target: Target, provider: Any, params: Mapping[str, Any], seed: int) -> Proposal:
    """Stage-averaged widths of a source of another network of the same family (Liu et al. §5, transferred)."""
    source = load_source(params["source"])
    if source.family != space.family:
        raise ProposerError(f"proposer 'transferred' needs a source of family {space.family!r} (space "
                            f"{space.name!r}), got {source.family!r}")
    return guided_proposal("transferred", space, target, source, params, seed)


def _options(opts: Mapping[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in sorted(opts.items())) + ")"
