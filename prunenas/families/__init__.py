"""Network families. Register your own with :func:`register_family`::

    @register_family("mynet")
    class MyNet(Family): ...

Importing this package registers the built-in families (each module registers itself on import).
"""

from prunenas.families import (  # noqa: F401
    densenet,
    mobilenetv2,
    preresnet,
    resnet,
    resnet_cifar,
    tiny,
    traced,
    vgg,
    vit,
)
from prunenas.families.base import INPUT, Family, Layer, Option, Slot
from prunenas.families.registry import FAMILIES, register_family

__all__ = ["FAMILIES", "INPUT", "Family", "Layer", "Option", "Slot", "register_family"]
