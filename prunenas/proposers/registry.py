"""The proposer registry: a proposer is a function ``(space, target, provider, params, seed) -> Proposal``.

Register one with :func:`register_proposer`; its parameters are declared (type, default, search range) so
that the CLI lists them, bad values get precise errors, and the search can sample them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from prunenas.arch import Architecture
from prunenas.errors import PrunenasError
from prunenas.families.base import Option
from prunenas.proposers.proposal import Proposal, Target
from prunenas.registry import Registry
from prunenas.spaces import Space


class ProposerError(PrunenasError):
    """A proposer cannot do what was asked (bad parameters, unsupported target or family)."""


@dataclass(frozen=True)
class Param(Option):
    """A proposer parameter: default, type, allowed choices, and the range a search samples it from."""

    low: float | None = None
    high: float | None = None
    log: bool = False


ProposeFn = Callable[..., Proposal]


@dataclass(frozen=True)
class ProposerInfo:
    name: str
    fn: ProposeFn
    params: Mapping[str, Param] = field(default_factory=dict)
    description: str = ""
    needs_base: bool = True
    presets: bool = False
    spec_fn: Callable[..., Any] | None = None
    twin_fn: Callable[..., Architecture] | None = None

    @property
    def own_twin(self) -> bool:
        """Whether this proposer supplies its own uniform control (e.g. masked proposals: uniform sparsity)."""
        return self.twin_fn is not None

    @property
    def regularised_base(self) -> bool:
        """Whether this proposer trains its own base model with a regulariser (slimming, SSS, SFP)."""
        return self.spec_fn is not None

    def base_spec(self, space: Space, target: Target, params: Mapping[str, Any]) -> Any:
        """The RegularizerSpec of the base model this proposer trains (None: the plain base model)."""
        if self.spec_fn is None:
            return None
        return self.spec_fn(space, target, self.check_params(params))

    def check_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        return checked_params(f"proposer {self.name!r}", self.params, given, ProposerError)


def checked_params(owner: str, params: Mapping[str, Param], given: Mapping[str, Any],
                   error: type[PrunenasError]) -> dict[str, Any]:
    """``given`` validated against ``params`` (names, types, choices, [low, high]) and completed with the defaults;
    ``owner`` (e.g. "proposer 'l1-norm'") names the plug-in in ``error``'s one-line message."""
    unknown = sorted(set(given) - set(params))
    if unknown:
        raise error(f"{owner} has no parameter {unknown[0]!r}; parameters: {', '.join(params) or '(none)'}")
    out = {k: p.default for k, p in params.items()}
    for key, value in given.items():
        spec = params[key]
        value = spec.check(owner, key, value, error)
        if spec.low is not None and value < spec.low or spec.high is not None and value > spec.high:
            raise error(f"{owner} parameter {key!r}: {value} outside [{spec.low}, {spec.high}]")
        out[key] = value
    return out


PROPOSERS: Registry[ProposerInfo] = Registry("proposer")


def register_proposer(name: str, params: Mapping[str, Param] | None = None, description: str = "",
                      needs_base: bool = True, presets: bool = False,
                      base_spec: Callable[..., Any] | None = None,
                      uniform_twin: Callable[..., Architecture] | None = None) -> Callable[[ProposeFn], ProposeFn]:
    """Decorator registering ``fn(space, target, provider, params, seed) -> Proposal``.

    ``base_spec(space, target, params)`` names the regulariser of the base model the method needs (e.g.
    Network Slimming's L1 on BN scales), so a search can train base models before its trials start.
    ``uniform_twin(proposal, base, folder) -> Architecture`` replaces the uniform-width twin for proposals the
    widths cannot express (masked ones get the same sparsity in every layer); it may write files into ``folder``.
    """

    def decorator(fn: ProposeFn) -> ProposeFn:
        doc = description or (fn.__doc__ or "").strip().splitlines()[0]
        PROPOSERS.register(name, ProposerInfo(name, fn, dict(params or {}), doc, needs_base, presets, base_spec,
                                             uniform_twin))
        return fn

    return decorator


def propose(method: str, space: Space, target: Target, provider: Any = None, params: Mapping[str, Any] | None = None,
            seed: int = 0) -> Proposal:
    """Run proposer ``method``: validates its parameters, times it and records provenance."""
    info = PROPOSERS.get(method)
    full = info.check_params(params or {})
    if target.preset is not None:
        if not info.presets:
            raise ProposerError(f"proposer {method!r} has no presets; give a cost target (ratio or MACs)")
        space.preset(target.preset)  # unknown preset: precise error before any training
    if target.is_cost:
        target.absolute(space)  # a bad latency device or a target below the floor: error before any training
    if info.needs_base and provider is None:
        raise ProposerError(f"proposer {method!r} needs a base-model provider")
    started = time.perf_counter()
    proposal = info.fn(space, target, provider, full, seed)
    provenance = {**proposal.provenance, "seconds": round(time.perf_counter() - started, 3), "space": space.name}
    return replace(proposal, params=full, seed=seed, provenance=provenance)
