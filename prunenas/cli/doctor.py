"""``prunenas doctor``: what this installation can do — versions, optional packages, Ray reachability and
authentication mode, datasets found, the base-model cache."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import urllib.request
from typing import Any

import torch

from prunenas.data import load_data
from prunenas.proposers.basemodel import default_cache_dir, list_entries
from prunenas.search.monitor import auth_headers, auth_token


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "installed")
    except Exception as err:  # noqa: BLE001 - a broken optional package is reported, not raised
        return f"missing ({type(err).__name__})"


def checks(address: str | None = None) -> dict[str, Any]:
    """What this installation can do, as a nested dict of strings and numbers (``address``: a dashboard to reach)."""
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "packages": {m: _version(m) for m in ("prunenas", "torch", "torchvision", "ray", "optuna", "thop",
                                              "safetensors", "matplotlib", "onnx", "onnxruntime", "onnxscript")},
        "optional samplers": {"cmaes (CmaEsSampler)": _version("cmaes"), "scipy (GPSampler)": _version("scipy")},
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "not available (CPU training)",
        "cpu threads": torch.get_num_threads(),
        "ray auth": os.environ.get("RAY_AUTH_MODE") or ("token (found)" if auth_token() else "token (none found)"),
    }
    datasets = {}
    for name, shape in (("fashion-mnist", (1, 32, 32)), ("mnist", (1, 32, 32)), ("cifar10", (3, 32, 32)),
                        ("cifar100", (3, 32, 32))):
        try:
            load_data(name, shape, val_size=0, download=False)
            datasets[name] = "found"
        except Exception as err:  # noqa: BLE001
            datasets[name] = f"missing: {str(err)[:100]}"
    info["datasets"] = datasets
    entries = list_entries()
    info["base-model cache"] = f"{default_cache_dir()} ({len(entries)} models, " \
                               f"{sum(e['bytes'] for e in entries) / 1e6:.1f} MB)"
    if address:
        info["ray cluster"] = _ray_reachable(address)
    return info


def _ray_reachable(address: str) -> str:
    url = address.rstrip("/") + "/api/version"
    request = urllib.request.Request(url, headers=auth_headers())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - a user-given address
            return f"reachable ({response.read().decode()[:80]})"
    except Exception as err:  # noqa: BLE001
        return f"not reachable: {err}"


def cmd_doctor(args: argparse.Namespace) -> int:
    """Print :func:`checks` as an indented list, or as one JSON object."""
    info = checks(args.address)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"    {k}: {v}")
        else:
            print(f"{key}: {value}")
    return 0
