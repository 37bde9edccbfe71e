"""Channel pruning by LASSO (He et al. 2017): the solver's optimality, support recovery, He et al.'s keep-count
search, real Fashion-MNIST activations vs random channels, presets, CLI."""

import random
import statistics
import subprocess
import sys

import pytest
import torch

from prunenas.proposers.contributions import ConsumerStats
from prunenas.proposers.reconstruction import least_squares_weights
from prunenas.proposers.regression import (
    lasso,
    lasso_path,
    lasso_removal_order,
    lasso_support,
    soft_threshold,
)

from .test_thinet import held_out_error, preset_proposal_with_grams, pruned_network_quality, real_grams

TRUE_SUPPORT = [1, 4, 6, 9]


def synthetic_regression(seed=0, samples=400, channels=12, noise=0.05):
    """y = X beta* + noise with beta* non-zero on TRUE_SUPPORT only (independent Gaussian columns)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, channels, generator=gen, dtype=torch.float64)
    beta = torch.zeros(channels, dtype=torch.float64)
    beta[TRUE_SUPPORT] = torch.tensor([1.0, -2.0, 1.5, 0.8], dtype=torch.float64)
    y = x @ beta + noise * torch.randn(samples, generator=gen, dtype=torch.float64)
    return x, y, beta


def test_soft_threshold_known_values():
    x = torch.tensor([0.5, -0.05, 0.01, -0.5, 0.0], dtype=torch.float64)
    assert soft_threshold(x, 0.1).tolist() == pytest.approx([0.4, 0.0, 0.0, -0.4, 0.0])


@pytest.mark.parametrize("seed", range(3))
def test_lasso_solution_satisfies_the_optimality_conditions(seed):
    """KKT: (b - G beta)_c = lambda sign(beta_c) where beta_c != 0, |(b - G beta)_c| <= lambda elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(80, 10, generator=gen, dtype=torch.float64) @ torch.randn(10, 10, generator=gen,
                                                                           dtype=torch.float64)
    y = torch.randn(80, generator=gen, dtype=torch.float64)
    gram, b = x.T @ x, x.T @ y
    lam = 0.3 * float(b.abs().max())
    beta = lasso(gram, b, lam)
    gradient = b - gram @ beta
    active = beta != 0
    assert 0 < int(active.sum()) < 10
    assert torch.allclose(gradient[active], lam * torch.sign(beta[active]), rtol=1e-6, atol=1e-6 * lam)
    assert bool((gradient[~active].abs() <= lam * (1 + 1e-6)).all())


def test_lasso_recovers_the_true_support_of_a_synthetic_regression():
    x, y, beta = synthetic_regression()
    gram, b = x.T @ x, x.T @ y
    lam = 0.1 * len(y)  # far above the noise correlations (~0.05 sqrt(n)), far below the signal (~n)
    found = lasso(gram, b, lam)
    assert (found != 0).nonzero().flatten().tolist() == TRUE_SUPPORT
    assert torch.allclose(found[TRUE_SUPPORT], beta[TRUE_SUPPORT], atol=0.15)  # shrunk towards 0 by lam / n
    path = lasso_path(gram, b, torch.tensor([lam, 2 * float(b.abs().max())]))
    assert torch.equal(path[:, 0], found) and not path[:, 1].any()  # lambda >= max|b|: everything 0


def test_keep_count_search_and_path_order_find_the_true_channels():
    """Contributions z_c = beta*_c x_c (+ weak distractors): the layer's output depends on TRUE_SUPPORT only."""
    x, _, beta = synthetic_regression(noise=0.0)
    z = x * beta + 0.02 * x * (beta == 0)
    gram = z.T @ z
    support, lam = lasso_support(gram, 4)
    assert support == TRUE_SUPPORT and lam > 0
    assert sorted(lasso_removal_order(gram)[-4:]) == TRUE_SUPPORT
    assert len(lasso_support(gram, 7)[0]) == 7


def test_lasso_keeps_the_exact_count_on_real_activations(fashion_providers):
    fit, _ = real_grams(fashion_providers["vgg11-fashionmnist"])
    for gram in list(fit.values())[::3]:
        keep = len(gram) // 3
        support, lam = lasso_support(gram, keep)
        assert len(support) == keep
        assert int((lasso(gram, gram.sum(dim=1), lam) != 0).sum()) <= keep


@pytest.mark.parametrize("method", ["lasso", "path"])
def test_lasso_reconstructs_real_activations_better_than_random_channels(fashion_providers, method):
    fit, held = real_grams(fashion_providers["vgg11-fashionmnist"])
    rng = random.Random(0)
    ratios = []
    for slot, gram in fit.items():
        keep = len(gram) // 2
        kept = lasso_support(gram, keep)[0] if method == "lasso" else lasso_removal_order(gram)[len(gram) - keep:]
        chosen = held_out_error(gram, held[slot], kept, rescale=True)
        randoms = [held_out_error(gram, held[slot], rng.sample(range(len(gram)), keep), True) for _ in range(20)]
        assert chosen < min(statistics.median(randoms), statistics.mean(randoms)), (slot, chosen, randoms)
        ratios.append(chosen / statistics.mean(randoms))
    assert statistics.mean(ratios) < 0.7, ratios


def test_least_squares_weights_absorb_a_duplicated_input_channel():
    """Channel 2 reads the same input as channel 0: keeping {0, 1}, the exact reconstruction is W0 + W2, W1."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 3, 2, generator=gen, dtype=torch.float64)  # (outputs, channels, positions)
    patches = torch.randn(50, 3, 2, generator=gen, dtype=torch.float64)
    patches[:, 2] = patches[:, 0]
    term = ConsumerStats(weight)
    term.add(patches)
    solved = least_squares_weights(term, [0, 1], weight)
    assert torch.allclose(solved, torch.stack([weight[:, 0] + weight[:, 2], weight[:, 1]], dim=1), atol=1e-6)


def test_least_squares_weights_bring_the_pruned_network_back_towards_the_base(fashion_providers):
    """He et al.'s second step on real activations (one shot, from the base network's statistics)."""
    provider = fashion_providers["vgg11-fashionmnist"]
    inherited = pruned_network_quality(provider, "regression", None)
    reconstructed = pruned_network_quality(provider, "regression", "weights")
    # torch 2.14 here: relative logit error 0.86 -> 0.50, accuracy 19% -> 76% (the error was halved with older torch)
    assert reconstructed[1] < 0.7 * inherited[1] and reconstructed[0] > inherited[0] + 0.1, (inherited, reconstructed)


def test_regression_preset_keeps_the_lasso_support_at_each_width():
    space, proposal, slots, grams = preset_proposal_with_grams("regression", "A")
    changed = [s for s in slots if proposal.arch.widths[s] < space.upper[s]]
    assert changed
    for slot in changed[::4]:
        assert proposal.kept[slot] == tuple(lasso_support(grams[slot], proposal.arch.widths[slot])[0]), slot


def test_regression_cli(tmp_path):
    cmd = [sys.executable, "-m", "prunenas", "propose", "regression", "tiny-synthetic", "--ratio", "0.5",
           "--base-epochs", "1", "--cache-dir", str(tmp_path), "--param", "images=64", "--threads", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "regression on tiny-synthetic" in proc.stdout
