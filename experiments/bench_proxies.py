"""Benchmark: screening throughput of every proxy, and (``--fidelity``) a small preview of their rank fidelity.

Candidates are random widths at ``--ratio`` of the base MACs (the ``random`` proposer's widths; their channels,
where a proxy inherits weights, are the largest-L1 ones). Throughput = screened candidates per minute after one
warm-up candidate (which pays the one-time costs: reading the base model, moving the data, drawing the
calibration batches; reported apart). ``adaptive-bn`` runs as in EagleEye's setting: K = 50 batches of 128 and a
2,000-image validation split. The machine's load average is printed: on a shared machine it matters.

``--fidelity`` also trains every candidate from scratch (``--train-epochs`` of the space's recipe on the same
training subset) and prints, per proxy, Kendall's tau and Spearman's rho with bootstrap 95% intervals and the
top-1 regret against those validation accuracies: a preview on a few candidates, not the committed study.

    PYTHONPATH=. .venv/bin/python experiments/bench_proxies.py [--small] [--fidelity] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch

from prunenas.proposers import Target, propose
from prunenas.proposers.basemodel import BaseModelProvider, BaseTraining
from prunenas.proxies import PROXIES, ProxyContext, screen
from prunenas.proxies.fidelity import fidelity
from prunenas.spaces import load_space
from prunenas.train import train
from prunenas.train_config import TrainConfig


def random_candidates(space, ratio: float, count: int, seed: int = 0) -> list:
    """``count`` random-width architectures at ``ratio`` of the base MACs (seeds ``seed``, ``seed + 1``, ...)."""
    return [propose("random", space, Target(ratio=ratio), seed=seed + i).arch for i in range(count)]


def throughput(name: str, candidates: list, context: ProxyContext, params: dict[str, Any]) -> dict[str, Any]:
    """Candidates per minute over ``candidates[1:]``; the first is the warm-up."""
    load_before = os.getloadavg()[0]
    warm = screen(name, candidates[:1], context, params)[0]
    started = time.perf_counter()
    rows = screen(name, candidates[1:], context, params)
    seconds = time.perf_counter() - started
    return {"proxy": name, "params": params, "candidates": len(rows), "per_minute": 60 * len(rows) / seconds,
            "median_s": statistics.median(r["seconds"] for r in rows), "warm_up_s": warm["seconds"],
            "images": rows[0]["images"], "load": (load_before, os.getloadavg()[0])}


def fully_trained(candidates: list, provider: BaseModelProvider, epochs: int, threads: int) -> list[float]:
    """Validation accuracy of every candidate trained from scratch for ``epochs`` of the space's recipe."""
    accuracies = []
    for i, arch in enumerate(candidates):
        config = TrainConfig.from_recipe(provider.space.recipe, epochs=epochs, seed=0, threads=threads)
        result = train(arch, provider.data(), config, evaluate_test=False)
        accuracies.append(result.val_acc)
        print(f"  trained {i + 1}/{len(candidates)}: val {result.val_acc:.2%} in {result.seconds:.0f}s", flush=True)
    return accuracies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="vgg11-fashionmnist")
    parser.add_argument("--small", action="store_true", help="a quick run: few candidates, a small base model")
    parser.add_argument("--candidates", type=int, default=31, help="screened per proxy (short-train: --short-n)")
    parser.add_argument("--short-n", type=int, default=4, help="candidates screened by short-train")
    parser.add_argument("--short-steps", type=int, default=200)
    parser.add_argument("--ratio", type=float, default=0.5, help="MACs of the candidates / base MACs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--subset", type=int, default=20000, help="training images (base model, short-train)")
    parser.add_argument("--base-epochs", type=int, default=4)
    parser.add_argument("--fidelity", action="store_true", help="also train the candidates and rank them")
    parser.add_argument("--fidelity-n", type=int, default=12)
    parser.add_argument("--train-epochs", type=int, default=3)
    parser.add_argument("--out", help="write the measurements as JSON here")
    args = parser.parse_args()
    if args.small:
        args.candidates, args.short_n, args.short_steps, args.subset, args.base_epochs = 6, 2, 40, 4000, 2
        args.fidelity_n, args.train_epochs = 6, 1
    torch.set_num_threads(args.threads)
    space = load_space(args.space)
    provider = BaseModelProvider(space, BaseTraining(epochs=args.base_epochs, subset=args.subset, val_size=2000),
                                 threads=args.threads, device=args.device)
    base = provider.get(None)
    print(f"base model {base.key}: val {base.val_acc:.2%} ({args.base_epochs} epochs on {args.subset} images)")
    context = ProxyContext(space, provider=provider, device=args.device)
    params = {"adaptive-bn": {"batches": 50, "batch_size": 128}, "short-train": {"steps": args.short_steps},
              "snip": {}, "synflow": {}}
    candidates = random_candidates(space, args.ratio, args.candidates)
    results = []
    for name in PROXIES.names():
        n = args.short_n if name == "short-train" else args.candidates
        results.append(throughput(name, candidates[:n], context, params.get(name, {})))
        r = results[-1]
        print(f"{name:12s} {r['per_minute']:8.1f} candidates/min  median {r['median_s']:.3f}s  "
              f"images {r['images']}  warm-up {r['warm_up_s']:.2f}s  ({r['candidates']} timed; "
              f"load {r['load'][0]:.1f} -> {r['load'][1]:.1f}; {args.threads} threads)", flush=True)
    report: dict[str, Any] = {"space": space.name, "ratio": args.ratio, "threads": args.threads,
                              "base_val_acc": base.val_acc, "throughput": results}
    if args.fidelity:
        chosen = random_candidates(space, args.ratio, args.fidelity_n, seed=1000)
        print(f"fidelity preview: {len(chosen)} candidates, {args.train_epochs} epochs each on {args.subset} images")
        accuracies = fully_trained(chosen, provider, args.train_epochs, args.threads)
        report["fidelity"] = {"val_acc": accuracies}
        for name in PROXIES.names():
            scores = [r["score"] for r in screen(name, chosen, context, params.get(name, {}))]
            stats = fidelity(scores, accuracies)
            report["fidelity"][name] = {"scores": scores, **stats}
            tau, rho = stats["kendall"], stats["spearman"]
            print(f"{name:12s} tau {tau['value']:+.2f} [{tau['low']:+.2f}, {tau['high']:+.2f}]  "
                  f"rho {rho['value']:+.2f} [{rho['low']:+.2f}, {rho['high']:+.2f}]  "
                  f"top-1 regret {stats['top1_regret']:.2%}  (n={stats['n']})", flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    main()
