"""The text form of an input shape, ``C,H,W`` (``--input-shape``, the traced family's ``shape`` option), kept
free of torch so that the command line's parser can use it."""

from __future__ import annotations

from collections.abc import Sequence

from prunenas.errors import ArchitectureError


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"3,224,224"`` -> ``(3, 224, 224)``; anything else raises :class:`ArchitectureError`."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ArchitectureError(f"traced option 'shape' {text!r} must be C,H,W (e.g. 3,224,224)")
    return shape  # type: ignore[return-value]


def format_shape(shape: Sequence[int]) -> str:
    return ",".join(str(int(v)) for v in shape)
