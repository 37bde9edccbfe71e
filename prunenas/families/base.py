"""What a network family is: slots (groups of channels that share one width), an analytic list of its
layers, and a builder.

A family describes one network design whose per-slot widths are free. It answers three questions from
an :class:`~prunenas.arch.Architecture` alone, without building a model:

* ``slots(options)``: the width slots, in canonical order, with base widths, stage and tie/removal facts;
* ``layers(arch)``: every conv / linear / batch-norm module of the built network, with its module path,
  the slots it reads and writes, and its geometry. The MAC/param counter (:mod:`prunenas.cost`), the
  proposers (channel scores) and weight inheritance (tensor slicing) all work from this list, so none of
  them needs to know the family;
* ``build(arch)``: the ``nn.Module``, whose modules sit at exactly the paths ``layers`` names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from prunenas.errors import ArchitectureError

if TYPE_CHECKING:
    from torch import Tensor, nn

    from prunenas.arch import Architecture

INPUT = -1
"""Pseudo-slot of the network input (the image channels)."""


@dataclass(frozen=True)
class Option:
    """A family option (depth, head variant, ...): its default and what is allowed."""

    default: Any
    choices: tuple[Any, ...] | None = None
    kind: type = int
    help: str = ""

    def check(self, owner: str, name: str, value: Any, error: type[Exception] = ArchitectureError) -> Any:
        """``value`` converted (int -> float) and validated; ``owner`` names the family or method in errors."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, self.kind) or (self.kind is int and isinstance(value, bool)):
            raise error(f"{owner} option {name!r}: {value!r} is not a {self.kind.__name__}")
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise error(f"{owner} option {name!r}: {value!r} not in {{{allowed}}}")
        return value


@dataclass(frozen=True)
class Slot:
    """A group of channels that must keep the same count.

    Attributes:
        name: readable name, e.g. ``"stage2.block3.inner"``.
        base: width of the unpruned network.
        stage: index of the feature-map stage (layers sharing a spatial size), used by guided design.
        tied: channels joined by residual connections and produced by several layers.
        block: id of the removable residual branch this slot belongs to (``None``: not removable). All
            slots of a removable branch go to 0 together, which turns it into the identity. A CNN residual
            block has one branch; a transformer block two (attention and MLP), with one id each.
        unit: what a width counts: ``"channels"`` (features) or ``"heads"`` (attention heads of a fixed
            head dimension; the space's ``multiple_of`` and ``min_width`` do not apply to them).
        group_width: the slot is the input and output of grouped convs with a fixed group width (RegNet): its
            channels are consecutive groups of this many, kept or dropped whole; widths are multiples of it.
        group_count: the slot is read or written by grouped convs with a fixed group count (ResNeXt): its
            channels are this many equal consecutive groups, each keeping as many channels as the others;
            widths are multiples of it. Both 1: any channels.
    """

    name: str
    base: int
    stage: int
    tied: bool = False
    block: int | None = None
    unit: Literal["channels", "heads"] = "channels"
    group_width: int = 1
    group_count: int = 1

    @property
    def removable(self) -> bool:
        return self.block is not None

    @property
    def step(self) -> int:
        """Widths of the slot are multiples of this: its group width or group count (1: any width)."""
        return max(self.group_width, self.group_count)

    def groups_of(self, width: int) -> list[range]:
        """The slot's channels at ``width`` split into the groups its rule keeps together or equal: whole
        groups of ``group_width``, or ``group_count`` equal groups; one group without a rule."""
        size = self.group_width if self.group_width > 1 else width // self.group_count
        return [range(start, start + size) for start in range(0, width, size)] if size else []


@dataclass(frozen=True)
class Layer:
    """A conv, linear, norm or embedding module of a built network, described analytically.

    Attributes:
        name: module path in the built network (``model.get_submodule(name)``).
        kind: ``"conv"``, ``"linear"``, ``"bn"`` (batch norm, or a layer norm over the channels of a feature
            map), ``"ln"`` (layer norm over the features of each token: a transformer's), ``"embedding"`` (a
            learnt ``(positions, features)`` table added to the tokens: class token, position embedding; its
            features are the slot's channels, along dimension 1) or ``"scale"``: the module's own per-channel
            parameter (ConvNeXt's layer scale, shape ``(C, 1, 1)``) over the channels of slot ``output``, on
            dim 0; ``out_channels`` parameters, no MACs.
        inputs: slots whose channels, concatenated in this order, feed the layer (``INPUT``: image).
        output: slot this layer produces; ``None`` for fixed outputs (classes) and for norms, whose
            channels are their ``inputs``.
        in_channels, out_channels: channel counts (features for linear layers; positions x features for
            an embedding).
        kernel, stride, groups, bias: conv geometry; ``groups == in_channels`` marks a depthwise conv.
        out_hw: output positions — a conv's output spatial size; for a linear layer applied at several
            positions (tokens, channels-last tensors), the positions as ``(n, 1)``; MACs are counted per
            output position. A layer norm (``"ln"``) gives the tokens it normalises, ``(tokens, 1)``.
        in_repeat: inputs per channel of a linear layer after a flatten (``h*w``) or per head (the head
            dimension), else 1.
        out_repeat: outputs per channel of the output slot (a head's ``head_dim`` rows), else 1.
        out_parts: stacked copies of the output slot (3: a packed query/key/value projection, whose output
            feeds multi-head attention: ``slot_channels`` heads of ``out_repeat`` features over its ``out_hw``
            tokens), else 1.
        activation: the activation applied to the layer's output when the family states it (``"relu"``,
            ``"gelu"``; ``""``: none); ``None``: not stated, and the latency units assume their rules
            (:mod:`prunenas.latency.units`). Nothing else reads it.
    """

    name: str
    kind: Literal["conv", "linear", "bn", "ln", "embedding", "scale"]
    inputs: tuple[int, ...]
    output: int | None
    in_channels: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    bias: bool = False
    out_hw: tuple[int, int] = (1, 1)
    in_repeat: int = 1
    out_repeat: int = 1
    out_parts: int = 1
    activation: str | None = None

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.kind == "conv":
            return (self.out_channels, self.in_channels // self.groups, self.kernel, self.kernel)
        if self.kind == "linear":
            return (self.out_channels, self.in_channels)
        if self.kind == "embedding":
            return (self.in_channels, self.out_channels)
        return (self.out_channels,)

    @property
    def is_norm(self) -> bool:
        """A batch or layer norm: its channels are those of its ``inputs``."""
        return self.kind in ("bn", "ln")

    @property
    def output_dim(self) -> int:
        """Tensor dimension of the produced channels (an embedding table holds features along dimension 1)."""
        return 1 if self.kind == "embedding" else 0

    @property
    def slot_channels(self) -> int:
        """Channels of the output slot this layer produces (``out_channels`` without parts and repeats)."""
        return self.out_channels // (self.out_parts * self.out_repeat)

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.in_channels


class Family(ABC):
    """Base class of a network family. Subclasses set ``name``/``options`` and implement the three methods.

    Families are registered with :func:`prunenas.families.register_family` and looked up by name.
    """

    name: ClassVar[str] = ""
    options: ClassVar[Mapping[str, Option]] = {}
    description: ClassVar[str] = ""

    @abstractmethod
    def slots(self, options: Mapping[str, Any]) -> tuple[Slot, ...]:
        """The width slots for these (normalised) options, in canonical order."""

    @abstractmethod
    def layers(self, arch: Architecture) -> list[Layer]:
        """Every conv/linear/bn module of ``arch.build()``, in module order."""

    @abstractmethod
    def build(self, arch: Architecture) -> nn.Module:
        """The network with exactly ``arch.widths`` channels per slot, freshly initialised."""

    def product_macs(self, arch: Architecture) -> int:
        """MACs of products between activations, which no layer holds (attention's QK^T and A.V); default 0."""
        return 0

    def check(self, arch: Architecture) -> None:  # noqa: B027 (optional hook)
        """Family-specific width rules beyond count/bounds (override to add some)."""

    def repair_widths(self, options: Mapping[str, Any], widths: Sequence[int]) -> tuple[int, ...]:
        """The smallest element-wise raise of ``widths`` that :meth:`check` accepts (default: unchanged).

        Proposers that choose every slot's width independently (e.g. by a global score threshold) call it so
        that cross-slot rules hold. It must be monotone: larger inputs never give smaller outputs.
        """
        return tuple(widths)

    def remap_buffers(  # noqa: B027 (optional hook)
        self,
        base_arch: Architecture,
        arch: Architecture,
        kept: Mapping[int, Sequence[int]],
        state: MutableMapping[str, Tensor],
    ) -> None:
        """Weight inheritance hook for buffers that index channels without belonging to a layer.

        :func:`prunenas.proposers.channels.inherit_state` slices every conv/linear/bn tensor itself and copies
        all other tensors of ``arch``'s network from the base state unchanged; ``state`` holds that result.
        Override to rewrite, in place, buffers whose *values* refer to channels (e.g. the option-A shortcut's
        channel map). ``kept[s]`` lists, for every slot, the sorted original channels of ``base_arch`` that
        ``arch`` keeps. Default: nothing to do.
        """

    def zero_buffers(  # noqa: B027 (optional hook)
        self, arch: Architecture, model: nn.Module, dropped: Mapping[int, Sequence[int]]
    ) -> None:
        """Counterpart of :meth:`remap_buffers` for :func:`prunenas.proposers.channels.zero_channels`.

        Override to cut parameter-free paths (e.g. a zero-pad shortcut) that would carry values into the
        ``dropped[s]`` channels of slot ``s`` of ``model`` (a network of ``arch``). Default: nothing to do.
        """

    # -- shared -------------------------------------------------------------------------------------
    def normalize_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Fill defaults and validate; unknown options name the allowed ones."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            raise ArchitectureError(
                f"family {self.name!r} has no option {unknown[0]!r}; options: {', '.join(self.options)}"
            )
        out = {k: spec.default for k, spec in self.options.items()}
        for key, value in given.items():
            out[key] = self.options[key].check(f"family {self.name!r}", key, value)
        self.check_options(out)
        return out

    def check_options(self, options: Mapping[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Cross-option rules (override), e.g. a depth that must be 6n+2."""

    def base_widths(self, options: Mapping[str, Any]) -> tuple[int, ...]:
        return tuple(s.base for s in self.slots(options))
