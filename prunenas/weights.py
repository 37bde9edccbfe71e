"""Model weights as safetensors (no pickle), loadable into ``Architecture.build()``."""

from __future__ import annotations

import os
from collections.abc import Mapping

from safetensors.torch import load_file, save
from torch import nn

from prunenas.fileio import atomic_write_bytes


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write the model's state dict (contiguous CPU tensors) atomically."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata={k: str(v) for k, v in (metadata or {}).items()}))


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a safetensors state dict into ``model`` (strict) and return it."""
    model.load_state_dict(load_file(str(path)))
    return model
