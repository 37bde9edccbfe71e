"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

from __future__ import annotations


class PrunenasError(Exception):
    """Bad input: what is wrong, where, and what is allowed."""


class UnknownNameError(PrunenasError, KeyError):
    """A plug-in name (family, space, proposer, dataset...) that is not registered."""

    def __init__(self, kind: str, name: str, choices: list[str]) -> None:
        self.kind, self.name, self.choices = kind, name, choices
        super().__init__(f"unknown {kind} {name!r}; choose one of: {', '.join(choices) or '(none)'}")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ArchitectureError(PrunenasError, ValueError):
    """An architecture that its family cannot build."""


class SpaceError(PrunenasError, ValueError):
    """A malformed or unknown search space."""


class BudgetError(PrunenasError, ValueError):
    """A cost target that cannot be met."""


class TrainingDiverged(PrunenasError):
    """The loss became NaN or infinite. Callers record it and never retry it."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(f"training diverged at epoch {epoch}, step {step}: loss {loss}")
