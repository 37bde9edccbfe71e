"""Channel references, weight inheritance and zeroing, over every family (known-answer equivalence)."""

import random
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from prunenas.arch import Architecture, MaskRef
from prunenas.errors import ArchitectureError
from prunenas.fileio import file_sha256
from prunenas.proposers.channels import ChannelRef, channel_refs, inherit, inherit_state, zero_channels

from ..conftest import FAMILY_CASES, case_id, make_arch, random_arch

CASES = pytest.mark.parametrize("case", FAMILY_CASES, ids=[case_id(c) for c in FAMILY_CASES])


def randomized(arch):
    """A float64 eval-mode network of ``arch`` with random BN statistics, BN affine parameters and biases."""
    model = arch.build().double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.5)
                m.running_mean.normal_(0.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.normal_(0.0, 0.5)
    return model.eval()


@pytest.fixture
def float64():
    """Build networks in float64, so that comparisons are not blurred by float32 rounding."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


def random_kept(base, arch, rng):
    """Random sorted channel subsets of ``base``'s slots of ``arch``'s widths."""
    return {s: sorted(rng.sample(range(b), w)) for s, (b, w) in enumerate(zip(base.widths, arch.widths))}


def smaller_arch(arch, rng):
    """A random architecture with widths <= ``arch``'s (blocks removed in ``arch`` stay removed)."""
    for _ in range(200):
        widths = [rng.randint(1, w) if w else 0 for w in arch.widths]
        try:
            return arch.with_widths(widths)
        except ArchitectureError:
            continue
    raise AssertionError("could not draw a smaller architecture")


def test_channel_refs_known_answer_tiny():
    arch = make_arch(FAMILY_CASES[0])  # tiny: stem 8, stream 16, two removable blocks of inner width 8
    refs = channel_refs(arch)
    stream = [ChannelRef("down.0", "produce", 0, 0), ChannelRef("down.1", "norm", 0, 0)]
    for b in range(2):
        stream += [ChannelRef(f"blocks.{b}.conv1", "consume", 1, 0), ChannelRef(f"blocks.{b}.conv2", "produce", 0, 0),
                   ChannelRef(f"blocks.{b}.bn2", "norm", 0, 0)]
    stream.append(ChannelRef("fc", "consume", 1, 0))
    assert refs[1] == stream
    assert refs[0] == [ChannelRef("stem.0", "produce", 0, 0), ChannelRef("stem.1", "norm", 0, 0),
                       ChannelRef("down.0", "consume", 1, 0)]
    assert refs[2] == [ChannelRef("blocks.0.conv1", "produce", 0, 0), ChannelRef("blocks.0.bn1", "norm", 0, 0),
                       ChannelRef("blocks.0.conv2", "consume", 1, 0)]
    removed = channel_refs(arch.with_widths([8, 16, 0, 8]))
    assert removed[2] == [] and all(not r.layer.startswith("blocks.0") for r in removed[1])


def test_channel_refs_concatenation_repeat_and_depthwise():
    dense = make_arch(FAMILY_CASES[10])  # densenet-40, growth 6: stem 12
    stem, g0, g1 = 0, 1, 2
    bn = {s: [r for r in channel_refs(dense)[s] if r.layer == "dense1.2.bn1"] for s in (stem, g0, g1)}
    assert bn == {stem: [ChannelRef("dense1.2.bn1", "norm", 0, 0)], g0: [ChannelRef("dense1.2.bn1", "norm", 0, 12)],
                  g1: [ChannelRef("dense1.2.bn1", "norm", 0, 18)]}
    vgg = make_arch(FAMILY_CASES[5])  # imagenet head: the first FC reads 7x7 positions per channel
    last_conv = len(vgg.widths) - 3
    fc = [r for r in channel_refs(vgg)[last_conv] if r.layer == "classifier.0"]
    assert fc == [ChannelRef("classifier.0", "consume", 1, 0, 49)]
    assert fc[0].positions([0, 2]).tolist() == list(range(49)) + list(range(98, 147))
    mobile = make_arch(FAMILY_CASES[14])
    depthwise = {layer.name for layer in mobile.layers if layer.depthwise}
    roles = {(r.layer, r.role) for refs in channel_refs(mobile).values() for r in refs if r.layer in depthwise}
    assert roles == {(name, "produce") for name in depthwise}


@CASES
def test_channel_refs_cover_every_channel_dimension_exactly_once(case):
    """Per layer tensor and dimension, the refs of all slots tile the built tensor's channels."""
    base = make_arch(case)
    for arch in (base, random_arch(base, random.Random(1), remove_prob=0.5)):
        model = arch.build()
        covered = {}
        for slot, refs in channel_refs(arch).items():
            for ref in refs:
                covered.setdefault((ref.layer, ref.dim), []).extend(ref.positions(range(arch.widths[slot])).tolist())
        for layer in arch.layers:
            weight = model.get_submodule(layer.name).weight
            out = layer.output_dim
            assert sorted(covered.pop((layer.name, out), [])) == (list(range(weight.shape[out])) if
                                                                 layer.output is not None or layer.is_norm else [])
            if layer.kind in ("conv", "linear"):
                reads_image = layer.inputs == (-1,)
                expected = [] if layer.depthwise or reads_image else list(range(weight.shape[1]))
                assert sorted(covered.pop((layer.name, 1), [])) == expected, layer.name
        assert not covered


@CASES
def test_inherited_network_equals_the_zeroed_base_network(case, float64):
    """The known answer: pruning with inherited weights computes exactly what the base network computes once
    the dropped channels (and removed blocks) are zeroed — for random widths, kept subsets and removals."""
    base = make_arch(case)
    rng = random.Random(case_id(case))
    model = randomized(base)
    state = model.state_dict()
    x = torch.randn(3, *base.input_shape, dtype=torch.float64)
    with torch.no_grad():
        reference = model(x)
    # zeroing cannot emulate dropping channels under a layer norm (its statistics span them): keep those
    layer_normed = {s for layer in base.layers if layer.kind == "ln" for s in layer.inputs}
    archs = [random_arch(base, rng, remove_prob=p) for p in (0.0, 0.5, 0.9)]
    archs = [arch.with_widths([b if s in layer_normed else w for s, (b, w) in enumerate(zip(base.widths, arch.widths))])
             for arch in archs]
    if any(s.removable for s in base.slots):
        assert any(0 in arch.widths for arch in archs), "no removed block drawn"
    for arch in archs:
        kept = random_kept(base, arch, rng)
        dropped = {s: sorted(set(range(b)) - set(kept[s])) for s, b in enumerate(base.widths)}
        zeroed = randomized(base)
        zeroed.load_state_dict(state)
        zero_channels(zeroed, base, dropped)
        pruned = inherit(base, state, arch, kept).eval()
        with torch.no_grad():
            expected, got = zeroed(x), pruned(x)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-7)
        assert not torch.allclose(expected, reference, atol=1e-3), "zeroing changed nothing: trivial test"


@CASES
def test_inherited_state_has_the_pruned_networks_keys_and_shapes(case):
    base = make_arch(case)
    rng = random.Random(2)
    state = base.build().state_dict()
    for arch in (random_arch(base, rng), random_arch(base, rng, remove_prob=0.9)):
        inherited = inherit_state(base, state, arch, random_kept(base, arch, rng))
        expected = arch.build().state_dict()
        assert list(inherited) == list(expected)
        assert all(inherited[k].shape == expected[k].shape and inherited[k].dtype == expected[k].dtype
                   for k in expected)


@CASES
def test_keeping_every_channel_reproduces_the_state_exactly(case):
    base = make_arch(case)
    for arch in (base, random_arch(base, random.Random(3), remove_prob=0.5)):
        state = randomized(arch).state_dict()
        for kept in ({}, {s: range(w) for s, w in enumerate(arch.widths)}):
            inherited = inherit_state(arch, state, arch, kept)
            assert list(inherited) == list(state)
            assert all(torch.equal(inherited[k], state[k]) for k in state)
            assert all(inherited[k].data_ptr() != state[k].data_ptr() for k in state if state[k].numel())


@CASES
def test_inheritance_composes(case):
    """Pruning base -> A -> B inherits the same state as base -> B with the composed channel lists (this
    also exercises non-standard option-A channel maps in the intermediate network)."""
    base = make_arch(case)
    rng = random.Random(4)
    state = randomized(base).state_dict()
    a = random_arch(base, rng, remove_prob=0.3)
    b = smaller_arch(a, rng)
    kept_a, kept_b = random_kept(base, a, rng), random_kept(a, b, rng)
    via_a = inherit_state(a, inherit_state(base, state, a, kept_a), b, kept_b)
    direct = inherit_state(base, state, b, {s: [kept_a[s][i] for i in kept_b[s]] for s in kept_b})
    assert list(via_a) == list(direct) and all(torch.equal(via_a[k], direct[k]) for k in direct)


def test_option_a_shortcut_map_known_answer():
    base = Architecture.create("resnet_cifar", None, {"depth": 20})  # streams 16 / 32 / 64
    stream = {s: next(i for i, slot in enumerate(base.slots) if slot.name == f"stage{s + 1}.stream") for s in range(3)}
    kept = {stream[0]: [0, 2, 5], stream[1]: [1, 2, 5, 20], stream[2]: list(range(64))}
    widths = list(base.widths)
    for s, channels in kept.items():
        widths[s] = len(channels)
    inherited = inherit_state(base, base.build().state_dict(), base.with_widths(widths), kept)
    assert inherited["layer2.0.shortcut.source"].tolist() == [3, 1, 2, 3]  # 1: dropped in stage 1; 20 >= 16
    expected = [4] * 64
    for position, channel in enumerate([1, 2, 5, 20]):
        expected[channel] = position
    assert inherited["layer3.0.shortcut.source"].tolist() == expected


def test_zero_channels_zeroes_filters_and_norms_only():
    arch = make_arch(FAMILY_CASES[0])
    model = randomized(arch)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    zero_channels(model, arch, {0: [1, 6]})  # stem: conv stem.0, BN stem.1; consumer down.0 untouched
    after = model.state_dict()
    assert (after["stem.0.weight"][[1, 6]] == 0).all() and (after["stem.1.weight"][[1, 6]] == 0).all()
    assert (after["stem.1.bias"][[1, 6]] == 0).all()
    assert torch.equal(after["stem.1.running_mean"], before["stem.1.running_mean"])
    untouched = [k for k in before if not k.startswith(("stem.0.weight", "stem.1.weight", "stem.1.bias"))]
    assert all(torch.equal(after[k], before[k]) for k in untouched)
    rest = [c for c in range(8) if c not in (1, 6)]
    assert torch.equal(after["stem.0.weight"][rest], before["stem.0.weight"][rest])


def test_inherit_reapplies_masks(tmp_path):
    base = make_arch(FAMILY_CASES[0])
    arch = base.with_widths([4, 16, 8, 8])
    mask = torch.rand(16, 4, 3, 3) > 0.5
    path = tmp_path / "m.safetensors"
    save_file({"down.0": mask.to(torch.uint8)}, str(path))
    masked = replace(arch, masks=MaskRef(str(path), file_sha256(path)))
    model = inherit(base, randomized(base).float().state_dict(), masked, {0: [0, 1, 2, 3]})
    assert (model.get_submodule("down.0").weight[~mask] == 0).all()


@pytest.mark.parametrize(("change", "message"), [
    (lambda b, a, k: (Architecture.create("vgg", None, {"depth": 11}), a, k), "base family 'vgg' differs"),
    (lambda b, a, k: (b, Architecture.create("tiny", a.widths, {"blocks": 2}, (3, 16, 16), 5), k),
     "base num_classes 4 differs from the pruned architecture's 5"),
    (lambda b, a, k: (b, Architecture.create("tiny", [8, 16, 8, 8, 8], {"blocks": 3}, (3, 16, 16), 4), k),
     r"base options \{'blocks': 2, 'width_mult': 1.0\} differs"),
    (lambda b, a, k: (b, a, {**k, 0: [0, 1, 2]}), r"slot 0 \('stem'\): 3 kept channels for width 4"),
    (lambda b, a, k: (b, a, {**k, 0: [0, 1, 2, 8]}), r"slot 0 \('stem'\): kept channel 8 out of range 0..7"),
    (lambda b, a, k: (b, a, {**k, 0: [3, 1, 2, 0]}), "must be sorted ascending without repeats"),
    (lambda b, a, k: (b, a, {**k, 9: [0]}), r"kept names slot 9; the architecture has slots 0..3"),
    (lambda b, a, k: (b, a, {}), r"slot 0 \('stem'\): its width changes from 8 to 4, but kept does not say"),
])
def test_inherit_errors(change, message):
    base = make_arch(FAMILY_CASES[0])
    arch = base.with_widths([4, 16, 0, 8])
    base_arch, arch, kept = change(base, arch, {0: [0, 2, 4, 6]})
    with pytest.raises(ArchitectureError, match=message):
        inherit_state(base_arch, base.build().state_dict(), arch, kept)


def test_inherit_rejects_a_state_of_another_architecture():
    base = make_arch(FAMILY_CASES[0])
    arch = base.with_widths([4, 16, 8, 8])
    with pytest.raises(ArchitectureError, match=r"base_state\['stem.0.weight'\] has shape \[4, 3, 3, 3\], base_arch"):
        inherit_state(base, arch.build().state_dict(), arch, {0: [0, 1, 2, 3]})
    state = base.build().state_dict()
    del state["fc.bias"]
    with pytest.raises(ArchitectureError, match="base_state has no tensor 'fc.bias'"):
        inherit_state(base, state, arch, {0: [0, 1, 2, 3]})


def test_zero_channels_errors():
    arch = make_arch(FAMILY_CASES[0])
    with pytest.raises(ArchitectureError, match=r"slot 0 \('stem'\): dropped channel 8 out of range 0..7"):
        zero_channels(arch.build(), arch, {0: [8]})
    with pytest.raises(ArchitectureError, match="dropped names slot 4"):
        zero_channels(arch.build(), arch, {4: [0]})
