"""The multi-fidelity keys of an experiment's ``search`` section — ``proxy``, ``screen``, ``promote``, ``audit``,
``fidelity_proxies`` — read into :class:`~prunenas.experiment.Screening` and checked against the rest of the
experiment, so a screening that cannot run fails at validation time, never mid-run.

A proxy is given like a proposer: a name (``proxy: synflow``) or a name with parameters
(``proxy: {name: adaptive-bn, batches: 50}``), checked by :func:`prunenas.proxies.registry.check_proxy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prunenas.errors import PrunenasError
from prunenas.experiment import Experiment, ExperimentError, Screening
from prunenas.experiment_reader import Reader
from prunenas.proxies import check_proxy
from prunenas.proxies.fidelity import check_phases
from prunenas.spaces import Space

SCREENING_KEYS = {"proxy", "screen", "promote", "audit", "fidelity_proxies"}
DEFAULT_AUDIT = 10  # the R >= 10: fewer audit candidates give intervals too wide to read


def read_screening(search: Reader, space: Space) -> Screening | None:
    """``search.proxy`` and its companions, or None for a plain search (the companions alone are an error)."""
    given = sorted(SCREENING_KEYS & {k for k, v in search.data.items() if v is not None})
    if "proxy" not in given:
        if given:
            raise ExperimentError(f"search.{given[0]}: applies to a multi-fidelity search only; give search.proxy "
                                  "(e.g. proxy: synflow) or drop it")
        return None
    if search.data.get("num_samples") is not None:
        raise ExperimentError("search.num_samples: a multi-fidelity search trains search.promote + search.audit "
                              "candidates of search.screen screened ones; drop num_samples")
    name, params = _proxy(search.data["proxy"], "search.proxy", space)
    screen = search.get("screen", int, required=True, minimum=1)
    promote = search.get("promote", int, required=True, minimum=0)
    audit = search.get("audit", int, default=DEFAULT_AUDIT, minimum=0)
    try:
        check_phases(screen, promote, audit)
    except PrunenasError as err:
        raise ExperimentError(f"search: {err}") from None
    if promote + audit == 0:
        raise ExperimentError("search: promote 0 + audit 0 trains nothing; promote the proxy's best, audit a random "
                              "sample, or both")
    extra = search.get("fidelity_proxies", list, default=[])
    fidelity = tuple(_proxy(item, f"search.fidelity_proxies[{i}]", space) for i, item in enumerate(extra))
    return Screening(name, params, screen, promote, audit, fidelity)


def _proxy(value: Any, where: str, space: Space) -> tuple[str, dict[str, Any]]:
    """(name, full parameters) of ``NAME`` or ``{name: NAME, PARAM: VALUE...}``, checked against the space."""
    if isinstance(value, Mapping):
        if not isinstance(value.get("name"), str):
            raise ExperimentError(f"{where}: a proxy with parameters needs a name: {{name: synflow, ...}}")
        name, given = value["name"], {k: v for k, v in value.items() if k != "name"}
    elif isinstance(value, str):
        name, given = value, {}
    else:
        raise ExperimentError(f"{where}: {value!r} must be a proxy name or {{name: NAME, PARAM: VALUE...}}")
    try:
        return name, check_proxy(name, space, given)
    except PrunenasError as err:
        raise ExperimentError(f"{where}: {err}") from None


def check_screening(exp: Experiment) -> None:
    """A screening against the rest of the experiment: what it cannot be combined with, refused plainly."""
    if exp.screening is None:
        return
    if exp.sampler == "grid":
        raise ExperimentError("search.sampler: grid enumerates every point and trains each, which leaves nothing "
                              "to screen; use tpe or random with search.proxy")
    if len(exp.objectives) > 1:
        raise ExperimentError(f"search.objectives: {list(exp.objectives)}: a proxy screening ranks candidates by one "
                              "score; use objectives: [val_acc] with search.proxy")
    if exp.scheduler != "none":
        raise ExperimentError(f"scheduler: {exp.scheduler} stops trainings early, and the promoted and audit "
                              "candidates need their full accuracy to measure the proxy; use scheduler: none")
