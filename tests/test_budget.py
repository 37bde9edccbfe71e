import pytest

from prunenas.budget import (
    budget_recipe,
    scratch_epochs,
    scratch_full_epochs,
    target_from_ratio,
    uniform_twin,
    uniform_widths,
)
from prunenas.cost import count
from prunenas.errors import BudgetError
from prunenas.recipes import RECIPES
from prunenas.spaces import load_space

SPACES = ["vgg16-cifar10", "resnet56-cifar10", "vgg11-fashionmnist", "resnet20-fashionmnist",
          "preresnet164-cifar10", "densenet40-cifar10", "resnet50-imagenet", "mobilenetv2-cifar10"]


@pytest.mark.parametrize("space_name", SPACES)
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.7, 0.9])
def test_uniform_twin_within_one_percent(space_name, ratio):
    space = load_space(space_name)
    target = target_from_ratio(space, ratio)
    twin = uniform_twin(space, target)
    assert abs(count(twin.arch).macs / target - 1) <= 0.01
    assert twin.within_tolerance and twin.achieved == count(twin.arch).macs
    widths, base = twin.arch.widths, space.upper
    assert all(1 <= w <= b for w, b in zip(widths, base))


@pytest.mark.parametrize("ratio", [0.3, 0.6])
def test_uniform_twin_can_match_params(ratio):
    space = load_space("vgg16-cifar10")
    target = target_from_ratio(space, ratio, "params")
    twin = uniform_twin(space, target, match="params")
    assert abs(count(twin.arch).params / target - 1) <= 0.01


def test_uniform_widths_are_monotone_in_the_multiplier():
    space = load_space("resnet56-cifar10")
    costs = [count(space.arch(uniform_widths(space, m / 20))).macs for m in range(21)]
    assert costs == sorted(costs) and costs[-1] == count(space.base).macs


def test_uniform_twin_uses_one_multiplier_on_every_slot_including_tied_ones():
    space = load_space("resnet56-cifar10")
    twin = uniform_twin(space, target_from_ratio(space, 0.5))
    assert twin.arch.widths == tuple(round(b * twin.multiplier) for b in space.upper)


def test_twin_respects_space_rounding():
    space = load_space("mobilenetv2-cifar10")
    twin = uniform_twin(space, target_from_ratio(space, 0.5))
    assert all(w % 8 == 0 or w == b for w, b in zip(twin.arch.widths, space.upper))


def test_unreachable_target_reports_the_closest_and_its_error():
    space = load_space("tiny-synthetic")
    twin = uniform_twin(space, 10)
    assert twin.arch.widths == space.lower and not twin.within_tolerance and twin.error > 1


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5])
def test_bad_ratio(ratio):
    with pytest.raises(BudgetError, match=r"must be in \(0, 1\]"):
        target_from_ratio(load_space("tiny-synthetic"), ratio)


# The seed repository's epochs (reference/seed_repo.md §3): VGG-16-A Scratch-B 243 epochs with drops at
# 121/182, ResNet-56-A 178, ResNet-56-B 220, ResNet-110-A 190, ResNet-110-B 260; ImageNet ResNet-34-A 106
# epochs step 35, ResNet-34-B 118 step 39 (2x cap, not reached).
SCRATCH_B = [
    ("vgg16-cifar10", "A", "cifar-paper", 243, (121, 182)),
    ("resnet56-cifar10", "A", "cifar-paper", 178, (89, 133)),
    ("resnet56-cifar10", "B", "cifar-paper", 220, (110, 165)),
    ("resnet110-cifar10", "A", "cifar-paper", 190, (95, 142)),
    ("resnet110-cifar10", "B", "cifar-paper", 260, (130, 195)),
    ("resnet34-imagenet", "A", "imagenet-paper", 106, (35, 70)),
    ("resnet34-imagenet", "B", "imagenet-paper", 118, (39, 78)),
]


@pytest.mark.parametrize(("space_name", "preset", "recipe", "epochs", "milestones"), SCRATCH_B)
def test_scratch_b_epochs_of_the_seed(space_name, preset, recipe, epochs, milestones):
    space, rec = load_space(space_name), RECIPES.get(recipe)
    schedule = scratch_epochs("scratch-b", rec.epochs, count(space.base).macs, count(space.preset(preset)).macs,
                              space.scratch_b_cap, rec.milestones)
    assert (schedule.epochs, schedule.milestones) == (epochs, milestones)


TABLE = [
    # mode, base epochs, base MACs, arch MACs, cap, base milestones -> epochs, milestones
    ("E", 160, 100, 50, None, (80, 120), 160, (80, 120)),
    ("scratch-e", 90, 100, 10, 2.0, (30, 60), 90, (30, 60)),
    ("B", 160, 100, 50, None, (80, 120), 320, (160, 240)),
    ("B", 160, 100, 25, None, (80, 120), 640, (320, 480)),  # no cap on CIFAR
    ("scratch-b", 90, 100, 25, 2.0, (30, 60), 180, (60, 120)),  # ImageNet: capped at 2x
    ("B", 90, 100, 80, 2.0, (30, 60), 112, (37, 74)),  # below the cap: int(90 * 1.25)
    ("B", 100, 355, 300, None, (30, 60, 90), 118, (35, 70, 106)),  # SSS-style 3 drops
    ("B", 160, 100, 100, None, (80, 120), 160, (80, 120)),
]


@pytest.mark.parametrize(("mode", "e0", "m0", "m1", "cap", "ms0", "epochs", "milestones"), TABLE)
def test_scratch_epochs_table(mode, e0, m0, m1, cap, ms0, epochs, milestones):
    schedule = scratch_epochs(mode, e0, m0, m1, cap, ms0)
    assert (schedule.epochs, schedule.milestones) == (epochs, milestones)


def test_scratch_epochs_bad_mode():
    with pytest.raises(BudgetError, match="scratch-e or scratch-b"):
        scratch_epochs("C", 160, 1, 1)


@pytest.mark.parametrize("budget", ["scratch-e", "scratch-b"])
def test_an_experiments_epochs_scale_the_recipes_milestones_once(tmp_path, budget):
    from prunenas.experiment_file import experiment_from_dict
    from prunenas.runs.rundir import RunDir
    from prunenas.trial import Context, Trial, training_config

    exp = experiment_from_dict({"space": "tiny-synthetic", "data": {"name": "synthetic"},
                                "proposers": {"uniform": {}}, "targets": {"ratios": [0.6]},
                                "recipe": {"name": "cifar-paper", "epochs": 7}})
    arch = uniform_twin(exp.space, target_from_ratio(exp.space, 0.6)).arch
    config = training_config(Context(exp, RunDir(tmp_path)), Trial(arch, "uniform", budget, 0))
    # by hand from the paper's rule on cifar-paper (160 epochs, lr x0.1 at 80 and 120): E epochs put the
    # milestones at int(80 E / 160) and int(120 E / 160); Scratch-B E = int(7 x MACs(base) / MACs(arch)) = 11
    epochs = {"scratch-e": 7, "scratch-b": 11}[budget]
    assert int(7 * count(exp.space.base).macs / count(arch).macs) == 11
    assert (config.epochs, config.milestones) == (epochs, (80 * epochs // 160, 120 * epochs // 160))


SCRATCH_FULL = [
    # base epochs, base MACs, arch MACs, fine-tune epochs -> epochs: floor((E0 x M0 + Ef x M) / M), by hand
    (160, 100, 50, 40, 360),  # 320 epochs of the pruned net buy the base training, + the 40 fine-tuning epochs
    (8, 100, 35, 8, 30),  # 800 / 35 = 22.86 -> 22 (Scratch-B's int), + 8
    (24, 100, 35, 8, 76),  # 2400 / 35 = 68.57 -> 68, + 8: the distillation study's schedule
    (90, 100, 100, 20, 110),  # unpruned: the base epochs and the fine-tuning, end to end
    (10, 7, 3, 0, 23),  # no fine-tuning: 70 / 3 = 23.33
    (3, 10, 5, 1, 7),  # exact: 30 / 5 + 1, no floating-point floor below 7
    (0, 100, 50, 5, 5),  # published base weights: only the fine-tuning was paid for
]


@pytest.mark.parametrize(("e0", "m0", "m1", "ef", "epochs"), SCRATCH_FULL)
def test_scratch_full_epochs_table(e0, m0, m1, ef, epochs):
    assert scratch_full_epochs(e0, m0, m1, ef) == epochs
    # the same compute in MAC x epochs (one epoch more would exceed it)
    assert epochs * m1 <= max(e0 * m0 + ef * m1, m1) < (epochs + 1) * m1


def test_scratch_full_recipe_scales_the_milestones_like_scratch_b():
    space = load_space("resnet56-cifar10")
    arch = space.preset("A")
    recipe = budget_recipe(RECIPES.get("cifar-paper"), "scratch-full", space, arch, pipeline=(160, 40))
    expected = 160 * count(space.base).macs // count(arch).macs + 40
    assert recipe.epochs == expected and recipe.milestones == (80 * expected // 160, 120 * expected // 160)
    with pytest.raises(BudgetError, match="scratch-full needs the pipeline"):
        budget_recipe(RECIPES.get("cifar-paper"), "scratch-full", space, arch)
