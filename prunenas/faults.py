"""Test-only fault injection, so that crash and recovery paths are tested for real.

Set ``PRUNENAS_FAULT`` to ``POINT[@KEY=VALUE]:ACTION`` (several separated by ``;``), e.g.
``train.checkpoint@epoch=2:kill`` SIGKILLs the process right after epoch 2's checkpoint is written,
``trial.start:raise`` raises ``InjectedFault`` when a training starts, and ``trial.start@arm=random:diverge``
makes those trainings report a divergence (as a NaN loss would). Unset in normal use (then it costs one
dictionary lookup per call).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from prunenas.errors import TrainingDiverged

ENV = "PRUNENAS_FAULT"


class InjectedFault(RuntimeError):
    """Raised by a fault point configured with the ``raise`` action."""


def fault_point(name: str, **context: Any) -> None:
    """Trigger the configured fault if ``name`` (and its ``@key=value`` condition) matches."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for rule in spec.split(";"):
        target, _, action = rule.strip().rpartition(":")
        point, _, condition = target.partition("@")
        if point != name:
            continue
        if condition:
            key, _, value = condition.partition("=")
            if str(context.get(key)) != value:
                continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "raise":
            raise InjectedFault(f"injected fault at {name} {context}")
        if action == "diverge":
            raise TrainingDiverged(1, 0, float("nan"))
