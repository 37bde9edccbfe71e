"""prunenas: network pruning as neural architecture search.

The public names below load on first use (PEP 562), so that a light entry point — ``prunenas --help``, the
export's version stamp — does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prunenas.arch import Architecture, load_architecture
    from prunenas.budget import scratch_epochs, uniform_twin
    from prunenas.cost import Cost, count
    from prunenas.errors import ArchitectureError, PrunenasError
    from prunenas.families import FAMILIES, Family, register_family
    from prunenas.spaces import Space, load_space

__version__ = "0.1.0"
_PUBLIC = {"Architecture": "arch", "load_architecture": "arch", "scratch_epochs": "budget", "uniform_twin": "budget",
           "Cost": "cost", "count": "cost", "ArchitectureError": "errors", "PrunenasError": "errors",
           "FAMILIES": "families", "Family": "families", "register_family": "families", "Space": "spaces",
           "load_space": "spaces"}
__all__ = ["FAMILIES", "Architecture", "ArchitectureError", "Cost", "Family", "PrunenasError", "Space", "count",
           "load_architecture", "load_space", "register_family", "scratch_epochs", "uniform_twin"]  # = _PUBLIC


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'prunenas' has no attribute {name!r}")
    return getattr(importlib.import_module(f"prunenas.{_PUBLIC[name]}"), name)
