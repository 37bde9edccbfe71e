"""What a proposer is asked for (:class:`Target`) and what it returns (:class:`Proposal`)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prunenas.arch import Architecture, MaskRef, from_dict
from prunenas.budget import CostKind, cost_name, cost_of, target_from_ratio
from prunenas.errors import BudgetError, PrunenasError
from prunenas.fileio import atomic_write_text, read_text
from prunenas.latency.cost import check_latency_target, latency_cost
from prunenas.spaces import Space

PROPOSAL_FORMAT = "prunenas.proposal/1"
MATCHES = ("macs", "params", "latency")


@dataclass(frozen=True)
class Target:
    """A cost target: a fraction of the base network's cost, an absolute cost, or a named preset.

    ``match`` says whether costs are MACs, parameters or ``latency`` (ms predicted on ``latency_device`` =
    (runtime, batch, threads); a ratio is then a fraction of the base network's predicted latency). Exactly one
    of ``ratio``, ``cost``, ``preset`` is set; with none, the method's own default applies (e.g. Network
    Slimming's channel percent).
    """

    ratio: float | None = None
    cost: float | None = None
    preset: str | None = None
    match: str = "macs"
    latency_device: tuple[str, int, int] | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("ratio", "cost", "preset") if getattr(self, k) is not None]
        if len(given) > 1:
            raise BudgetError(f"give one target, not {' and '.join(given)}")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise BudgetError(f"ratio {self.ratio} must be in (0, 1]")
        if self.cost is not None and self.cost <= 0:
            raise BudgetError(f"target {self.match} {self.cost} must be positive")
        if self.match not in MATCHES:
            raise BudgetError(f"match {self.match!r} must be one of {', '.join(MATCHES)}")
        if (self.match == "latency") != (self.latency_device is not None):
            raise BudgetError("a latency target needs a latency device, and only a latency target takes one")

    @property
    def is_cost(self) -> bool:
        return self.ratio is not None or self.cost is not None

    def cost_kind(self, space: Space) -> CostKind:
        """What this target's costs are counted in, for ``space``: ``"macs"``, ``"params"``, or the latency
        predictor of its device with ``space``'s network kind calibrated (measuring it on first use)."""
        if self.latency_device is None:
            return self.match  # type: ignore[return-value]  # checked in __post_init__
        return latency_cost(*self.latency_device).calibrated(space)

    def absolute(self, space: Space) -> float:
        """The target cost in MACs (or params, or predicted ms; a latency below the space's floor is an error)."""
        kind = self.cost_kind(space)
        if self.cost is not None:
            goal = self.cost
        elif self.ratio is not None:
            goal = target_from_ratio(space, self.ratio, kind)
        else:
            raise BudgetError("this target names a preset, not a cost")
        if not isinstance(kind, str):
            check_latency_target(kind, space, goal)
        return goal

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if v is not None}
        if self.latency_device is not None:
            out["latency_device"] = dict(zip(("name", "batch", "threads"), self.latency_device))
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Target:
        data = dict(data)
        if data.get("latency_device") is not None:
            device = data["latency_device"]
            data["latency_device"] = (device["name"], int(device["batch"]), int(device["threads"]))
        return cls(**data)


@dataclass(frozen=True)
class Proposal:
    """An architecture proposed by a method, with where it came from.

    Attributes:
        arch: the proposed architecture (with masks for unstructured methods).
        method, params, seed: the proposer and its parameters.
        target: what was requested.
        kept: slot -> original channel indices kept (for the fine-tune and lottery arms; ``None`` when the
            proposal did not come from a network, e.g. ``uniform``).
        provenance: base model key and validation accuracy, requested and achieved cost ratios, seconds spent,
            slots that hit their width floor, and method-specific facts.
    """

    arch: Architecture
    method: str
    params: Mapping[str, Any]
    target: Target
    seed: int = 0
    kept: Mapping[int, tuple[int, ...]] | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PROPOSAL_FORMAT,
            "method": self.method,
            "params": dict(self.params),
            "target": self.target.to_dict(),
            "seed": self.seed,
            "arch": self.arch.to_dict(),
            "digest": self.arch.digest(),
            "kept": None if self.kept is None else {str(k): list(v) for k, v in self.kept.items()},
            "provenance": dict(self.provenance),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | os.PathLike | None = None) -> Proposal:
        if data.get("format") != PROPOSAL_FORMAT:
            raise PrunenasError(f"not a proposal (format {data.get('format')!r}, expected {PROPOSAL_FORMAT!r})")
        kept = data.get("kept")
        return cls(
            arch=from_dict(data["arch"], base_dir),
            method=data["method"],
            params=dict(data["params"]),
            target=Target.from_dict(data["target"]),
            seed=int(data.get("seed", 0)),
            kept=None if kept is None else {int(k): tuple(v) for k, v in kept.items()},
            provenance=dict(data.get("provenance", {})),
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically (a masks file stays where it is, referenced relative to the JSON)."""
        path = Path(path)
        data = self.to_dict()
        if self.arch.masks is not None:
            data["arch"]["masks"]["file"] = os.path.relpath(self.arch.masks.path, path.parent.resolve())
        atomic_write_text(path, json.dumps(data, indent=2) + "\n")
        return path


def load_proposal(path: str | os.PathLike) -> Proposal:
    path = Path(path)
    try:
        data = json.loads(read_text(path, "proposal"))
    except json.JSONDecodeError as err:
        raise PrunenasError(f"cannot read proposal {path}: {err}") from None
    return Proposal.from_dict(data, base_dir=path.parent)


def achieved(space: Space, arch: Architecture, match: CostKind = "macs") -> dict[str, float]:
    """Cost of ``arch`` and its ratio to the base network (for provenance)."""
    cost, base, name = cost_of(arch, match), cost_of(space.base, match), cost_name(match)
    return {f"achieved_{name}": cost, f"achieved_{name}_ratio": cost / base}


def save_with_masks(proposal: Proposal, path: Path) -> None:
    """Save the proposal JSON; a masks file is copied beside it so the folder is self-contained."""
    if proposal.arch.masks is not None:
        source = Path(proposal.arch.masks.path)
        beside = path.parent / source.name
        if source.resolve() != beside.resolve():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, beside)
        masks = MaskRef(str(beside), proposal.arch.masks.sha256)
        proposal = replace(proposal, arch=replace(proposal.arch, masks=masks))
    proposal.save(path)
