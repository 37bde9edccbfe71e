"""Model references: the names of callables that return an ``nn.Module``, for the traced family.

* ``torchvision:resnet50`` — ``torchvision.models.get_model("resnet50")``;
* ``timm:mobilenetv3_large_100`` — ``timm.create_model(..., pretrained=False)`` (timm is an optional extra);
* ``my_package.models:make_net`` — any importable callable.

Keyword arguments follow a ``?``: ``torchvision:resnet18?num_classes=10&width_per_group=32`` (values are
read as int, float, ``true``/``false`` or text).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision import models

from prunenas.errors import PrunenasError

DEFAULT_SHAPE = (3, 224, 224)
"""Input shape (C, H, W) of ``torchvision:`` and ``timm:`` references unless given."""


class TracingError(PrunenasError, ValueError):
    """A model reference that cannot be resolved, instantiated or traced."""


@dataclass(frozen=True)
class Reference:
    """A parsed model reference: ``source`` (``torchvision``, ``timm`` or a module path), a name, kwargs."""

    source: str
    name: str
    kwargs: tuple[tuple[str, Any], ...] = ()

    @property
    def text(self) -> str:
        """The canonical reference string (kwargs sorted)."""
        query = "&".join(f"{k}={_format_value(v)}" for k, v in self.kwargs)
        return f"{self.source}:{self.name}" + (f"?{query}" if query else "")

    @property
    def default_shape(self) -> tuple[int, int, int] | None:
        """The input shape the reference implies (ImageNet models), or ``None`` (the user says)."""
        return DEFAULT_SHAPE if self.source in ("torchvision", "timm") else None

    def with_kwargs(self, **extra: Any) -> Reference:
        """The reference with more keyword arguments (existing ones win)."""
        merged = {**extra, **dict(self.kwargs)}
        return Reference(self.source, self.name, tuple(sorted(merged.items())))

    def instantiate(self) -> nn.Module:
        """Call the factory; raise :class:`TracingError` (one line) when that fails or gives no module."""
        factory = self._factory()
        try:
            model = factory(**dict(self.kwargs))
        except Exception as err:  # noqa: BLE001 (the user's code: any error becomes one line)
            raise TracingError(f"model {self.text!r}: the factory raised {type(err).__name__}: "
                               f"{first_line(err)}") from None
        if not isinstance(model, nn.Module):
            raise TracingError(f"model {self.text!r}: the factory returned a {type(model).__name__}, "
                               "not a torch.nn.Module")
        return model

    def library_versions(self) -> dict[str, str]:
        """Versions of the libraries that define the network (enter the graph hash)."""
        versions = {"torch": torch.__version__}
        if self.source in ("torchvision", "timm"):
            versions[self.source] = importlib.import_module(self.source).__version__
        return versions

    def _factory(self) -> Callable[..., Any]:
        if self.source == "torchvision":
            return _torchvision_factory(self.name)
        if self.source == "timm":
            return _timm_factory(self.name)
        try:
            module = importlib.import_module(self.source)
        except ImportError as err:
            raise TracingError(f"model {self.text!r}: cannot import {self.source!r}: {first_line(err)}") from None
        factory = getattr(module, self.name, None)
        if not callable(factory):
            raise TracingError(f"model {self.text!r}: module {self.source!r} has no callable {self.name!r}")
        return factory


def parse_reference(text: str) -> Reference:
    """Parse ``source:name[?key=value&...]``; raise :class:`TracingError` naming the expected form."""
    if not isinstance(text, str) or ":" not in text:
        raise TracingError(f"model reference {text!r} is not SOURCE:NAME (torchvision:resnet50, "
                           "timm:NAME or my_package.module:factory)")
    head, _, query = text.partition("?")
    source, _, name = head.partition(":")
    if not source or not name or not name.isidentifier():
        raise TracingError(f"model reference {text!r} is not SOURCE:NAME (torchvision:resnet50, "
                           "timm:NAME or my_package.module:factory)")
    kwargs = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or not key.isidentifier():
            raise TracingError(f"model reference {text!r}: argument {item!r} is not KEY=VALUE")
        kwargs[key] = _parse_value(value)
    return Reference(source, name, tuple(sorted(kwargs.items())))


def _torchvision_factory(name: str) -> Callable[..., nn.Module]:
    known = models.list_models(module=models)
    if name not in known:
        raise TracingError(f"torchvision has no classification model {name!r}; e.g. {', '.join(known[:5])}, ...")
    return lambda **kwargs: models.get_model(name, **kwargs)


def _timm_factory(name: str) -> Callable[..., nn.Module]:
    try:
        import timm  # an optional extra (pip install timm): only timm: references need it
    except ImportError:
        raise TracingError(f"model 'timm:{name}' needs the optional timm package (pip install timm)") from None
    if not timm.is_model(name):
        raise TracingError(f"timm has no model {name!r}")
    return lambda **kwargs: timm.create_model(name, pretrained=False, **kwargs)


def _parse_value(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _format_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
