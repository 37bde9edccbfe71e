"""The Optuna study of a run: its journal (``RUN/optuna.journal``), opened by the search, read by ``status``."""

from __future__ import annotations

from collections import Counter

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from prunenas.runs.rundir import RunDir

STUDY = "search"


def storage(run: RunDir) -> optuna.storages.BaseStorage:
    """The run's journal storage (append-only, safe for several processes on one file system)."""
    return JournalStorage(JournalFileBackend(str(run.journal)))


def trial_states(run: RunDir) -> dict[str, int]:
    """How many search trials are in each Optuna state (COMPLETE, PRUNED, FAIL...); empty before the search."""
    if not run.journal.exists():
        return {}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=STUDY, storage=storage(run))
    return dict(Counter(t.state.name for t in study.get_trials(deepcopy=False)))
