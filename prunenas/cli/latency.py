"""``prunenas latency``: measure and predict a network's latency on a device, report how good the predictor is,
or measure a run folder's proposals and twins once (``latency measure RUN``); and the latency-target flags
``uniform`` and ``propose`` share."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from prunenas.budget import CostKind
from prunenas.cli.common import resolve
from prunenas.cost import count
from prunenas.errors import PrunenasError
from prunenas.latency import RUNTIMES, calibration_report, measure
from prunenas.latency.cost import LatencyCost, latency_cost
from prunenas.proposers import Target
from prunenas.runs.groups import collect
from prunenas.runs.latency_measurements import LATENCY_FILE, measure_run
from prunenas.runs.rundir import RunDir
from prunenas.spaces import load_space


def target_from_args(args: argparse.Namespace) -> Target:
    """The target of ``uniform`` / ``propose``: ``--ratio``/``--macs``/``--preset`` with ``--match``, or a latency
    target on the ``--latency-*`` device."""
    latency = args.latency_ms is not None or args.latency_ratio is not None
    if not latency:
        if args.latency_device is not None:
            raise PrunenasError("--latency-device applies to latency targets: give --latency-ms or --latency-ratio")
        return Target(ratio=args.ratio, cost=args.macs, preset=getattr(args, "preset", None), match=args.match)
    if args.latency_device is None:
        raise PrunenasError("--latency-ms/--latency-ratio need --latency-device (" + ", ".join(RUNTIMES) + ")")
    if args.match != "macs":
        raise PrunenasError(f"--match {args.match} and a latency target exclude each other")
    device = (args.latency_device, args.latency_batch, args.latency_threads)
    return Target(ratio=args.latency_ratio, cost=args.latency_ms, match="latency", latency_device=device)


def device_cost(args: argparse.Namespace) -> LatencyCost:
    """The latency cost (table, predictor) of the ``--latency-*`` device; bad or absent devices raise."""
    return latency_cost(args.latency_device, args.latency_batch, args.latency_threads)


def format_cost(value: float) -> str:
    """A cost for people: counts with thousands separators, milliseconds with four significant digits."""
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g} ms"


def device_facts(match: CostKind) -> dict[str, Any]:
    """The latency device a cost kind predicts on (name and fingerprint key), for results; empty for counts."""
    if isinstance(match, str):
        return {}
    return {"latency_device": match.device.name, "fingerprint": match.device.key()}


def run_latency(args: argparse.Namespace) -> int:
    if args.target == "measure":
        return measure_run_folder(args)
    if args.latency_device is None:
        raise PrunenasError("latency needs --latency-device (" + ", ".join(RUNTIMES) + ")")
    if args.force:
        raise PrunenasError("--force applies to `latency measure RUN` only")
    if args.target == "calibrate":
        if args.space is None:
            raise PrunenasError("latency calibrate needs a SPACE (name or YAML)")
        result = calibrate_space(args)
    else:
        if args.space is not None:
            raise PrunenasError(f"latency takes one network; {args.space!r} is extra (or use `latency calibrate`)")
        result = measure_network(args)
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.target == "calibrate":
        print_calibration(result)
    else:
        print(f"{result['network']} on {result['device']}: measured {result['measured_ms']:.3f} ms "
              f"(IQR {result['iqr_ms']:.3f}, n={result['samples']}), predicted {result['predicted_ms']:.3f} ms")
        print(f"fingerprint {result['fingerprint']}")
    return 0


def measure_run_folder(args: argparse.Namespace) -> int:
    """``latency measure RUN``: each proposal of a finished run and its uniform twin, measured interleaved on the
    run's devices and stored in ``RUN/latency.json`` (pairs stored already are skipped unless ``--force``)."""
    if args.space is None:
        raise PrunenasError("latency measure needs a RUN folder")
    if args.latency_device is not None or args.preset is not None:
        raise PrunenasError("latency measure RUN measures on the run's own devices (its targets' latency device, "
                            "else cpu-torch at batch 1 and 64, 1 thread); --latency-device and --preset do not apply")
    run = RunDir(args.space)
    if run.state().get("status") == "running":
        raise PrunenasError(f"{run.path} is running or was interrupted: its search measures latency itself after "
                            f"training (phase 3); an interrupted run: `prunenas resume {run.path}`")
    groups = collect(run)
    if not groups:
        raise PrunenasError(f"{run.path} has no evaluated proposals to measure")
    progress = sys.stderr if args.json else sys.stdout  # with --json, stdout is the JSON object alone
    print(f"latency of {len(groups)} proposal(s) and their twins", file=progress)
    data = measure_run(run, groups, force=args.force, repeats=args.repeats, warmup=args.warmup,
                       say=lambda line: print(line, file=progress, flush=True))
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    print(f"written to {run.path / LATENCY_FILE}: {len(data['networks'])} network(s); report: prunenas report "
          f"{run.path}", file=progress)
    return 0


def measure_network(args: argparse.Namespace) -> dict[str, Any]:
    """Measured median and IQR, and the calibrated prediction, of one network on the ``--latency-*`` device."""
    space, arch = resolve(args.target, args.preset)
    cost = device_cost(args)
    measured = measure([arch], cost.device, args.repeats, args.warmup)[0]
    predicted = cost.calibrated(space)(arch)
    return {"network": args.target + (f":{args.preset}" if args.preset else ""), "device": cost.device.name,
            "fingerprint": measured.fingerprint, "measured_ms": measured.median_ms, "iqr_ms": measured.iqr_ms,
            "min_ms": measured.min_ms, "samples": measured.samples, "predicted_ms": predicted,
            "macs": count(arch).macs, "widths": list(arch.widths)}


def calibrate_space(args: argparse.Namespace) -> dict[str, Any]:
    """The calibration report of a space on the ``--latency-*`` device (the stored calibration is refitted)."""
    space = load_space(args.space)
    if args.preset:
        raise PrunenasError("--preset does not apply to `latency calibrate` (it measures random architectures)")
    return calibration_report(space, device_cost(args).table, args.n, args.seed, args.repeats, args.warmup)


def print_calibration(report: dict[str, Any]) -> None:
    print(f"{report['space']} on {report['device']} (fingerprint {report['fingerprint']}): {report['n']} random "
          f"architectures, fit on {report['fit']}, scored on {report['test']}")
    print(f"{'':16} {'median |err|':>12} {'within 10%':>10} {'Kendall tau':>11} {'equal-MACs order':>16}")
    for name, key in (("table predictor", "predictor"), ("MAC baseline", "macs_baseline")):
        r = report[key]
        print(f"{name:16} {r['median_abs_pct']:11.1f}% {100 * r['within_10pct']:9.0f}% {r['kendall_tau']:11.3f} "
              f"{r['equal_macs_order_acc']:12.2f} ({r['equal_macs_pairs']})")
