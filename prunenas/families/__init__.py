"""Network families. Register your own with :func:`register_family`::

    @register_family("mynet")
    class MyNet(Family): ...
"""

from __future__ import annotations

from collections.abc import Callable

from prunenas.families.base import INPUT, Family, Layer, Option, Slot
from prunenas.registry import Registry

FAMILIES: Registry[Family] = Registry("family")


def register_family(name: str) -> Callable[[type[Family]], type[Family]]:
    """Class decorator: register an instance of a :class:`Family` subclass under ``name``."""

    def decorator(cls: type[Family]) -> type[Family]:
        if cls.name != name:
            raise ValueError(f"family class {cls.__name__} has name {cls.name!r}, registered as {name!r}")
        FAMILIES.register(name, cls())
        return cls

    return decorator


def _register_builtins() -> None:
    from prunenas.families import densenet, mobilenetv2, preresnet, resnet, resnet_cifar, tiny, traced, vgg  # noqa: F401


_register_builtins()

__all__ = ["FAMILIES", "INPUT", "Family", "Layer", "Option", "Slot", "register_family"]
