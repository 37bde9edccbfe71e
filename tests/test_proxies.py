"""Proxies against closed forms and hand computations; fidelity statistics against scipy and small known cases."""

import copy
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from prunenas.data import load_data
from prunenas.errors import UnknownNameError
from prunenas.proposers.basemodel import StaticProvider, base_model_from
from prunenas.proposers.proposal import Proposal, Target
from prunenas.proxies import PROXIES, ProxyContext, ProxyError, check_proxy, score, screen
from prunenas.proxies.adaptive_bn import l1_kept, recalibrate_batch_norm
from prunenas.proxies.fidelity import (
    MIN_PAIRS,
    check_phases,
    choose_promoted,
    fidelity_summary,
    kendall_rows,
    rank_correlation,
    spearman_rows,
    top1_regret,
)
from prunenas.proxies.short_train import SampledSplit, compressed_config
from prunenas.proxies.snip import snip_score
from prunenas.proxies.synflow import synflow_score
from prunenas.spaces import load_space
from tests.conftest import planted_tiny_provider

SMALL_PARAMS = {"adaptive-bn": {"batches": 2, "batch_size": 32}, "short-train": {"steps": 8},
                "snip": {"batch_size": 32}, "synflow": {}}


@pytest.fixture(scope="module")
def tiny_context():
    space = load_space("tiny-synthetic")
    torch.manual_seed(0)
    provider = StaticProvider(space, {None: base_model_from(space.base.build(), space.base)},
                              data=load_data("synthetic", space.input_shape, space.num_classes, val_size=64))
    return lambda seed=0: ProxyContext(space, provider=provider, seed=seed, device="cpu")


# -- every registered proxy ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PROXIES.names())
def test_every_proxy_scores_deterministically_with_its_cost(name, tiny_context):
    space = tiny_context().space
    arch = space.arch([6, 12, 4, 0])
    params = SMALL_PARAMS.get(name, {})
    first, again = (score(name, arch, tiny_context(), params) for _ in range(2))
    assert math.isfinite(first.score) and first.score == again.score
    assert first.seconds > 0 and first.images >= 0
    json.dumps(dict(first.details))  # plain values: rows go to JSON files


def test_image_counts_are_what_each_proxy_read(tiny_context):
    arch = tiny_context().space.base
    val = 64
    assert score("synflow", arch, tiny_context()).images == 0
    assert score("snip", arch, tiny_context(), {"batches": 2, "batch_size": 32}).images == 64
    assert score("adaptive-bn", arch, tiny_context(), {"batches": 3, "batch_size": 32}).images == 96 + val
    short = score("short-train", arch, tiny_context(), {"steps": 24})  # fast recipe: 8 epochs x 3 steps
    assert short.details["steps"] == 24 and short.images == 24 * 128 + val


# -- synflow and snip: closed forms -------------------------------------------------------------------------
def test_synflow_of_a_linear_network_is_depth_times_its_absolute_product():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False), nn.ReLU(),
                          nn.Linear(3, 2, bias=False))
    w1, w2, w3 = (m.weight.detach().double().abs().numpy() for m in model if isinstance(m, nn.Linear))
    flow = np.ones(2) @ w3 @ w2 @ w1 @ np.ones(5)  # ReLU is the identity on the all-positive signal
    assert synflow_score(model, (5,)) == pytest.approx(3 * flow, rel=1e-12)


def test_snip_is_the_summed_absolute_gradient_times_weight_computed_by_hand():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 4, bias=False), nn.ReLU(), nn.Linear(4, 3, bias=False)).double()
    x, y = torch.randn(6, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    w1, w2 = model[0].weight.detach().numpy(), model[2].weight.detach().numpy()
    xs, onehot = x.numpy(), np.eye(3)[y.numpy()]
    hidden = np.maximum(xs @ w1.T, 0)
    logits = hidden @ w2.T
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    dlogits = (probs - onehot) / len(xs)  # d mean cross-entropy / d logits
    g2 = dlogits.T @ hidden
    g1 = ((dlogits @ w2) * (hidden > 0)).T @ xs
    expected = np.abs(g1 * w1).sum() + np.abs(g2 * w2).sum()
    assert snip_score(model, [(x, y)]) == pytest.approx(expected, rel=1e-12)


# -- adaptive-bn --------------------------------------------------------------------------------------------
def test_recalibrated_statistics_are_the_average_batch_statistics_of_the_images_seen():
    space = load_space("tiny-synthetic")
    torch.manual_seed(3)
    model = space.base.build()
    data = load_data("synthetic", space.input_shape, space.num_classes, val_size=64)
    images = [x for x, _ in data.train.batches(50, drop_last=True)][:3]
    reference = _average_batch_statistics(copy.deepcopy(model), images)
    for module in model.modules():  # stale statistics must not survive
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.fill_(7.0)
            module.running_var.fill_(9.0)
    assert recalibrate_batch_norm(model, images) == 150
    assert not model.training
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            mean, var = reference[name]
            torch.testing.assert_close(module.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(module.running_var.double(), var, rtol=1e-5, atol=1e-6)
            assert module.momentum == 0.1  # restored


def _average_batch_statistics(model, images):
    """Per BN: the mean over batches of each batch's channel mean and unbiased variance of the BN's input,
    read by hooks during train-mode forward passes (where each BN normalises with its batch's statistics)."""
    seen = {}

    def hook(name):
        def record(_module, inputs):
            x = inputs[0].detach().double().transpose(0, 1).flatten(1)
            seen.setdefault(name, []).append((x.mean(1), x.var(1, unbiased=True)))
        return record

    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_pre_hook(hook(name))
    model.train()
    with torch.no_grad():
        for x in images:
            model(x)
    return {name: tuple(torch.stack(s).mean(0) for s in zip(*stats)) for name, stats in seen.items()}


def test_widths_without_kept_channels_keep_the_largest_l1_filters():
    weak = {0: [1, 5], 2: [0, 3]}  # nearly silent filters planted in the stem and the first block
    provider = planted_tiny_provider(weak)
    context = ProxyContext(provider.space, provider=provider, device="cpu")
    kept = l1_kept(provider.space.arch([6, 16, 6, 8]), context)
    assert kept[0] == (0, 2, 3, 4, 6, 7) and kept[2] == (1, 2, 4, 5, 6, 7)
    assert kept[1] == tuple(range(16)) and kept[3] == tuple(range(8))


def test_a_proposal_s_kept_channels_are_used_when_they_index_the_base_model(tiny_context):
    space = tiny_context().space
    arch = space.arch([6, 16, 8, 8])
    proposal = Proposal(arch, "l1-norm", {}, Target(ratio=0.9), kept={0: (0, 1, 2, 3, 4, 5)},
                        provenance={"base_model": "static"})
    other_base = replace(proposal, provenance={"base_model": "slimming-base"})  # indexes another network
    given, bare, foreign = (score("adaptive-bn", c, tiny_context(), SMALL_PARAMS["adaptive-bn"])
                            for c in (proposal, arch, other_base))
    assert given.details["channels"] == "given"
    assert bare.details["channels"] == foreign.details["channels"] == "l1-norm"


def test_full_width_adaptive_bn_and_the_base_model_accuracy(fashion_providers):
    """With the inherited running statistics kept (batches=0) the full-width network *is* the base model: equal
    accuracy. Recomputed on K batches, the statistics are a fresh estimate of the same population statistics
    the base model's moving averages track, so the accuracy is close, not equal: within 2 points on these
    1,000 validation images (measured: +0.3 to +0.5 points at K=20 x 128 over four seeds of the batch draw;
    within 1 point at K=5..31)."""
    provider = fashion_providers["vgg11-fashionmnist"]
    base = provider.get(None)
    context = ProxyContext(provider.space, provider=provider, device="cpu")
    kept_stats = score("adaptive-bn", provider.space.base, context, {"batches": 0})
    assert kept_stats.score == base.val_acc
    recomputed = score("adaptive-bn", provider.space.base, context, {"batches": 20})
    assert abs(recomputed.score - base.val_acc) <= 0.02


# -- short-train --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe, steps, epochs, per_epoch, milestones", [
    ("fast", 200, 8, 25, ()),
    ("fast", 5, 5, 1, ()),
    ("cifar-paper", 320, 160, 2, (80, 120)),
    ("cifar-paper", 80, 80, 1, (40, 60)),
    ("sfp-cifar", 100, 100, 1, (30, 60, 80)),  # int(60 * 100/200), int(120 * 100/200), int(160 * 100/200)
])
def test_the_recipe_is_compressed_to_the_steps(recipe, steps, epochs, per_epoch, milestones):
    config, steps_per_epoch = compressed_config(recipe, steps)
    assert (config.epochs, steps_per_epoch, config.milestones) == (epochs, per_epoch, milestones)


def test_each_short_epoch_draws_a_fresh_sample_without_repeats():
    data = load_data("synthetic", (3, 8, 8), 4, val_size=64)
    split = SampledSplit(data.train, 300)

    def labels(seed):
        batches = split.batches(100, shuffle=True, generator=torch.Generator().manual_seed(seed), drop_last=True)
        return torch.cat([y for _, y in batches])

    assert len(labels(0)) == 300 and torch.equal(labels(0), labels(0)) and not torch.equal(labels(0), labels(1))
    pixels = torch.cat([x for x, _ in split.batches(300, shuffle=True, generator=torch.Generator().manual_seed(0))])
    assert len(torch.unique(pixels.flatten(1), dim=0)) == 300


# -- validation ---------------------------------------------------------------------------------------------
def test_bad_requests_are_refused_before_any_work():
    vgg_without_bn = load_space("vgg16-imagenet")
    with pytest.raises(ProxyError, match=r"adaptive-bn.*recalibrates batch norms.*vgg16-imagenet.*has none; "
                                         r"choose one of: short-train, snip, synflow"):
        screen("adaptive-bn", [vgg_without_bn.base], ProxyContext(vgg_without_bn))  # no provider, no data needed
    with pytest.raises(UnknownNameError, match="unknown proxy 'eagle'; choose one of: adaptive-bn, short-train"):
        check_proxy("eagle", vgg_without_bn)
    with pytest.raises(ProxyError, match="proxy 'snip' has no parameter 'steps'; parameters: batches, batch_size"):
        check_proxy("snip", vgg_without_bn, {"steps": 3})
    with pytest.raises(ProxyError, match="parameter 'steps': 0 outside"):
        check_proxy("short-train", vgg_without_bn, {"steps": 0})


def test_screen_returns_plain_rows_in_order(tiny_context):
    space = tiny_context().space
    archs = [space.arch([8, 16, 8, 8]), space.arch([4, 8, 0, 4])]
    rows = screen("synflow", archs, tiny_context())
    assert [r["index"] for r in rows] == [0, 1] and [r["widths"] for r in rows] == [[8, 16, 8, 8], [4, 8, 0, 4]]
    assert [r["digest"] for r in rows] == [a.digest() for a in archs]
    assert rows[0]["macs"] > rows[1]["macs"] and rows[0]["proxy"] == "synflow"
    assert json.loads(json.dumps(rows)) == rows


# -- fidelity -----------------------------------------------------------------------------------------------
def test_rank_correlations_of_known_rankings():
    acc = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    for method in ("kendall", "spearman"):
        same, reversed_ = rank_correlation(acc, acc, method), rank_correlation(acc[::-1], acc, method)
        assert same["value"] == pytest.approx(1.0) and reversed_["value"] == pytest.approx(-1.0)
        assert (same["low"], same["high"]) == pytest.approx((1.0, 1.0))  # every resample ranks perfectly
    # failed proxy scores (None, NaN) rank last, tied with each other
    failed = rank_correlation([None, 1.0, 2.0, 3.0, math.nan], [0.1, 0.5, 0.6, 0.9, 0.2])["value"]
    assert failed == pytest.approx(rank_correlation([-1, 1.0, 2.0, 3.0, -1], [0.1, 0.5, 0.6, 0.9, 0.2])["value"])
    assert failed == pytest.approx(9 / math.sqrt(90))  # tau-b: 9 concordant pairs, 1 pair tied in the proxy


def test_rank_correlations_and_intervals_agree_with_scipy():
    from scipy import stats

    rng = np.random.default_rng(5)
    acc = rng.uniform(0.8, 0.9, 40)
    proxy = acc + rng.normal(0, 0.03, 40)
    for method, fn in (("kendall", stats.kendalltau), ("spearman", stats.spearmanr)):
        ours = rank_correlation(proxy, acc, method, resamples=2000, seed=1)
        assert ours["value"] == pytest.approx(fn(proxy, acc).statistic, abs=1e-12) and ours["n"] == 40
        theirs = stats.bootstrap((proxy, acc), lambda x, y, fn=fn: fn(x, y).statistic, paired=True,
                                 vectorized=False, n_resamples=2000, method="percentile", rng=np.random.default_rng(2))
        low, high = theirs.confidence_interval
        assert ours["low"] == pytest.approx(low, abs=0.03) and ours["high"] == pytest.approx(high, abs=0.03)


def test_the_vectorised_resample_statistics_equal_scipy_with_ties():
    from scipy import stats

    rng = np.random.default_rng(6)
    x, y = rng.integers(0, 4, (50, 9)).astype(float), rng.integers(0, 5, (50, 9)).astype(float)
    expected_tau = [stats.kendalltau(a, b).statistic for a, b in zip(x, y)]
    expected_rho = [stats.spearmanr(a, b).statistic for a, b in zip(x, y)]
    np.testing.assert_allclose(kendall_rows(x, y), expected_tau, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(spearman_rows(x, y), expected_rho, rtol=1e-12, atol=1e-12)


def test_no_interval_below_the_minimum_number_of_candidates():
    few = rank_correlation([1, 2, 3, 4][:MIN_PAIRS - 1], [0.1, 0.3, 0.2, 0.4][:MIN_PAIRS - 1])
    assert math.isfinite(few["value"]) and math.isnan(few["low"]) and math.isnan(few["high"])


def test_top1_regret():
    acc = [0.5, 0.9, 0.7]
    assert top1_regret([2 * a + 1 for a in acc], acc) == 0.0  # a perfect (monotone) proxy
    assert top1_regret([3, 1, 2], acc) == pytest.approx(0.4)
    assert top1_regret([3, 1, 2], [None, 0.9, 0.7]) == pytest.approx(0.2)  # untrained candidates drop out


def test_fidelity_summary_separates_the_audit_sample():
    rows = [{"score": s, "val_acc": a, "role": r} for s, a, r in
            [(9, 0.90, "promoted"), (8, 0.91, "promoted"), (1, 0.60, "audit"), (2, 0.70, "audit"),
             (3, 0.65, "audit"), (4, 0.80, "audit"), (5, 0.85, "audit")]]
    summary = fidelity_summary(rows)
    assert summary["audit"]["n"] == 5 and summary["trained"]["n"] == 7
    assert summary["audit"]["kendall"]["value"] == pytest.approx(0.8)  # 9 concordant, 1 discordant of 10 pairs
    assert summary["trained"]["top1_regret"] == pytest.approx(0.01)
    with pytest.raises(ProxyError, match="role 'screened' must be one of promoted, audit"):
        fidelity_summary([{"score": 1, "val_acc": 0.5, "role": "screened"}])


def test_promotion_takes_the_top_and_a_uniform_random_audit_of_the_rest():
    scores = [0.3, None, 0.9, 0.5, 0.9, 0.1, 0.7, 0.2]
    chosen = choose_promoted(scores, promote=3, audit=2, seed=4)
    assert chosen.promoted == (2, 4, 6)  # ties: lower index first
    assert chosen == choose_promoted(scores, 3, 2, seed=4)
    counts = np.zeros(len(scores))
    trials = 3000
    for seed in range(trials):
        audited = choose_promoted(scores, 3, 2, seed=seed).audited
        assert len(set(audited)) == 2 and not set(audited) & {2, 4, 6}
        counts[list(audited)] += 1
    expected = trials * 2 / 5  # each of the 5 others with probability 2/5
    sigma = math.sqrt(trials * 0.4 * 0.6)
    assert np.all(np.abs(counts[[0, 1, 3, 5, 7]] - expected) < 4 * sigma)


def test_promote_plus_audit_cannot_exceed_the_screened_candidates():
    with pytest.raises(ProxyError, match="promote 8 \\+ audit 5 = 13 exceeds screen 12"):
        check_phases(12, 8, 5)
    with pytest.raises(ProxyError, match="audit -1 must be a non-negative integer"):
        choose_promoted([1.0, 2.0], 1, -1)
    check_phases(12, 8, 4)
