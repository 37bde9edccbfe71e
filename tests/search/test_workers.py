"""A trial on two Ray Train workers launched from inside a Tune trial (Train V2), on CPU (gloo)."""

import json
import os
import signal

import pytest
import ray
import torch
from ray import tune

from prunenas.data import load_data
from prunenas.distributed import world
from prunenas.errors import PrunenasError
from prunenas.experiment_file import experiment_from_dict
from prunenas.optimisation import Regularizer
from prunenas.search.workers import DRIVER_RESOURCES, WorkerTrainer, check_cluster_fits, trials_at_once
from prunenas.spaces import load_space
from prunenas.train import train
from prunenas.train_config import TrainConfig
from tests.search.search_helpers import EXPERIMENT, cli, write


class KillWorkerOnce(Regularizer):
    """SIGKILLs rank 1 at the end of epoch 2 (after epoch 1's checkpoint), once: a lost worker."""

    def __init__(self, marker):
        self.marker = marker

    def end_epoch(self, model, epoch):
        if epoch == 1 and world()[0] == 1 and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


def config():
    return TrainConfig.from_recipe("fast", epochs=3, batch_size=64, threads=1)


def _trial(tune_config, tmp):
    data = load_data("synthetic", (3, 16, 16), 4, val_size=256)
    trainer = WorkerTrainer(2, 1, 0, f"{tmp}/train", max_failures=1)
    result = trainer(load_space("tiny-synthetic").base, data, config(), regularizer=KillWorkerOnce(f"{tmp}/killed"),
                     checkpoint=f"{tmp}/checkpoint.pt", on_epoch=lambda m: tune.report({"epoch_val": m["val_acc"]}))
    tune.report({"val_acc": result.val_acc, "epochs": len(result.curve),
                 "sum": float(sum(p.detach().sum() for p in result.model.parameters()))})


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def test_a_tune_trial_on_two_workers_survives_a_lost_worker_and_matches_one_worker(local_ray, tmp_path):
    tuner = tune.Tuner(tune.with_resources(tune.with_parameters(_trial, tmp=str(tmp_path)), DRIVER_RESOURCES),
                       run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0))
    results = tuner.fit()
    assert results.num_errors == 0, results.errors
    history = results[0].metrics_dataframe
    final = results[0].metrics
    assert (tmp_path / "killed").exists()  # rank 1 was lost in epoch 2 ...
    assert final["epochs"] == 3  # ... and the restarted group resumed from epoch 1's checkpoint and finished
    assert history["epoch_val"].notna().sum() >= 3  # every epoch reached Tune (epoch 2 again after the restart)
    torch.set_num_threads(1)
    one = train(load_space("tiny-synthetic").base, load_data("synthetic", (3, 16, 16), 4, val_size=256), config())
    assert final["val_acc"] == pytest.approx(one.val_acc, abs=0.02)
    assert final["sum"] == pytest.approx(float(sum(p.detach().sum() for p in one.model.parameters())), rel=1e-3)


def test_a_trial_larger_than_the_cluster_is_refused_with_what_it_has():
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}}, {"Alive": True, "Resources": {"CPU": 4.0}}]
    exp = experiment_from_dict({**EXPERIMENT, "resources": {"workers": 2, "cpu": 1, "gpu": 2}})
    with pytest.raises(PrunenasError, match=r"resources.gpu: 2 GPU per worker, more than any node has \(node 1: 2 "
                                            r"CPU, 1 GPU, node 2: 4 CPU, 0 GPU\)"):
        check_cluster_fits(exp, nodes)
    exp = experiment_from_dict({**EXPERIMENT, "resources": {"workers": 4, "cpu": 2}})
    with pytest.raises(PrunenasError, match="4 workers x 2 CPU = 8 CPU per trial, more than the cluster has"):
        check_cluster_fits(exp, nodes)
    check_cluster_fits(experiment_from_dict({**EXPERIMENT, "resources": {"workers": 2, "cpu": 3}}), nodes)
    assert trials_at_once(experiment_from_dict({**EXPERIMENT, "resources": {"workers": 2, "cpu": 1}}),
                          {"CPU": 6.0}) == 2  # concurrency 2 caps the 3 that fit
    assert trials_at_once(experiment_from_dict({**EXPERIMENT, "concurrency": 8, "resources": {"workers": 2}}),
                          {"CPU": 6.0}) == 3


def test_workers_that_do_not_split_the_batch_are_refused_and_the_dry_run_shows_them(tmp_path):
    path = write(tmp_path, {**EXPERIMENT, "resources": {"workers": 2, "cpu": 1}})
    proc = cli("search", path, "--dry-run", "--workers", "3")
    assert proc.returncode == 2 and proc.stderr.strip().endswith(
        "--workers 3: batch size 128 does not split over 3 workers: use a batch size divisible by 3, or a number of "
        "workers that divides 128 (recipe.name fast)")
    proc = cli("search", path, "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["resources"] == {"workers": 2, "cpu_per_worker": 1, "gpu_per_worker": None,
                                                    "batch_per_worker": 64, "cost_share_per_worker": 0.5}
