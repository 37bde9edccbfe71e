"""Latency devices: a runtime + batch size + thread count, with a fingerprint that keys every latency cache.

Runtimes:

* ``cpu-torch`` — eager PyTorch on the CPU, ``torch.set_num_threads(threads)`` while measuring;
* ``cpu-onnxruntime`` — the network exported to ONNX and run by onnxruntime (the deployable form), one
  session per network with ``threads`` intra-op threads and all graph optimisations (BN folded into convs);
* ``cuda-torch`` — eager PyTorch on the first GPU, bf16 autocast and channels-last activations, as the
  trainer runs on CUDA; every forward ends with a synchronisation so the clock sees the kernels.

A device turns an ``nn.Module`` (whole network) or a :class:`~prunenas.latency.units.Unit` (one layer of the
per-layer table) into a zero-argument callable that runs one forward pass on a fixed input batch; the
measurement code only times those callables.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import platform
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from prunenas.errors import PrunenasError

if TYPE_CHECKING:
    from torch import nn

    from prunenas.latency.units import Unit

RUNTIMES = ("cpu-torch", "cpu-onnxruntime", "cuda-torch")
ONNX_OPSET = 17

Forward = Callable[[], Any]
"""One forward pass on a fixed input: what the measurement code times."""


class LatencyError(PrunenasError, ValueError):
    """A latency device that does not exist here, or a bad measurement setting."""


@dataclass(frozen=True)
class Device:
    """Where latency is measured: ``runtime`` (one of :data:`RUNTIMES`), ``batch`` images, ``threads``."""

    runtime: str
    batch: int = 1
    threads: int = 1

    @property
    def name(self) -> str:
        """Readable name, e.g. ``cpu-onnxruntime/b64/t1``."""
        return f"{self.runtime}/b{self.batch}/t{self.threads}"

    def fingerprint(self) -> dict[str, Any]:
        """What a latency depends on besides the network: runtime, batch, threads, processor and versions."""
        return {"runtime": self.runtime, "batch": self.batch, "threads": self.threads, **_hardware(self.runtime),
                **_versions(self.runtime)}

    def key(self) -> str:
        """16 hex digits of the fingerprint's hash: the name of this device's cache file."""
        text = json.dumps(self.fingerprint(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def prepare_module(self, model: nn.Module, input_shape: Sequence[int]) -> Forward:
        """A forward pass of ``model`` (put in eval mode) on a random batch of ``input_shape`` (C, H, W)."""
        model = model.eval()
        x = torch.randn(self.batch, *input_shape)
        if self.runtime == "cpu-onnxruntime":
            return self._onnx_forward(_export_onnx(model, x), x.numpy())
        return self._torch_forward(model, x)

    def prepare_unit(self, unit: Unit) -> Forward:
        """A forward pass of one table unit (a layer with the BN/activation that follow it) on this device."""
        if self.runtime == "cpu-onnxruntime":
            x = np.random.default_rng(0).standard_normal((self.batch, *unit.input_shape), dtype=np.float32)
            return self._onnx_forward(unit.onnx_model(ONNX_OPSET).SerializeToString(), x)
        return self._torch_forward(unit.module(), torch.randn(self.batch, *unit.input_shape))

    def _torch_forward(self, model: nn.Module, x: Any) -> Forward:
        model = model.eval()
        if self.runtime == "cpu-torch":
            def forward() -> Any:
                with torch.inference_mode():
                    return model(x)
            return forward
        model = model.cuda().to(memory_format=torch.channels_last)
        x = x.cuda()
        if x.dim() == 4:  # images; token and feature inputs have no channels-last layout
            x = x.contiguous(memory_format=torch.channels_last)

        def forward_cuda() -> Any:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                out = model(x)
            torch.cuda.synchronize()
            return out
        return forward_cuda

    def _onnx_forward(self, model_bytes: bytes, x: Any) -> Forward:
        import onnxruntime as ort  # heavy; only the cpu-onnxruntime device needs it

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        return lambda: session.run(None, feed)

    @contextlib.contextmanager
    def threads_set(self) -> Iterator[None]:
        """PyTorch's intra-op threads set to ``threads`` for the block (onnxruntime sets its own per session)."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def get_device(runtime: str, batch: int = 1, threads: int = 1) -> Device:
    """The device ``runtime`` at ``batch`` and ``threads``, checked to exist on this machine.

    Raises :class:`LatencyError` (one line: what, what is allowed) for an unknown runtime, a runtime that is not
    present (no CUDA, onnxruntime not installed) or a non-positive batch or thread count.
    """
    if runtime not in RUNTIMES:
        raise LatencyError(f"unknown latency device {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    for what, value in (("batch", batch), ("threads", threads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise LatencyError(f"latency device {runtime}: {what} {value!r} must be a positive integer")
    missing = _missing(runtime)
    if missing:
        raise LatencyError(f"latency device {runtime} is not available here: {missing}")
    return Device(runtime, batch, threads)


def _missing(runtime: str) -> str:
    """Why ``runtime`` cannot run on this machine ('' when it can)."""
    if runtime == "cpu-onnxruntime":
        for module in ("onnxruntime", "onnx"):
            try:
                __import__(module)
            except ImportError:
                return f"{module} is not installed (pip install onnx onnxruntime)"
    if runtime == "cuda-torch" and not torch.cuda.is_available():
        return "PyTorch sees no CUDA GPU (choose cpu-torch or cpu-onnxruntime)"
    return ""


def _export_onnx(model: nn.Module, x: Any) -> bytes:
    """The network as ONNX bytes. The TorchScript exporter takes ~0.1 s a network where the dynamo exporter
    takes seconds (calibration exports dozens); ORT optimises both graphs to the same kernels."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["input"], opset_version=ONNX_OPSET)
            return buffer.getvalue()
        except (TypeError, RuntimeError):  # a PyTorch without the TorchScript exporter
            return torch.onnx.export(model, (x,), dynamo=True, input_names=["input"]).model_proto.SerializeToString()


@lru_cache(maxsize=8)
def _hardware(runtime: str) -> dict[str, str]:
    if runtime == "cuda-torch":
        return {"gpu": torch.cuda.get_device_name(0), "cuda": str(torch.version.cuda)}
    return {"cpu": _cpu_model(), "machine": platform.machine()}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@lru_cache(maxsize=8)
def _versions(runtime: str) -> dict[str, str]:
    packages = ("torch", "onnxruntime", "onnx") if runtime == "cpu-onnxruntime" else ("torch",)
    return {name: metadata.version(name) for name in packages}
