"""What a user sees while a search runs: start-up lines, a progress bar per phase and one line per finished
training on the console; Ray's and Tune's own output in ``RUN/logs/ray.log``; the identity of every trial
actor as the Ray dashboard shows it.

Finished trainings are read from ``RUN/results.jsonl`` (the trials write their rows there), so the console
shows exactly what the run folder holds. Without a terminal (CI, Ray Jobs, ``| tee``) the bar is replaced by
the same figures on each line.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

from ray import tune
from tqdm import tqdm

from prunenas.cost import format_macs
from prunenas.proposers import load_proposal
from prunenas.runs.rundir import RunDir
from prunenas.runs.stats import format_percent

LOG = Path("logs") / "ray.log"  # inside the run folder
POLL_SECONDS = 1.0  # how often the results file is read for finished trainings
LIBRARY_LOGGERS = ("ray", "optuna")  # their console handlers write into the log too

# the console stream while Ray's and Tune's output is redirected into the log (None: sys.stdout)
_console: IO[str] | None = None
_bar: tqdm | None = None


def tune_verbosity() -> int:
    """Tune's ``RunConfig(verbose=...)``: its tables only when they reach the console (``--verbose``)."""
    return 0 if _console is not None else 1


def say(text: str) -> None:
    """Print a line on the console (above the progress bar, if one is shown)."""
    stream = _console or sys.stdout
    if _bar is not None:
        _bar.write(text, file=stream)
    else:
        print(text, file=stream, flush=True)


@contextlib.contextmanager
def ray_output_to_log(run: RunDir, verbose: bool) -> Iterator[Path | None]:
    """Send everything printed while the search runs (Tune's tables, workers' output forwarded by Ray) to
    ``RUN/logs/ray.log``; :func:`say` still reaches the console. Yields the log's path (None with ``verbose``:
    nothing is redirected)."""
    global _console
    if verbose:
        yield None
        return
    path = run.path / LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    console = sys.stdout
    with path.open("a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), \
            _library_logs_to(log, (console, sys.__stderr__, sys.__stdout__)):
        _console = console
        try:
            yield path
        finally:
            _console = None


@contextlib.contextmanager
def _library_logs_to(log: IO[str], consoles: tuple[Any, ...]) -> Iterator[None]:
    """Point Ray's and Optuna's console log handlers at ``log``: they hold the stream they were created with,
    so redirecting sys.stdout/sys.stderr alone does not reach them."""
    moved = [(h, h.setStream(log)) for name in LIBRARY_LOGGERS for h in logging.getLogger(name).handlers
             if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in consoles]
    try:
        yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)


def startup_lines(run: RunDir, log: Path | None, dashboard_url: str | None, token_source: str | None,
                  auth_disabled: bool) -> list[str]:
    """What ``prunenas search``/``resume`` print first: the run folder, where Ray's output goes, the dashboard
    and how to authenticate to it (``token_source``: where this process found Ray's token, never the token)."""
    lines = [f"run folder {run.path}"]
    if log is not None:
        lines.append(f"Ray and Tune output: {log} (--verbose shows it here)")
    if dashboard_url:
        url = dashboard_url if "://" in dashboard_url else f"http://{dashboard_url}"
        if auth_disabled:
            auth = "token authentication off: RAY_AUTH_MODE=disabled"
        elif token_source:
            auth = f"sign in with the token in {token_source}; `ray get-auth-token` prints it"
        else:
            auth = "if it asks for a token: `ray get-auth-token` on the head prints it"
        lines.append(f"Ray dashboard {url}  ({auth})")
    return lines


# -- progress of a phase ----------------------------------------------------------------------------------


class Progress(tune.Callback):
    """Progress of one phase: ``total`` trainings, a bar (on a terminal) and one line per finished training.

    The ETA follows the plan's cost estimate: ``cost_per_training`` (MACs x epochs of an average planned
    training) times the trainings left, at the rate measured so far (seconds per MAC-epoch of the finished
    ones). Phase 0 (base models) has no rows: its trials' completions count instead.
    """

    def __init__(self, run: RunDir, phase: str, total: int, cost_per_training: float, *,
                 rows: bool = True, bars: bool | None = None) -> None:
        self.run, self.phase, self.total, self.unit = run, phase, total, cost_per_training
        self.rows, self.done, self.cost_done = rows, 0, 0.0
        self.started = time.monotonic()
        self._offset = _results_size(run)  # rows written before this phase are not this phase's progress
        self._polled = 0.0
        self._targets: dict[str, str] = {}
        stream = _console or sys.stdout
        self.bars = stream.isatty() if bars is None else bars
        self._bar = tqdm(total=total, file=stream, desc=phase, unit="training", dynamic_ncols=True,
                         bar_format="{desc}: {bar} {n_fmt}/{total_fmt} [{elapsed}{postfix}]") if self.bars else None

    def __enter__(self) -> Progress:
        global _bar
        _bar = self._bar
        return self

    def __exit__(self, *exc: Any) -> None:
        global _bar
        self.poll(force=True)
        if self._bar is not None:
            self._bar.close()
        _bar = None
        if self.done < self.total and exc[0] is None:
            say(f"  {self.phase}: {self.total - self.done} of {self.total} planned training(s) not run "
                "(a proposal already trained, a trial stopped early or failed)")

    # Tune's hooks (driver side)
    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.poll()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not self.rows:
            result = trial.last_result or {}
            self._finished(f"ok     {result.get('summary', trial.trial_id)}", self.unit)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.poll(force=True)
        say(f"  FAILED trial {trial.trial_id}: traceback in {getattr(trial, 'path', '')}")

    def poll(self, force: bool = False) -> None:
        """Print a line for every training row written since the last poll (at most every POLL_SECONDS)."""
        now = time.monotonic()
        if not self.rows or (not force and now - self._polled < POLL_SECONDS):
            return
        self._polled = now
        for row in self._new_rows():
            if self._counts(row):
                self._finished(self.training_line(row), float(row.get("macs", 0)) * float(row.get("epochs", 0)))

    def _counts(self, row: Mapping[str, Any]) -> bool:
        """A final row of this phase; in the evaluation, a search training reused (its test accuracy added)."""
        reused = self.phase == "eval" and row.get("test_from_weights")
        return (row.get("phase") == self.phase or bool(reused)) and row.get("status") in ("ok", "failed", "diverged")

    def _new_rows(self) -> list[dict[str, Any]]:
        path = self.run.results.path
        if not path.exists():
            return []
        with path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]  # a row being written is read next time
        self._offset += len(complete)
        return [row for row in map(_parse_row, complete.decode().splitlines()) if row is not None]

    def training_line(self, row: Mapping[str, Any]) -> str:
        """One finished training: status, method, target, arm, budget, seed, accuracy, MACs, seconds."""
        val = format_percent(row.get("val_acc"), suffix="%") if row.get("status") == "ok" else "-"
        status = "reused" if row.get("test_from_weights") else row.get("status", "?")
        return (f"{status:6} {row.get('method') or '-':12} {self._target(row):10} "
                f"{row.get('arm', '?'):9} {row.get('budget', '?'):9} seed {row.get('seed', '?'):<3} val {val:>7}  "
                f"MACs {format_macs(int(row.get('macs', 0))):>7}  {row.get('seconds', 0):.0f}s")

    def _target(self, row: Mapping[str, Any]) -> str:
        pid = row.get("proposal")
        if not pid:
            return "-"
        if pid not in self._targets:
            try:
                self._targets[pid] = target_label(load_proposal(self.run.proposal_path(pid)).target)
            except (OSError, ValueError, KeyError):
                self._targets[pid] = "-"
        return self._targets[pid]

    def _finished(self, line: str, cost: float) -> None:
        self.done += 1
        self.cost_done += cost
        eta = self.eta()
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f", ETA {_duration(eta)}" if eta is not None else "")
            say(f"  {line}")
        else:
            elapsed = time.monotonic() - self.started
            eta_text = f" ETA {_duration(eta)}" if eta is not None else ""
            say(f"  [{self.phase} {self.done}/{self.total} {_duration(elapsed)}{eta_text}] {line}")

    def eta(self) -> float | None:
        """Seconds left: the trainings left at the planned cost each, at the measured seconds per cost."""
        left = max(self.total - self.done, 0)
        if self.cost_done <= 0:
            return None
        return (time.monotonic() - self.started) / self.cost_done * left * self.unit


def _parse_row(line: str) -> dict[str, Any] | None:
    try:
        return json.loads(line) if line.strip() else None
    except ValueError:  # the tail of a line whose writer died (the store starts a fresh line after it)
        return None


def _results_size(run: RunDir) -> int:
    path = run.results.path
    return path.stat().st_size if path.exists() else 0


def target_label(target: Any) -> str:
    """A proposal's cost target as a short label: ``0.5`` (a ratio), ``1.2M`` (absolute), ``preset A``."""
    if target is None:
        return "-"
    if getattr(target, "ratio", None) is not None:
        return f"{target.ratio:g}"
    if getattr(target, "cost", None) is not None:
        return format_macs(target.cost)
    if getattr(target, "preset", None) is not None:
        return f"preset {target.preset}"
    return "default"


def sampled_target_label(value: Any) -> str:
    """A target as the experiment file and the sampler give it: a ratio, an absolute cost or a preset name."""
    if isinstance(value, bool) or value is None:
        return "default"
    if isinstance(value, (int, float)):
        return f"{value:g}" if value <= 1 else format_macs(int(value))
    return str(value)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


# -- what the dashboard shows of a trial actor -----------------------------------------------------------


def trial_identity(config: Mapping[str, Any]) -> str:
    """What a trial trains, from its Tune config: phase, method, target, arm, budget, seed(s)."""
    if "base" in config:
        return f"prunenas base model for {config['base']['method']}"
    if "trial" in config:
        spec = config["trial"]
        return f"prunenas search {spec['method']} target {sampled_target_label(spec.get('target'))} proposed scratch-e"
    if "training" in config:
        t = config["training"]
        return (f"prunenas eval {t.get('method') or '-'} {t['arm']} {t['budget']} seed {t['seed']} "
                f"proposal {t.get('proposal') or '-'}")
    return "prunenas trial"


class IdentifiedTrial:
    """Mixin of Tune's function-trainable actor: its ``repr`` — which Ray records as the actor's ``repr_name``
    (dashboard Actors view, ``ray.util.state.list_actors``) — is :func:`trial_identity` of its trial instead
    of the trial function's name. Ray reads it once, when the actor is created: a reused actor keeps the
    identity of its first trial there (its current one is in the console and the metrics' tags)."""

    def setup(self, config: dict) -> None:
        self._name = trial_identity(config)  # Tune's ImplicitFunc.__repr__ returns self._name
        super().setup(config)

    def reset_config(self, new_config: dict) -> bool:
        self._name = trial_identity(new_config)
        return super().reset_config(new_config)
