"""Activation importance (Minitron): channel, head, neuron and embedding scores and branch changes equal a
forward pass written out by hand on a tiny ViT and a CNN; planted weak heads/neurons/channels are dropped; branch
removal takes the branches that change their input least; bad input is one line, exit 2."""

import math

import pytest
import torch
import torch.nn.functional as F

from prunenas.arch import Architecture
from prunenas.cli.main import main
from prunenas.cost import count
from prunenas.data import load_data
from prunenas.proposers import ProposerError, Target, propose
from prunenas.proposers.activation import branch_changes, channel_activations
from prunenas.proposers.basemodel import StaticProvider, base_model_from
from prunenas.proposers.channels import inherit
from prunenas.spaces import load_space

from ..conftest import planted_tiny_provider
from ..families.test_vit import planted_vit_provider, slot_index

TINY_VIT = {"depth": 1, "embed_dim": 8, "heads": 2, "mlp_dim": 12, "patch": 4}


def mean_abs(x, dims):
    return x.abs().double().mean(dim=dims)


def by_hand(model, x):
    """The 1-block ViT's forward pass written out from its weights: what each slot feeds forward, and the
    residual stream before and after each branch."""
    n, heads, d = len(x), 2, 4
    tokens = F.conv2d(x, model.conv_proj.weight, model.conv_proj.bias, stride=4).flatten(2).transpose(1, 2)
    tokens = torch.cat([model.class_token.weight.expand(n, 1, 8), tokens], 1) + model.encoder.pos_embedding.weight
    block = model.encoder.layers.encoder_layer_0
    a = block.self_attention
    ln1 = F.layer_norm(tokens, (8,), block.ln_1.weight, block.ln_1.bias, 1e-6)
    q, k, v = (ln1 @ a.in_proj.weight.T + a.in_proj.bias).split(8, dim=-1)
    per_head = []
    for h in range(heads):
        part = slice(h * d, (h + 1) * d)
        weights = torch.softmax(q[..., part] @ k[..., part].transpose(1, 2) / math.sqrt(d), dim=-1)
        per_head.append(weights @ v[..., part])  # (n, tokens, d)
    attention = torch.cat(per_head, -1) @ a.out_proj.weight.T + a.out_proj.bias
    after_attention = tokens + attention
    ln2 = F.layer_norm(after_attention, (8,), block.ln_2.weight, block.ln_2.bias, 1e-6)
    hidden = F.gelu(ln2 @ block.mlp[0].weight.T + block.mlp[0].bias)
    mlp = hidden @ block.mlp[3].weight.T + block.mlp[3].bias
    final = F.layer_norm(after_attention + mlp, (8,), model.encoder.ln.weight, model.encoder.ln.bias, 1e-6)
    return {"heads": [mean_abs(o, (0, 1, 2)) for o in per_head], "hidden": mean_abs(hidden, (0, 1)),
            "stream": [mean_abs(ln1, (0, 1)), mean_abs(ln2, (0, 1)), mean_abs(final[:, 0], 0)],
            "changes": [(attention.flatten(1).norm(dim=1) / tokens.flatten(1).norm(dim=1)).mean(),
                        (mlp.flatten(1).norm(dim=1) / after_attention.flatten(1).norm(dim=1)).mean()],
            "logits": final[:, 0] @ model.heads.head.weight.T + model.heads.head.bias}


def test_vit_head_neuron_embedding_and_branch_scores_equal_a_hand_written_forward_pass():
    arch = Architecture.create("vit", None, TINY_VIT, (1, 8, 8), 3)
    torch.manual_seed(0)
    model = arch.build().eval()
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = by_hand(model, x)
        torch.testing.assert_close(expected["logits"], model(x))  # the hand-written pass is the network's
    got = channel_activations(model, arch, [x[:3], x[3:]])  # two batches: means over all five images
    heads, mlp = slot_index(arch, "encoder_layer_0.heads"), slot_index(arch, "encoder_layer_0.mlp")
    torch.testing.assert_close(got[heads][0], torch.stack(expected["heads"]).double())
    torch.testing.assert_close(got[mlp][0], expected["hidden"].double())
    assert len(got[0]) == 3  # the stream feeds in_proj (via ln_1), mlp.0 (via ln_2) and the classifier
    for mine, theirs in zip(got[0], expected["stream"]):
        torch.testing.assert_close(mine, theirs.double())
    changes = branch_changes(model, arch, [x])
    assert [changes[b] for b in sorted(changes)] == pytest.approx([float(c) for c in expected["changes"]], rel=1e-5)


def test_cnn_channel_scores_are_mean_absolute_activations_after_bn_and_relu():
    space = load_space("vgg11-fashionmnist")
    torch.manual_seed(0)
    model = space.base.build().eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, *space.input_shape)
    got = channel_activations(model, space.base, [x])
    with torch.no_grad():
        first = model.features[:4](x)  # conv, bn, relu, max-pool: what the second conv reads
        last = model.features(x)  # what the classifier reads (flattened)
    torch.testing.assert_close(got[0][0], mean_abs(first, (0, 2, 3)))
    last_slot = len(space.upper) - 1 - sum(s.name.startswith("classifier") for s in space.slots)
    torch.testing.assert_close(got[last_slot][0], mean_abs(last, (0, 2, 3)))


def test_planted_weak_heads_neurons_and_cnn_channels_are_dropped():
    space, provider = planted_vit_provider()
    proposal = propose("activation", space, Target(ratio=0.75), provider, {"images": 64})
    heads, mlp = slot_index(proposal.arch, "encoder_layer_0.heads"), slot_index(proposal.arch, "encoder_layer_1.mlp")
    assert 2 not in proposal.kept[heads] and len(proposal.kept[heads]) < 4
    assert not set(proposal.kept[mlp]) & set(range(64)) and proposal.arch.widths[mlp] <= 64
    assert count(proposal.arch).macs <= count(space.base).macs * 0.75 * 1.01
    base = provider.get(None)
    assert inherit(base.arch, base.architecture_state(), proposal.arch, proposal.kept)(
        torch.randn(2, *space.input_shape)).shape == (2, 10)
    planted = {0: [2, 5], 2: [1], 3: [0, 7]}
    provider = planted_tiny_provider(planted)
    widths = [w - len(planted.get(s, [])) for s, w in enumerate(provider.space.upper)]
    cnn = propose("activation", provider.space, Target(cost=count(provider.space.arch(widths)).macs), provider)
    for slot, weak in planted.items():
        assert not set(cnn.kept[slot]) & set(weak), slot


def test_branches_that_change_their_input_least_go_first():
    space, provider = planted_vit_provider()
    proposal = propose("activation", space, Target(ratio=0.5), provider, {"images": 64, "branches": 3})
    changes = proposal.provenance["branch_changes"]
    assert proposal.provenance["removed_blocks"] == sorted(changes, key=changes.get)[:3]
    for name in proposal.provenance["removed_blocks"]:
        assert proposal.arch.widths[slot_index(proposal.arch, name)] == 0
    assert abs(proposal.provenance["achieved_macs_ratio"] - 0.5) <= 0.01
    with pytest.raises(ProposerError, match="branches=9 asked, space 'vit-tiny-fashionmnist' .* has 8 removable"):
        propose("activation", space, Target(ratio=0.5), provider, {"branches": 9})


def test_branch_removal_asked_of_a_family_without_branches_is_one_line_and_exit_2(capsys, tmp_path):
    code = main(["propose", "activation", "vgg11-fashionmnist", "--ratio", "0.5", "--param", "branches=1",
                 "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "has 0 removable branches" in err


def test_activation_scores_an_embedding_width_with_prune_tied():
    space = load_space("vit-tiny-fashionmnist")
    torch.manual_seed(0)
    model = space.base.build()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    with torch.no_grad():  # every layer norm silences stream channels 0..15: what the consumers read is ~0
        for norm in norms:
            norm.weight[:16] *= 1e-3
            norm.bias[:16] = 0
    data = load_data("synthetic", space.input_shape, space.num_classes, val_size=64, subset=256)
    provider = StaticProvider(space, {None: base_model_from(model, space.base)}, data=data)
    proposal = propose("activation", space, Target(ratio=0.8), provider, {"images": 32, "prune_tied": True})
    assert 48 <= proposal.arch.widths[0] < 64 and not set(proposal.kept[0]) & set(range(16))
