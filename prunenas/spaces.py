"""Search spaces: a family + options + dataset shape, per-slot bounds, width rounding, budget settings.

Spaces are YAML files in ``search_spaces/`` (installed with the package), loaded by name
(``resnet56-cifar10``) or by path, or model references (``torchvision:resnet50``, ``timm:NAME``,
``my_package.models:make_net``) traced into a :mod:`prunenas.families.traced` space. Keys:

``family``, ``options``, ``dataset``, ``input_shape`` [C, H, W], ``num_classes`` — the network; or ``model``
(a model reference) instead of ``family`` and ``options``, with ``input_shape``/``num_classes`` where the
reference does not imply them;
``multiple_of`` (width rounding, default 1), ``min_width`` (default 1) and ``min_ratio`` (default 0) —
each slot's lower bound is ``max(min_width, ceil(min_ratio * base))``, its upper bound is the base width;
slots that count attention heads round to whole heads and ignore ``multiple_of`` and ``min_width``; slots that
grouped convs read (traced spaces) round to whole groups of a fixed group width, or to multiples of a fixed
group count, as well;
``recipe`` (the base training recipe), ``scratch_b_cap`` (cap on the Scratch-B epoch multiplier, e.g. 2 on
ImageNet; none on CIFAR), ``presets`` (named architectures computed from rules, see :mod:`prunenas.presets`)
and a ``description``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from prunenas.arch import Architecture
from prunenas.errors import PrunenasError, SpaceError
from prunenas.families.model_reference import TracingError, parse_reference
from prunenas.families.traced import NAME as TRACED
from prunenas.families.tracing import analyse
from prunenas.fileio import read_text
from prunenas.presets import preset_widths
from prunenas.shapes import format_shape

_KEYS = {"description", "family", "model", "options", "dataset", "input_shape", "num_classes", "multiple_of",
         "min_width", "min_ratio", "recipe", "scratch_b_cap", "presets"}


@dataclass(frozen=True)
class Space:
    """A searchable family of architectures (see the module docstring for the fields)."""

    name: str
    family: str
    options: Mapping[str, Any]
    input_shape: tuple[int, int, int]
    num_classes: int
    dataset: str = "synthetic"
    multiple_of: int = 1
    min_width: int = 1
    min_ratio: float = 0.0
    recipe: str = "fast"
    scratch_b_cap: float | None = None
    presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    description: str = ""

    @cached_property
    def base(self) -> Architecture:
        """The unpruned network of this space."""
        return Architecture.create(self.family, None, self.options, self.input_shape, self.num_classes)

    @property
    def slots(self):
        return self.base.slots

    @property
    def upper(self) -> tuple[int, ...]:
        return self.base.widths

    @cached_property
    def lower(self) -> tuple[int, ...]:
        """Smallest width per slot (for removable slots: the smallest width when the block is kept); a slot
        that grouped convs read keeps at least one group (its width a multiple of its step)."""
        steps = [slot.step for slot in self.slots]
        return tuple(min(b, -(-max(self._min_width(s), math.ceil(self.min_ratio * b)) // steps[s]) * steps[s])
                     for s, b in enumerate(self.upper))

    def multiple(self, slot: int) -> int:
        """The rounding unit of a slot's width: ``multiple_of`` for channels, also a multiple of the slot's
        step where grouped convs read it (their least common multiple), 1 for a count of heads."""
        return 1 if self.slots[slot].unit == "heads" else math.lcm(self.multiple_of, self.slots[slot].step)

    def _min_width(self, slot: int) -> int:
        return 1 if self.slots[slot].unit == "heads" else self.min_width

    def round_up(self, slot: int, width: int) -> int:
        """``width`` rounded up to the slot's multiple, at most the base width."""
        unit = self.multiple(slot)
        return min(self.upper[slot], -(-width // unit) * unit)

    def arch(self, widths: Sequence[int]) -> Architecture:
        """An architecture of this space with these widths (validated)."""
        return self.base.with_widths(widths)

    def round_width(self, slot: int, width: float) -> int:
        """Round to the space's multiple and clamp into the slot's bounds."""
        rounded = int(round(width / self.multiple(slot))) * self.multiple(slot)
        return min(self.upper[slot], max(self.lower[slot], rounded))

    def round_widths(self, widths: Sequence[float]) -> tuple[int, ...]:
        return tuple(self.round_width(i, w) for i, w in enumerate(widths))

    def preset(self, name: str) -> Architecture:
        """A named architecture of this space (e.g. the L1-norm paper's ``A``/``B``)."""
        if name not in self.presets:
            raise SpaceError(f"space {self.name!r} has no preset {name!r}; presets: "
                             f"{', '.join(self.presets) or '(none)'}")
        return self.arch(preset_widths(self, self.presets[name]))

    @classmethod
    def from_architecture(cls, arch: Architecture, name: str = "") -> Space:
        """The space of ``arch``'s family and options (default bounds and rounding)."""
        return cls(name or f"{arch.family}-{arch.digest()}", arch.family, arch.opts, arch.input_shape,
                   arch.num_classes)


def spaces_dir() -> Path:
    """Folder of the built-in spaces: inside the installed package, else the source checkout's."""
    packaged = Path(__file__).parent / "search_spaces"
    return packaged if packaged.is_dir() else Path(__file__).parent.parent / "search_spaces"


def space_names() -> list[str]:
    return sorted(p.stem for p in spaces_dir().glob("*.yaml"))


def load_space(name_or_path: str | os.PathLike, input_shape: Sequence[int] | None = None,
               num_classes: int | None = None) -> Space:
    """The one way to a space: a built-in name, a YAML path or a model reference (``torchvision:resnet50``).

    ``input_shape`` (C, H, W) and ``num_classes`` apply to model references only (a YAML with ``model:`` says
    them itself); errors list the built-in names or say what the reference needs.
    """
    text = str(name_or_path)
    if is_reference(text):
        return traced_space(text, input_shape, num_classes)
    if input_shape is not None or num_classes is not None:
        raise SpaceError(f"space {text!r} fixes its input shape and classes; --input-shape and --classes apply "
                         "to model references (torchvision:NAME, timm:NAME, package.module:factory)")
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or os.sep in text):
        path = spaces_dir() / f"{text}.yaml"
        if not path.exists():
            raise SpaceError(f"unknown space {text!r}; built-in spaces: {', '.join(space_names())}; or a model "
                             "reference (torchvision:resnet18, timm:NAME, package.module:factory)")
    try:
        data = yaml.safe_load(read_text(path, "space file", SpaceError))
    except yaml.YAMLError as err:
        raise SpaceError(f"{path} is not valid YAML: {err}") from None
    return space_from_dict(path.stem, data, source=str(path))


def is_reference(text: str) -> bool:
    """Whether a space argument is a model reference (``SOURCE:NAME``) rather than a name or a YAML path."""
    return ":" in text and os.sep not in text and not text.endswith((".yaml", ".yml"))


def traced_space(reference: str, input_shape: Sequence[int] | None = None, num_classes: int | None = None,
                 name: str = "", **space_fields: Any) -> Space:
    """The search space of a model reference (``torchvision:resnet50`` as a space).

    Args:
        reference: ``torchvision:NAME``, ``timm:NAME`` or ``package.module:factory``, with ``?key=value``
            keyword arguments for the factory.
        input_shape: (C, H, W); default 3x224x224 for torchvision and timm, required otherwise.
        num_classes: classes of the task; passed to torchvision/timm factories as ``num_classes`` unless the
            reference sets it, and checked against the model's output otherwise.
        name: the space's name (default: the reference).
        space_fields: further :class:`Space` fields (dataset, multiple_of, recipe, ...).

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
    space = Space(name or ref.text, TRACED, options, shape, num_classes or classes, **space_fields)
    space.base  # validates input channels and classes against the model  # noqa: B018
    return space


def space_from_dict(name: str, data: Any, source: str = "") -> Space:
    """A space from the mapping of a space YAML (``family``/``options`` or a ``model`` reference)."""
    where = source or name
    if not isinstance(data, dict):
        raise SpaceError(f"{where}: a space is a YAML mapping with keys {', '.join(sorted(_KEYS))}")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise SpaceError(f"{where}: unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_KEYS))}")
    if ("family" in data) == ("model" in data):
        raise SpaceError(f"{where}: a space names either 'family' (a built-in family) or 'model' (a model "
                         "reference such as torchvision:resnet18), not both or neither")
    if "family" in data:
        for key in ("input_shape", "num_classes"):
            if key not in data:
                raise SpaceError(f"{where}: missing key {key!r}")
    elif "options" in data:
        raise SpaceError(f"{where}: 'options' belong to a family; a model takes its arguments in the reference "
                         "(e.g. torchvision:resnet18?width_per_group=32)")
    try:
        settings = dict(
            dataset=data.get("dataset", "synthetic"),
            multiple_of=_positive_int(data.get("multiple_of", 1), "multiple_of", where),
            min_width=_positive_int(data.get("min_width", 1), "min_width", where),
            min_ratio=float(data.get("min_ratio", 0.0)),
            recipe=data.get("recipe", "fast"),
            scratch_b_cap=data.get("scratch_b_cap"),
            presets=dict(data.get("presets") or {}),
            description=data.get("description", ""),
        )
        if "model" in data:
            space = traced_space(data["model"], data.get("input_shape"), data.get("num_classes"), name, **settings)
        else:
            space = Space(name=name, family=data["family"], options=dict(data.get("options") or {}),
                          input_shape=tuple(data["input_shape"]),  # type: ignore[arg-type]
                          num_classes=data["num_classes"], **settings)
        space.base  # validates family, options, shape  # noqa: B018
        for preset in space.presets:
            space.preset(preset)
    except SpaceError:
        raise
    except (PrunenasError, TypeError, ValueError) as err:
        raise SpaceError(f"{where}: {err}") from None
    if not 0 <= space.min_ratio <= 1:
        raise SpaceError(f"{where}: min_ratio {space.min_ratio} must be in [0, 1]")
    return space


def _positive_int(value: Any, key: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpaceError(f"{where}: {key} {value!r} must be a positive integer")
    return value
