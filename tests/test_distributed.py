"""The data-parallel trainer path (torch.distributed, gloo, 2 processes, no Ray) against the one-worker run."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prunenas.data import load_data
from prunenas.distributed import (
    GlobalBatchNorm2d,
    check_batch_split,
    global_batchnorm,
    local_batchnorm,
    shard_bounds,
)
from prunenas.errors import PrunenasError
from prunenas.optimisation import Regularizer
from prunenas.proposers.slimming import BatchNormL1
from prunenas.spaces import load_space
from prunenas.train import train
from prunenas.train_config import TrainConfig


def small_vgg():
    """vgg11-fashionmnist at half its (quarter) width: seconds per epoch on a 1,024-image subset."""
    base = load_space("vgg11-fashionmnist").base
    return base.with_widths([max(1, w // 2) for w in base.widths])


def fashion(subset=1024):
    return load_data("fashion-mnist", (1, 32, 32), 10, val_size=512, subset=subset)


class Recorder(Regularizer):
    """Keeps the gradients before the first step and the parameters after every step (DDP-synced or not)."""

    def __init__(self):
        self.first_grads, self.params = None, []

    def before_step(self, model):
        if self.first_grads is None:
            self.first_grads = [p.grad.detach().clone() for p in model.parameters()]

    def after_step(self, model):
        self.params.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, workers, port, job, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=workers)
    try:
        torch.save(job(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_workers(job, tmp_path, workers=2):
    """``job()`` in ``workers`` processes of one gloo group; each process's return value, by rank."""
    mp.spawn(_worker, args=(workers, _free_port(), job, str(tmp_path)), nprocs=workers)
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(workers)]


def first_steps(epochs=1, regularizer=None):
    """Train small_vgg on 256 images, batch 64 (4 steps an epoch, augmented); what a Recorder saw, the curve."""
    recorder = regularizer or Recorder()
    config = TrainConfig.from_recipe("fast", epochs=epochs, batch_size=64, threads=1)
    result = train(small_vgg(), fashion(256), config, regularizer=recorder, evaluate_test=False)
    return {"grads": getattr(recorder, "first_grads", None), "params": getattr(recorder, "params", None),
            "curve": result.curve, "val_acc": result.val_acc,
            "bn": [type(m) for m in result.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]}


def short_training():
    """2 epochs of batch 32 on 1,024 images: ~70% validation accuracy (chance: 10%)."""
    config = TrainConfig.from_recipe("fast", epochs=2, batch_size=32, threads=1)
    result = train(small_vgg(), fashion(), config, evaluate_test=False)
    timings = ("seconds", "train_seconds", "images_per_s")
    return {"val_acc": result.val_acc, "curve": [{k: v for k, v in m.items() if k not in timings}
                                                 for m in result.curve]}


class SlimmingRecorder(BatchNormL1, Recorder):
    def __init__(self):
        BatchNormL1.__init__(self, 1e-2)
        Recorder.__init__(self)

    def before_step(self, model):
        Recorder.before_step(self, model)
        BatchNormL1.before_step(self, model)


def slimming_steps():
    return first_steps(regularizer=SlimmingRecorder())


# -- shards -----------------------------------------------------------------------------------------------


def test_shards_are_disjoint_cover_each_global_batch_and_keep_its_augmentation():
    split = load_data("synthetic", (3, 16, 16), 4, val_size=64).train
    one = list(split.batches(32, shuffle=True, augment=True, generator=torch.Generator().manual_seed(3),
                             drop_last=True))
    parts = [list(split.batches(32, shuffle=True, augment=True, generator=torch.Generator().manual_seed(3),
                                drop_last=True, shard=(r, 2))) for r in range(2)]
    assert len(one) == len(parts[0]) == len(parts[1]) == len(split) // 32
    for (x, y), (x0, y0), (x1, y1) in zip(one, *parts):
        assert len(y0) == len(y1) == 16
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    assert [shard_bounds(10, r, 3) for r in range(3)] == [(0, 3), (3, 6), (6, 10)]


def test_a_batch_that_does_not_split_over_the_workers_is_refused():
    check_batch_split(128, 4)
    with pytest.raises(PrunenasError, match="batch size 100 does not split over 3 workers"):
        check_batch_split(100, 3)
    with pytest.raises(PrunenasError, match="workers 0 must be at least 1"):
        check_batch_split(64, 0)


def test_global_batchnorm_is_still_a_batchnorm_and_comes_back_plain():
    model = small_vgg().build()
    keys = list(model.state_dict())
    global_batchnorm(model)
    assert all(type(m) is GlobalBatchNorm2d for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert list(model.state_dict()) == keys
    local_batchnorm(model)
    assert all(type(m) is torch.nn.BatchNorm2d for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


# -- two workers against one ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_worker():
    torch.set_num_threads(1)
    return first_steps()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    return run_on_workers(first_steps, tmp_path_factory.mktemp("ddp"))


def test_parameters_are_identical_on_every_worker_after_every_step(two_workers):
    a, b = (r["params"] for r in two_workers)
    assert len(a) == len(b) == 4
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_first_step_loss_and_gradients_equal_the_one_worker_run(one_worker, two_workers):
    for rank in two_workers:
        for g1, g2 in zip(one_worker["grads"], rank["grads"]):
            torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(rank["params"][0], one_worker["params"][0], rtol=1e-4, atol=1e-5)
        assert rank["curve"][0]["train_loss"] == pytest.approx(one_worker["curve"][0]["train_loss"], rel=1e-4)
        assert rank["bn"] == one_worker["bn"] == [torch.nn.BatchNorm2d] * 8  # handed back as plain modules


def test_network_slimming_penalty_stays_in_sync(tmp_path):
    a, b = run_on_workers(slimming_steps, tmp_path)
    one = first_steps(regularizer=SlimmingRecorder())
    assert all(torch.equal(p, q) for p, q in zip(a["params"], b["params"]))
    torch.testing.assert_close(a["params"][-1], one["params"][-1], rtol=1e-3, atol=1e-4)


def test_short_vgg11_training_on_two_workers_ends_near_the_one_worker_run(tmp_path):
    one = short_training()
    two, other = run_on_workers(short_training, tmp_path)
    assert two == other  # every worker reports the whole run's numbers
    # same global batches and schedule: only float rounding separates the runs
    assert one["val_acc"] > 0.5
    assert two["val_acc"] == pytest.approx(one["val_acc"], abs=0.02)
    for a, b in zip(two["curve"], one["curve"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.02)
        assert a["images"] == b["images"]
