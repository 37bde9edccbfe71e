"""Proposers: pruning methods used as architecture search (Liu et al., ICLR 2019).

A proposer scores the channels of a (trained or sparsity-trained) base network and turns the scores into
per-slot widths at a requested cost — an :class:`~prunenas.arch.Architecture` that is then trained from
scratch. Shared machinery:

* :mod:`~prunenas.proposers.registry` — ``register_proposer``, ``PROPOSERS``, ``propose``;
* :mod:`~prunenas.proposers.proposal` — :class:`Target` (what is asked) and :class:`Proposal` (what comes back);
* :mod:`~prunenas.proposers.basemodel` — the base-model cache and providers;
* :mod:`~prunenas.proposers.channels` — where each slot's channels live, weight inheritance;
* :mod:`~prunenas.proposers.select` — from channel scores to widths at a threshold, cost target or preset;
* :mod:`~prunenas.proposers.reconstruction` — sampled activations and per-layer reconstruction problems
  (ThiNet, channel pruning).

Methods: ``l1-norm``, ``latency-knapsack``, ``slimming``, ``sfp``, ``magnitude``, ``thinet``, ``regression``,
``sss``, ``activation`` (pruning a trained network), ``guided`` / ``transferred`` (from a source architecture),
``uniform`` / ``random`` (controls).

Only fully implemented methods are registered; ``prunenas proposers`` lists them with their parameters.
"""

from prunenas.proposers import (  # noqa: F401  (importing a method module registers it)
    activation,
    guided,
    l1_norm,
    latency_knapsack,
    magnitude,
    regression,
    sfp,
    slimming,
    sss,
    thinet,
    uniform,
)
from prunenas.proposers.proposal import Proposal, Target, load_proposal
from prunenas.proposers.registry import PROPOSERS, Param, ProposerError, propose, register_proposer

__all__ = ["PROPOSERS", "Param", "Proposal", "ProposerError", "Target", "load_proposal", "propose",
           "register_proposer"]
