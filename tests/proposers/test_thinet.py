"""ThiNet and the shared reconstruction problems: the greedy step, the least-squares rescaling, Gram matrices
equal to real output changes, planted and real-data known answers, presets, CLI."""

import itertools
import json
import random
import statistics
import subprocess
import sys

import pytest
import torch

from prunenas.arch import Architecture
from prunenas.cost import count
from prunenas.data import load_data
from prunenas.proposers import Target, propose
from prunenas.proposers.basemodel import StaticProvider, base_model_from
from prunenas.proposers.contributions import (
    ConsumerStats,
    calibration_images,
    consumers,
    contribution_grams,
    prunable_slots,
)
from prunenas.proposers.reconstruction import (
    curve_scores,
    removal_error,
    rescale_coefficients,
    rescaled_curve,
    rescaled_error,
)
from prunenas.proposers.select import select_by_threshold
from prunenas.proposers.thinet import greedy_removal_order
from prunenas.spaces import load_space

from ..conftest import FAMILY_CASES, case_id, make_arch, planted_tiny_provider


def hand_made_contributions():
    """Four channels' contributions over 8 samples: z0 = a (norm 1), z1 = -a + 1.5 e (norm 1.80),
    z2 = 1.2 b, z3 = 2 c, with a, e, b, c orthonormal. Removing {0, 1} costs |1.5 e|^2 = 2.25, the optimum
    among pairs, although z1 has a larger norm than z2 (removing {0, 2} costs 1 + 1.44 = 2.44)."""
    a, e, b, c = torch.eye(8, dtype=torch.float64)[:4]
    return torch.stack([a, -a + 1.5 * e, 1.2 * b, 2 * c], dim=1)


def test_greedy_step_on_a_hand_made_problem():
    z = hand_made_contributions()
    order, values = greedy_removal_order(z.T @ z)

    def cost(removed):
        return float(z[:, list(removed)].sum(dim=1).pow(2).sum())

    best_pair = min(itertools.combinations(range(4), 2), key=cost)
    by_norm = sorted(range(4), key=lambda c: float(z[:, c].norm()))
    assert order[:2] == [0, 1] and set(best_pair) == {0, 1}
    assert by_norm[:2] == [0, 2]  # a magnitude ranking would remove the wrong pair
    assert values[0] == pytest.approx(1.0) and values[1] == pytest.approx(2.25)


@pytest.mark.parametrize("seed", range(4))
def test_every_greedy_step_adds_the_least_error(seed):
    """Each step's choice and value, against brute force on the raw contributions."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(60, 7, generator=gen, dtype=torch.float64) @ torch.randn(7, 7, generator=gen, dtype=torch.float64)
    order, values = greedy_removal_order(z.T @ z)
    assert sorted(order) == list(range(7))
    for j in range(7):
        remaining = [c for c in range(7) if c not in order[:j]]
        errors = {c: float(z[:, order[:j] + [c]].sum(dim=1).pow(2).sum()) for c in remaining}
        assert order[j] == min(errors, key=errors.get)
        assert values[j] == pytest.approx(errors[order[j]])


def test_least_squares_rescaling_absorbs_a_redundant_channel():
    a, b, _ = torch.eye(3, dtype=torch.float64)
    z = torch.stack([a, b, 2 * a], dim=1)  # channel 2 is twice channel 0
    gram = z.T @ z
    assert rescale_coefficients(gram, [0, 1]).tolist() == pytest.approx([3.0, 1.0])
    assert rescaled_error(gram, [0, 1]) == pytest.approx(0.0, abs=1e-8)
    assert removal_error(gram, [2]) == pytest.approx(4.0)  # without the refit the error stays


def test_rescaled_curve_equals_refits_of_every_prefix():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(40, 9, generator=gen, dtype=torch.float64)
    gram = z.T @ z
    order, _ = greedy_removal_order(gram)
    curve = rescaled_curve(gram, order)
    for j in range(9):
        assert curve[j] == pytest.approx(rescaled_error(gram, order[j + 1:]), rel=1e-6, abs=1e-9)


def test_curve_scores_make_every_threshold_remove_a_prefix_of_the_order():
    order = [3, 0, 2, 1]
    scores = curve_scores(order, torch.tensor([0.1, 0.05, 0.4, 1.0], dtype=torch.float64), 1.0)
    assert scores[3] < scores[0] < scores[2] < scores[1]  # the dip at step 2 is made monotone
    space = load_space("tiny-synthetic")
    scored = torch.cat([scores, torch.ones(4, dtype=torch.float64)])  # slot 0 has 8 channels
    selection = select_by_threshold(space, {0: scored}, float(scores[0]))
    assert selection.kept[0] == (1, 2, 4, 5, 6, 7)


def _vgg_with_flatten_head():
    return Architecture.create("vgg", None, {"depth": 11, "head": "imagenet", "batch_norm": False, "conv_bias": True,
                                             "width_mult": 0.0625}, (3, 32, 32), 5)


@pytest.mark.parametrize(("case", "slot", "consumer", "norm"), [
    ("tiny", 2, "blocks.0.conv2", "blocks.0.bn2"),  # 3x3 conv consumer, BN after it
    ("tiny", 0, "down.0", "down.1"),  # strided consumer
    ("vgg-head", 7, "classifier.0", None),  # linear after a flatten: 49 features per channel
    ("vgg-head-direct", 7, "classifier.0", None),  # the same through the direct (chunked) accumulation
])
def test_gram_matrix_gives_the_real_output_change_of_removing_channels(monkeypatch, case, slot, consumer, norm):
    if case.endswith("direct"):
        monkeypatch.setattr(ConsumerStats, "MOMENTS_LIMIT", 0)
    arch = load_space("tiny-synthetic").base if case == "tiny" else _vgg_with_flatten_head()
    torch.manual_seed(0)
    model = arch.build().eval()
    if norm:
        bn = model.get_submodule(norm)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.2, 2.0)
    x = torch.randn(5, *arch.input_shape)
    grams = contribution_grams(model, arch, [x], [slot], locations=100_000)
    captured = []
    handle = model.get_submodule(consumer).register_forward_pre_hook(lambda m, i: captured.append(i[0].clone()))
    model(x)
    handle.remove()
    inputs, module = captured[0], model.get_submodule(consumer)
    scale = model.get_submodule(norm).weight / (model.get_submodule(norm).running_var + 1e-5).sqrt() if norm else None

    def output(channels):
        cut = inputs.clone()
        if module.__class__.__name__ == "Linear":
            cut = cut.view(len(cut), arch.widths[slot], -1)
        cut[:, channels] = 0
        y = module(cut.view_as(inputs)) if module.__class__.__name__ == "Linear" else module(cut)
        return y * scale.view(1, -1, 1, 1) if scale is not None else y

    removed, everything = [1, 4, 5], list(range(arch.widths[slot]))
    full = output([])
    with torch.no_grad():
        expected = float((full - output(removed)).pow(2).sum() / (full - output(everything)).pow(2).sum())
    gram = grams[slot]
    assert removal_error(gram, removed) / float(gram.sum()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("case", FAMILY_CASES, ids=case_id)
def test_gram_matrix_gives_the_real_output_change_in_every_family(case):
    """For the first prunable slot of every family (concatenated DenseNet inputs, MobileNet depthwise
    producers, pre-activation consumers...): removal error = the sum over its consumers of the real change of
    each consumer's output (after the batch norm that follows it, if any), relative to that output's part
    from the slot."""
    arch = make_arch(case)
    slot = prunable_slots(arch, False)[0]
    torch.manual_seed(0)
    model = arch.build().eval()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_var.uniform_(0.5, 2.0)
            module.running_mean.uniform_(-0.5, 0.5)
    x = torch.randn(3, *arch.input_shape)
    gram = contribution_grams(model, arch, [x], [slot], locations=100_000)[slot]
    removed = list(range(0, arch.widths[slot], 3))
    expected = 0.0
    for consumer in consumers(arch, slot):
        module = model.get_submodule(consumer.layer.name)
        captured = []
        handle = module.register_forward_pre_hook(lambda m, i, out=captured: out.append(i[0].clone()))
        with torch.no_grad():
            model(x)
        handle.remove()
        index = [layer.name for layer in arch.layers].index(consumer.layer.name)
        after = arch.layers[index + 1] if index + 1 < len(arch.layers) else None
        norm = model.get_submodule(after.name) if after is not None and after.kind == "bn" and \
            after.inputs == (consumer.layer.output,) else None

        def output(channels, inputs=captured[0], module=module, norm=norm, consumer=consumer):
            if consumer.layer.kind == "linear" and inputs.dim() > 2:  # applied to every token: features last
                cut = inputs.clone().view(*inputs.shape[:-1], inputs.shape[-1] // consumer.layer.in_repeat, -1)
                cut[..., [consumer.offset + c for c in channels], :] = 0
            else:
                cut = inputs.clone().view(len(inputs), inputs.shape[1] // consumer.layer.in_repeat
                                          if consumer.layer.kind == "linear" else inputs.shape[1], -1)
                cut[:, [consumer.offset + c for c in channels]] = 0
            with torch.no_grad():
                y = module(cut.view_as(inputs))
                return norm(y) if norm is not None else y

        full = output([])
        everything = list(range(arch.widths[slot]))
        expected += float((full - output(removed)).pow(2).sum() / (full - output(everything)).pow(2).sum())
    assert removal_error(gram, removed) == pytest.approx(expected, rel=1e-4)


PLANTED = {0: [2, 5], 2: [1], 3: [0, 7]}


@pytest.mark.parametrize("method", ["thinet", "regression"])
def test_planted_silent_channels_are_removed(method):
    provider = planted_tiny_provider(PLANTED)
    space = provider.space
    widths = [w - len(PLANTED.get(s, [])) for s, w in enumerate(space.upper)]
    proposal = propose(method, space, Target(cost=count(space.arch(widths)).macs), provider, {"images": 64})
    for slot, weak in PLANTED.items():
        assert set(proposal.kept[slot]) == set(range(space.upper[slot])) - set(weak), slot
    assert proposal.arch.widths[1] == space.upper[1]  # the residual stream is not pruned by default
    assert max(proposal.provenance["reconstruction_error"].values()) < 1e-3


def preset_proposal_with_grams(method, preset):
    """``method`` at a ResNet-56 preset on a random-init base, with the Gram matrices it was computed from."""
    space = load_space("resnet56-cifar10")
    torch.manual_seed(0)
    base = base_model_from(space.base.build(), space.base)
    data = load_data("synthetic", space.input_shape, space.num_classes, val_size=16, subset=32)
    proposal = propose(method, space, Target(preset=preset), StaticProvider(space, {None: base}, data),
                       {"images": 32, "locations": 4})
    assert proposal.arch.widths == space.preset(preset).widths
    slots = prunable_slots(space.base, False)
    grams = contribution_grams(base.model(), space.base, calibration_images(data.train, 32, 0), slots, 4, 0)
    return space, proposal, slots, grams


def test_thinet_preset_keeps_the_channels_the_greedy_removes_last():
    _, proposal, slots, grams = preset_proposal_with_grams("thinet", "B")
    for slot in slots:
        order, _ = greedy_removal_order(grams[slot])
        width = proposal.arch.widths[slot]
        assert proposal.kept[slot] == tuple(sorted(order[len(order) - width:])), slot


def held_out_error(fit, held, kept, rescale):
    """Relative output error on held-out activations of keeping ``kept`` (refitted on ``fit`` if ``rescale``)."""
    coefficients = torch.zeros(len(fit), dtype=torch.float64)
    coefficients[list(kept)] = rescale_coefficients(fit, kept) if rescale else 1.0
    residual = 1.0 - coefficients
    return float(residual @ held @ residual) / float(held.sum())


def real_grams(provider):
    """Gram matrices of a trained VGG-11 on 256 training images (fit) and 256 validation images (held out)."""
    base = provider.get(None)
    slots = prunable_slots(base.arch, False)
    data = provider.data()
    return [contribution_grams(base.model(), base.arch, calibration_images(split, 256, 0), slots, 10, 0)
            for split in (data.train, data.val)]


@pytest.mark.parametrize("rescale", [False, True])
def test_thinet_reconstructs_real_activations_better_than_random_channels(fashion_providers, rescale):
    fit, held = real_grams(fashion_providers["vgg11-fashionmnist"])
    rng = random.Random(0)
    ratios = []
    for slot, gram in fit.items():
        count_ = len(gram)
        keep = count_ // 2
        order, _ = greedy_removal_order(gram)
        chosen = held_out_error(gram, held[slot], order[count_ - keep:], rescale)
        randoms = [held_out_error(gram, held[slot], rng.sample(range(count_), keep), rescale) for _ in range(20)]
        assert chosen < min(statistics.median(randoms), statistics.mean(randoms)), (slot, chosen, randoms)
        ratios.append(chosen / statistics.mean(randoms))
    assert statistics.mean(ratios) < 0.7, ratios


def pruned_network_quality(provider, method, mode):
    """Validation accuracy and relative logit error vs the base network of a 50%-MACs proposal, with
    inherited weights (``mode=None``) or after the least-squares refit."""
    from prunenas.proposers.reconstruction import reconstructed_model
    from prunenas.train import evaluate

    base = provider.get(None)
    proposal = propose(method, provider.space, Target(ratio=0.5), provider)
    if mode is None:
        model = base.inherit(proposal)
    else:
        model = reconstructed_model(base, proposal, calibration_images(provider.data().train, 256, 0), mode)
    x = next(iter(provider.data().val.batches(500)))[0]
    with torch.no_grad():
        reference, output = base.model()(x), model.eval()(x)
    return evaluate(model, provider.data().val)[0], float((output - reference).pow(2).mean() / reference.pow(2).mean())


def test_least_squares_rescaling_brings_the_pruned_network_back_towards_the_base(fashion_providers):
    """ThiNet's last step on real activations: rescaling the kept channels' weights recovers accuracy that the
    pruned network with plainly inherited weights lost (before any retraining)."""
    provider = fashion_providers["vgg11-fashionmnist"]
    inherited = pruned_network_quality(provider, "thinet", None)
    rescaled = pruned_network_quality(provider, "thinet", "rescale")
    assert rescaled[1] < 0.8 * inherited[1] and rescaled[0] > inherited[0] + 0.05, (inherited, rescaled)


def test_thinet_cli(tmp_path):
    out = tmp_path / "proposal.json"
    cmd = [sys.executable, "-m", "prunenas", "propose", "thinet", "tiny-synthetic", "--ratio", "0.5", "--base-epochs",
           "1", "--cache-dir", str(tmp_path / "cache"), "--param", "images=64", "--out", str(out), "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "thinet on tiny-synthetic" in proc.stdout
    saved = json.loads(out.read_text())
    assert saved["method"] == "thinet" and saved["params"]["images"] == 64
    assert saved["provenance"]["achieved_macs_ratio"] <= 0.505
