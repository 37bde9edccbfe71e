"""Command line: ``prunenas COMMAND OBJECT [flags]``. Bad input prints one line and exits with code 2."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import NoReturn

from prunenas.budget import target_from_ratio, uniform_twin
from prunenas.cli.common import describe, model_arguments, print_info, resolve
from prunenas.cli.propose import run_propose
from prunenas.cli.train import run_training
from prunenas.cost import count, format_macs
from prunenas.data import planned_train_images
from prunenas.errors import PrunenasError
from prunenas.experiment import load_experiment
from prunenas.proposers import PROPOSERS
from prunenas.proposers.basemodel import list_entries, remove_entry
from prunenas.recipes import RECIPES
from prunenas.runs.export import (
    FORMATS,
    SELECTION_METRICS,
    export,
    format_architectures,
    list_architectures,
    open_run,
    select_best,
    select_trial,
)
from prunenas.runs.report import results_table, write_report
from prunenas.runs.results import format_percent
from prunenas.runs.rundir import RunDir
from prunenas.search.plan import estimate, format_estimate
from prunenas.spaces import load_space, space_names


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except PrunenasError as err:
        print(f"prunenas: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="prunenas", description="Network pruning as neural architecture search.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("spaces", help="list the built-in search spaces with their base MACs and params")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_spaces)

    p = sub.add_parser("info", help="slots, widths, MACs, params and Scratch-E/B epochs of a space or arch")
    p.add_argument("target", help="space name, space YAML, model reference (torchvision:resnet18) or architecture JSON")
    p.add_argument("--preset", help="a named architecture of the space (e.g. A, B)")
    p.add_argument("--recipe", help="base recipe for the Scratch-B epochs (default: the space's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    model_arguments(p)
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("uniform", help="the uniform-width twin at a cost target")
    p.add_argument("target", help="space name, space YAML, model reference (torchvision:resnet18) or architecture JSON")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--macs", type=int, help="absolute target (MACs, or params with --match params)")
    goal.add_argument("--ratio", type=float, help="fraction of the base network's cost, in (0, 1]")
    p.add_argument("--match", choices=("macs", "params"), default="macs")
    p.add_argument("--out", help="write the twin's architecture JSON here")
    p.add_argument("--json", action="store_true")
    model_arguments(p)
    p.set_defaults(run=cmd_uniform)

    p = sub.add_parser("train", help="train an architecture from scratch; writes result.json and weights")
    p.add_argument("target", help="space name, space YAML, model reference (torchvision:resnet18) or architecture JSON")
    p.add_argument("--preset", help="a named architecture of the space")
    _data_arguments(p)
    p.add_argument("--recipe", help="training recipe (default: the space's): " + ", ".join(RECIPES.names()))
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="epochs (milestones scale with them)")
    length.add_argument("--budget", choices=("scratch-e", "scratch-b"), help="the paper's epoch budgets")
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto")
    p.add_argument("--out", help="run folder (result.json, weights.safetensors, arch.json; resumes if interrupted)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    model_arguments(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("proposers", help="list the proposers with their parameters and defaults")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_proposers)

    p = sub.add_parser("propose", help="run a pruning method on a (cached) base model: an architecture at a target")
    p.add_argument("method", help="proposer name (see `prunenas proposers`)")
    p.add_argument("target", help="space name, space YAML or model reference (torchvision:resnet18)")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--ratio", type=float, help="fraction of the base network's MACs (or params), in (0, 1]")
    goal.add_argument("--macs", type=int, help="absolute MACs (params with --match params)")
    goal.add_argument("--preset", help="a named architecture of the space (methods with presets)")
    p.add_argument("--match", choices=("macs", "params"), default="macs")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter (repeat)")
    p.add_argument("--seed", type=int, default=0, help="proposer seed (random choices)")
    p.add_argument("--base-seed", type=int, default=0, help="seed of the base model's training")
    _data_arguments(p)
    p.add_argument("--recipe", help="base model's recipe (default: the space's)")
    p.add_argument("--base-epochs", type=int, help="base model's epochs (default: the recipe's)")
    p.add_argument("--base-weights", help="published weights as the base model instead of training one: a "
                   ".pth/.safetensors state dict or torchvision:NAME (e.g. torchvision:DEFAULT)")
    p.add_argument("--cache-dir", help="base-model cache folder (default $PRUNENAS_CACHE or ~/.cache/prunenas)")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)
    p.add_argument("--out", help="write the proposal JSON here (masks file beside it)")
    p.add_argument("--json", action="store_true")
    model_arguments(p, weights=True)
    p.set_defaults(run=cmd_propose)

    p = sub.add_parser("search", help="run a pruning-as-NAS study (Ray Tune trials, Optuna sampler)")
    p.add_argument("experiment", help="experiment YAML (see experiments/quickstart.yaml)")
    p.add_argument("--out", help="run folder (default: STORAGE/NAME-DATE)")
    p.add_argument("--address", help="Ray cluster to join: auto or HOST:6379 (default: a local Ray instance)")
    p.add_argument("--dry-run", action="store_true", help="validate, print the planned trials and cost, write nothing")
    p.add_argument("--cache-dir", help="base-model cache (shared storage on a cluster)")
    p.add_argument("--num-samples", type=int, help="search trials (overrides search.num_samples)")
    p.add_argument("--concurrency", type=int, help="trials at once (overrides concurrency)")
    p.add_argument("--sampler", choices=("tpe", "nsga2", "random", "grid"))
    p.add_argument("--epochs", type=int, help="training epochs of every arm (overrides recipe.epochs)")
    p.add_argument("--no-dashboard", action="store_true", help="start the local Ray instance without its dashboard")
    p.add_argument("--json", action="store_true", help="with --dry-run: print the plan as JSON")
    p.set_defaults(run=cmd_search)

    p = sub.add_parser("report", help="tables, verdict, latency and plots of a run folder (finished or running)")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=("md", "csv", "json"), default="md")
    p.add_argument("--out", help="folder for the report files (default RUN/report)")
    p.add_argument("--no-latency", action="store_true", help="skip the CPU latency measurement")
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("submit", help="submit a search as a Ray Job to a cluster's dashboard address")
    p.add_argument("experiment")
    p.add_argument("--address", required=True, help="the dashboard URL, e.g. http://HEAD:8265 (as `ray job submit`)")
    p.add_argument("--out", required=True, help="run folder on storage the cluster can write (shared on multi-node)")
    p.add_argument("--num-samples", type=int)
    p.add_argument("--concurrency", type=int)
    p.add_argument("--cache-dir", help="base-model cache on storage the cluster can read and write")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends; exit 1 if it fails")
    p.set_defaults(run=cmd_submit)

    p = sub.add_parser("status", help="phase, trials done/running/failed and the best so far (run folder or job)")
    p.add_argument("target", help="a run folder, or a job id with --address")
    p.add_argument("--address", help="dashboard URL for a job id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_status)

    p = sub.add_parser("doctor", help="versions, optional packages, datasets, Ray reachability and auth, cache")
    p.add_argument("--address", help="a dashboard URL to check (http://HEAD:8265)")
    p.set_defaults(run=cmd_doctor)

    p = sub.add_parser("cache", help="the base-model cache: list or prune entries")
    p.add_argument("action", choices=("list", "prune"))
    p.add_argument("--cache-dir")
    p.add_argument("--key", action="append", default=[], help="prune these entries (repeat)")
    p.add_argument("--all", action="store_true", help="prune every entry")
    p.set_defaults(run=cmd_cache)

    p = sub.add_parser("export", help="write a trained network of a run: architecture JSON, weights, ONNX, pt2")
    p.add_argument("run_dir", help="run folder (written by `prunenas search`)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--best", action="store_true",
                       help="the best network by a validation metric (never test accuracy)")
    which.add_argument("--trial", metavar="KEY", help="the network with this key (a unique prefix is enough)")
    p.add_argument("--metric", choices=tuple(SELECTION_METRICS), help="--best ranks on this (default val_acc)")
    p.add_argument("--arm", help="--best considers this arm only (default proposed; any: every arm)")
    p.add_argument("--max-macs", type=int, help="--best considers networks with at most this many MACs")
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt",
                   help="json: architecture; safetensors: weights (+ JSON); onnx; pt2: torch.export")
    p.add_argument("--out", help="file to write (default RUNNAME-KEY.EXT in the current folder; a folder: inside)")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("arch", help="architectures discovered by runs")
    arch_sub = p.add_subparsers(dest="arch_command", required=True, parser_class=_Parser)
    p = arch_sub.add_parser("list", help="trained networks of run folders: key, method, arm, MACs, params, accuracy")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--space", help="only runs of this space (name or YAML)")
    p.add_argument("--max-macs", type=int, help="at most this many MACs")
    p.add_argument("--min-acc", type=float, help="validation accuracy at least this fraction (e.g. 0.9)")
    p.add_argument("--arm", default="any", help="only this arm (default: any)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(run=cmd_arch_list)

    p = sub.add_parser("resume", help="continue an interrupted run folder where it stopped")
    p.add_argument("run_dir")
    p.add_argument("--address", help="Ray cluster to join (default: a local Ray instance)")
    p.add_argument("--no-dashboard", action="store_true")
    p.set_defaults(run=cmd_resume)
    return parser


def _with_ray(module: str) -> ModuleType:
    """A module that imports Ray or Optuna, loaded only by the commands that need it (``prunenas --help`` and the
    other commands start without them)."""
    return importlib.import_module(module)


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset (default: the space's); required for architecture files")
    p.add_argument("--data-root", help="folder holding the dataset files (also $PRUNENAS_DATA)")
    p.add_argument("--val-size", type=int, help="validation images carved from the training set")
    p.add_argument("--subset", type=int, help="train on this many images only")


# -- commands -------------------------------------------------------------------------------------------


def cmd_spaces(args: argparse.Namespace) -> int:
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
    space, arch = resolve(args.target, args.preset, args.input_shape, args.classes)
    info = describe(space, arch, args.recipe or space.recipe)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print_info(info)
    return 0


def cmd_uniform(args: argparse.Namespace) -> int:
    space, arch = resolve(args.target, None, args.input_shape, args.classes)
    if args.ratio is not None:
        target = target_from_ratio(space, args.ratio, args.match)
    elif args.macs is not None and args.macs > 0:
        target = args.macs
    else:
        raise PrunenasError(f"--macs {args.macs} must be a positive integer")
    twin = uniform_twin(space, target, args.match)
    cost = count(twin.arch)
    result = {"space": space.name, "match": args.match, "target": target, "achieved": twin.achieved,
              "error": round(twin.error, 6), "within_tolerance": twin.within_tolerance,
              "multiplier": round(twin.multiplier, 6), "widths": list(twin.arch.widths),
              "macs": cost.macs, "params": cost.params, "digest": twin.arch.digest()}
    if args.out:
        twin.arch.save(args.out, meta={"space": space.name, "uniform_multiplier": twin.multiplier})
        result["written"] = args.out
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"uniform twin of {space.name} at {args.match} {target:,}: multiplier {twin.multiplier:.4f}, "
              f"achieved {twin.achieved:,} ({twin.error:+.2%})")
        print(f"widths {list(twin.arch.widths)}")
        print(f"MACs {cost.macs:,} ({format_macs(cost.macs)}), params {cost.params:,}")
    if not twin.within_tolerance:
        print(f"prunenas: warning: closest achievable is {twin.error:+.2%} from the target", file=sys.stderr)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    return run_training(args)


def cmd_proposers(args: argparse.Namespace) -> int:
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


def cmd_propose(args: argparse.Namespace) -> int:
    return run_propose(args)


def cmd_search(args: argparse.Namespace) -> int:
    exp = load_experiment(args.experiment).with_overrides(
        num_samples=args.num_samples, concurrency=args.concurrency, sampler=args.sampler, epochs=args.epochs)
    if args.num_samples is not None and args.num_samples < 1:
        raise PrunenasError(f"--num-samples {args.num_samples} must be >= 1")
    if args.dry_run:
        plan = estimate(exp, planned_train_images(exp.dataset, exp.val_size, exp.subset))
        print(json.dumps(plan, indent=2) if args.json else format_estimate(exp, plan))
        return 0
    if args.out and Path(args.out, "run.json").exists():
        raise PrunenasError(f"{args.out} already holds a run; continue it with `prunenas resume {args.out}`")
    tune = _with_ray("prunenas.search.tune")
    run = tune.run_search(exp, args.out, address=args.address, cache_dir=args.cache_dir,
                          dashboard=not args.no_dashboard)
    print(results_table(run))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    run = RunDir(args.run_dir)
    run.state()
    written = write_report(run, args.out, args.format, latency=not args.no_latency)
    if "text" in written:
        print(written["text"])
    print(f"written to {written['folder']}: {', '.join(written['files'])}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    monitor = _with_ray("prunenas.search.monitor")
    load_experiment(args.experiment)  # validate here, before anything reaches the cluster
    extra = [f"--{flag.replace('_', '-')}={value}" for flag, value in
             (("num_samples", args.num_samples), ("concurrency", args.concurrency), ("cache_dir", args.cache_dir))
             if value is not None]
    job = monitor.submit(args.experiment, args.address, str(Path(args.out).resolve()), extra)
    print(f"submitted job {job}; follow it with `prunenas status {job} --address {args.address}` or the dashboard")
    if not args.wait:
        return 0

    while True:
        status = monitor.job_status(args.address, job)["job_status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            print(f"job {job}: {status}")
            return 0 if status == "SUCCEEDED" else 1
        time.sleep(2)


def cmd_status(args: argparse.Namespace) -> int:
    info = _with_ray("prunenas.cli.status").run_status(args.target, args.address)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    for key, value in _with_ray("prunenas.cli.doctor").checks(args.address).items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"    {k}: {v}")
        else:
            print(f"{key}: {value}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    entries = list_entries(args.cache_dir)
    if args.action == "list":
        for e in entries:
            reg = e["regularizer"]["kind"] if e.get("regularizer") else "none"
            print(f"{e['key']}  {e['space']:24} {e['dataset']:14} regulariser {reg:6} val {e['val_acc']:.2%}  "
                  f"{e['bytes'] / 1e6:.1f} MB")
        print(f"{len(entries)} base model(s)")
        return 0
    keys = [e["key"] for e in entries] if args.all else args.key
    if not keys:
        raise PrunenasError("cache prune needs --key KEY (repeatable) or --all")
    known = {e["key"] for e in entries}
    for key in keys:
        if key not in known:
            raise PrunenasError(f"no cache entry {key!r}; see `prunenas cache list`")
        remove_entry(args.cache_dir, key)
        print(f"removed {key}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    RunDir(args.run_dir).state()  # a clear error for a missing or foreign folder, before Ray starts
    tune = _with_ray("prunenas.search.tune")
    run = tune.resume(args.run_dir, address=args.address, dashboard=not args.no_dashboard)
    print(results_table(run))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    run = open_run(args.run_dir)
    if args.best:
        trial = select_best(run, args.metric or "val_acc", args.arm or "proposed", args.max_macs)
    else:
        given = [flag for flag, value in (("--metric", args.metric), ("--arm", args.arm),
                                          ("--max-macs", args.max_macs)) if value is not None]
        if given:
            raise PrunenasError(f"{', '.join(given)} select among networks with --best; --trial names one")
        trial = select_trial(run, args.trial)
    written = export(trial, args.fmt, args.out)
    meta = written.meta
    if args.json:
        print(json.dumps({"files": [str(p) for p in written.files], "meta": meta}, indent=2))
        return 0
    val, test = (format_percent(meta[k], suffix="%") for k in ("val_acc", "test_acc"))
    print(f"{meta['run']} {meta['key']}: {meta['method']} ({meta['arm']}, {meta['budget']}, seed {meta['seed']}), "
          f"MACs {format_macs(meta['macs'])}, params {meta['params']:,}, val {val}, test {test}")
    for path in written.files:
        print(f"wrote {path}")
    return 0


def cmd_arch_list(args: argparse.Namespace) -> int:
    rows = list_architectures(args.run_dirs, space=args.space, max_macs=args.max_macs, min_acc=args.min_acc,
                              arm=args.arm)
    print(json.dumps(rows, indent=2) if args.json else format_architectures(rows))
    return 0


# -- helpers --------------------------------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
