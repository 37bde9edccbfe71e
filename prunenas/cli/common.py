"""What the commands share: resolving a space or architecture argument, and describing an architecture."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prunenas.arch import Architecture, load_architecture
from prunenas.budget import scratch_epochs
from prunenas.cost import count, format_macs, thop_macs
from prunenas.errors import PrunenasError
from prunenas.families.traced import NAME as TRACED
from prunenas.pretrained import LOCAL_SUFFIXES, load_weights_state
from prunenas.proposers import load_proposal
from prunenas.recipes import RECIPES
from prunenas.references import coverage
from prunenas.spaces import Space, load_space, space_names


def target_space(args: argparse.Namespace) -> Space:
    """The space of ``args.target`` (a name, a YAML or a model reference with ``--input-shape``/``--classes``)."""
    return load_space(args.target, args.input_shape, args.classes)


def base_weights(args: argparse.Namespace, space: Space) -> str | None:
    """``--weights`` checked to exist and fit the space's base network now, before anything is written."""
    if not args.weights:
        return None
    if not args.weights.endswith(LOCAL_SUFFIXES):
        raise PrunenasError(f"--weights {args.weights!r} must be a state-dict file ({', '.join(LOCAL_SUFFIXES)})")
    load_weights_state(args.weights, space.base)
    return args.weights


def resolve(target: str, preset: str | None, input_shape: tuple[int, int, int] | None = None,
            classes: int | None = None) -> tuple[Space, Architecture]:
    """A space (by name/YAML/model reference) or an architecture JSON -> (space, architecture to describe)."""
    if target.endswith(".json"):
        if preset:
            raise PrunenasError("--preset applies to spaces, not to architecture files")
        if input_shape is not None or classes is not None:
            raise PrunenasError("--input-shape and --classes apply to model references, not to architecture files")
        return _resolve_file(target)
    space = load_space(target, input_shape, classes)
    return space, space.preset(preset) if preset else space.base


def _resolve_file(path: str) -> tuple[Space, Architecture]:
    """An architecture JSON, or a proposal JSON (its architecture, in the space it was proposed in)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # not JSON, not UTF-8, not a file: load_architecture reports it precisely
        data = None
    if isinstance(data, dict) and str(data.get("format", "")).startswith("prunenas.proposal"):
        proposal = load_proposal(path)
        name = proposal.provenance.get("space")
        arch = proposal.arch
        if name in space_names():
            base = load_space(name).base
            if (base.family, base.options, base.input_shape, base.num_classes) == (
                    arch.family, arch.options, arch.input_shape, arch.num_classes):
                return load_space(name), arch
        return Space.from_architecture(arch, name=path), arch
    arch = load_architecture(path)
    return Space.from_architecture(arch, name=path), arch


def describe(space: Space, arch: Architecture, recipe_name: str) -> dict[str, Any]:
    cost, base_cost = count(arch), count(space.base)
    recipe = RECIPES.get(recipe_name)
    budgets = {mode: scratch_epochs(mode, recipe.epochs, base_cost.macs, cost.macs, space.scratch_b_cap,
                                    recipe.milestones) for mode in ("scratch-e", "scratch-b")}
    return {
        "space": space.name,
        "family": arch.family,
        "options": arch.opts,
        "input_shape": list(arch.input_shape),
        "num_classes": arch.num_classes,
        "slots": [{"name": s.name, "base": s.base, "width": w, "stage": s.stage, "tied": s.tied,
                   "removable": s.removable} for s, w in zip(arch.slots, arch.widths)],
        "widths": list(arch.widths),
        "macs": cost.macs,
        "flops": cost.flops,
        "params": cost.params,
        "macs_ratio": cost.macs / base_cost.macs,
        "params_ratio": cost.params / base_cost.params,
        "thop_macs_with_bn": thop_macs(arch),
        "digest": arch.digest(),
        "recipe": recipe_name,
        "epochs": {mode: {"epochs": s.epochs, "milestones": list(s.milestones)} for mode, s in budgets.items()},
        **(_traced_coverage(arch) if arch.family == TRACED else {}),
    }


def _traced_coverage(arch: Architecture) -> dict[str, Any]:
    """What the search can change in a traced network: its searchable MAC share and the frozen channels."""
    cover = coverage(arch)
    return {"searchable_share": round(cover.share, 6),
            "frozen": [{"producer": producer, "channels": channels, "reason": reason}
                       for producer, channels, reason in cover.frozen],
            "mixing_norm_slots": list(cover.mixing_norm_slots),
            "grouped_slots": [{"slot": slot, "rule": f"fixed {rule}", rule.replace(" ", "_"): n}
                              for slot, rule, n in cover.grouped]}


def print_info(info: dict[str, Any]) -> None:
    opts = ", ".join(f"{k}={v}" for k, v in info["options"].items())
    print(f"{info['space']}: {info['family']}({opts}), input {info['input_shape']}, {info['num_classes']} classes")
    print(f"{'#':>3} {'slot':28} {'width':>6} {'base':>6} {'stage':>5}  kind")
    for i, s in enumerate(info["slots"]):
        kind = "residual-tied" if s["tied"] else "removable" if s["removable"] else ""
        print(f"{i:3d} {s['name']:28} {s['width']:6d} {s['base']:6d} {s['stage']:5d}  {kind}")
    print(f"MACs   {info['macs']:,} ({format_macs(info['macs'])}; {info['macs_ratio']:.1%} of base; "
          f"FLOPs = 2 x MACs = {format_macs(info['flops'])})")
    print(f"params {info['params']:,} ({info['params_ratio']:.1%} of base)")
    print(f"thop's own count (adds BatchNorm and pooling): {info['thop_macs_with_bn']:,}")
    e, b = info["epochs"]["scratch-e"], info["epochs"]["scratch-b"]
    print(f"recipe {info['recipe']}: Scratch-E {e['epochs']} epochs (milestones {e['milestones']}), "
          f"Scratch-B {b['epochs']} epochs (milestones {b['milestones']})")
    if "searchable_share" in info:
        print(f"searchable: {info['searchable_share']:.1%} of the MACs; {len(info['frozen'])} frozen channel "
              "group(s)" + (":" if info["frozen"] else ""))
        for f in info["frozen"]:
            print(f"    {f['producer']} ({f['channels']} channels): {f['reason']}")
        for rule, slots in _by_rule(info["grouped_slots"]).items():
            print(f"grouped convs, {rule}: slots {', '.join(map(str, slots))}")
    print(f"digest {info['digest']}")


def _by_rule(grouped: list[dict[str, Any]]) -> dict[str, list[int]]:
    """``"fixed group width 16 (whole groups kept)"`` -> its slots, in order."""
    out: dict[str, list[int]] = {}
    for g in grouped:
        rule = (f"fixed group width {g['group_width']} (whole groups kept; groups = width / {g['group_width']})"
                if "group_width" in g else f"fixed group count {g['group_count']} (as many channels per group)")
        out.setdefault(rule, []).append(g["slot"])
    return out
