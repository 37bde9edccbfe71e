"""``prunenas spaces``, ``info`` and ``uniform``: the built-in spaces, what an architecture is and costs, and the
uniform-width twin at a cost target."""

from __future__ import annotations

import argparse
import json
import sys

from prunenas.budget import cost_name, uniform_twin
from prunenas.cli.common import describe, print_info, resolve
from prunenas.cli.latency import device_facts, format_cost, target_from_args
from prunenas.cost import count, format_macs
from prunenas.errors import PrunenasError
from prunenas.spaces import load_space, space_names


def cmd_spaces(args: argparse.Namespace) -> int:
    """One row per built-in space: family, dataset, slots, base MACs and params, presets."""
    rows = []
    for name in space_names():
        space = load_space(name)
        cost = count(space.base)
        rows.append({"space": name, "family": space.family, "dataset": space.dataset,
                     "slots": len(space.slots), "macs": cost.macs, "params": cost.params,
                     "presets": sorted(space.presets)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'space':26} {'family':13} {'dataset':14} {'slots':>5} {'MACs':>9} {'params':>9}  presets")
    for r in rows:
        print(f"{r['space']:26} {r['family']:13} {r['dataset']:14} {r['slots']:5d} {format_macs(r['macs']):>9} "
              f"{format_macs(r['params']):>9}  {','.join(r['presets'])}")
    print("MACs: multiply-accumulates of conv+linear layers per image (FLOPs = 2 x MACs).")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    """Slots, widths, MACs, params and Scratch-E/B epochs of a space, a preset or an architecture file."""
    space, arch = resolve(args.target, args.preset, args.input_shape, args.classes)
    info = describe(space, arch, args.recipe or space.recipe)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_info(info)
    return 0


def cmd_uniform(args: argparse.Namespace) -> int:
    """The uniform twin at ``--macs`` or ``--ratio`` of the base cost; warns when ±1% is out of reach."""
    space, _ = resolve(args.target, None, args.input_shape, args.classes)
    if args.macs is not None and args.macs <= 0:
        raise PrunenasError(f"--macs {args.macs} must be a positive integer")
    goal = target_from_args(args)
    match, target = goal.cost_kind(space), goal.absolute(space)
    twin = uniform_twin(space, target, match)
    cost = count(twin.arch)
    result = {"space": space.name, "match": cost_name(match), "target": target, "achieved": twin.achieved,
              "error": round(twin.error, 6), "within_tolerance": twin.within_tolerance,
              "multiplier": round(twin.multiplier, 6), "widths": list(twin.arch.widths),
              "macs": cost.macs, "params": cost.params, "digest": twin.arch.digest(), **device_facts(match)}
    if args.out:
        twin.arch.save(args.out, meta={"space": space.name, "uniform_multiplier": twin.multiplier})
        result["written"] = args.out
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"uniform twin of {space.name} at {cost_name(match)} {format_cost(target)}: multiplier "
              f"{twin.multiplier:.4f}, achieved {format_cost(twin.achieved)} ({twin.error:+.2%})")
        print(f"widths {list(twin.arch.widths)}")
        print(f"MACs {cost.macs:,} ({format_macs(cost.macs)}), params {cost.params:,}")
    if not twin.within_tolerance:
        print(f"prunenas: warning: closest achievable is {twin.error:+.2%} from the target", file=sys.stderr)
    return 0
