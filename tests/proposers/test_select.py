"""From channel scores to widths: planted scores with known answers, cost targets, floors, block removal."""

import random
from dataclasses import replace

import pytest
import torch

from prunenas.budget import cost_of, target_from_ratio
from prunenas.errors import ArchitectureError, BudgetError, UnknownNameError
from prunenas.proposers import select as select_module
from prunenas.proposers.channels import inherit
from prunenas.proposers.select import (
    Selection,
    select_by_cost,
    select_by_threshold,
    select_fraction,
    select_widths,
    slot_scores,
)
from prunenas.spaces import Space, load_space

from ..conftest import FAMILY_CASES, make_arch

COST_SPACES = ["vgg11-fashionmnist", "resnet20-fashionmnist", "tiny-synthetic", "mobilenetv2-cifar10",
               "densenet40-cifar10"]


def planted(space, widths, rng):
    """Scores whose channels above 0.5 are exactly ``widths[s]`` random channels per slot (others below)."""
    scores, chosen = {}, {}
    for s, (base, w) in enumerate(zip(space.upper, widths)):
        chosen[s] = tuple(sorted(rng.sample(range(base), w)))
        scores[s] = torch.tensor([0.6 + 0.4 * rng.random() if c in chosen[s] else 0.4 * rng.random()
                                  for c in range(base)])
    return scores, chosen


def random_widths(space, rng):
    """Non-uniform valid widths, multiples of the space's unit: each slot (streams included) a random fraction."""
    unit = space.multiple_of
    for _ in range(200):
        widths = [min(b, unit * rng.randint(1, max(1, b // unit))) for b in space.upper]
        try:
            return space.arch(widths).widths
        except ArchitectureError:
            continue
    raise AssertionError("no valid widths drawn")


def test_slot_scores_normalise_per_layer_and_sum_tied_producers():
    arch = make_arch(FAMILY_CASES[0])  # tiny: stem 8, stream 16 (tied), two blocks of 8
    stem_conv = torch.arange(1.0, 9.0)
    scores = {"stem.0": stem_conv, "stem.1": torch.full((8,), 2.0), "down.1": torch.arange(16.0),
              "blocks.0.bn2": torch.ones(16), "blocks.1.conv1": [0.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0]}
    by_max = slot_scores(arch, scores)
    assert set(by_max) == {0, 1, 3}
    torch.testing.assert_close(by_max[0], stem_conv.double() / 8 + 1)
    torch.testing.assert_close(by_max[1], torch.arange(16.0, dtype=torch.float64) / 15 + 1)
    torch.testing.assert_close(by_max[3], torch.tensor([0, 0.75, 1, 0, 0, 0, 0, 0], dtype=torch.float64))
    assert by_max[0].dtype == torch.float64
    by_l2 = slot_scores(arch, {"blocks.1.conv1": [0.0, 3.0, 4.0, 0, 0, 0, 0, 0]}, "l2")
    torch.testing.assert_close(by_l2[3], torch.tensor([0, 0.6, 0.8, 0, 0, 0, 0, 0], dtype=torch.float64))
    by_mean = slot_scores(arch, {"stem.0": stem_conv}, "mean")
    torch.testing.assert_close(by_mean[0], stem_conv.double() / 4.5)
    raw = slot_scores(arch, {"stem.0": stem_conv, "stem.1": -stem_conv}, "none")
    assert torch.equal(raw[0], torch.zeros(8, dtype=torch.float64))
    assert torch.equal(slot_scores(arch, {"stem.1": torch.zeros(8)})[0], torch.zeros(8, dtype=torch.float64))


def test_slot_scores_map_depthwise_convs_and_consumer_side_norms_to_their_slot():
    mobile = make_arch(FAMILY_CASES[14])
    depthwise = next(layer for layer in mobile.layers if layer.depthwise)
    assert set(slot_scores(mobile, {depthwise.name: torch.rand(depthwise.out_channels)})) == {depthwise.output}
    pre = make_arch(FAMILY_CASES[9])  # preresnet: layer1.1.bn1 normalises the stage-1 stream inside the block
    bn = next(layer for layer in pre.layers if layer.name == "layer1.1.bn1")
    assert set(slot_scores(pre, {"layer1.1.bn1": torch.rand(bn.out_channels)})) == {bn.inputs[0]}


@pytest.mark.parametrize(("scores", "normalization", "error", "message"), [
    ({"nope": [1.0]}, "max", ArchitectureError, "scored layer 'nope' is not a conv, linear or batch-norm layer"),
    ({"fc": torch.ones(4)}, "max", ArchitectureError, "'fc' produces the network's outputs, not a width slot"),
    ({"stem.0": torch.ones(7)}, "max", ArchitectureError, r"scores of layer 'stem.0' have shape \[7\], expected \[8\]"),
    ({"stem.0": torch.ones(2, 4)}, "max", ArchitectureError, r"have shape \[2, 4\], expected \[8\]"),
    ({"stem.0": [float("nan")] * 8}, "max", ArchitectureError, "contain NaN or infinite values"),
    ({"stem.0": torch.ones(8)}, "median", UnknownNameError, "unknown normalization 'median'; choose one of: none"),
])
def test_slot_scores_errors(scores, normalization, error, message):
    with pytest.raises(error, match=message):
        slot_scores(make_arch(FAMILY_CASES[0]), scores, normalization)


def test_slot_scores_reject_norms_over_concatenations():
    dense = make_arch(FAMILY_CASES[10])
    with pytest.raises(ArchitectureError, match="'dense1.1.bn1' normalises 2 concatenated slots"):
        slot_scores(dense, {"dense1.1.bn1": torch.ones(18)})


def test_threshold_known_answer_with_floor_and_unscored_slot():
    space = load_space("tiny-synthetic")  # upper (8, 16, 8, 8), lower 1
    scores = {0: torch.tensor([0.9, 0.1, 0.1, 0.8, 0.1, 0.7, 0.1, 0.1]),
              1: torch.tensor([0.9] * 10 + [0.2] * 6),
              2: torch.tensor([0.1, 0.1, 0.3, 0.2, 0.1, 0.3, 0.0, 0.0])}
    got = select_by_threshold(space, scores, 0.5)
    assert got == Selection((3, 10, 1, 8), {0: (0, 3, 5), 1: tuple(range(10)), 2: (2,), 3: tuple(range(8))}, 0.5, (2,))
    removed = select_by_threshold(space, scores, 0.5, remove_blocks=True)
    assert removed.widths == (3, 10, 0, 8) and removed.kept[2] == () and removed.floored == ()
    assert select_by_threshold(space, scores, float("-inf")).widths == space.upper


def test_threshold_rounds_up_to_the_spaces_multiple():
    space = load_space("mobilenetv2-cifar10")  # multiple_of 8
    slot = space.upper.index(144)
    for count, expected in ((0, 8), (1, 8), (9, 16), (17, 24), (144, 144)):
        scores = {slot: torch.tensor([1.0] * count + [0.0] * (144 - count))}
        got = select_by_threshold(space, scores, 0.5)
        assert got.widths[slot] == expected and got.floored == ((slot,) if count == 0 else ())
        assert got.kept[slot] == tuple(range(expected))


def test_floors_are_honoured_and_reported():
    space = replace(load_space("vgg11-fashionmnist"), min_ratio=0.25)
    scores = {s: torch.rand(b) for s, b in enumerate(space.upper)}
    got = select_by_threshold(space, scores, 2.0)
    assert got.widths == space.lower == tuple(b // 4 for b in space.upper)
    assert got.floored == tuple(range(len(space.upper)))
    assert all(got.kept[s] == tuple(sorted(torch.argsort(-scores[s])[:w].tolist())) for s, w in enumerate(got.widths))


def test_blocks_are_removed_only_on_request_and_only_whole():
    space = Space.from_architecture(make_arch(FAMILY_CASES[9]))  # preresnet-29: blocks of two inner slots
    block = next(s.block for s in space.slots if s.removable)
    inner1, inner2 = [i for i, s in enumerate(space.slots) if s.block == block]
    scores = {s: torch.ones(b) for s, b in enumerate(space.upper)}
    scores[inner1] = torch.zeros(space.upper[inner1])
    partly = select_by_threshold(space, scores, 0.5, remove_blocks=True)
    assert partly.widths[inner1] == 1 and partly.floored == (inner1,)
    scores[inner2] = torch.zeros(space.upper[inner2])
    kept = select_by_threshold(space, scores, 0.5)
    assert (kept.widths[inner1], kept.widths[inner2], kept.floored) == (1, 1, (inner1, inner2))
    removed = select_by_threshold(space, scores, 0.5, remove_blocks=True)
    assert (removed.widths[inner1], removed.widths[inner2], removed.floored) == (0, 0, ())
    fixed = next(i for i, s in enumerate(space.slots) if s.name == "layer2.0.inner1")  # a downsampling block
    scores[fixed] = torch.zeros(space.upper[fixed])
    assert select_by_threshold(space, scores, 0.5, remove_blocks=True).widths[fixed] == 1
    space.arch(removed.widths)


def test_option_a_streams_are_raised_to_stay_non_decreasing():
    space = load_space("resnet20-fashionmnist")  # streams 8 / 16 / 32
    one, two, three = (next(i for i, s in enumerate(space.slots) if s.name == f"stage{k}.stream") for k in (1, 2, 3))
    scores = {one: torch.ones(8), two: torch.tensor([0.0] * 10 + [1.0] * 6),
              three: torch.tensor([1.0] * 3 + [0.0] * 29)}
    got = select_by_threshold(space, scores, 0.5)
    assert (got.widths[one], got.widths[two], got.widths[three]) == (8, 8, 8)
    assert got.kept[two] == (0, 1, 10, 11, 12, 13, 14, 15) and got.kept[three] == tuple(range(8))


def test_ties_are_broken_by_lower_index_and_results_are_deterministic():
    space = load_space("tiny-synthetic")
    scores = {1: torch.tensor([1.0, 0.0] * 8)}
    got = select_widths(space, scores, (8, 5, 8, 8))
    assert got.kept[1] == (0, 2, 4, 6, 8)
    rng = torch.Generator().manual_seed(5)
    scores = {s: torch.randint(0, 3, (b,), generator=rng).float() for s, b in enumerate(space.upper)}
    target = target_from_ratio(space, 0.5)
    assert len({repr(select_by_cost(space, scores, target)) for _ in range(3)}) == 1
    assert select_by_cost(space, scores, target) == select_by_cost(space, {k: v.clone() for k, v in scores.items()},
                                                                   target)


@pytest.mark.parametrize("space_name", COST_SPACES)
def test_planted_non_uniform_widths_are_recovered_at_their_cost(space_name):
    space = load_space(space_name)
    rng = random.Random(space_name)
    for _ in range(3):
        widths = random_widths(space, rng)
        assert len({w / b for w, b in zip(widths, space.upper)}) > 1  # non-uniform
        scores, chosen = planted(space, widths, rng)
        assert select_by_threshold(space, scores, 0.5) == Selection(widths, chosen, 0.5, ())
        got = select_by_cost(space, scores, cost_of(space.arch(widths), "macs"))
        assert (got.widths, got.kept, got.floored) == (widths, chosen, ())


@pytest.mark.parametrize("space_name", COST_SPACES)
@pytest.mark.parametrize("match", ["macs", "params"])
def test_cost_target_is_met_within_one_percent_in_few_evaluations(space_name, match, monkeypatch):
    space = load_space(space_name)
    calls = []
    monkeypatch.setattr(select_module, "cost_of", lambda arch, m: calls.append(1) or cost_of(arch, m))
    rng = torch.Generator().manual_seed(0)
    for draw in range(8):
        scores = {s: torch.rand(b, generator=rng) * (1 + s % 3) for s, b in enumerate(space.upper)}
        target = target_from_ratio(space, 0.2 + 0.1 * draw, match)
        calls.clear()
        got = select_by_cost(space, scores, target, match=match, remove_blocks=bool(draw % 2))
        assert cost_of(space.arch(got.widths), match) <= target * 1.01
        assert len(calls) <= 50
        assert got.kept == select_by_threshold(space, scores, got.threshold, bool(draw % 2)).kept


@pytest.mark.parametrize("space_name", ["tiny-synthetic", "vgg11-fashionmnist", "resnet20-fashionmnist"])
def test_cost_selection_is_the_closest_feasible_threshold(space_name):
    """Brute force over every distinct threshold: bisection found the best one."""
    space = load_space(space_name)
    rng = torch.Generator().manual_seed(1)
    scores = {s: torch.rand(b, generator=rng) for s, b in enumerate(space.upper)}
    thresholds = [float("-inf"), *torch.unique(torch.cat(list(scores.values()))).double().tolist()]
    costs = [cost_of(space.arch(select_by_threshold(space, scores, t).widths), "macs") for t in thresholds]
    for ratio in (0.1, 0.35, 0.6, 0.85):
        target = target_from_ratio(space, ratio)
        best = min((abs(c - target), c) for c in costs if c <= target * 1.01)[1]
        assert cost_of(space.arch(select_by_cost(space, scores, target).widths), "macs") == best


def test_generous_target_keeps_everything():
    space = load_space("tiny-synthetic")
    scores = {s: torch.rand(b) for s, b in enumerate(space.upper)}
    got = select_by_cost(space, scores, 10 * cost_of(space.base, "macs"))
    assert got.widths == space.upper and got.threshold == float("-inf")


def test_unreachable_target_says_what_the_minimum_is():
    space = load_space("tiny-synthetic")
    scores = {s: torch.rand(b) for s, b in enumerate(space.upper)}
    smallest = cost_of(space.arch(space.lower), "macs")
    with pytest.raises(BudgetError, match=rf"target macs 1000 is unreachable: .* lower bound\) has {smallest} macs, "
                                          r"above target x \(1 \+ 0.01\) = 1010"):
        select_by_cost(space, scores, 1000)
    removed = cost_of(space.arch((1, 1, 0, 0)), "macs")
    with pytest.raises(BudgetError, match=rf"removable blocks removed\) has {removed} macs"):
        select_by_cost(space, scores, 1000, remove_blocks=True)
    with pytest.raises(BudgetError, match=r"unscored slots at full width\) has \d+ macs"):
        select_by_cost(space, {0: scores[0]}, 1000)
    with pytest.raises(BudgetError, match="target macs 0 must be positive"):
        select_by_cost(space, scores, 0)
    with pytest.raises(BudgetError, match="match 'flops' must be 'macs' or 'params'"):
        select_by_cost(space, scores, 10**6, match="flops")


def test_fraction_is_network_slimmings_pooled_threshold():
    space = load_space("tiny-synthetic")
    values = torch.randperm(40).double()  # 40 channels in all: 8 + 16 + 8 + 8
    scores = dict(enumerate(torch.split(values, space.upper)))
    got = select_fraction(space, scores, 0.7)
    assert got.threshold == 28.0  # sorted(values)[int(40 * 0.7)]
    assert got.widths == tuple(max(1, int((v > 28).sum())) for v in scores.values())
    for s, v in scores.items():
        above = (v > 28).nonzero().flatten().tolist()
        assert got.kept[s] == tuple(above or [int(v.argmax())])
        assert got.floored.count(s) == (not above)
    with pytest.raises(BudgetError, match=r"fraction 1.0 must be in \[0, 1\)"):
        select_fraction(space, scores, 1.0)
    with pytest.raises(ArchitectureError, match="no slot is scored"):
        select_fraction(space, {}, 0.5)


def test_given_widths_keep_the_top_channels():
    space = load_space("resnet56-cifar10")
    preset = space.preset(next(iter(space.presets)))
    rng = torch.Generator().manual_seed(2)
    scores = {s: torch.rand(b, generator=rng) for s, b in enumerate(space.upper) if s % 2}
    got = select_widths(space, scores, preset.widths)
    assert got.widths == preset.widths and got.threshold is None and got.floored == ()
    for s, w in enumerate(preset.widths):
        expected = torch.argsort(scores[s], descending=True)[:w].sort().values.tolist() if s in scores else range(w)
        assert got.kept[s] == tuple(expected)
    with pytest.raises(ArchitectureError, match="above its bound"):
        select_widths(space, scores, [w + 100 for w in space.upper])


def test_score_errors_name_the_slot():
    space = load_space("tiny-synthetic")
    with pytest.raises(ArchitectureError, match=r"scores of slot 1 \('stream'\) have shape \[8\], expected \[16\]"):
        select_by_threshold(space, {1: torch.ones(8)}, 0.5)
    with pytest.raises(ArchitectureError, match="scores name slot 7; space 'tiny-synthetic' has slots 0..3"):
        select_by_threshold(space, {7: torch.ones(8)}, 0.5)


def test_selection_feeds_weight_inheritance():
    space = load_space("resnet20-fashionmnist")
    base = space.base
    model = base.build()
    layer_scores = {layer.name: torch.rand(layer.out_channels) for layer in base.layers if layer.kind == "bn"}
    got = select_by_cost(space, slot_scores(base, layer_scores), target_from_ratio(space, 0.5))
    pruned = inherit(base, model.state_dict(), space.arch(got.widths), got.kept)
    assert pruned(torch.randn(2, *base.input_shape)).shape == (2, base.num_classes)
