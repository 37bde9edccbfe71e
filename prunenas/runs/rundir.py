"""A run folder: everything a search produced, enough for a report or an export without anything else.

::

    RUN/run.json            schema version, name, status (running / finished), phase, timestamps
    RUN/experiment.yaml     the experiment as run (file + command-line overrides)
    RUN/results.jsonl       one row per trained model (prunenas.runs.results)
    RUN/proposals/ID.json   proposals (+ their masks files)
    RUN/plan.json           the evaluation plan: proposal -> arm -> budget -> seed -> trial key
    RUN/weights/KEY.safetensors, RUN/errors/KEY.txt, RUN/checkpoints/KEY.pt
    RUN/optuna.journal      the Optuna study (optuna.load_study / optuna-dashboard)
    RUN/tune/               Ray Tune's own folder (TensorBoard event files)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from prunenas.errors import PrunenasError
from prunenas.fileio import atomic_write_text, read_text
from prunenas.runs.results import ResultsStore

# The run-folder schema changes only for incompatible changes (a new results field is optional, not a bump);
# folders of every schema from OLDEST_READABLE_SCHEMA up stay readable by report, arch list and export.
SCHEMA = 1
OLDEST_READABLE_SCHEMA = 1


class RunDir:
    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).resolve()

    # -- layout -------------------------------------------------------------------------------------------
    @property
    def results(self) -> ResultsStore:
        return ResultsStore(self.path / "results.jsonl")

    @property
    def proposals_dir(self) -> Path:
        """Proposal JSONs and their masks files (masked architectures' rows resolve mask paths against it)."""
        return self.path / "proposals"

    def proposal_path(self, proposal_id: str) -> Path:
        return self.proposals_dir / f"{proposal_id}.json"

    def proposal_ids(self) -> list[str]:
        """Ids of every proposal saved in the run (sorted)."""
        return sorted(p.stem for p in (self.path / "proposals").glob("*.json"))

    def weights_path(self, key: str) -> Path:
        return self.path / "weights" / f"{key}.safetensors"

    def checkpoint_path(self, key: str) -> Path:
        return self.path / "checkpoints" / f"{key}.pt"

    def error_path(self, key: str) -> Path:
        return self.path / "errors" / f"{key}.txt"

    @property
    def journal(self) -> Path:
        return self.path / "optuna.journal"

    @property
    def tune_dir(self) -> Path:
        return self.path / "tune"

    # -- state --------------------------------------------------------------------------------------------
    def create(self, name: str, experiment_yaml: str) -> None:
        """Make a new run folder; refuses an existing one (use resume)."""
        self.check_writable()
        atomic_write_text(self.path / "experiment.yaml", experiment_yaml)
        self.write_state(name=name, status="running", phase=0, created=_now())

    def check_writable(self) -> None:
        """Raise unless a new run can be written here: no run yet, and the folder can be made and written."""
        if (self.path / "run.json").exists():
            raise PrunenasError(f"{self.path} already holds a run; continue it with `prunenas resume {self.path}`")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise PrunenasError(f"cannot write the run folder {self.path}: {err.strerror}") from None

    def state(self) -> dict[str, Any]:
        path = self.path / "run.json"
        if not path.exists():
            raise PrunenasError(f"{self.path} is not a prunenas run folder (no run.json)")
        state = self._parse(path)
        if not readable_schema(state.get("schema")):
            readable = SCHEMA if OLDEST_READABLE_SCHEMA == SCHEMA else f"{OLDEST_READABLE_SCHEMA} to {SCHEMA}"
            raise PrunenasError(f"{self.path} has run-folder schema {state.get('schema')!r}; this prunenas reads "
                                f"schema {readable} (use the prunenas version that wrote it)")
        return state

    def write_state(self, **changes: Any) -> dict[str, Any]:
        path = self.path / "run.json"
        state = json.loads(path.read_text()) if path.exists() else {"schema": SCHEMA}
        state.update(changes, updated=_now())
        atomic_write_text(path, json.dumps(state, indent=2) + "\n")
        return state

    def write_json(self, name: str, data: Any) -> None:
        atomic_write_text(self.path / name, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def read_json(self, name: str) -> Any:
        path = self.path / name
        return self._parse(path) if path.exists() else None

    @staticmethod
    def _parse(path: Path) -> Any:
        try:
            return json.loads(read_text(path, "run file"))
        except json.JSONDecodeError as err:
            raise PrunenasError(f"{path} is corrupt: {err.msg}") from None


def readable_schema(schema: Any) -> bool:
    """Whether a run folder of run-folder schema ``schema`` can be read: this one or an older compatible one."""
    return isinstance(schema, int) and not isinstance(schema, bool) and (
        OLDEST_READABLE_SCHEMA <= schema <= SCHEMA)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
