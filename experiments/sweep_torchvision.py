"""Sweep every torchvision classification model through the traced family (issue 18).

For each model (1000 classes, input 3xSxS at the crop size S of its default weights' transforms — 224 for
most, 240-600 for EfficientNets, 299 for Inception, 384 for SWAG RegNet — so that the card values apply):
does it trace, how many slots, which share of its conv and
linear MACs the search can change, whether MACs and params equal the model card (the weights enum's
``meta['_ops']`` in GMACs at its printed precision and ``meta['num_params']``), and why the rest is frozen or
the model is refused. Prints a markdown table (the one in experiments/README.md)::

    python experiments/sweep_torchvision.py [NAME ...] [--match TEXT ...] > sweep.md

``--match regnet --match resnext`` sweeps the models whose names contain any of the texts (with the NAMEs).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections import Counter

from torchvision import models

from prunenas.cost import count
from prunenas.errors import PrunenasError
from prunenas.references import coverage
from prunenas.spaces import traced_space


def card(name: str) -> tuple[float | None, int | None, int]:
    """GMACs and params printed on the model card of the model's default weights, and its input size."""
    try:
        weights = models.get_model_weights(name).DEFAULT
    except (ValueError, AttributeError):
        return None, None, 224
    size = weights.transforms().crop_size[0]
    return weights.meta.get("_ops"), weights.meta.get("num_params"), size


def frozen_summary(frozen: list[tuple[str, int, str]]) -> str:
    """The most common reasons for frozen channels, the model's output left out."""
    reasons = Counter(reason.split(": ", 1)[-1] for _, _, reason in frozen if "the model's output" not in reason)
    return "; ".join(f"{why} ({n})" for why, n in reasons.most_common(2))


def sweep_one(name: str) -> str:
    started = time.perf_counter()
    gmacs, params, size = card(name)
    try:
        space = traced_space(f"torchvision:{name}", (3, size, size))
    except PrunenasError as err:
        reason = str(err).split(": ", 1)[-1].replace("|", "/")
        return f"| {name} | no | {size} | | | | {reason} |"
    cost, cov = count(space.base), coverage(space.base)
    macs_ok = "—" if gmacs is None else ("yes" if round(cost.macs / 1e9, 3) == gmacs else
                                         f"no ({cost.macs / 1e9:.3f} vs {gmacs})")
    params_ok = "—" if params is None else ("yes" if cost.params == params else f"no ({cost.params} vs {params})")
    seconds = time.perf_counter() - started
    return (f"| {name} | yes ({seconds:.0f} s) | {size} | {len(space.base.widths)} | {cov.share:.1%} | "
            f"{macs_ok} / {params_ok} | {frozen_summary(list(cov.frozen)).replace('|', '/')} |")


def selected(names: list[str], matches: list[str]) -> list[str]:
    """The named models and those whose names contain a ``--match`` text, in torchvision's order; all without
    either."""
    known = models.list_models(module=models)
    if not names and not matches:
        return known
    return [n for n in known if n in names or any(text in n for text in matches)]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help="torchvision model names (default: every one)")
    parser.add_argument("--match", action="append", default=[], metavar="TEXT",
                        help="also every model whose name contains TEXT (repeatable)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    print("| model | traces | input | slots | searchable MACs | card MACs / params equal "
          "| frozen channels or refusal |")
    print("|---|---|---|---|---|---|---|")
    for name in selected(args.names, args.match):
        print(sweep_one(name), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
