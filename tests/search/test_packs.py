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


# (pack, {(arm, budget): (trials, epochs)}) — the seed's schedules (reference: Scratch-B = int(E x ratio))
EXPECTED = {
    "l1-vgg16-cifar10": {("proposed", "scratch-e"): (5, [160]), ("proposed", "scratch-b"): (5, [243]),
                         ("finetune", "finetune"): (5, [40])},
    "l1-resnet56-cifar10": {("proposed", "scratch-b"): (10, [178, 220]), ("finetune", "finetune"): (10, [40])},
    "l1-resnet110-cifar10": {("proposed", "scratch-e"): (10, [160]), ("proposed", "scratch-b"): (10, [190, 260])},
    "l1-resnet34-imagenet": {("proposed", "scratch-b"): (2, [106, 118]), ("finetune", "finetune"): (2, [20])},
    "thinet-resnet50-imagenet": {("proposed", "scratch-e"): (3, [90]), ("proposed", "scratch-b"): (3, [141, 180])},
    "thinet-vgg16gap-imagenet": {("proposed", "scratch-b"): (2, [180])},
    "regression-vgg16-imagenet": {("proposed", "scratch-b"): (1, [180])},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_planned_trials_and_epochs(name, capsys):
    plan = dry_run(Path(__file__).parents[2] / "experiments" / "paper" / f"{name}.yaml", capsys)
    planned = arms(plan)
    for key, value in EXPECTED[name].items():
        assert planned[key] == value, key


def test_cost_estimate_is_macs_times_images_times_epochs(capsys):
    plan = dry_run(Path(__file__).parents[2] / "experiments" / "paper" / "l1-vgg16-cifar10.yaml", capsys)
    space = load_space("vgg16-cifar10")
    macs, base, images = count(space.preset("A")).macs, count(space.base).macs, 45000  # 50,000 - 5,000 validation
    assert plan["base_models"]["cost"] == base * images * 160
    assert plan["search"]["cost"] == pytest.approx(macs * images * 160)
    assert plan["evaluation"]["cost"] == pytest.approx(5 * macs * images * (160 + 243 + 40))
