"""Benchmark: trials on several Ray Train workers (DDP inside a Tune trial) against one-worker trials.

Two figures, each from Tune trials on a local Ray instance:

1. overhead: seconds per trial of a near-empty training (``tiny-synthetic``, one epoch of 256 images) run as a
   2-worker trial (the Tune trial fits a ``TorchTrainer``: worker group, process group, teardown) minus the same
   training as a plain 1-worker Tune trial;
2. throughput: training images/s (the trainer's own figure, epoch time without evaluation) of
   ``vgg11-fashionmnist`` on ``--images`` Fashion-MNIST images, on 1 worker x 2 threads and on 2 workers x 1 thread.
   On one 2-core machine the workers share the cores: expect little speed-up; the point there is correctness.

    .venv/bin/python experiments/bench_workers.py [--rounds 2] [--images 4096] [--epochs 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import ray
from ray import tune

from prunenas.data import load_data
from prunenas.search.workers import DRIVER_RESOURCES, WorkerTrainer
from prunenas.spaces import load_space
from prunenas.train import train
from prunenas.train_config import TrainConfig


def _trial(config: dict, workers: int, space: str, images: int, epochs: int, storage: str) -> None:
    if space == "tiny-synthetic":
        data = load_data("synthetic", (3, 16, 16), 4, val_size=256, subset=256)
    else:
        data = load_data("fashion-mnist", (1, 32, 32), 10, val_size=1000, subset=images)
    recipe = TrainConfig.from_recipe("fast", epochs=epochs, threads=2 // workers)
    trainer = train if workers == 1 else WorkerTrainer(workers, 1, 0, storage)
    started = time.perf_counter()
    result = trainer(load_space(space).base, data, recipe, evaluate_test=False)
    tune.report({"seconds": time.perf_counter() - started, "images_per_s": result.images_per_s})


def run_trial(workers: int, space: str, images: int, epochs: int, storage: str) -> dict:
    """One Tune trial (whole trial wall time in ``wall``, the training's own figures beside it)."""
    fn = tune.with_parameters(_trial, workers=workers, space=space, images=images, epochs=epochs, storage=storage)
    fn = tune.with_resources(fn, {"cpu": 2} if workers == 1 else DRIVER_RESOURCES)
    started = time.perf_counter()
    grid = tune.Tuner(fn, run_config=tune.RunConfig(storage_path=storage, verbose=0)).fit()
    if grid.num_errors:
        raise RuntimeError(grid.errors[0])
    return {**grid[0].metrics, "wall": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--images", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    storage = tempfile.mkdtemp(prefix="bench-workers-")
    walls: dict[int, list[float]] = {1: [], 2: []}
    speed: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(args.rounds):  # alternate, so both see the same machine load
        for workers in (1, 2):
            walls[workers].append(run_trial(workers, "tiny-synthetic", 256, 1, storage)["wall"])
            speed[workers].append(run_trial(workers, "vgg11-fashionmnist", args.images, args.epochs,
                                            storage)["images_per_s"])
    ray.shutdown()
    med = {w: (statistics.median(walls[w]), statistics.median(speed[w])) for w in (1, 2)}
    print(f"trial wall time, near-empty training: 1 worker {med[1][0]:.1f} s, 2 workers {med[2][0]:.1f} s "
          f"-> launch overhead {med[2][0] - med[1][0]:.1f} s per trial")
    print(f"vgg11-fashionmnist training: 1 worker x 2 threads {med[1][1]:.0f} images/s, 2 workers x 1 thread "
          f"{med[2][1]:.0f} images/s (x{med[2][1] / med[1][1]:.2f})")
    print(f"rounds {args.rounds}; wall times {walls}; images/s {speed}")


if __name__ == "__main__":
    main()
