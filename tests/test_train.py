import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from prunenas.arch import Architecture
from prunenas.data import load_data
from prunenas.errors import PrunenasError
from prunenas.masks import apply_masks
from prunenas.optimisation import Regularizer, distillation_loss, lr_factor
from prunenas.proposers.slimming import BatchNormL1
from prunenas.spaces import load_space
from prunenas.train import TrainingDiverged, train
from prunenas.train_config import TrainConfig


@pytest.fixture(scope="module")
def synthetic():
    return load_data("synthetic", (3, 16, 16), 4)


@pytest.fixture(scope="module")
def tiny():
    return load_space("tiny-synthetic").base


def config(**overrides):
    return TrainConfig.from_recipe("fast", **{"epochs": 3, "batch_size": 64, **overrides})


def test_loss_goes_down_and_metrics_are_reported(tiny, synthetic):
    epochs = []
    result = train(tiny, synthetic, config(), on_epoch=epochs.append)
    assert [m["epoch"] for m in epochs] == [1, 2, 3] and result.curve == epochs
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    assert result.val_acc > 0.5 and result.test_acc > 0.5
    assert result.val_acc == epochs[-1]["val_acc"]  # the final epoch's, never the best one
    assert result.macs == 424_000 and result.params == 6188 and result.images_per_s > 0


def test_same_seed_same_curves_and_weights(tiny, synthetic):
    a, b = train(tiny, synthetic, config(seed=5)), train(tiny, synthetic, config(seed=5))
    assert [m["train_loss"] for m in a.curve] == [m["train_loss"] for m in b.curve]
    assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values()))
    c = train(tiny, synthetic, config(seed=6))
    assert [m["train_loss"] for m in a.curve] != [m["train_loss"] for m in c.curve]


def test_resume_from_checkpoint_equals_an_uninterrupted_run(tiny, synthetic, tmp_path):
    straight = train(tiny, synthetic, config(epochs=4))

    class Stop(Exception):
        pass

    def stop_after_two(m):
        if m["epoch"] == 2:
            raise Stop

    with pytest.raises(Stop):
        train(tiny, synthetic, config(epochs=4), checkpoint=tmp_path / "ck.pt", on_epoch=stop_after_two)
    resumed = train(tiny, synthetic, config(epochs=4), checkpoint=tmp_path / "ck.pt")
    assert [m["epoch"] for m in resumed.curve] == [1, 2, 3, 4]
    for (k, x), y in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(x, y), k


def test_checkpoint_of_another_configuration_is_refused(tiny, synthetic, tmp_path):
    train(tiny, synthetic, config(epochs=1), checkpoint=tmp_path / "ck.pt")
    with pytest.raises(PrunenasError, match=r"another configuration \(lr\)"):
        train(tiny, synthetic, config(epochs=1, lr=0.5), checkpoint=tmp_path / "ck.pt")


def test_killed_cli_run_resumes_to_the_same_weights(tmp_path):
    """SIGKILL the `prunenas train` process right after epoch 2's checkpoint; rerun; same final weights."""
    def cli(out, fault=None):
        env = {**os.environ, "PRUNENAS_FAULT": fault or ""}
        return subprocess.run([sys.executable, "-m", "prunenas", "train", "tiny-synthetic", "--epochs", "4",
                               "--threads", "1", "--out", str(out)], env=env, capture_output=True, text=True)

    assert cli(tmp_path / "straight").returncode == 0
    killed = cli(tmp_path / "killed", "train.checkpoint@epoch=2:kill")
    assert killed.returncode == -9 and (tmp_path / "killed" / "checkpoint.pt").exists()
    again = cli(tmp_path / "killed")
    assert again.returncode == 0 and "resuming from" in again.stdout
    a = load_file(tmp_path / "straight" / "weights.safetensors")
    b = load_file(tmp_path / "killed" / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    first = json.loads((tmp_path / "straight" / "result.json").read_text())["result"]
    second = json.loads((tmp_path / "killed" / "result.json").read_text())["result"]
    assert first["val_acc"] == second["val_acc"] and not (tmp_path / "killed" / "checkpoint.pt").exists()


def test_divergence_is_reported_with_epoch_and_step(tiny, synthetic):
    with pytest.raises(TrainingDiverged) as err:
        train(tiny, synthetic, config(lr=1e6, label_smoothing=0.0))
    assert err.value.epoch >= 1 and err.value.step >= 0
    assert f"epoch {err.value.epoch}, step {err.value.step}" in str(err.value)


def test_masked_weights_stay_zero(tiny, synthetic):
    model = tiny.build()
    weight = model.get_submodule("down.0").weight
    mask = torch.rand_like(weight) > 0.5
    apply_masks(model, {"down.0": mask})
    result = train(model, synthetic, config(epochs=2))
    trained = result.model.get_submodule("down.0").weight
    assert (trained[~mask] == 0).all() and (trained[mask] != 0).float().mean() > 0.9


def test_regularizer_hooks_run(tiny, synthetic):
    class Count(Regularizer):
        def __init__(self):
            self.calls = {"before": 0, "after": 0, "epochs": []}

        def before_step(self, model):
            self.calls["before"] += 1
            assert all(p.grad is not None for p in model.parameters())

        def after_step(self, model):
            self.calls["after"] += 1

        def end_epoch(self, model, epoch):
            self.calls["epochs"].append(epoch)

    reg = Count()
    result = train(tiny, synthetic, config(epochs=2), regularizer=reg)
    assert reg.calls == {"before": result.steps, "after": result.steps, "epochs": [0, 1]}


@pytest.mark.parametrize(("schedule", "step", "factor"), [
    ("step", 0, 1.0), ("step", 79 * 10, 1.0), ("step", 80 * 10, 0.1), ("step", 120 * 10, 0.01),
    ("cosine", 0, 1.0), ("cosine", 800, 0.5), ("cosine", 1600, 0.0),
    ("onecycle", 0, 0.1), ("onecycle", 400, 1.0), ("constant", 999, 1.0),
])
def test_learning_rate_schedules(schedule, step, factor):
    assert lr_factor(schedule, step, 10, 160, (80, 120), 0.1) == pytest.approx(factor, abs=1e-12)


def test_recipes_and_bad_configs():
    cfg = TrainConfig.from_recipe("cifar-paper")
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.milestones, cfg.nesterov) == (
        160, 64, 0.1, 0.9, 1e-4, (80, 120), False)
    assert TrainConfig.from_recipe("cifar-paper", epochs=243).milestones == (121, 182)
    assert TrainConfig.from_recipe("imagenet-paper").milestones == (30, 60)
    with pytest.raises(PrunenasError, match="schedule 'wavy'"):
        TrainConfig.from_recipe("fast", schedule="wavy")
    with pytest.raises(PrunenasError, match="unknown recipe 'slow'"):
        TrainConfig.from_recipe("slow")


def test_real_fashion_mnist_small_vgg_learns():
    space = load_space("vgg11-fashionmnist")
    data = load_data("fashion-mnist", space.input_shape, 10, val_size=1000, subset=8000)
    result = train(space.base, data, TrainConfig.from_recipe("fast", epochs=2, threads=2))
    assert result.test_acc > 0.78  # on the real 10,000-image test set (79.99% with torch 2.14 here; chance 10%)


def test_train_an_architecture_file_via_cli(tmp_path):
    arch = Architecture.create("tiny", [4, 8, 0, 4], {}, (3, 16, 16), 4)
    arch.save(tmp_path / "a.json")
    proc = subprocess.run([sys.executable, "-m", "prunenas", "train", str(tmp_path / "a.json"), "--data", "synthetic",
                           "--epochs", "1", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["digest"] == arch.digest()
    proc = subprocess.run([sys.executable, "-m", "prunenas", "train", str(tmp_path / "a.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "--data is required" in proc.stderr


def bn_scales(model):
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    return torch.cat([m.weight.detach().abs().flatten() for m in bns])


def slimming_run(tiny, data, s):
    # plain SGD at a constant rate: the penalty alone moves every |gamma| by lr x s per step
    plain = config(epochs=1, schedule="constant", momentum=0.0, weight_decay=0.0, lr=0.05)
    return train(tiny, data, plain, regularizer=BatchNormL1(s), evaluate_test=False)


def test_sparsity_training_shrinks_every_bn_scale_by_lr_times_s_per_step(tiny, synthetic):
    free, sparse = slimming_run(tiny, synthetic, 0.0), slimming_run(tiny, synthetic, 0.1)
    shrink = bn_scales(free.model) - bn_scales(sparse.model)
    assert shrink.mean().item() == pytest.approx(0.05 * 0.1 * sparse.steps, rel=0.05)
    assert (shrink > 0).all()


def test_the_slimming_penalty_is_as_strong_under_fp16_loss_scaling(tiny, synthetic, monkeypatch):
    plain = slimming_run(tiny, synthetic, 0.1)
    unscaled = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda device, enabled=True: unscaled("cpu", init_scale=2.0 ** 16))
    scaled = slimming_run(tiny, synthetic, 0.1)
    # a power-of-two scale is undone exactly, so the scales end where they end without loss scaling
    assert torch.allclose(bn_scales(scaled.model), bn_scales(plain.model), rtol=0, atol=1e-6)


def test_distillation_loss_by_hand():
    # two images, three classes; T = 2, weight 0.75, computed with the math module
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[2.0, 0.0, 1.0], [1.0, 1.0, 2.0]]
    labels, temperature, weight = [1, 2], 2.0, 0.75

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    hard = sum(-math.log(softmax(s)[y]) for s, y in zip(student, labels)) / 2
    soft = sum(sum(p * (math.log(p) - math.log(q)) for p, q in
                   zip(softmax([v / temperature for v in t]), softmax([v / temperature for v in s])))
               for s, t in zip(student, teacher)) / 2
    expected = (1 - weight) * hard + weight * temperature**2 * soft
    loss = distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), temperature, weight)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # weight 0: plain cross-entropy; a teacher equal to the student: no soft term
    assert distillation_loss(torch.tensor(student), torch.tensor(teacher), torch.tensor(labels), 3.0,
                             0.0).item() == pytest.approx(hard, rel=1e-6)
    assert distillation_loss(torch.tensor(student), torch.tensor(student), torch.tensor(labels), 3.0,
                             1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_distilling_with_weight_zero_trains_exactly_as_without_a_teacher(tiny, synthetic):
    plain = train(tiny, synthetic, config(epochs=2))
    teacher = tiny.build()
    distilled = train(tiny, synthetic, config(epochs=2, temperature=4.0, distill_weight=0.0), teacher=teacher)
    assert [m["train_loss"] for m in distilled.curve] == pytest.approx([m["train_loss"] for m in plain.curve],
                                                                      rel=1e-5)
    assert distilled.val_acc == plain.val_acc
    # the teacher is left as it was: frozen, no gradients
    assert all(p.grad is None for p in teacher.parameters())


def test_a_teacher_changes_the_training_and_needs_a_distilling_recipe(tiny, synthetic):
    plain = train(tiny, synthetic, config(epochs=1))
    teacher = train(tiny, synthetic, config(epochs=1, seed=5)).model
    distilled = train(tiny, synthetic, config(epochs=1, temperature=4.0, distill_weight=0.9), teacher=teacher)
    assert distilled.curve[0]["train_loss"] != pytest.approx(plain.curve[0]["train_loss"], rel=1e-3)
    with pytest.raises(PrunenasError, match="a distilling recipe needs a teacher"):
        train(tiny, synthetic, config(epochs=1, temperature=4.0, distill_weight=0.9))
    with pytest.raises(PrunenasError, match="a distilling recipe needs a teacher"):
        train(tiny, synthetic, config(epochs=1), teacher=teacher)


@pytest.mark.parametrize(("settings", "message"), [
    ({"temperature": 0.0, "distill_weight": 0.5}, "temperature: 0.0 must be a number > 0"),
    ({"temperature": 2.0, "distill_weight": 1.5}, r"weight: 1.5 must be a number in \[0, 1\]"),
    ({"temperature": 2.0}, "needs both temperature and distill_weight"),
])
def test_bad_distillation_settings(settings, message):
    with pytest.raises(PrunenasError, match=message):
        config(**settings)


def test_distillation_settings_enter_the_key_only_when_set():
    assert "temperature" not in config().identity()
    assert config(temperature=4.0, distill_weight=0.9).identity()["temperature"] == 4.0
