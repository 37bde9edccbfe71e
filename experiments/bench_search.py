"""Benchmark: Ray Tune's overhead and the speed-up of concurrent trials.

The same N trainings (uniform-width VGG-11/Fashion-MNIST architectures at N MAC targets, one thread each) run
three ways, each timed on the wall clock as a user would see it:

  sequential  one Python process trains them one after the other (no Ray);
  search x1   ``prunenas search`` with concurrency 1 (Ray overhead = search x1 / sequential - 1);
  search x2   ``prunenas search`` with two concurrent one-thread trials (speed-up = search x1 / search x2).

Targets: overhead <= 10%, speed-up >= 1.7x on 2 cores.

    .venv/bin/python experiments/bench_search.py [--trials 8] [--epochs 2] [--subset 6000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

SEQUENTIAL = """
import sys, torch
from prunenas.budget import target_from_ratio, uniform_twin
from prunenas.data import load_data
from prunenas.spaces import load_space
from prunenas.train import train
from prunenas.train_config import TrainConfig
space = load_space("vgg11-fashionmnist")
ratios, epochs, subset = eval(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
data = load_data("fashion-mnist", space.input_shape, 10, val_size=1000, subset=subset)
for ratio in ratios:
    arch = uniform_twin(space, target_from_ratio(space, ratio)).arch
    train(arch, data, TrainConfig.from_recipe("fast", epochs=epochs, seed=0, threads=1))
"""


def experiment(ratios: list[float], epochs: int, subset: int, concurrency: int) -> dict:
    return {"name": f"bench-x{concurrency}", "space": "vgg11-fashionmnist",
            "data": {"name": "fashion-mnist", "val_size": 1000, "subset": subset},
            "proposers": {"uniform": {}}, "targets": {"ratios": ratios}, "arms": ["proposed"],
            "seeds": {"search": [0], "eval": [0]}, "recipe": {"name": "fast", "epochs": epochs},
            "search": {"num_samples": len(ratios), "sampler": "random"}, "resources": {"cpu": 1},
            "concurrency": concurrency}


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=6000)
    args = parser.parse_args()
    ratios = [round(0.3 + 0.6 * i / max(1, args.trials - 1), 3) for i in range(args.trials)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        sequential = timed([sys.executable, "-c", SEQUENTIAL, repr(ratios), str(args.epochs), str(args.subset)], env)
        times = {}
        for concurrency in (1, 2):
            path = Path(tmp) / f"x{concurrency}.yaml"
            path.write_text(yaml.safe_dump(experiment(ratios, args.epochs, args.subset, concurrency)))
            times[concurrency] = timed([sys.executable, "-m", "prunenas", "search", str(path), "--out",
                                        str(Path(tmp) / f"run{concurrency}"), "--no-dashboard"], env)
    print(f"{args.trials} trainings of {args.epochs} epochs on {args.subset} images, one thread each")
    print(f"sequential {sequential:.1f}s   search x1 {times[1]:.1f}s   search x2 {times[2]:.1f}s")
    print(f"Ray overhead = search x1 / sequential - 1 = {times[1] / sequential - 1:+.1%}")
    print(f"2-concurrent speed-up = search x1 / search x2 = {times[1] / times[2]:.2f}x")


if __name__ == "__main__":
    main()
