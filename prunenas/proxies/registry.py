"""The proxy registry: a proxy is a function ``(arch, context, params, kept) -> ProxyScore``.

A proxy scores a candidate architecture cheaply (higher is better) and records what the score cost, so a
multi-fidelity search can screen many candidates, train the best and a random audit sample fully, and report
how well the proxy ranked them (:mod:`prunenas.proxies.fidelity`). Register one with :func:`register_proxy`;
its parameters are declared like a proposer's (:class:`~prunenas.proposers.registry.Param`).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from prunenas.arch import Architecture
from prunenas.cost import count
from prunenas.errors import PrunenasError
from prunenas.proposers.basemodel import BaseModel
from prunenas.proposers.proposal import Proposal
from prunenas.proposers.registry import Param, checked_params
from prunenas.registry import Registry
from prunenas.spaces import Space
from prunenas.splits import Data
from prunenas.train import resolve_device

Kept = Mapping[int, Sequence[int]]


class ProxyError(PrunenasError):
    """A proxy cannot do what was asked (unknown parameter, a space it does not apply to, missing inputs)."""


@dataclass(frozen=True)
class ProxyScore:
    """A proxy's verdict on one candidate.

    Attributes:
        score: higher is better; NaN when the proxy failed on this candidate (e.g. a diverged short training),
            which ranks it last.
        seconds: wall-clock time of the scoring, end to end.
        images: images the proxy pushed through the network (forward passes; 0 for data-free proxies).
        details: proxy-specific facts (plain JSON values), e.g. the validation loss or the steps trained.
    """

    score: float
    seconds: float
    images: int
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class ProxyContext:
    """What proxies may read, shared by every candidate of one screening.

    Attributes:
        space: the searched space; candidates are architectures of it.
        data: the dataset splits (default: ``provider.data()``). Proxies read the training split (calibration,
            short training) and the validation split (their accuracy); never the test split.
        provider: base-model provider (:class:`~prunenas.proposers.basemodel.BaseModelProvider` or
            ``StaticProvider``) for proxies that inherit weights from the trained base model.
        seed: initialisation and data order of every proxy; the same for every candidate compared.
        recipe: the evaluation recipe that ``short-train`` compresses (default: the space's).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``...
        eval_batch_size: validation batch size (the trainer's default, so accuracies match its numbers).
    """

    space: Space
    data: Data | None = None
    provider: Any = None
    seed: int = 0
    recipe: str | None = None
    device: str = "auto"
    eval_batch_size: int = 1024
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    def dataset(self, proxy: str) -> Data:
        """The splits on the context's device (moved once and kept)."""
        if self.data is None and self.provider is None:
            raise ProxyError(f"proxy {proxy!r} needs data: give the context data or a provider with data")
        return self.cached("data", lambda: (self.data or self.provider.data()).to(self.torch_device()))

    def base_model(self, proxy: str) -> BaseModel:
        """The plainly trained base model of the space (read once, then kept for every candidate)."""
        if self.provider is None:
            raise ProxyError(f"proxy {proxy!r} inherits weights from the base model: give the context a provider")
        return self.cached("base-model", lambda: self.provider.get(None))

    def training_batches(self, proxy: str, batches: int, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``batches`` batches of a shuffled pass over the training split, without augmentation.

        The order depends on ``seed`` only, so every candidate sees the same images (kept once per context).
        Fewer batches come back when the split holds fewer than ``batches x batch_size`` images.
        """
        def draw() -> list[tuple[torch.Tensor, torch.Tensor]]:
            generator = torch.Generator().manual_seed(self.seed)
            stream = self.dataset(proxy).train.batches(batch_size, shuffle=True, generator=generator, drop_last=True)
            return list(itertools.islice(stream, batches))

        return self.cached(("training-batches", batches, batch_size), draw)

    def cached(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()`` computed once per context: what every candidate of a screening shares."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


ProxyFn = Callable[[Architecture, ProxyContext, Mapping[str, Any], "Kept | None"], ProxyScore]


@dataclass(frozen=True)
class ProxyInfo:
    """A registered proxy: its function, parameters and what it needs from the context."""

    name: str
    fn: ProxyFn
    params: Mapping[str, Param] = field(default_factory=dict)
    description: str = ""
    needs_base: bool = False
    needs_batch_norm: bool = False

    def check_params(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` validated and completed with the defaults."""
        return checked_params(f"proxy {self.name!r}", self.params, given, ProxyError)

    def check_space(self, space: Space) -> None:
        """Raise if this proxy cannot score architectures of ``space``."""
        if self.needs_batch_norm and not any(layer.kind == "bn" for layer in space.base.layers):
            usable = [n for n in PROXIES.names() if not PROXIES.get(n).needs_batch_norm]
            raise ProxyError(f"proxy {self.name!r} recalibrates batch norms, but space {space.name!r} has none; "
                             f"choose one of: {', '.join(usable)}")


PROXIES: Registry[ProxyInfo] = Registry("proxy")


def register_proxy(name: str, params: Mapping[str, Param] | None = None, description: str = "",
                   needs_base: bool = False, needs_batch_norm: bool = False) -> Callable[[ProxyFn], ProxyFn]:
    """Decorator registering ``fn(arch, context, params, kept) -> ProxyScore``.

    ``kept`` (slot -> kept channel indices of the base network, or ``None``) is given only to proxies with
    ``needs_base`` (they read ``context.base_model``); ``needs_batch_norm`` says the proxy applies only to
    spaces with batch norms. The ``seconds`` the function returns are replaced by the measured time of the call.
    """

    def decorator(fn: ProxyFn) -> ProxyFn:
        doc = description or (fn.__doc__ or "").strip().splitlines()[0]
        PROXIES.register(name, ProxyInfo(name, fn, dict(params or {}), doc, needs_base, needs_batch_norm))
        return fn

    return decorator


def check_proxy(name: str, space: Space, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validate a proxy request before any work: the name, its parameters and the space. Returns full params."""
    info = PROXIES.get(name)
    full = info.check_params(params or {})
    info.check_space(space)
    return full


def score(name: str, candidate: Architecture | Proposal, context: ProxyContext,
          params: Mapping[str, Any] | None = None) -> ProxyScore:
    """Score one candidate with proxy ``name``; ``seconds`` covers the whole call.

    A :class:`~prunenas.proposers.proposal.Proposal` hands its kept channels to proxies that inherit weights
    when they index the context's base model (the proposal's ``base_model`` is its key: a Network Slimming
    proposal's channels index its sparsity-trained base, not the plain one); otherwise, and for a bare
    architecture (direct widths, uniform), such proxies choose the channels themselves.
    """
    full = check_proxy(name, context.space, params)
    info = PROXIES.get(name)
    arch, kept = _unpack(candidate)
    if kept is not None and (not info.needs_base or candidate.provenance.get("base_model")  # type: ignore[union-attr]
                             != context.base_model(name).key):
        kept = None
    started = time.perf_counter()
    result = info.fn(arch, context, full, kept)
    return ProxyScore(float(result.score), time.perf_counter() - started, int(result.images), dict(result.details))


def screen(name: str, candidates: Iterable[Architecture | Proposal], context: ProxyContext,
           params: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """Score every candidate; one plain row per candidate, in the given order.

    Row keys: ``index``, ``digest``, ``widths``, ``macs``, ``proxy``, ``params``, ``score``, ``seconds``,
    ``images`` and ``details``. The name, parameters and space are checked before the first candidate.
    """
    full = check_proxy(name, context.space, params)
    rows = []
    for index, candidate in enumerate(candidates):
        arch, _ = _unpack(candidate)
        result = score(name, candidate, context, full)
        rows.append({"index": index, "digest": arch.digest(), "widths": list(arch.widths), "macs": count(arch).macs,
                     "proxy": name, "params": full, "score": result.score if math.isfinite(result.score) else None,
                     "seconds": result.seconds, "images": result.images, "details": dict(result.details)})
    return rows


def _unpack(candidate: Architecture | Proposal) -> tuple[Architecture, Kept | None]:
    if isinstance(candidate, Proposal):
        return candidate.arch, candidate.kept
    return candidate, None
