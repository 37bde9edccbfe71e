"""Command line: ``prunenas COMMAND OBJECT [flags]``. Bad input prints one line and exits with code 2.

This module is the parser and the dispatcher only: one ``add_<command>`` function per command declares its flags
and names its implementation as ``"MODULE:FUNCTION"`` of a module of ``prunenas.cli``, loaded by name when the
command runs, so ``prunenas --help`` and every command start without the others' dependencies (Ray, Optuna,
matplotlib, scipy).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from prunenas.cli.arguments import model_arguments
from prunenas.errors import PrunenasError
from prunenas.recipes import RECIPES
from prunenas.runs.export_choices import FORMATS, SELECTION_METRICS

Subparsers = argparse._SubParsersAction  # argparse exposes no public name for what add_subparsers returns


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        return command_function(args.run)(args)
    except PrunenasError as err:
        print(f"prunenas: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what was stopping has said so; no traceback
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


def command_function(name: str) -> Callable[[argparse.Namespace], int]:
    """``"runs:cmd_report"`` -> ``prunenas.cli.runs.cmd_report``, imported now (the command line names it)."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(f"prunenas.cli.{module}"), function)


def build_parser() -> argparse.ArgumentParser:
    """The ``prunenas`` parser: every command, its flags and (as the ``run`` default) its implementation."""
    parser = _Parser(prog="prunenas", description="Network pruning as neural architecture search.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in (add_spaces, add_info, add_uniform, add_train, add_proposers, add_propose, add_latency, add_search,
                add_report, add_submit, add_status, add_doctor, add_cache, add_export, add_arch, add_resume):
        add(sub)
    return parser


def _json_flag(p: argparse.ArgumentParser, what: str = "print one JSON object on stdout") -> None:
    p.add_argument("--json", action="store_true", help=what)


def _verbose_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's and Tune's own output (trial tables) instead of writing it to RUN/logs/ray.log")


def _data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="dataset (default: the space's); required for architecture files")
    p.add_argument("--data-root", help="folder holding the dataset files (also $PRUNENAS_DATA)")
    p.add_argument("--val-size", type=int, help="validation images carved from the training set")
    p.add_argument("--subset", type=int, help="train on this many images only")


def _training_device_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int)


def _latency_device_arguments(p: argparse.ArgumentParser) -> None:
    """``--latency-device/-batch/-threads``: the device a latency is measured or predicted on."""
    p.add_argument("--latency-device", metavar="RUNTIME",
                   help="latency device: a runtime such as cpu-torch (an unknown one lists them all)")
    p.add_argument("--latency-batch", type=int, default=1, help="images per forward pass on the latency device")
    p.add_argument("--latency-threads", type=int, default=1, help="threads of the latency device")


def _latency_target_arguments(goal: argparse._MutuallyExclusiveGroup) -> None:
    """``--latency-ms`` / ``--latency-ratio`` in a command's group of mutually exclusive targets."""
    goal.add_argument("--latency-ms", type=float, help="predicted latency target (ms) on --latency-device")
    goal.add_argument("--latency-ratio", type=float,
                      help="fraction of the base network's predicted latency on --latency-device, in (0, 1]")


# -- spaces and architectures -----------------------------------------------------------------------------


def add_spaces(sub: Subparsers) -> None:
    p = sub.add_parser("spaces", help="list the built-in search spaces with their base MACs and params")
    _json_flag(p, "print a JSON list")
    p.set_defaults(run="spaces:cmd_spaces")


def add_info(sub: Subparsers) -> None:
    p = sub.add_parser("info", help="slots, widths, MACs, params and Scratch-E/B epochs of a space or arch")
    p.add_argument("target", help="space name, space YAML, model reference (torchvision:resnet18) or architecture JSON")
    p.add_argument("--preset", help="a named architecture of the space (e.g. A, B)")
    p.add_argument("--recipe", help="base recipe for the Scratch-B epochs (default: the space's)")
    _json_flag(p)
    model_arguments(p)
    p.set_defaults(run="spaces:cmd_info")


def add_uniform(sub: Subparsers) -> None:
    p = sub.add_parser("uniform", help="the uniform-width twin at a cost target")
    p.add_argument("target", help="space name, space YAML, model reference (torchvision:resnet18) or architecture JSON")
    goal = p.add_mutually_exclusive_group(required=True)
    goal.add_argument("--macs", type=int, help="absolute target (MACs, or params with --match params)")
    goal.add_argument("--ratio", type=float, help="fraction of the base network's cost, in (0, 1]")
    _latency_target_arguments(goal)
    p.add_argument("--match", choices=("macs", "params"), default="macs")
    _latency_device_arguments(p)
    p.add_argument("--out", help="write the twin's architecture JSON here")
    _json_flag(p)
    model_arguments(p)
    p.set_defaults(run="spaces:cmd_uniform")


# -- train and propose ------------------------------------------------------------------------------------


def add_train(sub: Subparsers) -> None:
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
    _training_device_arguments(p)
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto")
    p.add_argument("--out", help="run folder (result.json, weights.safetensors, arch.json; resumes if interrupted)")
    _json_flag(p, "print the result as JSON")
    model_arguments(p)
    p.set_defaults(run="train:run_training")


def add_proposers(sub: Subparsers) -> None:
    p = sub.add_parser("proposers", help="list the proposers with their parameters and defaults")
    _json_flag(p, "print a JSON list")
    p.set_defaults(run="propose:cmd_proposers")


def add_propose(sub: Subparsers) -> None:
    p = sub.add_parser("propose", help="run a pruning method on a (cached) base model: an architecture at a target")
    p.add_argument("method", help="proposer name (see `prunenas proposers`)")
    p.add_argument("target", help="space name, space YAML or model reference (torchvision:resnet18)")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument("--ratio", type=float, help="fraction of the base network's MACs (or params), in (0, 1]")
    goal.add_argument("--macs", type=int, help="absolute MACs (params with --match params)")
    goal.add_argument("--preset", help="a named architecture of the space (methods with presets)")
    _latency_target_arguments(goal)
    p.add_argument("--match", choices=("macs", "params"), default="macs")
    _latency_device_arguments(p)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter (repeat)")
    p.add_argument("--seed", type=int, default=0, help="proposer seed (random choices)")
    p.add_argument("--base-seed", type=int, default=0, help="seed of the base model's training")
    _data_arguments(p)
    p.add_argument("--recipe", help="base model's recipe (default: the space's)")
    p.add_argument("--base-epochs", type=int, help="base model's epochs (default: the recipe's)")
    p.add_argument("--base-weights", help="published weights as the base model instead of training one: a "
                   ".pth/.safetensors state dict or torchvision:NAME (e.g. torchvision:DEFAULT)")
    p.add_argument("--cache-dir", help="base-model cache folder (default $PRUNENAS_CACHE or ~/.cache/prunenas)")
    _training_device_arguments(p)
    p.add_argument("--out", help="write the proposal JSON here (masks file beside it)")
    _json_flag(p)
    model_arguments(p, weights=True)
    p.set_defaults(run="propose:run_propose")


def add_latency(sub: Subparsers) -> None:
    p = sub.add_parser("latency", help="measured and predicted latency of a network on a device; `latency "
                       "calibrate SPACE`: the predictor's error next to a MAC-only baseline; `latency measure RUN`: "
                       "every proposal of a run folder and its uniform twin, stored in RUN/latency.json")
    p.add_argument("target", help="space name, space YAML or architecture JSON; or `calibrate`, or `measure`")
    p.add_argument("space", nargs="?", help="with `calibrate`: the space whose random networks are measured; with "
                   "`measure`: the run folder")
    p.add_argument("--preset", help="a named architecture of the space")
    _latency_device_arguments(p)
    p.add_argument("--repeats", type=int, default=30, help="timed forward passes per network")
    p.add_argument("--warmup", type=int, default=5, help="untimed forward passes first")
    p.add_argument("--n", type=int, default=50, help="calibrate: random architectures measured")
    p.add_argument("--seed", type=int, default=0, help="calibrate: seed of the random architectures")
    p.add_argument("--force", action="store_true", help="measure: measure again the pairs RUN/latency.json holds")
    _json_flag(p)
    p.set_defaults(run="latency:run_latency")


# -- search -----------------------------------------------------------------------------------------------


def add_search(sub: Subparsers) -> None:
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
    _json_flag(p, "with --dry-run: print the plan as JSON")
    _verbose_argument(p)
    p.add_argument("--workers", type=int, help="data-parallel workers per trial; resources.cpu and .gpu are then "
                   "per worker (overrides resources.workers)")
    p.set_defaults(run="search:cmd_search")


def add_submit(sub: Subparsers) -> None:
    p = sub.add_parser("submit", help="submit a search as a Ray Job to a cluster's dashboard address")
    p.add_argument("experiment")
    p.add_argument("--address", required=True, help="the dashboard URL, e.g. http://HEAD:8265 (as `ray job submit`)")
    p.add_argument("--out", required=True, help="run folder on storage the cluster can write (shared on multi-node)")
    p.add_argument("--num-samples", type=int)
    p.add_argument("--concurrency", type=int)
    p.add_argument("--cache-dir", help="base-model cache on storage the cluster can read and write")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends; exit 1 if it fails")
    p.set_defaults(run="search:cmd_submit")


def add_resume(sub: Subparsers) -> None:
    p = sub.add_parser("resume", help="continue an interrupted run folder where it stopped")
    p.add_argument("run_dir")
    p.add_argument("--address", help="Ray cluster to join (default: a local Ray instance)")
    p.add_argument("--no-dashboard", action="store_true")
    _verbose_argument(p)
    p.set_defaults(run="search:cmd_resume")


def add_status(sub: Subparsers) -> None:
    p = sub.add_parser("status", help="phase, trials done/running/failed and the best so far (run folder or job)")
    p.add_argument("target", help="a run folder, or a job id with --address")
    p.add_argument("--address", help="dashboard URL for a job id")
    _json_flag(p)
    p.set_defaults(run="status:cmd_status")


# -- the run folder ---------------------------------------------------------------------------------------


def add_report(sub: Subparsers) -> None:
    p = sub.add_parser("report", help="tables, verdict, latency and plots of a run folder (finished or running)")
    p.add_argument("run_dir")
    p.add_argument("--format", choices=("md", "csv", "json"), default="md")
    p.add_argument("--out", help="folder for the report files (default RUN/report)")
    p.add_argument("--no-latency", action="store_true",
                   help="write no latency.md (the report measures nothing: it reads RUN/latency.json)")
    _json_flag(p, "print the report as one JSON object (report.json's) on stdout; files are written as usual")
    p.set_defaults(run="runs:cmd_report")


def add_export(sub: Subparsers) -> None:
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
    _json_flag(p, "print what was written as JSON")
    p.set_defaults(run="runs:cmd_export")


def add_arch(sub: Subparsers) -> None:
    p = sub.add_parser("arch", help="architectures discovered by runs")
    arch_sub = p.add_subparsers(dest="arch_command", required=True, parser_class=_Parser)
    p = arch_sub.add_parser("list", help="trained networks of run folders: key, method, arm, MACs, params, accuracy")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--space", help="only runs of this space (name or YAML)")
    p.add_argument("--max-macs", type=int, help="at most this many MACs")
    p.add_argument("--min-acc", type=float, help="validation accuracy at least this fraction (e.g. 0.9)")
    p.add_argument("--arm", default="any", help="only this arm (default: any)")
    _json_flag(p, "print a JSON list")
    p.set_defaults(run="runs:cmd_arch_list")


# -- the installation -------------------------------------------------------------------------------------


def add_doctor(sub: Subparsers) -> None:
    p = sub.add_parser("doctor", help="versions, optional packages, datasets, Ray reachability and auth, cache")
    p.add_argument("--address", help="a dashboard URL to check (http://HEAD:8265)")
    _json_flag(p)
    p.set_defaults(run="doctor:cmd_doctor")


def add_cache(sub: Subparsers) -> None:
    p = sub.add_parser("cache", help="the base-model cache: list or prune entries")
    p.add_argument("action", choices=("list", "prune"))
    p.add_argument("--cache-dir")
    p.add_argument("--key", action="append", default=[], help="prune these entries (repeat)")
    p.add_argument("--all", action="store_true", help="prune every entry")
    _json_flag(p, "print the entries listed, or the keys removed, as JSON")
    p.set_defaults(run="cache:cmd_cache")


if __name__ == "__main__":
    sys.exit(main())
