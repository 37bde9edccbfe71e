"""Published weights as a base model (``base: {weights: ...}`` in an experiment).

The seed of Liu et al. (ICLR 2019) pruned the PyTorch model zoo's ImageNet networks (L1-norm ResNet-34,
weight-level VGG-16-BN and ResNet-50) instead of training its own. ``weights`` names either a local
state-dict file (``.pth``/``.pt``, read with ``weights_only``, or ``.safetensors``) or torchvision's published
weights for the space's base network, ``torchvision:NAME`` (``DEFAULT``, ``IMAGENET1K_V1``...). Either must fit
the base network exactly (strict load); a download that fails names the file to provide instead.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file
from torchvision.models import get_model_weights

from prunenas.arch import Architecture
from prunenas.errors import PrunenasError

TORCHVISION = "torchvision:"
LOCAL_SUFFIXES = (".pth", ".pt", ".safetensors")


def check_weights_name(weights: str) -> str:
    """``weights`` if it is ``torchvision:NAME`` or a path ending in a state-dict suffix, else a clear error."""
    if weights.startswith(TORCHVISION):
        if not weights.removeprefix(TORCHVISION):
            raise PrunenasError(f"base.weights: {weights!r} names no weights; e.g. torchvision:DEFAULT")
        return weights
    if not weights.endswith(LOCAL_SUFFIXES):
        raise PrunenasError(f"base.weights: {weights!r} must be a state-dict file ({', '.join(LOCAL_SUFFIXES)}) "
                            "or torchvision:NAME (e.g. torchvision:DEFAULT)")
    return weights


def torchvision_builder(arch: Architecture) -> str:
    """Name of torchvision's model builder whose network equals ``arch`` (the families load its state dicts)."""
    opts = arch.opts
    imagenet = tuple(arch.input_shape[1:]) == (224, 224) and arch.num_classes == 1000
    if imagenet and opts.get("width_mult", 1.0) == 1.0:
        if arch.family == "resnet" and not opts["downsample_bias"]:
            return f"resnet{opts['depth']}"
        if arch.family == "vgg" and opts["head"] == "imagenet" and opts["conv_bias"]:
            return f"vgg{opts['depth']}" + ("_bn" if opts["batch_norm"] else "")
        if arch.family == "mobilenetv2" and opts["stem"] == "imagenet":
            return "mobilenet_v2"
    raise PrunenasError(f"base.weights: torchvision publishes no weights for this base network ({arch.family} "
                        f"{opts}, input {list(arch.input_shape)}, {arch.num_classes} classes); give a local "
                        "state-dict file instead")


def weights_identity(weights: str, arch: Architecture) -> str:
    """What identifies the weights in a cache key: torchvision's resolved enum name, or a file's SHA-256."""
    if weights.startswith(TORCHVISION):
        return f"torchvision:{_torchvision_weights(weights, arch)}"
    return "sha256:" + _file_digest(*_file_stamp(weights))


def ensure_available(weights: str, arch: Architecture) -> Path:
    """The local file holding ``weights`` (downloading torchvision's once into torch's hub cache)."""
    if not weights.startswith(TORCHVISION):
        path = Path(weights)
        if not path.is_file():
            raise PrunenasError(f"base.weights: {weights} does not exist (a state-dict file for the base network)")
        return path
    entry = _torchvision_weights(weights, arch)
    url = entry.url
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if not path.is_file():
        try:
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except Exception as err:  # noqa: BLE001 - any network failure ends in the same advice
            reason = str(getattr(err, "reason", err)).splitlines()[0] if str(err) else type(err).__name__
            raise PrunenasError(f"base.weights: cannot download {weights} ({entry}) from {url} ({reason}); "
                                f"put that file at {path}, or give base.weights: a local .pth/.safetensors "
                                "file") from None
    return path


def load_weights_state(weights: str, arch: Architecture) -> dict[str, torch.Tensor]:
    """The state dict of ``weights``, checked to fit ``arch.build()`` exactly (same keys and shapes)."""
    path = ensure_available(weights, arch)
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - pickle, zip and format errors all mean "not a state dict"
            raise PrunenasError(f"base.weights: {path} is not a readable state dict ({err})") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise PrunenasError(f"base.weights: {path} holds a {type(state).__name__}, not a state dict")
    if state and all(k.startswith("module.") for k in state):  # saved from nn.DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    _check_fits(state, arch, weights)
    return state


def _check_fits(state: dict[str, torch.Tensor], arch: Architecture, weights: str) -> None:
    expected = arch.build().state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k} {list(state[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
                f"{len(shapes)} of another shape (e.g. {shapes[0]})" if shapes else ""]
    if any(problems):
        raise PrunenasError(f"base.weights: {weights} does not fit the base network ({arch.family} {arch.opts}): "
                            + "; ".join(p for p in problems if p))


def _torchvision_weights(weights: str, arch: Architecture):
    enum = get_model_weights(torchvision_builder(arch))
    name = weights.removeprefix(TORCHVISION)
    try:
        return enum[name]
    except KeyError:
        choices = ", ".join(enum.__members__)
        raise PrunenasError(f"base.weights: torchvision has no {name!r} weights for {torchvision_builder(arch)}; "
                            f"choose one of: {choices}") from None


def _file_stamp(path: str) -> tuple[str, int, int]:
    stat = Path(path).stat() if Path(path).is_file() else None
    if stat is None:
        raise PrunenasError(f"base.weights: {path} does not exist (a state-dict file for the base network)")
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns


@lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, cached by path, size and modification time (cache keys ask for it often)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:20]
