"""Every channel/depth proposer on real Fashion-MNIST base models: widths, MACs ratio, seconds, and the
validation accuracy of the pruned network with inherited weights before any retraining (random channels at
the same widths for comparison).

Base models (vgg11-fashionmnist, resnet20-fashionmnist; plain and SSS-regularised) are trained once into the
cache, then each proposer runs at ``--ratio`` of the base MACs:

    .venv/bin/python experiments/propose_fashionmnist.py [--ratio 0.5] [--epochs 4] [--subset 10000] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile

import torch

from prunenas.cost import count
from prunenas.proposers import Target, propose
from prunenas.proposers.basemodel import BaseModelProvider, BaseTraining, RegularizerSpec
from prunenas.proposers.channels import inherit
from prunenas.spaces import load_space
from prunenas.train import evaluate

TRANSFER_SOURCES = {"vgg11-fashionmnist": "vgg16-cifar10:A", "resnet20-fashionmnist": "resnet56-cifar10:B"}


def pruned_accuracy(provider, proposal, kept=None) -> float:
    """Validation accuracy of the proposal with weights inherited from the (matching) base model."""
    spec = RegularizerSpec.of("sss", gamma=proposal.params["gamma"]) if proposal.method == "sss" else None
    base = provider.get(spec)
    model = inherit(base.arch, base.architecture_state(), proposal.arch, kept or proposal.kept)
    return evaluate(model, provider.data().val)[0]


def random_accuracy(provider, proposal, draws: int = 5) -> float:
    rng = random.Random(0)
    widths, upper = proposal.arch.widths, provider.space.upper
    return statistics.mean(pruned_accuracy(provider, proposal, {s: sorted(rng.sample(range(b), w))
                                                                 for s, (w, b) in enumerate(zip(widths, upper))})
                           for _ in range(draws))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gamma", type=float, default=0.05, help="SSS penalty")
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = args.cache_dir or tempfile.mkdtemp(prefix="prunenas-bench-")
    target = Target(ratio=args.ratio)
    print("| space | method | widths | MACs ratio | seconds | pruned val acc (random channels) |")
    print("|---|---|---|---|---|---|")
    for name in ("vgg11-fashionmnist", "resnet20-fashionmnist"):
        space = load_space(name)
        provider = BaseModelProvider(space, BaseTraining(epochs=args.epochs, subset=args.subset, val_size=2000),
                                     cache_dir=cache, threads=args.threads, log=None)
        base = provider.get(None)
        print(f"| {name} | base | {list(space.upper)} | 1.000 | - | {base.val_acc:.3f} |")
        runs = [("uniform", {}), ("l1-norm", {}), ("thinet", {}), ("regression", {}),
                ("transferred", {"source": TRANSFER_SOURCES[name]})]
        if name.startswith("resnet"):
            provider.get(RegularizerSpec.of("sss", gamma=args.gamma))  # trained before timing
            runs += [("sss", {"gamma": args.gamma})]
        thinet_file = None
        for method, params in runs:
            proposal = propose(method, space, target, provider if method not in ("uniform", "transferred") else None,
                               params, seed=0)
            if method == "thinet":
                thinet_file = proposal.save(f"{cache}/{name}-thinet.json")
            _row(name, method, proposal, provider, space)
        guided = propose("guided", space, target, None, {"source": str(thinet_file)}, seed=0)
        _row(name, "guided (thinet)", guided, provider, space)


def _row(name, method, proposal, provider, space) -> None:
    ratio = count(proposal.arch).macs / count(space.base).macs
    accuracy = "-"
    if proposal.method == "sss":
        accuracy = f"{pruned_accuracy(provider, proposal):.3f} (blocks: {proposal.provenance['removed_blocks']})"
    elif proposal.kept is not None:
        accuracy = f"{pruned_accuracy(provider, proposal):.3f} ({random_accuracy(provider, proposal):.3f})"
    print(f"| {name} | {method} | {list(proposal.arch.widths)} | {ratio:.3f} | {proposal.provenance['seconds']:.2f} "
          f"| {accuracy} |", flush=True)


if __name__ == "__main__":
    main()
