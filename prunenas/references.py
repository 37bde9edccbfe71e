"""Model references as search spaces: ``torchvision:resnet50``, ``timm:NAME`` or ``package.module:factory``
traced into a :mod:`prunenas.families.traced` space, and how much of such a network the search can change."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prunenas.arch import Architecture
from prunenas.cost import layer_macs
from prunenas.errors import PrunenasError
from prunenas.families.base import INPUT
from prunenas.families.traced import NAME, analysis_of, format_shape, parse_shape, slot_index
from prunenas.families.tracing import TracingError, analyse, parse_reference
from prunenas.spaces import Space


def traced_space(reference: str, input_shape: Sequence[int] | None = None, num_classes: int | None = None,
                 name: str = "", **space_fields: Any) -> Space:
    """The search space of a model reference (the entry point for ``torchvision:resnet50`` as a space).

    Args:
        reference: ``torchvision:NAME``, ``timm:NAME`` or ``package.module:factory``, with ``?key=value``
            keyword arguments for the factory.
        input_shape: (C, H, W); default 3x224x224 for torchvision and timm, required otherwise.
        num_classes: classes of the task; passed to torchvision/timm factories as ``num_classes`` unless the
            reference sets it, and checked against the model's output otherwise.
        name: the space's name (default: the reference).
        space_fields: further :class:`~prunenas.spaces.Space` fields (dataset, multiple_of, recipe, ...).

    Raises:
        PrunenasError: one line naming the reference and what failed (import, factory, tracing, shape).
    """
    ref = parse_reference(reference)
    if num_classes is not None and ref.source in ("torchvision", "timm"):
        ref = ref.with_kwargs(num_classes=num_classes)
    shape = tuple(input_shape) if input_shape is not None else ref.default_shape
    if shape is None:
        raise TracingError(f"model {ref.text!r} needs an input shape C,H,W (e.g. 3,32,32)")
    if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
        raise TracingError(f"input shape {list(shape)} for model {ref.text!r} must be 3 positive integers C,H,W")
    analysis = analyse(ref.text, shape)
    classes = analysis.output_shape[-1] if analysis.output_shape else num_classes
    options = {"model": ref.text, "shape": format_shape(shape), "graph": analysis.graph_hash}
    return Space(name or ref.text, NAME, options, shape, num_classes or classes, **space_fields)


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
