"""``prunenas report``, ``export`` and ``arch list``: what a run folder holds, as a report, as files, as a list."""

from __future__ import annotations

import argparse
import json
import sys

from prunenas.cost import format_macs
from prunenas.errors import PrunenasError
from prunenas.runs.catalog import format_architectures, list_architectures, open_run
from prunenas.runs.export import export, select_best, select_trial
from prunenas.runs.report import report_json, write_report
from prunenas.runs.rundir import RunDir
from prunenas.runs.stats import format_percent


def cmd_report(args: argparse.Namespace) -> int:
    """Write the report files; print the markdown (``--format md``) or, with ``--json``, report.json's object."""
    run = RunDir(args.run_dir)
    run.state()
    written = write_report(run, args.out, args.format, latency=not args.no_latency)
    summary = f"written to {written['folder']}: {', '.join(written['files'])}"
    if args.json:  # stdout is the JSON object alone, so it can be piped into a parser
        print(report_json(written["data"]), end="")
        print(summary, file=sys.stderr)
        return 0
    if "text" in written:
        print(written["text"])
    print(summary)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write one trained network (``--best`` by a validation metric, or ``--trial KEY``) in ``--format``."""
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
    """The trained networks of the run folders, filtered by space, MACs, validation accuracy and arm."""
    rows = list_architectures(args.run_dirs, space=args.space, max_macs=args.max_macs, min_acc=args.min_acc,
                              arm=args.arm)
    print(json.dumps(rows, indent=2) if args.json else format_architectures(rows))
    return 0
