"""Benchmark: the latency predictor (per-layer table + calibration) against a MAC-only baseline.

For each space, runtime and batch: the time to fill the table cold for ``n`` random architectures of the space
(s, with the number of distinct units), the time of one prediction of a fresh architecture (µs, table warm),
and the calibration report (:func:`prunenas.latency.calibration_report`: fit on half the architectures, scored
on the other half; median absolute % error, share within +-10%, Kendall tau, order accuracy on pairs of equal
MACs) for the predictor and for latency ~ a x MACs + b. Prints a table and writes a JSON.

    .venv/bin/python experiments/bench_latency.py [--n 50] [--small] [--threads 1] [--out bench_latency.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from typing import Any

from prunenas.latency import LatencyTable, calibration_report, get_device, random_architectures
from prunenas.latency.units import units
from prunenas.spaces import load_space

SPACES = ("vgg11-fashionmnist", "resnet20-fashionmnist", "mobilenetv2-cifar10")
RUNTIMES = ("cpu-torch", "cpu-onnxruntime")
BATCHES = (1, 64)


def bench_one(space_name: str, runtime: str, batch: int, args: argparse.Namespace, cache: str) -> dict[str, Any]:
    """Fill time, prediction time and calibration report of one (space, runtime, batch)."""
    space = load_space(space_name)
    table = LatencyTable(get_device(runtime, batch, args.threads), cache, repeats=args.unit_repeats)
    archs = random_architectures(space, args.n, args.seed)
    start = time.perf_counter()
    for arch in archs:
        table.table_sum(arch)
    fill_s = time.perf_counter() - start
    distinct = len({u.key for arch in archs for u in units(arch.layers)})
    report = calibration_report(space, table, args.n, args.seed, repeats=args.repeats)
    fresh = [space.arch(arch.widths) for arch in archs]  # layer lists not yet derived, as in a search
    start = time.perf_counter()
    for arch in fresh:
        table.predict(arch)
    predict_us = 1e6 * (time.perf_counter() - start) / len(fresh)
    return {"fill_s": fill_s, "units": distinct, "unit_measurements": table.measured, "predict_us": predict_us,
            **report}


def row(result: dict[str, Any]) -> str:
    p, m = result["predictor"], result["macs_baseline"]
    cells = [result["space"], result["device"], f"{result['fill_s']:.1f} ({result['units']})",
             f"{result['predict_us']:.0f}",
             f"{result['measured_ms']['min']:.2f}-{result['measured_ms']['max']:.2f}"]
    for key, fmt in (("median_abs_pct", "{:.1f}"), ("within_10pct", "{:.0%}"), ("kendall_tau", "{:.2f}"),
                     ("equal_macs_order_acc", "{:.0%}")):
        cells.append(f"{fmt.format(p[key])} / {fmt.format(m[key])}")
    cells.append(str(p["equal_macs_pairs"]))
    return "| " + " | ".join(cells) + " |"


HEADER = ("| space | device | table fill s (units) | predict µs | measured ms | median abs % err | within ±10% "
          "| Kendall τ | equal-MACs order acc | pairs |\n|" + "---|" * 10
          + "\n(error columns: predictor / MAC baseline, scored on the held-out half)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="random architectures per space (half fit, half scored)")
    parser.add_argument("--small", action="store_true", help="quick run: n=8, 5 repeats, batch 1, one space")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds of the whole networks")
    parser.add_argument("--unit-repeats", type=int, default=15, help="timed rounds of each table unit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spaces", nargs="+", default=list(SPACES))
    parser.add_argument("--runtimes", nargs="+", default=list(RUNTIMES))
    parser.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    parser.add_argument("--cache-dir", help="table cache (default: a fresh temporary folder, so fills are cold)")
    parser.add_argument("--out", default="bench_latency.json")
    args = parser.parse_args()
    if args.small:
        args.n, args.repeats, args.unit_repeats, args.batches, args.spaces = 8, 5, 5, [1], args.spaces[:1]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        print(HEADER, flush=True)
        for space in args.spaces:
            for runtime in args.runtimes:
                for batch in args.batches:
                    results.append(bench_one(space, runtime, batch, args, args.cache_dir or tmp))
                    print(row(results[-1]), flush=True)
    with open(args.out, "w") as fh:
        json.dump({"args": vars(args), "results": results}, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
