"""Benchmark: the trainer's GPU path against a seed-style pipeline, its accuracy, and trial packing.

Four parts, each timed and recorded on its own (an error in one is recorded and the next one still runs; the
JSON is rewritten after every part, so a run cut short keeps what it measured):

  epoch_time           ResNet-56 (resnet56-cifar10) on 50,000 synthetic CIFAR-shaped images (3x32x32 uint8,
                       random labels), batch 128, the `fast` recipe. prunenas' trainer on its GPU path (images
                       resident on the device, crop + flip per batch there, bf16 autocast, channels-last) against
                       a seed-style pipeline: per-image torchvision transforms (random crop with padding, flip) in
                       DataLoader workers, fp32, a plain SGD loop — same model, initialisation, optimiser,
                       schedule and batch. Each runs two epochs; the last is timed (the first warms up).
                       Goal: trainer images/s >= 5x the seed-style pipeline's.
  accuracy_parity      ResNet-20 (resnet20-fashionmnist) trained a few epochs on Fashion-MNIST by both pipelines,
                       2 seeds each (same initialisation per seed). Goal: the mean test accuracies differ by no
                       more than the noise, a 95% half-width from the test set's sampling and the spread between
                       seeds (bf16 must not cost accuracy). GPU only: skipped with a message on CPU.
  trial_packing        4 quarter-width VGG-11 trainings (vgg11-fashionmnist, two epochs) on Fashion-MNIST-sized
                       synthetic data (55,000 images of 1x32x32) in 4 processes at once, against the same 4 one
                       after another in one process; both timed on the wall clock from a common start.
                       Goal: >= 2x the throughput.
  epoch_time_compiled  the trainer of epoch_time with `torch.compile`, against the seed-style figure measured
                       there (last: compiling costs a minute; skipped with --no-compile and in --small).

Prints progress lines as it goes, then a table and the ratios; writes a JSON of the environment (GPU, driver,
torch, CUDA), the figures, the ratios and whether each goal was met. Exit status 1 if a part failed.

    .venv/bin/python experiments/bench_gpu.py [--out experiments/bench_gpu.json] [--data-root FOLDER]
    .venv/bin/python experiments/bench_gpu.py --small --out /tmp/bench_gpu.json   # CPU, tiny sizes, < 1 min
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from prunenas.arch import Architecture
from prunenas.data import channel_stats, load_data
from prunenas.environment import environment
from prunenas.fileio import atomic_write_text
from prunenas.optimisation import lr_factor
from prunenas.spaces import load_space
from prunenas.splits import Augment, Data, TensorSplit
from prunenas.train import evaluate, train
from prunenas.train_config import TrainConfig

RECIPE = "fast"  # batch 128, SGD + Nesterov, one-cycle schedule, label smoothing 0.1
EPOCH_TIME_GOAL = 5.0
PACKING_GOAL = 2.0
STARTED = time.perf_counter()
Part = Callable[[], dict[str, Any]]  # one part of the benchmark: runs it, returns its record


@dataclass(frozen=True)
class Sizes:
    """How much work each part does."""

    epoch_images: int  # synthetic CIFAR-shaped training images of the epoch-time part
    epoch_epochs: int  # epochs per pipeline there; the last one is timed
    parity_images: int | None  # Fashion-MNIST training images (None: all 55,000 left after validation)
    parity_epochs: int
    parity_seeds: int
    packing_trainings: int
    packing_images: int  # synthetic 1x32x32 training images per packed training
    packing_epochs: int
    workers: int  # DataLoader workers of the seed-style pipeline
    batch_size: int = 128  # the `fast` recipe's
    held_out: int = 256  # synthetic validation images (the trainer evaluates them after each epoch, untimed)
    threads: int | None = None  # CPU threads per process (None: torch's default)


FULL = Sizes(epoch_images=50_000, epoch_epochs=2, parity_images=None, parity_epochs=4, parity_seeds=2,
             packing_trainings=4, packing_images=55_000, packing_epochs=2, workers=min(8, os.cpu_count() or 1))
# Proves every code path on a loaded 2-core CPU in well under a minute; its figures mean nothing. One thread:
# on an oversubscribed CPU, two OpenMP threads per process made ResNet-56 ten times slower, not faster.
SMALL = Sizes(epoch_images=32, epoch_epochs=1, parity_images=64, parity_epochs=1, parity_seeds=1,
              packing_trainings=4, packing_images=64, packing_epochs=1, workers=1, batch_size=16, held_out=16,
              threads=1)


def log(message: str) -> None:
    """One progress line, stamped with the seconds since the benchmark started."""
    print(f"[{time.perf_counter() - STARTED:7.1f} s] {message}", flush=True)


# -- the seed-style pipeline ---------------------------------------------------------------------------------


class ImageTensors(Dataset):
    """uint8 images (N, C, H, W) and labels, transformed one image at a time (the seed's CIFAR pipeline)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable) -> None:
        self.images, self.labels, self.transform = images.cpu(), labels.cpu(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


def seed_transform(split: TensorSplit, augment: bool = True) -> transforms.Compose:
    """Per-image torchvision transforms giving the images ``split.batches`` gives: crop, flip, [0, 1], normalise."""
    size = tuple(split.images.shape[-2:])
    steps: list[Callable] = []
    if augment and split.augmentation.crop_pad:
        steps.append(transforms.RandomCrop(size, padding=split.augmentation.crop_pad))
    if augment and split.augmentation.flip:
        steps.append(transforms.RandomHorizontalFlip())
    steps += [transforms.ConvertImageDtype(torch.float32),
              transforms.Normalize(split.mean.flatten().tolist(), split.std.flatten().tolist())]
    return transforms.Compose(steps)


def seed_style_train(arch: Architecture, split: TensorSplit, config: TrainConfig, device: torch.device,
                     workers: int) -> tuple[nn.Module, list[float]]:
    """Train ``arch`` as the seed repository did: DataLoader workers, per-image CPU augmentation, fp32, SGD.

    The model is initialised from ``config.seed`` exactly as :func:`prunenas.train.train` initialises it, and
    follows the same optimiser and learning-rate schedule. Workers start afresh each epoch, as in the seed, so
    their start-up is part of an epoch's time. Returns the model and the images/s of each epoch.
    """
    torch.manual_seed(config.seed)
    model = arch.build().to(device)
    loader = DataLoader(ImageTensors(split.images, split.labels, seed_transform(split, config.augment)),
                        batch_size=config.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(config.seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    steps_per_epoch = len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        config.schedule, step, steps_per_epoch, config.epochs, config.milestones, config.gamma))
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    rates = []
    for epoch in range(config.epochs):
        model.train()
        images, start = 0, time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            images += len(y)
        synchronize(device)
        rates.append(images / (time.perf_counter() - start))
        log(f"  seed-style epoch {epoch + 1}/{config.epochs}: {rates[-1]:.0f} img/s")
    return model, rates


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- data ------------------------------------------------------------------------------------------------------


def synthetic_data(images: int, shape: tuple[int, int, int], classes: int, augmentation: Augment,
                   held_out: int, seed: int = 0) -> Data:
    """``images`` random uint8 training images with random labels (throughput only: nothing to learn)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (images + held_out, *shape), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, classes, (images + held_out,), generator=generator)
    mean, std = channel_stats(x[:held_out].numpy())
    train_split = TensorSplit(x[held_out:], y[held_out:], mean, std, augmentation)
    held = TensorSplit(x[:held_out], y[:held_out], mean, std)
    return Data("synthetic", train_split, held, held, classes, shape)


# -- the parts -------------------------------------------------------------------------------------------------


def ratio(figures: dict[str, float], numerator: str, denominator: str, goal: float) -> dict[str, Any]:
    """``figures[numerator] / figures[denominator]``, its goal and whether it is met."""
    value = figures[numerator] / figures[denominator]
    return {"value": value, "numerator": numerator, "denominator": denominator, "goal": goal,
            "goal_met": value >= goal}


EPOCH_SPACE = "resnet56-cifar10"


def epoch_time(device: torch.device, sizes: Sizes, compile_model: bool = False) -> dict[str, Any]:
    """Images/s of the last of ``sizes.epoch_epochs`` epochs: trainer (GPU path) vs seed-style, ResNet-56."""
    config = epoch_config(device, sizes, compile_model)
    name = "trainer_compiled" if compile_model else "trainer"
    log(f"{name}: ResNet-56, {sizes.epoch_images} images, batch {config.batch_size}, {config.epochs} epochs")
    result = train(load_space(EPOCH_SPACE).base, cifar_shaped(sizes), config, evaluate_test=False,
                   on_epoch=lambda m: log(f"  {name} epoch {int(m['epoch'])}/{int(m['epochs'])}: "
                                          f"{m['images_per_s']:.0f} img/s"))
    images = sizes.epoch_images // config.batch_size * config.batch_size
    figures = {f"{name}_images_per_s": result.curve[-1]["images_per_s"],
               "seed_images_per_s": seed_epoch_rate(device, sizes)}
    figures[f"{name}_epoch_s"] = images / figures[f"{name}_images_per_s"]
    figures["seed_epoch_s"] = images / figures["seed_images_per_s"]
    speedup = ratio(figures, f"{name}_images_per_s", "seed_images_per_s", EPOCH_TIME_GOAL)
    return {"model": EPOCH_SPACE, "images": images, "batch_size": config.batch_size, "amp": config.amp,
            "compile": compile_model, "figures": figures, "ratios": {"speedup": speedup},
            "goal": f"{name} images/s >= {EPOCH_TIME_GOAL:g}x the seed-style pipeline's",
            "goal_met": speedup["goal_met"]}


def epoch_config(device: torch.device, sizes: Sizes, compile_model: bool = False) -> TrainConfig:
    return TrainConfig.from_recipe(RECIPE, epochs=sizes.epoch_epochs, batch_size=sizes.batch_size,
                                   device=str(device), compile=compile_model, threads=sizes.threads)


def cifar_shaped(sizes: Sizes) -> Data:
    space = load_space(EPOCH_SPACE)
    return synthetic_data(sizes.epoch_images, space.input_shape, space.num_classes, Augment(crop_pad=4, flip=True),
                          sizes.held_out)


@functools.cache
def seed_epoch_rate(device: torch.device, sizes: Sizes) -> float:
    """Images/s of the seed-style pipeline's last epoch on the epoch-time work (measured once per run)."""
    log(f"seed-style: {sizes.workers} DataLoader workers, fp32")
    _, rates = seed_style_train(load_space(EPOCH_SPACE).base, cifar_shaped(sizes).train, epoch_config(device, sizes),
                                device, sizes.workers)
    return rates[-1]


def parity_noise(trainer_acc: list[float], seed_acc: list[float], test_images: int) -> float:
    """95% half-width of the difference of the two pipelines' mean test accuracies over seeds.

    Two sources: the test set's sampling (two proportions, each over ``test_images`` x seeds predictions) and,
    with two seeds or more, the spread between seeds of each pipeline (sample variance / seeds).
    """
    seeds = len(trainer_acc)
    variance = 0.0
    for accuracies in (trainer_acc, seed_acc):
        p = statistics.fmean(accuracies)
        variance += p * (1 - p) / (test_images * seeds)
        variance += statistics.variance(accuracies) / seeds if seeds > 1 else 0.0
    return 1.96 * math.sqrt(variance)


def accuracy_parity(device: torch.device, sizes: Sizes, data_root: str | None = None) -> dict[str, Any]:
    """Test accuracy of ResNet-20 on Fashion-MNIST trained by the trainer and by the seed-style loop, per seed."""
    space = load_space("resnet20-fashionmnist")
    data = load_data(space.dataset, space.input_shape, space.num_classes, subset=sizes.parity_images, root=data_root,
                     download=False)
    return {"model": "resnet20-fashionmnist", **parity(space.base, data, device, sizes)}


def parity(arch: Architecture, data: Data, device: torch.device, sizes: Sizes) -> dict[str, Any]:
    """``arch`` trained by both pipelines for each seed (same initialisation); their mean test accuracies."""
    trainer_acc, seed_acc = [], []
    for seed in range(sizes.parity_seeds):
        config = TrainConfig.from_recipe(RECIPE, epochs=sizes.parity_epochs, seed=seed, batch_size=sizes.batch_size,
                                         device=str(device), threads=sizes.threads)
        log(f"parity seed {seed}: trainer, {len(data.train)} images, {config.epochs} epochs")
        trainer_acc.append(train(arch, data, config).test_acc)
        log(f"parity seed {seed}: seed-style")
        model, _ = seed_style_train(arch, data.train, config, device, sizes.workers)
        seed_acc.append(evaluate(model, data.test, device)[0])
        log(f"parity seed {seed}: test accuracy trainer {trainer_acc[-1]:.4f}, seed-style {seed_acc[-1]:.4f}")
    trainer_mean, seed_mean = statistics.fmean(trainer_acc), statistics.fmean(seed_acc)
    noise = parity_noise(trainer_acc, seed_acc, len(data.test))
    difference = trainer_mean - seed_mean
    return {"epochs": sizes.parity_epochs, "train_images": len(data.train), "test_images": len(data.test),
            "seeds": sizes.parity_seeds,
            "figures": {"trainer_test_acc": trainer_mean, "seed_test_acc": seed_mean, "difference": difference,
                        "noise": noise},
            "per_seed": {"trainer_test_acc": trainer_acc, "seed_test_acc": seed_acc}, "ratios": {},
            "goal": "|trainer - seed-style mean test accuracy| <= noise (95%: test sampling + seed spread)",
            "goal_met": abs(difference) <= noise}


def packing_worker(device_name: str, sizes: Sizes, trainings: int, barrier, results) -> None:
    """Train ``trainings`` VGG-11/4 networks one after another once every worker is ready; report images trained."""
    try:
        device = torch.device(device_name)
        space = load_space("vgg11-fashionmnist")
        data = synthetic_data(sizes.packing_images, space.input_shape, space.num_classes,
                              Augment(crop_pad=2, flip=True), sizes.held_out).to(device)
        config = TrainConfig.from_recipe(RECIPE, epochs=sizes.packing_epochs, batch_size=sizes.batch_size,
                                         device=device_name, threads=sizes.threads)
        warm_up(space.base, data, device, config.batch_size)
        barrier.wait()
        trained = sum(sum(int(m["images"]) for m in train(space.base, data, config, evaluate_test=False).curve)
                      for _ in range(trainings))
        results.put({"images": trained})
    except BaseException:  # noqa: BLE001 - reported to the parent, which records the part as failed
        barrier.abort()
        results.put({"error": traceback.format_exc(limit=4)})


def warm_up(arch: Architecture, data: Data, device: torch.device, batch_size: int) -> None:
    """One forward/backward pass, so CUDA context, cuDNN handles and kernels are ready before timing."""
    x, y = next(data.train.batches(batch_size))
    nn.functional.cross_entropy(arch.build().to(device)(x.to(device)), y.to(device)).backward()
    synchronize(device)


def packed_throughput(device: torch.device, sizes: Sizes, processes: int, timeout: float = 300) -> float:
    """Images/s over ``packing_trainings`` trainings spread over ``processes`` processes, from a common start."""
    # Children forked from a server that imported torch once: CUDA cannot cross a fork of this process, and
    # spawning re-imports torch in every child (Python 3.11's forkserver does not preload __main__ itself).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torchvision", "prunenas.data", "prunenas.spaces", "prunenas.train"])
    barrier, results = context.Barrier(processes + 1, timeout=timeout), context.Queue()
    per_process = sizes.packing_trainings // processes
    workers = [context.Process(target=packing_worker, args=(str(device), sizes, per_process, barrier, results))
               for _ in range(processes)]
    for worker in workers:
        worker.start()
    try:
        try:
            barrier.wait()
        except Exception:
            raise RuntimeError(f"a packing worker failed before the start:\n{results.get(timeout=30)}") from None
        start = time.perf_counter()
        reports = [results.get(timeout=timeout) for _ in workers]
        seconds = time.perf_counter() - start
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.terminate()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(f"a packing worker failed:\n{errors[0]}")
    return sum(r["images"] for r in reports) / seconds


def trial_packing(device: torch.device, sizes: Sizes) -> dict[str, Any]:
    """Throughput of the trainings in as many processes at once against one after another in one process."""
    n = sizes.packing_trainings
    log(f"packing: {n} VGG-11/4 trainings on {sizes.packing_images} images, one after another")
    sequential = packed_throughput(device, sizes, 1)
    log(f"  sequential {sequential:.0f} img/s; now {n} processes at once")
    concurrent = packed_throughput(device, sizes, n)
    log(f"  concurrent {concurrent:.0f} img/s")
    figures = {"concurrent_images_per_s": concurrent, "sequential_images_per_s": sequential}
    speedup = ratio(figures, "concurrent_images_per_s", "sequential_images_per_s", PACKING_GOAL)
    return {"model": "vgg11-fashionmnist", "trainings": n, "images": sizes.packing_images, "figures": figures,
            "ratios": {"speedup": speedup},
            "goal": f"{n} concurrent trainings >= {PACKING_GOAL:g}x the throughput of {n} in a row",
            "goal_met": speedup["goal_met"]}


# -- the run ---------------------------------------------------------------------------------------------------


def machine(device: torch.device) -> dict[str, Any]:
    """GPU name, driver, torch / CUDA / cuDNN versions and CPU count: what the figures were measured on."""
    info = {**environment(device.type), "torchvision": torchvision.__version__, "cuda": torch.version.cuda,
            "cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "gpu": None, "driver": None}
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported(),
                    driver=driver_version())
    return info


def driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def run_part(name: str, body: Part) -> dict[str, Any]:
    """``body()`` with its status and seconds; an exception is recorded, not raised (one shot on a GPU)."""
    log(f"== {name}")
    start = time.perf_counter()
    try:
        part = {"status": "ok", **body()}
    except Exception as err:  # noqa: BLE001 - the other parts must still run
        traceback.print_exc()
        part = {"status": "error", "error": f"{type(err).__name__}: {err}"}
    part["seconds"] = time.perf_counter() - start
    log(f"== {name}: {part['status']} in {part['seconds']:.1f} s")
    return part


def plan(device: torch.device, sizes: Sizes, args: argparse.Namespace) -> dict[str, Part | str]:
    """The parts in running order: what runs each, or the reason it is skipped."""
    return {
        "epoch_time": lambda: epoch_time(device, sizes),
        "accuracy_parity": (lambda: accuracy_parity(device, sizes, args.data_root)) if device.type == "cuda" else
        "accuracy parity is measured on a GPU only (bf16 autocast is a CUDA path); this run is on CPU",
        "trial_packing": lambda: trial_packing(device, sizes),
        "epoch_time_compiled": "torch.compile is measured on a full run without --no-compile"
        if args.small or args.no_compile else lambda: epoch_time(device, sizes, compile_model=True),
    }


def table(report: dict[str, Any]) -> str:
    """The figures and ratios of every part, one per line."""
    lines = [f"{'part':<20} {'figure':<30} {'value':>12}"]
    for name, part in report["parts"].items():
        if part["status"] != "ok":
            lines.append(f"{name:<20} {part['status']}: {part.get('reason') or part.get('error')}")
            continue
        lines += [f"{name:<20} {key:<30} {value:>12.4g}" for key, value in part["figures"].items()]
        for key, r in part["ratios"].items():
            met = "met" if r["goal_met"] else "NOT met"
            lines.append(f"{name:<20} {key:<30} {r['value']:>11.2f}x  = {r['numerator']} / {r['denominator']} "
                         f"(goal >= {r['goal']:g}x: {met})")
        if not part["ratios"]:
            lines.append(f"{name:<20} {'goal':<30} {'met' if part['goal_met'] else 'NOT met':>12}  ({part['goal']})")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="every part on CPU at tiny sizes (a smoke test)")
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")), help="the JSON of the figures")
    parser.add_argument("--data-root", default=None, help="folder with the Fashion-MNIST IDX files")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers of the seed-style pipeline")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurement")
    args = parser.parse_args()
    if not args.small and not torch.cuda.is_available():
        parser.exit(2, "bench_gpu.py: no CUDA device here; the full benchmark needs a GPU (--small runs on CPU)\n")
    if args.workers is not None and args.workers < 0:
        parser.exit(2, f"bench_gpu.py: --workers {args.workers} must be 0 or more\n")
    sizes = SMALL if args.small else FULL
    if args.workers is not None:
        sizes = Sizes(**{**asdict(sizes), "workers": args.workers})
    device = torch.device("cpu" if args.small else "cuda:0")
    if sizes.threads:
        torch.set_num_threads(sizes.threads)  # the seed-style loop and the warm-up run in this process too
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"benchmark": "bench_gpu", "mode": "small" if args.small else "full",
                              "device": str(device), "recipe": RECIPE, "environment": machine(device),
                              "sizes": asdict(sizes), "parts": {}}
    log(f"bench_gpu on {report['environment']['gpu'] or 'CPU'}, torch {torch.__version__}, writing {out}")
    for name, body in plan(device, sizes, args).items():
        if isinstance(body, str):
            log(f"== {name}: skipped: {body}")
            report["parts"][name] = {"status": "skipped", "reason": body}
        else:
            report["parts"][name] = run_part(name, body)
        report["seconds"] = time.perf_counter() - STARTED
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"total {report['seconds']:.0f} s; figures in {out}")
    sys.exit(1 if any(p["status"] == "error" for p in report["parts"].values()) else 0)


if __name__ == "__main__":
    main()
