"""Latency measured once per run: every evaluated proposal and its uniform twin, timed interleaved
(:func:`prunenas.latency.measure`) on the run's latency devices and stored in ``RUN/latency.json``, which the
report reads (it never measures, so a report is a deterministic function of the run folder).

The search measures in its phase 3, serially in the driver after every training has ended; ``prunenas latency
measure RUN`` measures a run folder that has no measurements yet (or again, with ``force``). Devices: a run with
latency targets (``match: latency``) is measured on its ``latency_device``; any other run on ``cpu-torch`` at batch
1 and 64 with **one thread** (a figure that does not depend on how many cores the measuring machine has).

``RUN/latency.json``::

    {"format": "prunenas.latency-measurements/1",
     "fingerprints": {KEY: the device's fingerprint (runtime, batch, threads, processor or GPU, versions)},
     "networks": {DIGEST: {DEVICE: {"median_ms", "iqr_ms", "min_ms", "samples", "fingerprint", "predicted_ms"?}}}}

DIGEST is :meth:`~prunenas.arch.Architecture.digest` (what results rows and training keys name a network by),
DEVICE a device name (``cpu-torch/b64/t1``), ``fingerprint`` a KEY; ``predicted_ms`` is there when the latency
cache holds a calibrated predictor of the device for the network's kind. The networks of a device are measured
together in one interleaved session, so every pair shares a fingerprint and the interference; a device whose
pairs are all stored is skipped (resume-safe).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from prunenas.arch import from_dict
from prunenas.budget import cost_error, within_tolerance
from prunenas.errors import PrunenasError
from prunenas.latency import Device, Measurement, calibration_key, get_device, measure
from prunenas.latency.cost import latency_cost
from prunenas.runs.groups import Group
from prunenas.runs.rundir import RunDir

if TYPE_CHECKING:
    from prunenas.arch import Architecture

LATENCY_FILE = "latency.json"
FORMAT = "prunenas.latency-measurements/1"
DEFAULT_DEVICES = (Device("cpu-torch", 1, 1), Device("cpu-torch", 64, 1))
PAIR_ARMS = ("proposed", "uniform")
REPEATS, WARMUP = 30, 5
MEASURED_TOLERANCE = 0.05
"""Twins at equal *predicted* latency whose measured medians differ by more than this are not compared."""


def measurement_devices(latency_device: tuple[str, int, int] | None) -> tuple[Device, ...]:
    """Where a run's pairs are measured: the latency device (runtime, batch, threads) of its latency targets, or
    :data:`DEFAULT_DEVICES` for runs without."""
    return DEFAULT_DEVICES if latency_device is None else (Device(*latency_device),)


def devices_of(g: Group) -> tuple[Device, ...]:
    """Where ``g``'s pair is measured (:func:`measurement_devices` of its target)."""
    device = g.target.get("latency_device") if g.target.get("match") == "latency" else None
    return measurement_devices(device and (device["name"], int(device["batch"]), int(device["threads"])))


def pair_archs(run: RunDir, g: Group) -> dict[str, Architecture]:
    """The networks of ``g``'s proposed and uniform arms that have rows (masks resolved in the run folder)."""
    rows = {arm: g.row(arm) for arm in PAIR_ARMS}
    return {arm: from_dict(row["arch"], base_dir=run.proposals_dir) for arm, row in rows.items() if row is not None}


# -- measuring --------------------------------------------------------------------------------------------


def measure_run(run: RunDir, groups: Sequence[Group], *, force: bool = False, repeats: int = REPEATS,
                warmup: int = WARMUP, say: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Measure every group's proposal and uniform twin on :func:`devices_of` and store them in ``RUN/latency.json``
    (atomic write after each device). The networks of one device are measured in *one* interleaved session, so a
    twin that several proposals share (same cost, same uniform widths) is one measurement that every pair it
    belongs to compares against fairly. A device whose pairs are all stored on one fingerprint is skipped unless
    ``force``. ``say`` gets a line per device and one per pair. Returns the file's content."""
    data = read_measurements(run) or {"format": FORMAT, "fingerprints": {}, "networks": {}}
    pairs = [(g, archs) for g in groups if (archs := pair_archs(run, g))]
    for device in dict.fromkeys(d for g, _ in pairs for d in devices_of(g)):  # each device once, in order
        mine = [(g, archs) for g, archs in pairs if device in devices_of(g)]
        if not force and all(_stored(data, archs.values(), device.name) for _, archs in mine):
            say(f"  {device.name}: {len(mine)} pair(s) already measured")
            continue
        networks = {arch.digest(): arch for _, archs in mine for arch in archs.values()}
        say(f"  {device.name}: {len(networks)} network(s) of {len(mine)} pair(s), interleaved, {repeats} passes each")
        here = get_device(device.runtime, device.batch, device.threads)  # checked to exist on this machine
        measured = dict(zip(networks, measure(list(networks.values()), here, repeats, warmup)))
        _store(data, networks, measured, here)
        run.write_json(LATENCY_FILE, data)
        for g, archs in mine:
            by_arm = {arm: measured[arch.digest()] for arm, arch in archs.items()}
            say(f"  {g.method} at target {g.target_label} ({g.pid}) on {device.name}: "
                + ", ".join(f"{arm} {m.median_ms:.3f} ms" for arm, m in by_arm.items()) + _ratio_note(by_arm))
    return data


def _stored(data: Mapping[str, Any], archs: Any, device: str) -> bool:
    """Whether every network of a pair has an entry on ``device``, all of one fingerprint."""
    entries = [data["networks"].get(arch.digest(), {}).get(device) for arch in archs]
    return None not in entries and len({e["fingerprint"] for e in entries}) == 1


def _store(data: dict[str, Any], networks: Mapping[str, Architecture], measured: Mapping[str, Measurement],
           device: Device) -> None:
    """Put the measurements of ``networks`` (by digest) on ``device`` into ``data``, with predictions."""
    for digest, arch in networks.items():
        m = measured[digest]
        entry = {"median_ms": m.median_ms, "iqr_ms": m.iqr_ms, "min_ms": m.min_ms, "samples": m.samples,
                 "fingerprint": m.fingerprint}
        predict = _predictor(device, arch)
        if predict is not None:
            entry["predicted_ms"] = predict(arch)
        data["networks"].setdefault(digest, {})[device.name] = entry
    data["fingerprints"][device.key()] = device.fingerprint()


def _predictor(device: Device, arch: Architecture) -> Callable[[Architecture], float] | None:
    """The device's latency predictor when the latency cache holds one calibrated for ``arch``'s network kind
    (a search with latency targets left it there); None otherwise — nothing is calibrated here."""
    cost = latency_cost(device.runtime, device.batch, device.threads)
    return cost if calibration_key(arch) in cost.table.calibrations else None


def _ratio_note(measured: Mapping[str, Measurement]) -> str:
    if set(measured) != set(PAIR_ARMS):
        return ""
    return f" (proposed / uniform {measured['proposed'].median_ms / measured['uniform'].median_ms:.2f})"


# -- reading ----------------------------------------------------------------------------------------------


def read_measurements(run: RunDir) -> dict[str, Any] | None:
    """The content of ``RUN/latency.json``; None when the run has none. A file of another kind raises."""
    data = run.read_json(LATENCY_FILE)
    if data is not None and not (isinstance(data, dict) and data.get("format") == FORMAT):
        raise PrunenasError(f"{run.path / LATENCY_FILE} is not a {FORMAT} file; re-measure it with "
                            f"`prunenas latency measure {run.path} --force`")
    return data


def pair_records(run: RunDir, groups: Sequence[Group], data: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One record per group and device with a stored proposal: both arms' entries, the ratio of the medians
    proposed / uniform, the uniform twin's measured error (uniform / proposed − 1) and, for latency targets,
    ``unequal`` when that error is beyond :data:`MEASURED_TOLERANCE`."""
    records = []
    for g in groups:
        digests = {arm: arch.digest() for arm, arch in pair_archs(run, g).items()}
        for device in devices_of(g):
            entries = {arm: data["networks"].get(digest, {}).get(device.name) for arm, digest in digests.items()}
            if entries.get("proposed") is None:
                continue
            record = {"proposal": g.pid, "method": g.method, "target": g.target_label,
                      "match": g.target.get("match", "macs"), "macs": g.macs, "device": device.name,
                      "proposed": entries["proposed"], "uniform": entries.get("uniform"), "ratio": None,
                      "measured_twin_error": None, "unequal": False}
            if record["uniform"] is not None:
                proposed, uniform = entries["proposed"]["median_ms"], entries["uniform"]["median_ms"]
                record["ratio"] = proposed / uniform
                record["measured_twin_error"] = error = cost_error(uniform, proposed)
                record["unequal"] = record["match"] == "latency" and not within_tolerance(error, MEASURED_TOLERANCE)
            records.append(record)
    return records


def unequal_pairs(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The records of latency-target pairs whose measured medians differ by more than :data:`MEASURED_TOLERANCE`:
    not a comparison at equal latency, so the verdict leaves them out."""
    return [r for r in records if r["unequal"]]


def comparable(groups: Sequence[Group], records: Sequence[Mapping[str, Any]]) -> list[Group]:
    """``groups`` without those of :func:`unequal_pairs`."""
    excluded = {r["proposal"] for r in unequal_pairs(records)}
    return [g for g in groups if g.pid not in excluded]
