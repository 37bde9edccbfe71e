"""Flags that several commands declare, with what parses them: light imports only (no torch), because the
parser (:mod:`prunenas.cli.main`) loads this module for ``prunenas --help``."""

from __future__ import annotations

import argparse

from prunenas.errors import PrunenasError
from prunenas.shapes import parse_shape


def model_arguments(p: argparse.ArgumentParser, weights: bool = False) -> None:
    """``--input-shape`` and ``--classes`` for model references (and ``--weights`` for commands with a base
    model)."""
    p.add_argument("--input-shape", metavar="C,H,W", type=_shape,
                   help="input shape of a model reference (default 3,224,224 for torchvision: and timm:)")
    p.add_argument("--classes", type=int, metavar="N", help="classes of a model reference's task")
    if weights:
        p.add_argument("--weights", metavar="FILE", help="your trained weights (a .pth/.safetensors state dict of "
                       "the space's network, for a model reference its module's own keys) as the base model "
                       "instead of training one")



def _shape(text: str) -> tuple[int, int, int]:
    try:
        return parse_shape(text)
    except PrunenasError:
        raise argparse.ArgumentTypeError(f"{text!r} is not C,H,W (three positive integers, e.g. 3,32,32)") from None
