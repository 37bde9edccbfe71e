"""How much of a traced network (a model reference as a space, see :func:`prunenas.spaces.traced_space`)
the search can change: the searchable share of its MACs and its frozen channels."""

from __future__ import annotations

from dataclasses import dataclass

from prunenas.arch import Architecture
from prunenas.cost import layer_macs
from prunenas.errors import PrunenasError
from prunenas.families.base import INPUT
from prunenas.families.traced import NAME, analysis_of, parse_shape, slot_index


@dataclass(frozen=True)
class Coverage:
    """How much of a traced network the search can change.

    Attributes:
        macs: conv and linear MACs of the base network (batch 1).
        searchable_macs: MACs of the conv/linear layers that read or write a searchable slot.
        frozen: (first producer, channels, reason) of every frozen channel group.
        mixing_norm_slots: slots normalised by a LayerNorm over channels.
    """

    macs: int
    searchable_macs: int
    frozen: tuple[tuple[str, int, str], ...]
    mixing_norm_slots: tuple[int, ...]

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
    return Coverage(sum(layer_macs(layer) for layer in counted), searchable, tuple(analysis.frozen()), mixing)
