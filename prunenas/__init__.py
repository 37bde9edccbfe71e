"""prunenas: network pruning as neural architecture search."""

from prunenas.arch import Architecture, load_architecture
from prunenas.budget import scratch_epochs, uniform_twin
from prunenas.cost import Cost, count
from prunenas.errors import ArchitectureError, PrunenasError
from prunenas.families import FAMILIES, Family, register_family
from prunenas.spaces import Space, load_space

__version__ = "0.1.0"
__all__ = ["FAMILIES", "Architecture", "ArchitectureError", "Cost", "Family", "PrunenasError", "Space", "count",
           "load_architecture", "load_space", "register_family", "scratch_epochs", "uniform_twin"]
