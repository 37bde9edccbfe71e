"""A small name -> object registry for plug-ins (families, proposers, datasets).

Names are looked up only where they come from outside (CLI, YAML, Ray config dicts); everywhere else
objects are passed directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from prunenas.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to plug-ins; duplicate and unknown names raise errors that list the choices."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj`` returns a decorator."""
        if obj is not None:
            return self._add(name, obj)

        def decorator(target: T) -> T:
            return self._add(name, target)

        return decorator

    def _add(self, name: str, obj: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests and for users replacing a built-in)."""
        self.get(name)
        del self._entries[name]

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, sorted(self._entries)) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
