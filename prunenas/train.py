"""Train an architecture (or a given model) and evaluate it: the from-scratch arms of every trial.

One function, :func:`train`, deterministic on CPU for a seed (the initialisation, data order, augmentation
and dropout of epoch *e* depend only on ``(seed, e)``), with checkpoint/resume of the whole training state
after every epoch, a divergence check, masked training for unstructured architectures, and the CUDA path
(bf16/fp16 autocast, channels-last, device-resident data, optional ``torch.compile``).

Called in every process of a ``torch.distributed`` group (N workers), it trains data-parallel with the same
meaning: the recipe's global batch and schedule, each worker a disjoint slice of every global batch, gradients
averaged by DDP, BatchNorm over the global batch (:mod:`prunenas.distributed`), metrics summed over the workers,
checkpoints written by rank 0.

The reported accuracies are those of the *final* epoch: validation (for ranking) and test (for the report,
read once at the end) — never the best epoch picked on the test set.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from prunenas import distributed
from prunenas.arch import Architecture
from prunenas.cost import count
from prunenas.distributed import check_batch_split, world
from prunenas.errors import PrunenasError, TrainingDiverged
from prunenas.faults import fault_point
from prunenas.fileio import atomic_write_bytes
from prunenas.masks import has_masks, reapply_masks
from prunenas.optimisation import Regularizer, distillation_loss, lr_factor, make_optimizer
from prunenas.splits import Data, Split
from prunenas.train_config import LATER_SETTINGS, RUN_ONLY, TrainConfig


@dataclass
class TrainResult:
    """Final-epoch metrics of one training run (accuracies in [0, 1])."""

    val_acc: float
    val_loss: float
    test_acc: float | None
    test_loss: float | None
    epochs: int
    steps: int
    images_per_s: float
    seconds: float
    macs: int | None
    params: int
    curve: list[dict[str, float]]
    model: nn.Module | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "model"}


EpochCallback = Callable[[dict[str, float]], None]
Trainer = Callable[..., TrainResult]
"""What trains a network: :func:`train` itself, or a launcher that runs it with the same arguments in every worker
of a data-parallel group and returns rank 0's result (``prunenas.search.workers``)."""


def train(
    target: Architecture | nn.Module,
    data: Data,
    config: TrainConfig,
    *,
    on_epoch: EpochCallback | None = None,
    regularizer: Regularizer | None = None,
    checkpoint: str | Path | None = None,
    evaluate_test: bool = True,
    arch: Architecture | None = None,
    teacher: nn.Module | None = None,
    global_batchnorm: bool = True,
) -> TrainResult:
    """Train ``target`` (an Architecture, built and initialised from ``config.seed``, or a ready model).

    Args:
        data: splits from :func:`prunenas.data.load_data`; in-memory splits move to the device once.
        on_epoch: called with each epoch's metrics (epoch, train_loss, train_acc, val_acc, val_loss, lr,
            images_per_s, seconds).
        regularizer: training hooks of a pruning method (see :class:`Regularizer`).
        checkpoint: file holding the whole training state, written after every epoch; if it exists, training
            resumes after its last epoch and ends exactly as an uninterrupted run would.
        evaluate_test: evaluate the final model on the test split (the report's number).
        arch: the architecture of a ready ``target`` model, for the MAC count.
        teacher: the network whose logits a distilling config (``temperature``, ``distill_weight``) learns
            from; it stays frozen in eval mode and sees the same (augmented) batches.
        global_batchnorm: on several workers, BatchNorm statistics over the global batch (as on one worker);
            ``False`` keeps each worker's own.

    Raises:
        TrainingDiverged: the loss became NaN/inf (with epoch and step).
    """
    config.validate()
    if config.distills != (teacher is not None):
        raise PrunenasError("a distilling recipe needs a teacher, and a teacher needs a distilling recipe "
                            f"(temperature {config.temperature}, distill_weight {config.distill_weight})")
    rank, workers = world()
    check_batch_split(config.batch_size, workers)
    regularizer = regularizer or Regularizer()
    if config.threads:
        torch.set_num_threads(config.threads)
    device = worker_device(resolve_device(config.device))
    arch = target if isinstance(target, Architecture) else arch
    model = _model_on_device(target, config, device, regularizer)
    if workers > 1 and global_batchnorm:
        distributed.global_batchnorm(model)
    teacher = _frozen(teacher, device, _channels_last(config, device)) if teacher is not None else None
    data = data.to(device)
    run = _Run(model, data, config, device, regularizer, teacher)
    start = run.restore(checkpoint) if checkpoint and Path(checkpoint).exists() else 0
    for epoch in range(start, config.epochs):
        metrics = run.epoch(epoch)
        if checkpoint:
            if rank == 0:
                run.save(checkpoint, epoch + 1)
            distributed.barrier()  # no worker runs ahead of a checkpoint a restarted group would resume from
            fault_point("train.checkpoint", epoch=epoch + 1)
        if on_epoch:
            on_epoch(metrics)
    return run.result(evaluate_test, arch)


def _model_on_device(target: Architecture | nn.Module, config: TrainConfig, device: torch.device,
                     regularizer: Regularizer) -> nn.Module:
    """The network to train: built and initialised from ``config.seed`` (an Architecture) or given, prepared by the
    regulariser, on ``device`` (channels-last on CUDA unless the config says otherwise)."""
    if isinstance(target, Architecture):
        torch.manual_seed(config.seed)
        target = target.build()
    model = regularizer.prepare(target)
    model.to(device)
    if _channels_last(config, device):
        model.to(memory_format=torch.channels_last)
    return model


def _channels_last(config: TrainConfig, device: torch.device) -> bool:
    """Whether the networks train in channels-last memory format: the config's choice, else on CUDA only."""
    return config.channels_last if config.channels_last is not None else device.type == "cuda"


def _frozen(teacher: nn.Module, device: torch.device, channels_last: bool) -> nn.Module:
    """``teacher`` on the student's device and memory format, in eval mode, without gradients."""
    teacher = teacher.to(device).eval().requires_grad_(False)
    return teacher.to(memory_format=torch.channels_last) if channels_last else teacher


def evaluate_on_test(model: nn.Module, data: Data, config: TrainConfig) -> tuple[float, float]:
    """Test accuracy and mean loss of a trained ``model`` on the device, batch size and precision that
    :func:`train` evaluates with — for a network trained without reading the test set."""
    device = resolve_device(config.device)
    return evaluate(model.to(device), data.to(device).test, device, config.eval_batch_size,
                    _amp_dtype(config.amp, device))


def worker_device(device: torch.device) -> torch.device:
    """On several workers, a bare ``cuda`` means this worker's GPU (``LOCAL_RANK``, set by the launcher)."""
    if device.type == "cuda" and device.index is None and world()[1] > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PrunenasError(f"device {name!r} requested but CUDA is not available")
    return device


def derived_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """Seed of ``stream`` (0: dropout etc., 1: data order/augmentation) in ``epoch``."""
    return (seed * 1_000_003 + epoch * 10_007 + stream) % (2**63)


class _Run:
    """The mutable state of one training run: model, optimiser, schedule, curve."""

    def __init__(self, model: nn.Module, data: Data, config: TrainConfig, device: torch.device,
                 regularizer: Regularizer, teacher: nn.Module | None = None) -> None:
        self.model, self.data, self.config, self.device, self.regularizer = model, data, config, device, regularizer
        self.teacher = teacher
        self.rank, self.workers = world()
        self.shard = (self.rank, self.workers)
        # the trainer's forward; evaluation runs each worker's shard through the bare model, no gradient sync
        self.evaluated = torch.compile(model) if config.compile else model
        self.forward = self.evaluated if self.workers == 1 else self._data_parallel(model)
        self.optimizer = make_optimizer(model, config)
        regularizer.attach(self.optimizer)
        n = len(data.train)
        self.steps_per_epoch = n // config.batch_size if n >= config.batch_size else 1
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_factor(
            config.schedule, step, self.steps_per_epoch, config.epochs, config.milestones, config.gamma))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        self.amp_dtype = _amp_dtype(config.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.masked = has_masks(model)
        self.curve: list[dict[str, float]] = []
        self.steps = 0

    def result(self, evaluate_test: bool, arch: Architecture | None) -> TrainResult:
        """The final-epoch metrics (validation, and test if asked), throughput and cost; BatchNorm local again."""
        val_acc, val_loss = self.evaluate(self.data.val)
        test_acc, test_loss = self.evaluate(self.data.test) if evaluate_test else (None, None)
        distributed.local_batchnorm(self.model)
        trained_images = sum(m["images"] for m in self.curve)
        train_seconds = sum(m["train_seconds"] for m in self.curve)
        return TrainResult(
            val_acc=val_acc, val_loss=val_loss, test_acc=test_acc, test_loss=test_loss, epochs=self.config.epochs,
            steps=self.steps, images_per_s=trained_images / train_seconds if train_seconds else 0.0,
            seconds=sum(m["seconds"] for m in self.curve), macs=count(arch).macs if arch is not None else None,
            params=sum(p.numel() for p in self.model.parameters()), curve=self.curve, model=self.model,
        )

    def _data_parallel(self, model: nn.Module) -> nn.Module:
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[self.device] if self.device.type == "cuda"
                                                  else None)
        return torch.compile(ddp) if self.config.compile else ddp

    def epoch(self, epoch: int) -> dict[str, float]:
        # dropout: one stream per worker (rank 0's is the one-worker stream), so workers' masks are independent
        torch.manual_seed(derived_seed(self.config.seed, epoch, 0 if self.rank == 0 else 1 + self.rank))
        generator = torch.Generator().manual_seed(derived_seed(self.config.seed, epoch, 1))
        self.model.train()
        totals = torch.zeros(3, device=self.device, dtype=torch.float64)  # loss sum, correct, images
        started = time.perf_counter()
        batches = self.data.train.batches(self.config.batch_size, shuffle=True, augment=self.config.augment,
                                          generator=generator, drop_last=True, **self._sharded())
        for step, (x, y) in enumerate(batches):
            loss, out, y = self._step(x, y, epoch, step)
            totals += torch.stack([loss.detach().double() * len(y), (out.argmax(1) == y).sum().double(),
                                   torch.tensor(float(len(y)), device=self.device, dtype=torch.float64)])
        self._sync()
        train_seconds = time.perf_counter() - started
        self.regularizer.end_epoch(self.model, epoch)
        val_acc, val_loss = self.evaluate(self.data.val)
        loss_sum, correct, images = distributed.all_reduce_sum(totals).tolist()
        images = int(images)
        train_loss = loss_sum / max(1, images)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(epoch, self.steps, train_loss)
        metrics = {"epoch": epoch + 1, "epochs": self.config.epochs, "train_loss": train_loss,
                   "train_acc": correct / max(1, images), "val_acc": val_acc, "val_loss": val_loss,
                   "lr": self.optimizer.param_groups[0]["lr"], "images": images, "train_seconds": train_seconds,
                   "images_per_s": images / train_seconds if train_seconds else 0.0,
                   "seconds": time.perf_counter() - started}
        self.curve.append(metrics)
        return metrics

    def _step(self, x: torch.Tensor, y: torch.Tensor, epoch: int, step: int):
        x, y = self._to_device(x), y.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.forward(x)
            loss = self._loss(x, out, y)
        # A CPU check is free; on CUDA it would stall the pipeline, so it runs every 32 steps and per epoch.
        # Workers check the loss summed over all of them, so they all stop at the same step or none does.
        if (self.device.type == "cpu" or step % 32 == 0):
            checked = distributed.all_reduce_sum(loss.detach().float().clone())
            if not torch.isfinite(checked):
                raise TrainingDiverged(epoch + 1, self.steps, float(loss))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        # fp16 loss scaling multiplies the gradients by ~65,536: a regulariser that adds to them must see them
        # unscaled, or its penalty is divided by that factor (step() then skips its own unscaling)
        self.scaler.unscale_(self.optimizer)
        self.regularizer.before_step(self.model)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.masked:
            reapply_masks(self.model)
        self.regularizer.after_step(self.model)
        self.steps += 1
        return loss, out, y

    def _loss(self, x: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.teacher is None:
            return self.criterion(out, y)
        with torch.no_grad():
            soft = self.teacher(x)
        return distillation_loss(out, soft, y, self.config.temperature, self.config.distill_weight,
                                 self.config.label_smoothing)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def evaluate(self, split: Split) -> tuple[float, float]:
        return evaluate(self.evaluated, split, self.device, self.config.eval_batch_size, self.amp_dtype,
                        **self._sharded())

    def _sharded(self) -> dict[str, tuple[int, int]]:
        # one worker passes no shard: a user's own Split need not know the keyword
        return {"shard": self.shard} if self.workers > 1 else {}

    # -- checkpoints ------------------------------------------------------------------------------------
    def save(self, path: str | Path, epochs_done: int) -> None:
        state = {"epochs_done": epochs_done, "steps": self.steps, "model": self.model.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict(), "regularizer": self.regularizer.state_dict(),
                 "curve": self.curve, "config": _plain(asdict(self.config))}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(path, buffer.getvalue())

    def restore(self, path: str | Path) -> int:
        state = torch.load(path, map_location=self.device, weights_only=True)
        saved = {**LATER_SETTINGS, **state["config"]}
        current = _plain(asdict(self.config))
        changed = sorted(k for k in current if k not in RUN_ONLY and saved.get(k) != current[k])
        if changed:
            raise PrunenasError(f"checkpoint {path} was written with another configuration ({', '.join(changed)}); "
                                "delete it or use the same settings to resume")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.regularizer.load_state_dict(state["regularizer"])
        self.curve, self.steps = list(state["curve"]), int(state["steps"])
        return int(state["epochs_done"])


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, device: torch.device | str = "cpu", batch_size: int = 1024,
             amp_dtype: torch.dtype | None = None, **shard: tuple[int, int]) -> tuple[float, float]:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``split`` (eval mode, no augmentation).

    With ``shard=(rank, workers)`` each worker evaluates its slice of every batch and the counts are summed over
    the workers (every worker gets the whole split's numbers)."""
    if len(split) == 0:
        return float("nan"), float("nan")
    device = torch.device(device)
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for x, y in split.batches(batch_size, **shard):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x)
        loss_sum += nn.functional.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
    if shard:
        correct, loss_sum = distributed.all_reduce_sum(torch.stack([correct.double(), loss_sum.double()]))
    return correct.item() / len(split), loss_sum.item() / len(split)


def _plain(config: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def format_epoch(m: Mapping[str, float]) -> str:
    """One progress line: epoch, loss, validation accuracy, throughput."""
    return (f"epoch {int(m['epoch'])}/{int(m['epochs'])}  loss {m['train_loss']:.4f}  train {m['train_acc']:.2%}  "
            f"val {m['val_acc']:.2%}  lr {m['lr']:.4g}  {m['images_per_s']:.0f} img/s  {m['seconds']:.1f}s")
