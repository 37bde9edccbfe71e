"""``prunenas train``: one architecture trained from scratch into a folder, resumable."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prunenas.arch import Architecture
from prunenas.budget import budget_recipe
from prunenas.cli.common import resolve
from prunenas.cost import count, format_macs
from prunenas.data import load_data
from prunenas.environment import environment
from prunenas.errors import PrunenasError
from prunenas.fileio import atomic_write_text
from prunenas.recipes import RECIPES
from prunenas.spaces import Space
from prunenas.train import format_epoch, train
from prunenas.train_config import TrainConfig
from prunenas.weights import save_weights

RESULT_FORMAT = "prunenas.train-result/1"


def training_config(space: Space, arch: Architecture, args: argparse.Namespace) -> tuple[TrainConfig, str]:
    """The run's config from the recipe, the epoch budget and the flags; returns it and the budget label."""
    recipe = RECIPES.get(args.recipe or space.recipe)
    overrides: dict[str, Any] = {"seed": args.seed, "device": args.device, "amp": args.amp}
    for key in ("lr", "batch_size", "threads"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    budget = "scratch-e"
    if args.epochs is not None:
        overrides["epochs"], budget = args.epochs, f"{args.epochs} epochs"
    elif args.budget:
        recipe, budget = budget_recipe(recipe, args.budget, space, arch), args.budget
    return TrainConfig.from_recipe(recipe, **overrides), budget


def run_training(args: argparse.Namespace) -> int:
    space, arch = resolve(args.target, args.preset, args.input_shape, args.classes)
    dataset = args.data or (None if args.target.endswith(".json") else space.dataset)
    if dataset is None:
        raise PrunenasError("--data is required when training an architecture file")
    config, budget = training_config(space, arch, args)
    out = Path(args.out) if args.out else None
    if out and (out / "result.json").exists():
        raise PrunenasError(f"{out}/result.json exists: this run is finished (choose another --out)")
    data = load_data(dataset, arch.input_shape, arch.num_classes, val_size=args.val_size, subset=args.subset,
                     root=args.data_root)
    cost = count(arch)
    log = sys.stderr if args.json else sys.stdout
    print(f"training {space.name} ({format_macs(cost.macs)} MACs, {cost.params:,} params) on {dataset}: "
          f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test images, {config.epochs} epochs "
          f"({budget}), recipe {args.recipe or space.recipe}, seed {config.seed}", file=log)
    checkpoint = None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        arch.save(out / "arch.json")
        checkpoint = out / "checkpoint.pt"
        if checkpoint.exists():
            print(f"resuming from {checkpoint}", file=log)
    result = train(arch, data, config, checkpoint=checkpoint, arch=arch,
                   on_epoch=lambda m: print(format_epoch(m), file=log, flush=True))
    record = {"format": RESULT_FORMAT, "space": space.name, "arch": arch.to_dict(), "digest": arch.digest(),
              "dataset": dataset, "budget": budget, "config": json.loads(json.dumps(config.__dict__)),
              "result": result.to_dict(), "environment": environment(config.device)}
    if out:
        save_weights(result.model, out / "weights.safetensors", {"digest": arch.digest()})
        atomic_write_text(out / "result.json", json.dumps(record, indent=2) + "\n")
        checkpoint.unlink(missing_ok=True)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        test = f"{result.test_acc:.2%}" if result.test_acc is not None else "-"
        print(f"final epoch: val {result.val_acc:.2%}, test {test}; {result.seconds:.1f}s, "
              f"{result.images_per_s:.0f} img/s" + (f"; written to {out}" if out else ""))
    return 0
