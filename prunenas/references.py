"""Model references as spaces (see :func:`prunenas.spaces.traced_space`): how much of a traced network the
search can change (the searchable share of its MACs, its frozen channels), and which local files hold a
user's module, so that a search on a cluster can ship them to the workers (which import and re-trace it)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from prunenas.arch import Architecture
from prunenas.cost import layer_macs
from prunenas.errors import PrunenasError
from prunenas.families.base import INPUT
from prunenas.families.model_reference import parse_reference
from prunenas.families.traced import NAME, analysis_of, slot_index
from prunenas.shapes import parse_shape


@dataclass(frozen=True)
class Coverage:
    """How much of a traced network the search can change.

    Attributes:
        macs: conv and linear MACs of the base network (batch 1).
        searchable_macs: MACs of the conv/linear layers that read or write a searchable slot.
        frozen: (first producer, channels, reason) of every frozen channel group.
        mixing_norm_slots: slots normalised by a LayerNorm over channels.
        grouped: (slot, rule, n) of every slot that grouped convs read: ``"group width"`` (RegNet: whole groups
            of ``n`` channels kept or dropped, the convs' group count follows the width) or ``"group count"``
            (ResNeXt: ``n`` groups always, each keeping as many channels as the others).
    """

    macs: int
    searchable_macs: int
    frozen: tuple[tuple[str, int, str], ...]
    mixing_norm_slots: tuple[int, ...]
    grouped: tuple[tuple[int, str, int], ...] = ()

    @property
    def share(self) -> float:
        return self.searchable_macs / self.macs if self.macs else 0.0


def coverage(arch: Architecture) -> Coverage:
    """Searchable share of the MACs of ``arch`` (a traced architecture) and its frozen channels."""
    if arch.family != NAME:
        raise PrunenasError(f"coverage is defined for traced architectures, not family {arch.family!r}")
    counted = [layer for layer in arch.layers if layer.kind in ("conv", "linear")]
    searchable = sum(layer_macs(layer) for layer in counted
                     if layer.output is not None or any(s != INPUT for s in layer.inputs))
    analysis = analysis_of(arch.opts)
    slot_of = slot_index(arch.opts["model"], parse_shape(arch.opts["shape"]))
    mixing = tuple(sorted(slot_of[g] for g, info in analysis.groups.items()
                          if g in slot_of and info.normalised_by_mixing_norm))
    grouped = tuple((s, "group width", slot.group_width) if slot.group_width > 1 else (s, "group count", slot.step)
                    for s, slot in enumerate(arch.slots) if slot.step > 1)
    return Coverage(sum(layer_macs(layer) for layer in counted), searchable, tuple(analysis.frozen()), mixing,
                    grouped)


def module_sources(arch: Architecture) -> list[Path]:
    """The local package folder or ``.py`` file of the top-level module behind a traced architecture's user
    reference (``my_pkg.models:make_net`` -> ``.../my_pkg``); empty for other families, torchvision and timm
    (installed on the cluster like torch), and for modules that are installed (in site-packages)."""
    if arch.family != NAME:
        return []
    source = parse_reference(arch.opts["model"]).source
    if source in ("torchvision", "timm"):
        return []
    spec = importlib.util.find_spec(source.partition(".")[0])
    if spec is None or spec.origin is None or "site-packages" in Path(spec.origin).parts:
        return []
    origin = Path(spec.origin)
    return [origin.parent if spec.submodule_search_locations else origin]
