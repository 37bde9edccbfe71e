"""Latency: devices and fingerprints, interleaved measurement, the per-layer table (caching and the closed form
of a prediction), the calibration's least squares, the knapsack solver against brute force, bad input."""

import itertools
import json
import math
import random
import sys

import numpy as np
import pytest
import torch
from torch import nn

from prunenas.errors import BudgetError, PrunenasError
from prunenas.latency import (
    Calibration,
    LatencyError,
    LatencyTable,
    calibration_report,
    fit_line,
    get_device,
    grouped_knapsack,
    keep_counts,
    measure,
    units,
)
from prunenas.latency.calibration import equal_macs_ordering
from prunenas.latency.measure import time_interleaved
from prunenas.spaces import load_space

# -- devices ----------------------------------------------------------------------------------------------


def test_fingerprint_is_stable_and_keys_on_batch_threads_runtime():
    device = get_device("cpu-torch", 1, 1)
    assert device.key() == get_device("cpu-torch", 1, 1).key()
    assert device.fingerprint()["torch"].split("+")[0] == torch.__version__.split("+")[0]
    others = {get_device("cpu-torch", 64, 1).key(), get_device("cpu-torch", 1, 2).key(),
              get_device("cpu-onnxruntime", 1, 1).key()}
    assert device.key() not in others and len(others) == 3
    assert "onnxruntime" in get_device("cpu-onnxruntime").fingerprint()


@pytest.mark.parametrize("args, words", [
    (("gpu-magic",), "unknown latency device 'gpu-magic'; choose one of: cpu-torch"),
    (("cpu-torch", 0), "batch 0 must be a positive integer"),
    (("cpu-torch", 1, -2), "threads -2 must be a positive integer"),
    (("cpu-torch", True), "batch True must be a positive integer"),
])
def test_bad_device_is_one_clear_line(args, words):
    with pytest.raises(PrunenasError, match=words) as err:
        get_device(*args)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_device_without_cuda_says_so():
    with pytest.raises(LatencyError, match="cuda-torch is not available here: PyTorch sees no CUDA GPU"):
        get_device("cuda-torch")


def test_onnxruntime_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` raise ImportError
    with pytest.raises(LatencyError, match=r"onnxruntime is not installed \(pip install onnx onnxruntime\)"):
        get_device("cpu-onnxruntime")


def test_bad_measurement_settings():
    device = get_device("cpu-torch")
    with pytest.raises(LatencyError, match="latency repeats 0 must be an integer >= 1"):
        measure([(nn.ReLU(), (1, 2, 2))], device, repeats=0)
    with pytest.raises(LatencyError, match="two or more"):
        fit_line([1.0], [2.0])
    with pytest.raises(LatencyError, match="different sizes"):
        fit_line([1.0, 1.0], [2.0, 3.0])


# -- measurement ------------------------------------------------------------------------------------------


def test_rounds_are_round_robin_and_rotate():
    calls = []
    forwards = [lambda k=k: calls.append(k) for k in range(3)]
    times = time_interleaved(forwards, repeats=2, warmup=1)
    assert calls == [0, 1, 2, 1, 2, 0, 2, 0, 1]
    assert [len(t) for t in times] == [2, 2, 2]


def _convs(count: int) -> nn.Module:
    return nn.Sequential(*[nn.Conv2d(32, 32, 3, padding=1, bias=False) for _ in range(count)])


@pytest.mark.parametrize("runtime", ["cpu-torch", "cpu-onnxruntime"])
def test_four_times_the_work_takes_longer(runtime):
    device = get_device(runtime, batch=1, threads=1)
    small, big = measure([(_convs(1), (32, 32, 32)), (_convs(4), (32, 32, 32))], device, repeats=9, warmup=2)
    assert big.median_ms > 2 * small.median_ms  # 4x the MACs; a wide margin for a noisy shared machine
    assert small.samples == 9 and small.iqr_ms >= 0 and 0 < small.min_ms <= small.median_ms
    assert small.fingerprint == device.key() and small.device == "cpu-torch/b1/t1".replace("cpu-torch", runtime)


# -- the per-layer table ----------------------------------------------------------------------------------


@pytest.mark.parametrize("space", ["vgg11-fashionmnist", "mobilenetv2-cifar10", "preresnet110-cifar10",
                                   "vit-tiny-fashionmnist"])
def test_units_rebuild_their_layer_geometry(space):
    """A unit's module, fed its own input shape, gives the layer's output shape (conv: ``out_hw``; a token unit:
    its tokens x features)."""
    arch = load_space(space).base
    seen = {}
    for unit in units(arch.layers):
        seen.setdefault(unit.key, unit)
    for unit in seen.values():
        out = unit.module().eval()(torch.zeros(2, *unit.input_shape))
        expected = (2, unit.out_channels, *unit.out_hw)
        if unit.kind in ("linear", "ln", "attention"):
            expected = (2, unit.out_channels) if unit.input_shape == (unit.in_channels,) else \
                (2, unit.tokens, unit.out_channels)
        assert tuple(out.shape) == expected, unit.key


def test_onnx_unit_computes_what_the_torch_unit_computes():
    import onnxruntime as ort

    unit = units(load_space("mobilenetv2-cifar10").base.layers)[1]  # a depthwise conv + BN + ReLU
    assert unit.groups == unit.in_channels > 1 and unit.bn
    session = ort.InferenceSession(unit.onnx_model(17).SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((3, *unit.input_shape), dtype=np.float32)
    (out,) = session.run(None, {"input": x})
    assert out.shape == (3, unit.out_channels, *unit.out_hw) and (out >= 0).all()


def test_table_measures_each_geometry_once_and_caches_on_disk(tmp_path):
    space = load_space("tiny-synthetic")
    device = get_device("cpu-torch")
    table = LatencyTable(device, tmp_path, repeats=2, warmup=0)
    arch = space.base
    distinct = {u.key for u in units(arch.layers)}
    first = table.table_sum(arch)
    assert table.measured == len(distinct) + 1  # + the per-call overhead probe
    assert table.table_sum(arch) == first and table.measured == len(distinct) + 1
    other = space.arch([max(1, w // 2) for w in space.upper])
    table.table_sum(other)
    new = {u.key for u in units(other.layers)} - distinct
    assert table.measured == len(distinct) + 1 + len(new)
    reloaded = LatencyTable(device, tmp_path, repeats=2, warmup=0)
    assert reloaded.table_sum(arch) == first and reloaded.measured == 0


def test_prediction_is_calibrated_sum_of_table_entries(tmp_path):
    arch = load_space("tiny-synthetic").base
    table = LatencyTable(get_device("cpu-torch"), tmp_path, repeats=2, warmup=0)
    with pytest.raises(LatencyError, match="no latency calibration"):
        table.predict(arch)
    table.set_calibration(arch, Calibration(scale=1.7, intercept=0.25, samples=3))
    predicted = table.predict(arch)
    stored = json.loads(table.path.read_text())  # the file, read back independently of the table object
    entries = stored["entries"]
    expected = 1.7 * sum(entries[u.key] for u in units(arch.layers)) + 0.25
    assert predicted == pytest.approx(expected, rel=1e-12)
    assert list(stored["calibrations"].values()) == [{"scale": 1.7, "intercept": 0.25, "samples": 3}]
    assert all(v >= 0 for v in entries.values()) and stored["device"] == table.device.fingerprint()


def test_calibration_is_least_squares():
    rng = np.random.default_rng(3)
    x = rng.uniform(1, 10, 20)
    y = 0.8 * x + 2 + rng.normal(0, 0.3, 20)
    (scale, intercept), *_ = np.linalg.lstsq(np.column_stack([x, np.ones_like(x)]), y, rcond=None)
    fit = fit_line(list(x), list(y))
    assert fit.scale == pytest.approx(scale, rel=1e-9) and fit.intercept == pytest.approx(intercept, rel=1e-9)
    assert fit.samples == 20 and fit.apply(4.0) == pytest.approx(scale * 4 + intercept)


def test_equal_macs_ordering_counts_only_pairs_of_equal_macs():
    # pairs (0,1) and (2,3) have equal MACs (within 5%); (0,1) is ordered right, (2,3) wrong
    agree, pairs = equal_macs_ordering([1.0, 2.0, 5.0, 4.0], [1.5, 2.5, 4.0, 6.0], [100, 104, 300, 310])
    assert (agree, pairs) == (1, 2)


def test_calibration_report_halves_and_stores(tmp_path):
    space = load_space("tiny-synthetic")
    table = LatencyTable(get_device("cpu-torch"), tmp_path, repeats=2, warmup=0)
    report = calibration_report(space, table, n=8, repeats=3, warmup=1)
    assert (report["fit"], report["test"]) == (4, 4)
    for model in ("predictor", "macs_baseline"):
        assert 0 <= report[model]["within_10pct"] <= 1 and report[model]["median_abs_pct"] >= 0
    assert table.predict(space.base) > 0  # the stored calibration applies to the space's networks


# -- knapsack ---------------------------------------------------------------------------------------------


def _brute_force(values, costs, budget):
    best = None
    for pick in itertools.product(*[range(len(g)) for g in values]):
        if sum(costs[g][i] for g, i in enumerate(pick)) <= budget + 1e-9:
            value = sum(values[g][i] for g, i in enumerate(pick))
            best = value if best is None else max(best, value)
    return best


@pytest.mark.parametrize("seed", range(12))
def test_knapsack_is_optimal_against_brute_force(seed):
    rng = random.Random(seed)
    groups = rng.randint(1, 4)
    values = [[rng.uniform(0, 10) for _ in range(rng.randint(1, 4))] for _ in range(groups)]
    costs = [[rng.randint(0, 12) for _ in g] for g in values]
    budget = max(sum(min(c) for c in costs), rng.randint(1, 30))
    pick = grouped_knapsack(values, costs, budget, resolution=budget)  # integer costs: the grid is exact
    assert sum(costs[g][i] for g, i in enumerate(pick)) <= budget
    assert sum(values[g][i] for g, i in enumerate(pick)) == pytest.approx(_brute_force(values, costs, budget))


@pytest.mark.parametrize("seed", range(6))
def test_prefix_knapsack_keeps_top_channels_within_a_real_valued_budget(seed):
    rng = random.Random(100 + seed)
    importances = [[rng.random() for _ in range(rng.randint(2, 5))] for _ in range(3)]
    latency = [sorted(rng.uniform(0.1, 2.0) for _ in s) for s in importances]
    budget = rng.uniform(1.5, 5.0)
    kept = keep_counts(importances, latency, budget, resolution=2000)
    prefix = [[sum(sorted(s, reverse=True)[:k]) for k in range(1, len(s) + 1)] for s in importances]
    assert sum(latency[s][k - 1] for s, k in enumerate(kept)) <= budget
    value = sum(prefix[s][k - 1] for s, k in enumerate(kept))
    optimum = _brute_force(prefix, latency, budget)
    # rounding costs up to the grid can only lose what a cost shift of one grid unit per slot is worth
    coarse = _brute_force(prefix, [[c + 3 * budget / 2000 for c in s] for s in latency], budget)
    assert optimum + 1e-9 >= value >= (coarse if coarse is not None else -math.inf) - 1e-9


def test_knapsack_bad_input():
    with pytest.raises(BudgetError, match="below the cheapest choice"):
        grouped_knapsack([[1.0], [1.0]], [[3.0], [3.0]], budget=5.0)
    with pytest.raises(BudgetError, match="budget -1 must be a positive number"):
        grouped_knapsack([[1.0]], [[1.0]], budget=-1)
    with pytest.raises(BudgetError, match="slot 0: 2 channel importances but 1 latency costs"):
        keep_counts([[1.0, 2.0]], [[1.0]], budget=3.0)
