"""The Architecture: a family, its options, one integer width per slot, the input shape and classes.

It is the only thing a proposer hands to the trainer. It validates itself against its family on
creation, round-trips through JSON exactly, and rebuilds its network with :meth:`Architecture.build`.
Unstructured proposals add per-layer weight masks kept in a safetensors file beside the JSON; the
architecture records that file's SHA-256, which enters the digest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from prunenas.errors import ArchitectureError
from prunenas.families import FAMILIES
from prunenas.fileio import atomic_write_text, file_sha256, read_text
from prunenas.masks import apply_masks

if TYPE_CHECKING:
    import torch
    from torch import nn

    from prunenas.families.base import Family, Layer, Slot

FORMAT = "prunenas.architecture/1"
_JSON_KEYS = {"format", "family", "options", "widths", "input_shape", "num_classes", "masks", "meta"}


@dataclass(frozen=True)
class MaskRef:
    """Per-layer weight masks of an unstructured architecture: a safetensors file and its SHA-256."""

    path: str
    sha256: str

    def load(self) -> dict[str, torch.Tensor]:
        """The masks by layer name (boolean tensors shaped like the weights)."""
        return dict(_load_masks(self.path, self.sha256))


@lru_cache(maxsize=64)
def _load_masks(path: str, sha256: str) -> tuple[tuple[str, torch.Tensor], ...]:
    if not os.path.exists(path):
        raise ArchitectureError(f"masks file {path} does not exist")
    try:
        checksum = file_sha256(path)
    except OSError as err:
        raise ArchitectureError(f"cannot read masks file {path}: {err.strerror}") from None
    if checksum != sha256:
        raise ArchitectureError(f"masks file {path} does not match its recorded sha256")
    try:
        return tuple((name, mask.bool()) for name, mask in sorted(load_file(path).items()))
    except SafetensorError as err:
        raise ArchitectureError(f"masks file {path} is not a safetensors file: {err}") from None


@dataclass(frozen=True, eq=True)
class Architecture:
    """A network: ``family`` + ``options`` + ``widths`` (one per slot) + ``input_shape`` + ``num_classes``.

    Create with :meth:`create` (fills option defaults) or :func:`load_architecture`. Invalid values raise
    :class:`~prunenas.errors.ArchitectureError` naming what is wrong and what is allowed.
    """

    family: str
    widths: tuple[int, ...]
    options: tuple[tuple[str, Any], ...]
    input_shape: tuple[int, int, int]
    num_classes: int
    masks: MaskRef | None = None

    @classmethod
    def create(
        cls,
        family: str,
        widths: Sequence[int] | None = None,
        options: Mapping[str, Any] | None = None,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        masks: MaskRef | None = None,
    ) -> Architecture:
        """Build a validated architecture; ``widths=None`` gives the family's base widths."""
        fam = _family(family)
        opts = fam.normalize_options(dict(options or {}))
        if widths is None:
            widths = fam.base_widths(opts)
        return cls(
            family=family,
            widths=tuple(widths),
            options=tuple(sorted(opts.items())),
            input_shape=tuple(input_shape),  # type: ignore[arg-type]
            num_classes=num_classes,
            masks=masks,
        )

    def __post_init__(self) -> None:
        validate(self)

    # -- views --------------------------------------------------------------------------------------
    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def family_obj(self) -> Family:
        return _family(self.family)

    @cached_property
    def slots(self) -> tuple[Slot, ...]:
        return self.family_obj.slots(self.opts)

    @cached_property
    def layers(self) -> tuple[Layer, ...]:
        return tuple(self.family_obj.layers(self))

    @property
    def base_widths(self) -> tuple[int, ...]:
        return tuple(s.base for s in self.slots)

    def with_widths(self, widths: Sequence[int]) -> Architecture:
        """The same network with other widths (and no masks)."""
        return Architecture(self.family, tuple(int(w) for w in widths), self.options, self.input_shape,
                            self.num_classes)

    def base(self) -> Architecture:
        """The unpruned network of this family and options."""
        return self.with_widths(self.base_widths)

    # -- building -----------------------------------------------------------------------------------
    def build(self) -> nn.Module:
        """A freshly initialised ``nn.Module`` with exactly these widths (and masks applied, if any)."""
        model = self.family_obj.build(self)
        if self.masks is not None:
            apply_masks(model, self.masks.load())
        return model

    # -- identity and I/O ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "family": self.family,
            "options": self.opts,
            "widths": list(self.widths),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
        }
        if self.masks is not None:
            out["masks"] = {"file": self.masks.path, "sha256": self.masks.sha256}
        return out

    def digest(self) -> str:
        """Stable 16-hex-digit hash over everything that defines the network."""
        defining = self.to_dict()
        if self.masks is not None:
            defining["masks"] = self.masks.sha256  # the content, not where the file lies
        text = json.dumps(defining, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def save(self, path: str | os.PathLike, meta: Mapping[str, Any] | None = None) -> Path:
        """Write JSON atomically; a masks file is referenced relative to the JSON's folder."""
        path = Path(path)
        data = self.to_dict()
        if self.masks is not None:
            data["masks"]["file"] = os.path.relpath(self.masks.path, path.parent.resolve())
        if meta:
            data["meta"] = dict(meta)
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
        return path


def validate(arch: Architecture) -> None:
    """Raise ArchitectureError unless ``arch`` is buildable by its family."""
    fam = _family(arch.family)
    opts = dict(arch.options)
    fam.normalize_options(opts)
    if len(arch.input_shape) != 3 or not all(_is_int(v) and v > 0 for v in arch.input_shape):
        raise ArchitectureError(f"input_shape {list(arch.input_shape)} must be 3 positive integers (C, H, W)")
    if not _is_int(arch.num_classes) or arch.num_classes < 1:
        raise ArchitectureError(f"num_classes {arch.num_classes!r} must be a positive integer")
    slots = fam.slots(opts)
    if len(arch.widths) != len(slots):
        raise ArchitectureError(
            f"{arch.family} {_describe(opts)} has {len(slots)} width slots, got {len(arch.widths)} widths"
        )
    for i, (w, slot) in enumerate(zip(arch.widths, slots)):
        _check_width(i, w, slot)
    _check_removed_blocks(arch.widths, slots)
    fam.check(arch)
    if arch.masks is not None:
        _check_masks(arch)


def _check_masks(arch: Architecture) -> None:
    shapes = {layer.name: layer.weight_shape for layer in arch.family_obj.layers(arch)
              if layer.kind in ("conv", "linear")}
    for name, mask in arch.masks.load().items():
        if name not in shapes:
            raise ArchitectureError(f"mask for {name!r}: the network has no conv/linear layer of that name")
        if tuple(mask.shape) != shapes[name]:
            raise ArchitectureError(f"mask for {name!r} has shape {list(mask.shape)}, the weight has "
                                    f"{list(shapes[name])}")

def _check_width(i: int, w: Any, slot: Slot) -> None:
    where = f"width {i} (slot {slot.name!r})"
    if not _is_int(w):
        raise ArchitectureError(f"{where} is {w!r}; widths are integers")
    low = 0 if slot.removable else 1
    if w < low:
        allowed = "0 (block removed) or 1.." if slot.removable else "1.."
        raise ArchitectureError(f"{where} is {w}; allowed {allowed}{slot.base}")
    if w > slot.base:
        raise ArchitectureError(f"{where} is {w}, above its bound {slot.base} (the base width)")
    if w % slot.step:
        rule = (f"whole groups of {slot.group_width} channels (fixed group width)" if slot.group_width > 1
                else f"{slot.group_count} groups of equal width (fixed group count)")
        raise ArchitectureError(f"{where} is {w}; grouped convs read it in {rule}: a multiple of {slot.step}")


def _check_removed_blocks(widths: Sequence[int], slots: Sequence[Slot]) -> None:
    blocks: dict[int, list[int]] = {}
    for w, slot in zip(widths, slots):
        if slot.block is not None:
            blocks.setdefault(slot.block, []).append(w)
    for block, ws in blocks.items():
        if 0 in ws and any(ws):
            names = [s.name for s in slots if s.block == block]
            raise ArchitectureError(
                f"removable block {block} ({', '.join(names)}) has widths {ws}: "
                "a block is removed only with all its inner widths 0"
            )


def _describe(opts: Mapping[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in sorted(opts.items())) + ")"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _family(name: str) -> Family:
    if not isinstance(name, str):
        raise ArchitectureError(f"family must be a name, got {name!r}")
    try:
        return FAMILIES.get(name)
    except KeyError as err:
        raise ArchitectureError(str(err)) from None


def from_dict(data: Any, base_dir: str | os.PathLike | None = None) -> Architecture:
    """Parse the JSON object written by :meth:`Architecture.to_dict` (masks resolved from ``base_dir``)."""
    if not isinstance(data, dict):
        raise ArchitectureError("an architecture is a JSON object with keys family, widths, options, ...")
    unknown = sorted(set(data) - _JSON_KEYS)
    if unknown:
        raise ArchitectureError(f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(_JSON_KEYS))}")
    if data.get("format", FORMAT) != FORMAT:
        raise ArchitectureError(f"format {data['format']!r} is not supported; expected {FORMAT!r}")
    missing = [k for k in ("family", "widths") if k not in data]
    if missing:
        raise ArchitectureError(f"missing key {missing[0]!r}")
    widths = data["widths"]
    if not isinstance(widths, list):
        raise ArchitectureError(f"widths must be a list of integers, got {widths!r}")
    options = data.get("options", {})
    if not isinstance(options, dict):
        raise ArchitectureError(f"options must be an object, got {options!r}")
    shape = data.get("input_shape", [3, 32, 32])
    if not isinstance(shape, list):
        raise ArchitectureError(f"input_shape must be a list [C, H, W], got {shape!r}")
    masks = None
    if data.get("masks") is not None:
        masks = _mask_ref(data["masks"], base_dir)
    return Architecture.create(data["family"], widths, options, shape, data.get("num_classes", 10), masks)


def _mask_ref(spec: Any, base_dir: str | os.PathLike | None) -> MaskRef:
    if not isinstance(spec, dict) or not {"file", "sha256"} <= set(spec):
        raise ArchitectureError("masks must be an object {file: PATH, sha256: HEX}")
    path = Path(spec["file"])
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return MaskRef(str(path), str(spec["sha256"]))


def load_architecture(path: str | os.PathLike) -> Architecture:
    """Read an architecture JSON file (as written by :meth:`Architecture.save` or an export)."""
    path = Path(path)
    text = read_text(path, "architecture file", ArchitectureError)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ArchitectureError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}") from None
    try:
        return from_dict(data, base_dir=path.parent)
    except ArchitectureError as err:
        raise ArchitectureError(f"{path}: {err}") from None
