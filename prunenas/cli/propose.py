"""``prunenas proposers`` and ``propose``: the registered pruning methods, and one of them run from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from prunenas.cli.common import base_weights, target_space
from prunenas.cli.latency import target_from_args
from prunenas.cost import count, format_macs
from prunenas.errors import PrunenasError
from prunenas.pretrained import check_weights_name
from prunenas.proposers import PROPOSERS, propose
from prunenas.proposers.basemodel import BaseModelProvider, BaseTraining
from prunenas.proposers.proposal import save_with_masks


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``["s=1e-4", "prune_tied=true"]`` -> typed values (YAML scalars)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise PrunenasError(f"--param {pair!r} must be KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out


def cmd_proposers(args: argparse.Namespace) -> int:
    """Every registered proposer with its description, whether it needs a base model, and its parameters."""
    rows = [{"name": name, "description": info.description, "needs_base_model": info.needs_base,
             "presets": info.presets,
             "params": {k: {"default": p.default, "type": p.kind.__name__, "help": p.help,
                            **({"choices": list(p.choices)} if p.choices else {}),
                            **({"range": [p.low, p.high]} if p.low is not None else {})}
                        for k, p in info.params.items()}}
            for name, info in ((n, PROPOSERS.get(n)) for n in PROPOSERS.names())]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        flags = ", ".join(f for f, on in (("needs a base model", row["needs_base_model"]),
                                          ("presets", row["presets"])) if on)
        print(f"{row['name']}: {row['description']}" + (f" [{flags}]" if flags else ""))
        for key, p in row["params"].items():
            print(f"    {key} = {p['default']!r} ({p['type']}) {p['help']}")
    return 0


def run_propose(args: argparse.Namespace) -> int:
    """One proposal of ``args.method`` on ``args.target`` (training or reading the base model as needed)."""
    info = PROPOSERS.get(args.method)
    space = target_space(args)
    if args.weights and args.base_weights:
        raise PrunenasError("give --weights (your trained state dict) or --base-weights (published), not both")
    weights = base_weights(args, space) or (args.base_weights and check_weights_name(args.base_weights))
    target = target_from_args(args)
    params = parse_params(args.param)
    info.check_params(params)
    log = sys.stderr if args.json else sys.stdout
    training = BaseTraining(dataset=args.data, recipe=args.recipe, seed=args.base_seed, epochs=args.base_epochs,
                            data_root=args.data_root, val_size=args.val_size, subset=args.subset, weights=weights)
    provider = BaseModelProvider(space, training, cache_dir=args.cache_dir, device=args.device, threads=args.threads,
                                 log=lambda line: print(line, file=log, flush=True))
    proposal = propose(args.method, space, target, provider if info.needs_base else None, params, args.seed)
    if args.out:
        save_with_masks(proposal, Path(args.out))
    summary = proposal.to_dict()
    summary["macs"], summary["params_count"] = count(proposal.arch).macs, count(proposal.arch).params
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    p = proposal.provenance
    ratio = summary["macs"] / count(space.base).macs
    print(f"{args.method} on {space.name}: widths {list(proposal.arch.widths)}")
    print(f"MACs {format_macs(summary['macs'])} ({ratio:.1%} of base), params {summary['params_count']:,}; "
          f"{p['seconds']:.1f}s")
    if p.get("floored_slots"):
        names = [space.slots[s].name for s in p["floored_slots"]]
        print(f"slots held at their minimum width: {', '.join(names)}")
    if p.get("removed_blocks"):
        print(f"removed branches: {', '.join(p['removed_blocks'])}")
    if "base_val_acc" in p:
        print(f"base model {p['base_model']} (val {p['base_val_acc']:.2%}); trained now: {provider.trainings}")
    if args.out:
        print(f"written to {args.out}")
    return 0
