"""Benchmark: the wall-clock of a multi-fidelity search against a plain search that trains as many candidates.

Both are ``prunenas search`` runs of random-width quarter-width VGG-11 candidates at 50% of the MACs on
Fashion-MNIST, timed on the wall clock as a user would see them (Ray start-up, every phase, the report-ready run
folder):

  plain     ``search.num_samples: K + R`` — trains K + R random candidates (Scratch-E on one search seed);
  screened  ``search: {proxy, screen: N, promote: K, audit: R}`` — scores N candidates by the proxy (plus phase 0's
            base model, which ``adaptive-bn`` inherits from), then trains the same number, K + R.

What the screening buys is N candidates looked at instead of K + R; what it costs is ``screened / plain - 1``.
The two runs alternate (plain, screened, plain, ... for ``--rounds``), so a change in the machine's load falls
on both; min/median/max over the rounds and the load average are printed.

    PYTHONPATH=. .venv/bin/python experiments/bench_screening.py [--screen 200] [--promote 6] [--audit 10]
        [--epochs 8] [--subset 10000] [--proxy adaptive-bn] [--rounds 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from bench_search import timed  # the same wall-clock timer (this folder is on sys.path when run as a script)


def experiment(name: str, search: dict, epochs: int, subset: int) -> dict:
    """The experiment both runs share, with ``search`` as its search section."""
    return {"name": name, "space": "vgg11-fashionmnist",
            "data": {"name": "fashion-mnist", "val_size": 2000, "subset": subset},
            "base": {"recipe": "cifar-paper", "epochs": epochs},
            "proposers": {"random": {"low": {"low": 0.05, "high": 0.95}}}, "targets": {"ratios": [0.5]},
            "arms": ["proposed"], "seeds": {"search": [0], "eval": [0]},
            "recipe": {"name": "fast", "epochs": epochs},
            "search": {"sampler": "random", "enqueue": False, **search}, "resources": {"cpu": 1}, "concurrency": 2}


def proxy_section(proxy: str, screen: int, promote: int, audit: int) -> dict:
    params = {"batches": 50, "batch_size": 128} if proxy == "adaptive-bn" else {}
    return {"proxy": {"name": proxy, **params}, "screen": screen, "promote": promote, "audit": audit}


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f}s (min {min(values):.1f}, max {max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--screen", type=int, default=200)
    parser.add_argument("--promote", type=int, default=6)
    parser.add_argument("--audit", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--proxy", default="adaptive-bn")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    trained = args.promote + args.audit
    runs = {"plain": experiment("bench-plain", {"num_samples": trained}, args.epochs, args.subset),
            "screened": experiment("bench-screened", proxy_section(args.proxy, args.screen, args.promote, args.audit),
                                   args.epochs, args.subset)}
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}
    times: dict[str, list[float]] = {name: [] for name in runs}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, spec in runs.items():
                path = Path(tmp) / f"{name}.yaml"
                path.write_text(yaml.safe_dump(spec))
                seconds = timed([sys.executable, "-m", "prunenas", "search", str(path), "--out",
                                 str(Path(tmp) / f"{name}-{round_}"), "--no-dashboard"], env)
                times[name].append(seconds)
                loads.append(os.getloadavg()[0])
                print(f"round {round_ + 1}: {name} {seconds:.1f}s", flush=True)
    print(f"plain: {trained} trained; screened: {args.screen} scored by {args.proxy}, {args.promote} promoted + "
          f"{args.audit} audit trained; {args.epochs} epochs on {args.subset} images, 2 trials at once")
    for name in runs:
        print(f"{name:9s} {spread(times[name])}")
    ratio = statistics.median(times["screened"]) / statistics.median(times["plain"])
    print(f"screened / plain = {ratio:.2f} (the cost of looking at {args.screen} candidates instead of {trained}); "
          f"load average {min(loads):.1f}-{max(loads):.1f}")


if __name__ == "__main__":
    main()
