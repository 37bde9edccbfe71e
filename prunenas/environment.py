"""What a result was computed with: versions, device, threads — stored with every result."""

from __future__ import annotations

import platform
from typing import Any

import torch

import prunenas


def environment(device: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "prunenas": prunenas.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
