"""Named architectures of a space, computed from the rules that defined them (not typed-in width lists).

Rules (the ``rule`` key of a preset in a space YAML):

``l1-norm`` — Li et al. 2017 as coded in the seed repository: convs with a kernel larger than 1 are
numbered from 1 in module order (the stem is 1; 1x1 downsample convs are not counted). Every numbered conv
that produces a non-tied slot keeps ``int(base * (1 - ratio))`` filters, where ``ratio`` is
``layer_ratios[id]`` if given, else ``stage_ratios[stage]``, and 0 for ids in ``skip``. Residual streams
are never pruned. E.g. ResNet-56-A: ``stage_ratios: [0.1, 0.1, 0.1], skip: [16, 20, 38, 54]``.

``keep-ratios`` — a kept fraction per slot, chosen by the slot's name: ``ratios`` maps glob patterns
(:func:`fnmatch.fnmatchcase` on slot names such as ``conv3`` or ``layer2.1.inner1``) to fractions in (0, 1];
the first matching pattern applies, a slot matching none keeps its base width. A matched slot keeps
``max(1, int(base * ratio))`` channels (the seed's truncation). Residual-tied slots are changed only when a
pattern names them. E.g. ThiNet-30 on ResNet-50 (Luo et al. 2017, seed_repo.md §2.2: bottleneck conv1/conv2
at 19/38/76/153, the stream and conv3 untouched): ``ratios: {"layer*.inner*": 0.3}``; ThiNet-Conv on VGG-16
(the first ten convs halved): ``ratios: {"conv[1-9]": 0.5, "conv10": 0.5}``.

``widths`` — an explicit width list (published architectures whose rule is not known, e.g. copied Caffe
models).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from prunenas.errors import SpaceError
from prunenas.registry import Registry

if TYPE_CHECKING:
    from prunenas.spaces import Space

PresetRule = Callable[["Space", Mapping[str, Any]], tuple[int, ...]]
PRESET_RULES: Registry[PresetRule] = Registry("preset rule")


def preset_widths(space: Space, spec: Mapping[str, Any]) -> tuple[int, ...]:
    """Widths of the preset described by ``spec`` (a mapping with a ``rule`` key)."""
    if not isinstance(spec, Mapping) or "rule" not in spec:
        raise SpaceError(f"a preset is a mapping with a 'rule' key ({', '.join(PRESET_RULES.names())})")
    return PRESET_RULES.get(spec["rule"])(space, spec)


def numbered_convs(space: Space) -> dict[int, int]:
    """Seed numbering: conv id (from 1, kernel > 1, module order) -> the slot it produces."""
    convs = [layer for layer in space.base.layers if layer.kind == "conv" and layer.kernel > 1]
    return {i: layer.output for i, layer in enumerate(convs, start=1) if layer.output is not None}


@PRESET_RULES.register("l1-norm")
def l1_norm_rule(space: Space, spec: Mapping[str, Any]) -> tuple[int, ...]:
    _only_keys(spec, {"rule", "stage_ratios", "layer_ratios", "skip", "description"})
    stage_ratios = list(spec.get("stage_ratios") or [])
    layer_ratios = {int(k): float(v) for k, v in (spec.get("layer_ratios") or {}).items()}
    skip = set(spec.get("skip") or [])
    widths = list(space.upper)
    for conv_id, slot in numbered_convs(space).items():
        info = space.slots[slot]
        if info.tied or conv_id in skip:
            continue
        ratio = layer_ratios.get(conv_id, stage_ratios[info.stage] if info.stage < len(stage_ratios) else 0.0)
        widths[slot] = max(1, int(info.base * (1 - ratio)))
    return tuple(widths)


@PRESET_RULES.register("keep-ratios")
def keep_ratios_rule(space: Space, spec: Mapping[str, Any]) -> tuple[int, ...]:
    _only_keys(spec, {"rule", "ratios", "description"})
    ratios = spec.get("ratios")
    if not isinstance(ratios, Mapping) or not ratios:
        raise SpaceError("preset rule 'keep-ratios' needs 'ratios': a mapping of slot-name patterns to fractions")
    for pattern, ratio in ratios.items():
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio <= 1:
            raise SpaceError(f"preset rule 'keep-ratios': ratio {ratio!r} of {pattern!r} must be in (0, 1]")
    unused = [p for p in ratios if not any(fnmatchcase(slot.name, str(p)) for slot in space.slots)]
    if unused:
        raise SpaceError(f"preset rule 'keep-ratios': pattern {unused[0]!r} matches no slot of {space.name!r}")
    widths = list(space.upper)
    for s, slot in enumerate(space.slots):
        ratio = next((float(r) for p, r in ratios.items() if fnmatchcase(slot.name, str(p))), None)
        if ratio is not None:
            widths[s] = max(1, int(slot.base * ratio))
    return tuple(widths)


@PRESET_RULES.register("widths")
def widths_rule(space: Space, spec: Mapping[str, Any]) -> tuple[int, ...]:
    _only_keys(spec, {"rule", "widths", "description"})
    return tuple(spec["widths"])


def _only_keys(spec: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(spec) - allowed)
    if unknown:
        raise SpaceError(f"preset rule {spec['rule']!r} has no key {unknown[0]!r}; keys: {', '.join(sorted(allowed))}")
