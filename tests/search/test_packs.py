"""Reproduction packs: every pack validates, and its dry run plans the paper's trials and epochs."""

import json
from pathlib import Path

import pytest

from prunenas.cli.main import main
from prunenas.cost import count
from prunenas.spaces import load_space

PACKS = sorted((Path(__file__).parents[2] / "experiments" / "paper").glob("*.yaml"))


def dry_run(pack, capsys):
    assert main(["search", str(pack), "--dry-run", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def arms(plan):
    return {(a["arm"], a["budget"]): (a["trials"], a["epochs"]) for a in plan["evaluation"]["arms"]}


def test_every_table_has_a_pack():
    names = {p.stem for p in PACKS}
    for method in ("l1", "slimming", "thinet", "regression", "sss", "sfp", "magnitude"):
        assert any(n.startswith(method) for n in names), method


@pytest.mark.parametrize("pack", PACKS, ids=[p.stem for p in PACKS])
def test_pack_validates_and_plans(pack, capsys):
    plan = dry_run(pack, capsys)
    assert plan["evaluation"]["trials"] > 0 and plan["total_cost"] > 0
    import yaml

    data = yaml.safe_load(pack.read_text())
    for row in data["expected"]["rows"]:
        assert row["tag"] in ("R", "X", "P")  # every number says how it is known


# The seed's recipes (Eric-mingjie/rethinking-network-pruning at 2ac473d), written from its files, not from the
# packs: pack -> (base: learning rate, or the published weights the seed started from; arms;
# {(arm, budget): (learning rate, [(epochs, lr milestones)])}).
CIFAR = (0.1, [(160, [80, 120])])  # cifar/*/main*.py, cifar.py: 160 epochs, lr x0.1 at int(0.5 E), int(0.75 E)
CIFAR_FT = (0.001, [(40, [])])  # main_finetune.py, cifar_finetune.py: 40 epochs at a constant 0.001
IMAGENET = (0.1, [(90, [30, 60])])  # imagenet/*/main_E.py: 90 epochs, step int(E / 3)
PLAIN_VGG = (0.01, [(90, [30, 60])])  # imagenet/{thinet,regression-pruning}/README.md: --lr 0.01
ZOO = "torchvision:DEFAULT"  # imagenet/{l1-norm-pruning,weight-level}: torchvision's pretrained model
SEED = {
    # cifar/l1-norm-pruning/main_B.py: int(160 x FLOPs ratio), drops at int(0.5 E), int(0.75 E)
    "l1-vgg16-cifar10": (0.1, {"proposed", "finetune"}, {
        ("proposed", "scratch-e"): CIFAR, ("proposed", "scratch-b"): (0.1, [(243, [121, 182])]),
        ("finetune", "finetune"): CIFAR_FT}),
    "l1-resnet56-cifar10": (0.1, {"proposed", "finetune"}, {
        ("proposed", "scratch-e"): CIFAR, ("proposed", "scratch-b"): (0.1, [(178, [89, 133]), (220, [110, 165])]),
        ("finetune", "finetune"): CIFAR_FT}),
    "l1-resnet110-cifar10": (0.1, {"proposed", "finetune"}, {
        ("proposed", "scratch-e"): CIFAR, ("proposed", "scratch-b"): (0.1, [(190, [95, 142]), (260, [130, 195])]),
        ("finetune", "finetune"): CIFAR_FT}),
    # imagenet/l1-norm-pruning: main_finetune.py 20 epochs at 0.001; main_B.py int(90 x ratio), step int(E / 3)
    "l1-resnet34-imagenet": (ZOO, {"proposed", "finetune"}, {
        ("proposed", "scratch-e"): IMAGENET, ("proposed", "scratch-b"): (0.1, [(106, [35, 70]), (118, [39, 78])]),
        ("finetune", "finetune"): (0.001, [(20, [])])}),
    # imagenet/thinet/main_B.py: 180 epochs, step 60 at >= 2x fewer FLOPs (README: 141 for ThiNet-70)
    "thinet-resnet50-imagenet": (0.1, {"proposed"}, {
        ("proposed", "scratch-e"): IMAGENET, ("proposed", "scratch-b"): (0.1, [(141, [47, 94]), (180, [60, 120])])}),
    "thinet-vgg16-imagenet": (0.01, {"proposed"}, {
        ("proposed", "scratch-e"): PLAIN_VGG, ("proposed", "scratch-b"): (0.01, [(180, [60, 120])])}),
    "thinet-vgg16gap-imagenet": (0.01, {"proposed"}, {
        ("proposed", "scratch-e"): PLAIN_VGG, ("proposed", "scratch-b"): (0.01, [(180, [60, 120])])}),
    "regression-vgg16-imagenet": (0.01, {"proposed"}, {
        ("proposed", "scratch-e"): PLAIN_VGG, ("proposed", "scratch-b"): (0.01, [(180, [60, 120])])}),
    # imagenet/sparse-structure-selection/README.md: Scratch-E 100 epochs, drops at 30/60/90
    "sss-resnet50-imagenet": (0.1, {"proposed"}, {("proposed", "scratch-e"): (0.1, [(100, [30, 60, 90])])}),
    # cifar/soft-filter-pruning/README.md: 200 epochs, x0.2 at 60/120/160; no fine-tune stage
    **{f"sfp-resnet{d}-cifar10": (0.1, {"proposed"}, {("proposed", "scratch-e"): (0.1, [(200, [60, 120, 160])])})
       for d in (20, 32, 56, 110)},
    # cifar/network-slimming: the CIFAR recipe; imagenet/network-slimming/main_finetune.py: 5 epochs at 0.001
    **{f"slimming-{n}": (0.1, {"proposed", "finetune"}, {("proposed", "scratch-e"): CIFAR,
                                                          ("finetune", "finetune"): CIFAR_FT})
       for n in ("vgg19-cifar10", "vgg19-cifar100", "preresnet164-cifar10", "preresnet164-cifar100",
                 "densenet40-cifar10", "densenet40-cifar100")},
    "slimming-vgg11-imagenet": (0.1, {"proposed", "finetune"}, {
        ("proposed", "scratch-e"): IMAGENET, ("finetune", "finetune"): (0.001, [(5, [])])}),
    # cifar/weight-level: cifar.py, cifar_finetune.py; imagenet/weight-level: zoo models, 10 fine-tune epochs
    **{f"magnitude-{n}": (0.1, {"proposed", "finetune"}, {("proposed", "scratch-e"): CIFAR,
                                                           ("finetune", "finetune"): CIFAR_FT})
       for n in ("vgg19-cifar10", "preresnet110-cifar10", "densenet40-cifar10")},
    **{f"magnitude-{n}": (ZOO, {"proposed", "finetune"}, {("proposed", "scratch-e"): IMAGENET,
                                                           ("finetune", "finetune"): (0.001, [(10, [])])})
       for n in ("vgg16bn-imagenet", "resnet50-imagenet")},
}


def test_every_pack_has_its_seed_recipe():
    assert set(SEED) == {p.stem for p in PACKS}


@pytest.mark.parametrize("name", sorted(SEED))
def test_pack_follows_the_seed_recipe(name, capsys):
    """Learning rates, epochs, milestones and arms of the dry run equal the seed's (table above)."""
    plan = dry_run(Path(__file__).parents[2] / "experiments" / "paper" / f"{name}.yaml", capsys)
    base, arm_names, schedules = SEED[name]
    bases = plan["base_models"]
    assert (bases["weights"], bases["epochs"]) == (base, 0) if isinstance(base, str) else bases["lr"] == base
    planned = {(a["arm"], a["budget"]): (a["lr"], [(e, m) for e, m in zip(a["epochs"], a["milestones"])])
               for a in plan["evaluation"]["arms"]}
    assert {arm for arm, _ in planned} == arm_names
    for key, expected in schedules.items():
        assert planned[key] == expected, key


def test_sss_scratch_b_stretches_the_100_epoch_schedule(capsys):
    """Scratch-B at the pack's target: int(100 x ratio) epochs; the seed stretches every 30-epoch stage alike
    (drops at k x int(30 x ratio)), prunenas each milestone (int(m x E / 100)): at most 2 epochs apart."""
    plan = dry_run(Path(__file__).parents[2] / "experiments" / "paper" / "sss-resnet50-imagenet.yaml", capsys)
    scratch_b = next(a for a in plan["evaluation"]["arms"] if a["budget"] == "scratch-b")
    space = load_space("resnet50-imagenet")
    ratio = count(space.base).macs / round(0.57 * count(space.base).macs)
    assert scratch_b["epochs"] == [int(100 * ratio)] == [175]
    seed_drops = [k * int(30 * ratio) for k in (1, 2, 3)]
    assert all(abs(a - b) <= 2 for a, b in zip(scratch_b["milestones"][0], seed_drops, strict=True))


def test_cost_estimate_is_macs_times_images_times_epochs(capsys):
    plan = dry_run(Path(__file__).parents[2] / "experiments" / "paper" / "l1-vgg16-cifar10.yaml", capsys)
    space = load_space("vgg16-cifar10")
    macs, base, images = count(space.preset("A")).macs, count(space.base).macs, 45000  # 50,000 - 5,000 validation
    assert plan["base_models"]["cost"] == base * images * 160
    assert plan["search"]["cost"] == pytest.approx(macs * images * 160)
    assert plan["evaluation"]["cost"] == pytest.approx(5 * macs * images * (160 + 243 + 40))
