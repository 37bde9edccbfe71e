"""The results store: one JSON row per trained model in ``results.jsonl``, append-only, the run's truth.

Rows are keyed by the *trial key* — a digest of everything that determines a training (architecture, arm,
epochs, seed, recipe, data, initial weights) — so resume skips keys that already have a final row, and two
proposals that yield the same network train it once. Many processes (Ray trials) append at once: each row
is one ``write`` under an exclusive file lock, then fsync. A crash mid-write leaves a truncated last line,
which readers detect and ignore with a warning.
"""

from __future__ import annotations

import fcntl
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FINAL = ("ok", "diverged")  # statuses that are never retrained; "failed" rows are retried


class ResultsStore:
    """Append-only JSON-lines file of training rows."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def append(self, row: Mapping[str, Any]) -> None:
        line = json.dumps(row, sort_keys=True, default=_jsonable) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.seek(0, os.SEEK_END)
                if fh.tell() > 0:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":  # a previous writer died mid-line: start a fresh line
                        fh.write(b"\n")
                fh.write(line.encode())
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def rows(self) -> list[dict[str, Any]]:
        """Every complete row in order; an unparsable line is skipped with a warning."""
        if not self.path.exists():
            return []
        out = []
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{self.path}:{number}: ignoring a truncated or corrupt row", stacklevel=2)
        return out

    def latest(self) -> dict[str, dict[str, Any]]:
        """The last row of every key."""
        return {row["key"]: row for row in self.rows()}

    def final(self, key: str) -> dict[str, Any] | None:
        """The row of ``key`` if it is final (ok or diverged)."""
        row = self.latest().get(key)
        return row if row is not None and row.get("status") in FINAL else None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (set, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
