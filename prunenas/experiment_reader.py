"""Typed reading of one mapping of an experiment file, with errors that name the key, the value and what is
allowed; and settings (a fixed value, a list of choices or a ``{low, high, log}`` range), each value checked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prunenas.experiment import ExperimentError, Range, Setting


class Reader:
    """Typed access to one YAML mapping with errors that name the key, the value and what is allowed."""

    def __init__(self, data: Any, prefix: str) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            where = prefix.rstrip(".") or "the experiment"
            raise ExperimentError(f"{where} must be a mapping, got {data!r}")
        self.data, self.prefix = data, prefix

    def only(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.data) - allowed)
        if unknown:
            raise ExperimentError(f"{self.prefix}{unknown[0]}: unknown key; allowed: {', '.join(sorted(allowed))}")

    def section(self, key: str) -> Reader:
        return Reader(self.data.get(key), f"{self.prefix}{key}.")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, required: bool = False,
            minimum: float | None = None) -> Any:
        if key not in self.data or self.data[key] is None:
            if required:
                raise ExperimentError(f"{self.prefix}{key}: missing (required)")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ExperimentError(f"{self.prefix}{key}: {value!r} is not a {names}")
        if minimum is not None and value < minimum:
            raise ExperimentError(f"{self.prefix}{key}: {value!r} must be >= {minimum}")
        return value

    def choice(self, key: str, allowed: Sequence[str], default: str) -> str:
        value = self.get(key, str, default=default)
        if value not in allowed:
            raise ExperimentError(f"{self.prefix}{key}: {value!r} not in {{{', '.join(allowed)}}}")
        return value

    def choices(self, key: str, allowed: Sequence[str], default: list[str]) -> list[str]:
        values = self.get(key, list, default=default)
        if not values:
            raise ExperimentError(f"{self.prefix}{key}: empty; choose from {{{', '.join(allowed)}}}")
        for value in values:
            if value not in allowed:
                raise ExperimentError(f"{self.prefix}{key}: {value!r} not in {{{', '.join(allowed)}}}")
        return values

    def int_list(self, key: str, default: list[int]) -> list[int]:
        values = self.get(key, (list, int), default=default)
        values = [values] if isinstance(values, int) else values
        if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ExperimentError(f"{self.prefix}{key}: {values!r} must be a non-empty list of integers")
        return values


def read_setting(value: Any, where: str, check: Any, numeric: bool, integer: bool = False) -> Setting:
    """A fixed value, a list of choices, or a {low, high, log} range — each value checked."""
    if isinstance(value, list):
        if not value:
            raise ExperimentError(f"{where}: empty list of choices")
        return [check(v) for v in value]
    if isinstance(value, dict):
        if not numeric:
            raise ExperimentError(f"{where}: a range {{low, high}} needs a numeric parameter")
        reader = Reader(value, where + ".")
        reader.only({"low", "high", "log"})
        low = check(reader.get("low", (int, float), required=True))
        high = check(reader.get("high", (int, float), required=True))
        log = reader.get("log", bool, default=False)
        if not low < high or (log and low <= 0):
            raise ExperimentError(f"{where}: range needs low < high (and low > 0 with log); got {value!r}")
        return Range(low, high, log, integer)
    return check(value)
