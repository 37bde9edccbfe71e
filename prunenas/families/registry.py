"""The family registry: ``FAMILIES`` and the :func:`register_family` decorator (built-ins and user families)."""

from __future__ import annotations

from collections.abc import Callable

from prunenas.families.base import Family
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
