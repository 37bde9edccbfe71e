"""Proxies: cheap scores of a candidate architecture, with their cost, for multi-fidelity search.

A search screens many candidates by proxy, trains the best and a random audit sample fully, and reports how
faithfully the proxy ranked them. Shared machinery:

* :mod:`~prunenas.proxies.registry` — ``register_proxy``, ``PROXIES``, :class:`ProxyContext`, ``score``, ``screen``;
* :mod:`~prunenas.proxies.fidelity` — Kendall's tau / Spearman's rho with bootstrap intervals, top-1 regret,
  and the choice of promoted and audit candidates;
* :mod:`~prunenas.proxies.zero_cost` — the seeded initial network of the proxies scored at initialisation.

Proxies: ``adaptive-bn`` (inherited weights, BN statistics recomputed, validation accuracy; EagleEye),
``short-train`` (the evaluation recipe compressed to a few hundred steps), ``synflow`` and ``snip`` (at
initialisation). Each returns a score where higher is better.
"""

# importing the built-in proxies registers them
from prunenas.proxies import adaptive_bn, short_train, snip, synflow  # noqa: E402, F401, I001
from prunenas.proxies.registry import (
    PROXIES,
    ProxyContext,
    ProxyError,
    ProxyScore,
    check_proxy,
    register_proxy,
    score,
    screen,
)

__all__ = ["PROXIES", "ProxyContext", "ProxyError", "ProxyScore", "check_proxy", "register_proxy", "score", "screen"]
