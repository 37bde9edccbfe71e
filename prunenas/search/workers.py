"""Trials that span several workers: a Ray Train ``TorchTrainer`` (DDP) launched from inside the Tune trial.

This is the Train V2 pattern (Ray >= 2.50; on by default in the pinned Ray, ``RAY_TRAIN_V2_ENABLED=0`` reverts it):
the Tune trial is a function that builds the trainer and fits it; ``Tuner(trainer)`` is deprecated. The Tune
trial takes no resources of its own; the trainer's N workers each take ``cpu`` CPUs and ``gpu`` GPUs.

Each worker calls :func:`prunenas.train.train` with the trial's arguments inside a ``torch.distributed`` group
(NCCL on GPUs, gloo on CPU) that Ray Train sets up; ``train`` does the rest (shards, DDP, global BatchNorm, rank 0's
epoch checkpoints in the run folder). Rank 0 sends each epoch's metrics and, at the end, its result through a
queue to the Tune trial, which reports them to Tune exactly as a one-worker trial does (the same ``on_epoch``), so
ASHA, Optuna and the results rows see no difference. A lost worker (or node) makes Ray Train restart the group
(``max_failures`` times), and ``train`` resumes from the last epoch checkpoint.
"""

from __future__ import annotations

import queue as stdlib_queue
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ray
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Empty, Queue

from prunenas.distributed import world
from prunenas.errors import PrunenasError
from prunenas.experiment import Experiment
from prunenas.train import TrainResult, train

_EPOCH, _RESULT = "epoch", "result"
DRIVER_RESOURCES = {"cpu": 0, "memory": 1}
"""What the Tune trial of a multi-worker training reserves: nothing its workers need (Tune refuses an empty
request, so one byte of memory)."""


class WorkerTrainer:
    """A :data:`prunenas.train.Trainer` that runs :func:`prunenas.train.train` on ``workers`` Ray Train workers."""

    def __init__(self, workers: int, cpu: float, gpu: float, storage: str | Path, max_failures: int = 1) -> None:
        self.workers, self.cpu, self.gpu = workers, cpu, gpu
        self.storage, self.max_failures = str(Path(storage).resolve()), max_failures

    def scaling(self) -> ScalingConfig:
        per_worker = {"CPU": self.cpu, **({"GPU": self.gpu} if self.gpu else {})}
        return ScalingConfig(num_workers=self.workers, use_gpu=bool(self.gpu), resources_per_worker=per_worker)

    def __call__(self, target: Any, data: Any, config: Any, *, on_epoch: Any = None, **kwargs: Any) -> TrainResult:
        """Train as :func:`prunenas.train.train` would (same arguments), on the workers; rank 0's result."""
        messages = Queue(actor_options={"num_cpus": 0})
        loop_config = {"args": (target, data, config), "kwargs": kwargs, "queue": messages}
        trainer = TorchTrainer(
            _worker_loop, train_loop_config=loop_config, scaling_config=self.scaling(),
            torch_config=TorchConfig(backend="nccl" if self.gpu else "gloo"),
            run_config=RunConfig(storage_path=self.storage,
                                 failure_config=FailureConfig(max_failures=self.max_failures)))
        outcome: dict[str, Any] = {}
        fitting = threading.Thread(target=_fit, args=(trainer, outcome), daemon=True)
        fitting.start()
        try:
            return _relay(messages, fitting, outcome, on_epoch)
        finally:
            ray.kill(messages.actor)


def _fit(trainer: TorchTrainer, outcome: dict[str, Any]) -> None:
    try:
        trainer.fit()
    except BaseException as err:  # noqa: BLE001 - handed to the Tune trial's thread, which raises it
        outcome["error"] = err


def _relay(messages: Queue, fitting: threading.Thread, outcome: dict[str, Any], on_epoch: Any) -> TrainResult:
    """Pass rank 0's epochs to ``on_epoch`` in this (the Tune trial's) thread until the trainer ends."""
    result = None
    while fitting.is_alive() or not messages.empty():
        try:
            kind, payload = messages.get(timeout=1.0)
        except (Empty, stdlib_queue.Empty):
            continue
        if kind == _EPOCH and on_epoch is not None:
            on_epoch(payload)
        elif kind == _RESULT:
            result = payload
    fitting.join()
    if "error" in outcome:
        raise _unwrapped(outcome["error"])
    if result is None:
        raise PrunenasError("the workers finished without a result")
    return result


def _unwrapped(error: BaseException) -> BaseException:
    """The training's own error (e.g. TrainingDiverged, recorded as ``diverged``) rather than Ray's wrapper."""
    causes = [getattr(error, "worker_failures", {}).values(), [error.__cause__]]
    for cause in (c for group in causes for c in group):
        if cause is not None:
            return getattr(cause, "cause", None) or cause
    return error


def _worker_loop(loop_config: Mapping[str, Any]) -> None:
    """One worker: ``train`` in the process group Ray Train made; rank 0 reports epochs and the result."""
    messages: Queue = loop_config["queue"]
    rank = world()[0]

    def report(metrics: dict[str, float]) -> None:
        if rank == 0:
            messages.put((_EPOCH, metrics))

    result = train(*loop_config["args"], on_epoch=report, **loop_config["kwargs"])
    if rank == 0:
        result.model = result.model.cpu()
        messages.put((_RESULT, result))


def worker_trainer(exp: Experiment, gpu: float, storage: str | Path) -> WorkerTrainer:
    """The trainer of ``exp``'s trials when ``resources.workers`` > 1 (``cpu`` and ``gpu`` per worker)."""
    return WorkerTrainer(exp.workers, exp.cpu, gpu, storage, exp.max_failures)


def check_cluster_fits(exp: Experiment, nodes: list[Mapping[str, Any]] | None = None) -> None:
    """Refuse an experiment whose trial cannot be placed: a worker larger than every node, or a trial larger than
    the whole cluster (say what the cluster has)."""
    nodes = [n for n in (ray.nodes() if nodes is None else nodes) if n.get("Alive", True)]
    resources = [n.get("Resources", {}) for n in nodes]
    have = {kind: [r.get(kind, 0) for r in resources] for kind in ("CPU", "GPU")}
    want = {"CPU": exp.cpu, "GPU": exp.gpu or 0}
    what = ", ".join(f"node {i + 1}: {have['CPU'][i]:g} CPU, {have['GPU'][i]:g} GPU" for i in range(len(nodes)))
    for kind, per_worker in want.items():
        if per_worker > max(have[kind], default=0):
            raise PrunenasError(f"resources.{kind.lower()}: {per_worker:g} {kind} per worker, more than any node has "
                                f"({what})")
        if per_worker * exp.workers > sum(have[kind]):
            raise PrunenasError(f"resources: {exp.workers} workers x {per_worker:g} {kind} = "
                                f"{per_worker * exp.workers:g} {kind} per trial, more than the cluster has ({what})")


def trials_at_once(exp: Experiment, cluster: Mapping[str, float] | None = None) -> int:
    """How many multi-worker trials the cluster holds at once (their drivers take nothing), capped by
    ``concurrency``; Tune would otherwise start trials whose workers then wait for resources."""
    cluster = ray.cluster_resources() if cluster is None else cluster
    fits = [int(cluster.get("CPU", 0) // (exp.workers * exp.cpu))]
    if exp.gpu:
        fits.append(int(cluster.get("GPU", 0) // (exp.workers * exp.gpu)))
    return max(1, min(fits + ([exp.concurrency] if exp.concurrency else [])))
