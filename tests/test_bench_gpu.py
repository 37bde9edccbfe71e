"""experiments/bench_gpu.py: --small runs every CPU part and records figures whose ratios are their quotients."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from prunenas.spaces import load_space
from prunenas.splits import Augment, TensorSplit

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "bench_gpu.py"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_bench()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-gpu") / "figures.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--small", "--out", str(out)], capture_output=True,
                          text=True, timeout=240, env=ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_small_run_measures_the_cpu_parts_and_skips_the_gpu_ones(small_run, bench):
    _, report = small_run
    assert report["mode"] == "small" and report["device"] == "cpu"
    assert report["environment"]["torch"] == torch.__version__
    assert report["environment"]["gpu"] is None and "driver" in report["environment"]
    parts = report["parts"]
    assert list(parts) == ["epoch_time", "accuracy_parity", "trial_packing", "epoch_time_compiled"]
    assert parts["epoch_time"]["status"] == parts["trial_packing"]["status"] == "ok"
    assert parts["accuracy_parity"]["status"] == "skipped" and "GPU" in parts["accuracy_parity"]["reason"]
    assert parts["epoch_time_compiled"]["status"] == "skipped"
    small = bench.SMALL
    assert parts["epoch_time"]["images"] == small.epoch_images // small.batch_size * small.batch_size
    assert parts["trial_packing"]["trainings"] == small.packing_trainings
    assert 0 < parts["epoch_time"]["seconds"] + parts["trial_packing"]["seconds"] <= report["seconds"]


def test_every_ratio_is_the_quotient_of_its_positive_figures(small_run):
    _, report = small_run
    for name in ("epoch_time", "trial_packing"):
        part = report["parts"][name]
        assert part["figures"] and all(value > 0 for value in part["figures"].values()), name
        (speedup,) = part["ratios"].values()
        quotient = part["figures"][speedup["numerator"]] / part["figures"][speedup["denominator"]]
        assert speedup["value"] == pytest.approx(quotient, rel=1e-12)
        assert speedup["goal_met"] == part["goal_met"] == (speedup["value"] >= speedup["goal"])
    figures, images = report["parts"]["epoch_time"]["figures"], report["parts"]["epoch_time"]["images"]
    for pipeline in ("trainer", "seed"):
        assert figures[f"{pipeline}_epoch_s"] * figures[f"{pipeline}_images_per_s"] == pytest.approx(images)


def test_the_table_prints_every_ratio_and_skip(small_run):
    stdout, report = small_run
    speedups = [line for line in stdout.splitlines() if " speedup " in line]
    assert len(speedups) == 2 and all("x  = " in line and "goal >= " in line for line in speedups)
    assert stdout.count("skipped") >= 2 and "== trial_packing: ok" in stdout


def test_a_full_run_without_a_gpu_is_refused_with_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True,
                          timeout=120, env=ENV)
    assert proc.returncode == 2 and not out.exists()
    assert len(proc.stderr.strip().splitlines()) == 1 and "--small" in proc.stderr


def test_seed_transforms_give_the_trainers_normalised_images(bench):
    """Without augmentation both pipelines feed (x / 255 - mean) / std; with it, a crop of the zero-padded
    image, maybe flipped — checked against every candidate crop computed here with numpy."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 2, 5, 5), dtype=torch.uint8, generator=generator)
    mean, std = torch.tensor([0.3, 0.6]).view(1, 2, 1, 1), torch.tensor([0.2, 0.4]).view(1, 2, 1, 1)
    split = TensorSplit(images, torch.zeros(6, dtype=torch.long), mean, std, Augment(crop_pad=2, flip=True))
    plain = torch.stack([bench.seed_transform(split, augment=False)(x) for x in images])
    (trainer_batch, _), = split.batches(6)
    expected = (images.numpy() / 255 - mean.numpy()) / std.numpy()
    np.testing.assert_allclose(plain.numpy(), expected, atol=1e-6)
    torch.testing.assert_close(plain, trainer_batch)
    padded = np.pad(images.numpy() / 255, ((0, 0), (0, 0), (2, 2), (2, 2)))
    augment = bench.seed_transform(split)
    for i, x in enumerate(images):
        crop = augment(x).numpy() * std.numpy()[0] + mean.numpy()[0]
        candidates = [c for r in range(5) for k in range(5) for c in (padded[i, :, r:r + 5, k:k + 5],
                                                                       padded[i, :, r:r + 5, k:k + 5][..., ::-1])]
        assert min(np.abs(crop - c).max() for c in candidates) < 1e-5


def test_parity_noise_is_the_95_percent_spread_of_a_difference_of_accuracies(bench):
    rng = np.random.default_rng(0)
    for p_a, p_b, n in ((0.9, 0.88, 20000), (0.6, 0.62, 2000)):
        noise = bench.parity_noise([p_a], [p_b], n)
        differences = rng.binomial(n, p_a, 20000) / n - rng.binomial(n, p_b, 20000) / n
        assert np.mean(np.abs(differences - (p_a - p_b)) <= noise) == pytest.approx(0.95, abs=0.006)


def test_parity_noise_adds_the_spread_between_seeds(bench):
    trainer, seed = [0.90, 0.92, 0.91], [0.88, 0.92, 0.87]  # means 0.91 and 0.89
    sampling = bench.parity_noise([0.91], [0.89], 3 * 10000)
    spread_variance = (np.var(trainer, ddof=1) + np.var(seed, ddof=1)) / 3
    assert bench.parity_noise(trainer, seed, 10000) == pytest.approx(
        np.hypot(sampling, 1.96 * np.sqrt(spread_variance)), rel=1e-12)


def test_parity_trains_both_pipelines_and_compares_their_test_accuracy(bench):
    sizes = bench.Sizes(**{**bench.asdict(bench.SMALL), "parity_seeds": 2})
    space = load_space("vgg11-fashionmnist")
    data = bench.synthetic_data(32, space.input_shape, space.num_classes, Augment(crop_pad=2, flip=True), 24)
    record = bench.parity(space.base, data, torch.device("cpu"), sizes)
    figures, per_seed = record["figures"], record["per_seed"]
    assert len(per_seed["trainer_test_acc"]) == len(per_seed["seed_test_acc"]) == 2
    assert all(acc in {k / 24 for k in range(25)} for acc in per_seed["trainer_test_acc"] + per_seed["seed_test_acc"])
    assert figures["trainer_test_acc"] == pytest.approx(np.mean(per_seed["trainer_test_acc"]))
    assert figures["difference"] == pytest.approx(figures["trainer_test_acc"] - figures["seed_test_acc"])
    assert figures["noise"] == bench.parity_noise(per_seed["trainer_test_acc"], per_seed["seed_test_acc"], 24)
    assert record["goal_met"] == (abs(figures["difference"]) <= figures["noise"])
