"""``prunenas cache``: list the base-model cache or prune entries from it."""

from __future__ import annotations

import argparse
import json

from prunenas.errors import PrunenasError
from prunenas.proposers.basemodel import list_entries, remove_entry


def cmd_cache(args: argparse.Namespace) -> int:
    """``list``: one line (or JSON object) per cached base model; ``prune``: remove ``--key`` entries or ``--all``."""
    entries = list_entries(args.cache_dir)
    if args.action == "list":
        if args.json:
            print(json.dumps(entries, indent=2, sort_keys=True))
        else:
            _print_entries(entries)
        return 0
    keys = [e["key"] for e in entries] if args.all else args.key
    if not keys:
        raise PrunenasError("cache prune needs --key KEY (repeatable) or --all")
    known = {e["key"] for e in entries}
    unknown = [key for key in keys if key not in known]
    if unknown:  # checked before removing anything: a typo in the third key leaves the first two in place
        raise PrunenasError(f"no cache entry {unknown[0]!r}; see `prunenas cache list`")
    for key in keys:
        remove_entry(args.cache_dir, key)
        if not args.json:
            print(f"removed {key}")
    if args.json:
        print(json.dumps({"removed": keys}, indent=2))
    return 0


def _print_entries(entries: list[dict]) -> None:
    for e in entries:
        reg = e["regularizer"]["kind"] if e.get("regularizer") else "none"
        print(f"{e['key']}  {e['space']:24} {e['dataset']:14} regulariser {reg:6} val {e['val_acc']:.2%}  "
              f"{e['bytes'] / 1e6:.1f} MB")
    print(f"{len(entries)} base model(s)")
