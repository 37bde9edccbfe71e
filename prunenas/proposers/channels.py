"""Where each slot's channels live in a network's tensors, weight inheritance, and zeroing dropped channels.

Everything here is derived from :attr:`Architecture.layers <prunenas.arch.Architecture.layers>`, so it works
for every family without family-specific code. The only exceptions are buffers whose *values* index
channels (the option-A shortcut's channel map); families handle those through the hooks
:meth:`Family.remap_buffers <prunenas.families.base.Family.remap_buffers>` and
:meth:`Family.zero_buffers <prunenas.families.base.Family.zero_buffers>`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from prunenas.arch import Architecture
from prunenas.errors import ArchitectureError
from prunenas.families.base import INPUT, Layer, Slot
from prunenas.masks import has_masks, reapply_masks


@dataclass(frozen=True)
class ChannelRef:
    """Where a slot's channels sit in one layer.

    Channel ``c`` of the slot occupies indices ``offset + c * repeat + r`` (``r < repeat``) along ``dim`` of
    every tensor of module ``layer`` that has that dimension: producers (``dim`` 0) their weight and bias,
    norms (``dim`` 0) the BN weight, bias and running statistics, consumers (``dim`` 1) the weight only.

    Attributes:
        layer: module path (a :class:`~prunenas.families.base.Layer` name).
        role: ``"produce"`` (conv/linear output, depthwise convs included), ``"norm"`` (a batch norm over
            the slot, after its producer or on the consumer side) or ``"consume"`` (conv/linear input).
        dim: tensor dimension of the channels.
        offset: index of the slot's first channel along ``dim`` (its place in a concatenated input).
        repeat: consecutive indices per channel (``in_repeat`` of a linear layer after a flatten).
        groups: the consumer is a grouped conv with a fixed group count: the slot's channels are ``groups``
            equal groups, group ``i`` read by the ``i``-th block of output rows at its index *within the
            group* along ``dim`` (:meth:`positions` does not apply; see :func:`inherit_state`).
    """

    layer: str
    role: Literal["produce", "norm", "consume"]
    dim: int
    offset: int
    repeat: int = 1
    groups: int = 1

    def positions(self, channels: Sequence[int]) -> Tensor:
        """Indices along ``dim`` of the given channels of the slot (``repeat`` per channel, in order)."""
        c = torch.as_tensor(list(channels), dtype=torch.long)
        return (self.offset + c[:, None] * self.repeat + torch.arange(self.repeat)).reshape(-1)


def channel_refs(arch: Architecture) -> dict[int, list[ChannelRef]]:
    """Every place where each slot's channels appear in ``arch.build()``, by slot (all slots are keys)."""
    refs: dict[int, list[ChannelRef]] = {s: [] for s in range(len(arch.widths))}
    for layer in arch.layers:
        if layer.output is not None:
            refs[layer.output] += producer_refs(layer)
        if layer.depthwise or reads_own_groups(arch, layer):  # weight (C, C / groups, k, k): input = output
            continue
        if layer.kind == "conv" and layer.groups > 1:
            slot = _grouped_input(arch, layer)
            if slot != INPUT:
                refs[slot].append(ChannelRef(layer.name, "consume", 1, 0, groups=layer.groups))
            continue
        role: Literal["norm", "consume"] = "norm" if layer.is_norm else "consume"
        dim, repeat = (0, 1) if layer.is_norm else (1, layer.in_repeat)
        offset = 0
        for slot in layer.inputs:
            if slot != INPUT:
                refs[slot].append(ChannelRef(layer.name, role, dim, offset * repeat, repeat))
            offset += arch.input_shape[0] if slot == INPUT else arch.widths[slot]
    return refs


def reads_own_groups(arch: Architecture, layer: Layer) -> bool:
    """A grouped conv with a fixed group width: it reads the slot it produces, group by group (like a depthwise
    conv channel by channel), so its weight's input dimension never changes."""
    return layer.kind == "conv" and layer.groups > 1 and layer.inputs == (layer.output,) and \
        arch.slots[layer.output].group_width > 1


def _grouped_input(arch: Architecture, layer: Layer) -> int:
    """The slot a grouped conv with a fixed group count reads (its input's groups equal its own)."""
    slot = layer.inputs[0]
    if slot == INPUT:
        return INPUT
    if len(layer.inputs) != 1 or arch.slots[slot].group_count != layer.groups:
        raise ArchitectureError(f"layer {layer.name!r} is a grouped convolution (groups={layer.groups}) reading "
                                f"slots {list(layer.inputs)} that are not {layer.groups} equal groups")
    return slot


def producer_refs(layer: Layer) -> list[ChannelRef]:
    """Where a producer's output slot sits in its tensors: one ref per stacked part (a packed query/key/value
    projection has three), each channel ``out_repeat`` consecutive rows (a head's ``head_dim``)."""
    width = layer.slot_channels
    return [ChannelRef(layer.name, "produce", layer.output_dim, part * width * layer.out_repeat, layer.out_repeat)
            for part in range(layer.out_parts)]


def removable_blocks(arch: Architecture) -> dict[int, list[int]]:
    """Removable block id -> its slots (in slot order)."""
    blocks: dict[int, list[int]] = {}
    for s, slot in enumerate(arch.slots):
        if slot.block is not None:
            blocks.setdefault(slot.block, []).append(s)
    return blocks


def without_blocks(arch: Architecture, blocks: Mapping[int, list[int]], removed: set[int]) -> Architecture:
    """``arch`` with the slots of the ``removed`` blocks at width 0."""
    gone = {s for b in removed for s in blocks[b]}
    return arch.with_widths([0 if s in gone else w for s, w in enumerate(arch.widths)])


def branch_names(arch: Architecture) -> dict[int, str]:
    """Removable block id -> a readable name: its slots' common parent (``layer1.2``), or the slot's own name
    where blocks share a parent (a transformer block's two branches: ``encoder_layer_0.heads`` / ``.mlp``)."""
    slots = removable_blocks(arch)
    parents = {b: arch.slots[ids[0]].name.rsplit(".", 1)[0] for b, ids in slots.items()}
    shared = {p for p in parents.values() if list(parents.values()).count(p) > 1}
    return {b: arch.slots[slots[b][0]].name if parents[b] in shared else parents[b] for b in slots}


def branch_layers(arch: Architecture) -> dict[int, list[Layer]]:
    """Removable block id -> the layers of its branch, in module order: those that disappear when it is removed
    (the first reads the block's input from the residual stream, the last writes the branch's output into it)."""
    blocks = removable_blocks(arch)
    out = {}
    for block in blocks:
        remaining = {layer.name for layer in without_blocks(arch, blocks, {block}).layers}
        out[block] = [layer for layer in arch.layers if layer.name not in remaining]
    return out


def inherit_state(
    base_arch: Architecture,
    base_state: Mapping[str, Tensor],
    arch: Architecture,
    kept: Mapping[int, Sequence[int]],
) -> dict[str, Tensor]:
    """The state dict of ``arch.build()`` with every tensor sliced from the base network's state.

    Args:
        base_arch: the architecture of ``base_state`` (any widths, not necessarily the unpruned ones).
        base_state: ``state_dict()`` of a network of ``base_arch``.
        arch: the pruned architecture (same family, options, input shape and classes).
        kept: per slot, the sorted channel indices of ``base_arch`` that ``arch`` keeps
            (``len(kept[s]) == arch.widths[s]``). A slot not given keeps all its channels, or none where
            ``arch`` removes its block.

    Returns:
        New tensors (never views of ``base_state``), with exactly the keys and shapes of
        ``arch.build().state_dict()``. Tensors no slot touches (``num_batches_tracked``, classifier bias)
        are copied; modules of removed blocks are left out.

    Raises:
        ArchitectureError: incompatible architectures, a wrong kept list, or a state that does not belong to
            ``base_arch``.
    """
    _check_compatible(base_arch, arch)
    full = _full_kept(base_arch, arch, kept)
    base_shapes, shapes = _state_shapes(base_arch), _state_shapes(arch)
    drops, grouped = _dropped_positions(base_arch, full, base_shapes)
    state: dict[str, Tensor] = {}
    for key in shapes:
        if key not in base_state:
            raise ArchitectureError(f"base_state has no tensor {key!r}: is it the state of base_arch's network?")
        tensor = base_state[key]
        if key in base_shapes and tuple(tensor.shape) != base_shapes[key]:
            raise ArchitectureError(f"base_state[{key!r}] has shape {list(tensor.shape)}, base_arch's network "
                                    f"has {list(base_shapes[key])}")
        out = tensor.detach().clone()
        for dim in (0, 1):
            if (key, dim) in drops:
                keep = torch.ones(out.shape[dim], dtype=torch.bool)
                keep[torch.cat(drops[key, dim])] = False
                out = out.index_select(dim, keep.nonzero().flatten().to(out.device))
        if key in grouped:
            slot, groups = grouped[key]
            out = _per_group_inputs(out, full[slot], base_arch.widths[slot], groups)
        state[key] = out
    arch.family_obj.remap_buffers(base_arch, arch, full, state)
    for key, shape in shapes.items():
        if tuple(state[key].shape) != shape:
            raise ArchitectureError(f"inherited {key!r} has shape {list(state[key].shape)}, the pruned network "
                                    f"expects {list(shape)}")
    return state


def _dropped_positions(base_arch: Architecture, full: Mapping[int, Sequence[int]],
                       base_shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict, dict[str, tuple[int, int]]]:
    """(tensor key, dim) -> positions of the dropped channels along dim; and the weights of grouped convs with a
    fixed group count -> (the slot they read, groups), sliced per group instead."""
    keys_of: dict[str, list[str]] = {}
    for key in base_shapes:
        keys_of.setdefault(key.rpartition(".")[0], []).append(key)
    drops: dict[tuple[str, int], list[Tensor]] = {}
    grouped: dict[str, tuple[int, int]] = {}
    for slot, refs in channel_refs(base_arch).items():
        dropped = sorted(set(range(base_arch.widths[slot])) - set(full[slot]))
        for ref in refs if dropped else ():
            for key in keys_of.get(ref.layer, ()):
                if len(base_shapes[key]) > ref.dim and ref.groups > 1:
                    grouped[key] = slot, ref.groups
                elif len(base_shapes[key]) > ref.dim:
                    drops.setdefault((key, ref.dim), []).append(ref.positions(dropped))
    return drops, grouped


def _per_group_inputs(weight: Tensor, kept: Sequence[int], width: int, groups: int) -> Tensor:
    """A grouped conv's weight (rows already sliced, ``groups`` equal blocks) with every block keeping the
    kept input channels of its own group: along dim 1 a group's channels sit at their index within the group."""
    size = width // groups
    local = torch.tensor([[c - g * size for c in kept if c // size == g] for g in range(groups)], dtype=torch.long)
    blocks = weight.reshape(groups, weight.shape[0] // groups, *weight.shape[1:])
    index = local.view(groups, 1, -1, *[1] * (weight.ndim - 2)).expand(-1, blocks.shape[1], -1, *weight.shape[2:])
    return blocks.gather(2, index.to(weight.device)).reshape(weight.shape[0], local.shape[1], *weight.shape[2:])


def inherit(
    base_arch: Architecture,
    base_state: Mapping[str, Tensor],
    arch: Architecture,
    kept: Mapping[int, Sequence[int]],
) -> nn.Module:
    """``arch.build()`` with the weights inherited from the base network (see :func:`inherit_state`).

    Loading is strict and copies into the freshly built parameters, which keep the dtype and device that
    ``arch.build()`` gives them. Masks of an unstructured ``arch`` are applied again after loading.
    """
    model = arch.build()
    model.load_state_dict(inherit_state(base_arch, base_state, arch, kept), strict=True)
    if has_masks(model):
        reapply_masks(model)
    return model


@torch.no_grad()
def zero_channels(model: nn.Module, arch: Architecture, dropped: Mapping[int, Sequence[int]]) -> None:
    """Make the ``dropped[s]`` channels of every slot ``s`` of ``model`` (a network of ``arch``) contribute nothing.

    In place: the dropped channels' producer filters (weight rows and bias) are zeroed, and the weight and
    bias of every batch norm over them — the post-activation BN after a producer and the pre-activation BNs
    of its consumers alike. In eval mode a dropped channel is then exactly 0 wherever it is read (a zero
    filter gives 0; a BN with weight = bias = 0 gives 0 whatever its running statistics; ReLU(0) = 0), so
    the network computes what the pruned network with weights from :func:`inherit` computes.

    A removable block whose slots are all dropped is *removed* in the pruned network: its branch is gone and
    the block is the identity. Zeroing its channels alone does not give that, because the branch's last
    batch norm normalises the residual stream: on its all-zero input it outputs ``bias - weight * mean /
    std`` on the *kept* stream channels. So every parameter (weights and biases, all channels) of every
    module the family does not build for a removed block is zeroed too; these modules belong to that block's
    branch only, so nothing else changes. The branch then adds exactly 0 to the stream, and the block
    computes ``x`` (pre-activation and inverted-residual blocks) or ``ReLU(x)`` (post-activation ResNets),
    which equals ``x`` because the block input is itself the output of a ReLU.

    Parameter-free paths that could carry values into dropped channels (the option-A zero-pad shortcut) are
    cut by the family's :meth:`~prunenas.families.base.Family.zero_buffers` hook.

    Channels under a layer norm (a transformer's residual stream) cannot be dropped this way: the norm's mean
    and variance run over every channel, zeros included, so zeroing does not compute what the pruned network
    computes. Such requests raise :class:`~prunenas.errors.ArchitectureError`. Heads and MLP neurons can: a head
    with zero query, key and value rows attends uniformly to zero values and adds nothing.
    """
    full = _full_dropped(arch, dropped)
    _check_zeroable(arch, full)
    for slot, refs in channel_refs(arch).items():
        for ref in refs if full.get(slot) else ():
            if ref.role != "consume":
                _fill(model.get_submodule(ref.layer), ref.dim, ref.positions(full[slot]))
    for name in _removed_layers(arch, full):
        _fill(model.get_submodule(name), 0, None)
    arch.family_obj.zero_buffers(arch, model, full)


def _check_zeroable(arch: Architecture, dropped: Mapping[int, Sequence[int]]) -> None:
    for layer in arch.layers:
        if layer.kind == "ln" and any(dropped.get(s) for s in layer.inputs):
            slot = next(s for s in layer.inputs if dropped.get(s))
            raise ArchitectureError(f"slot {slot} ({arch.slots[slot].name!r}) is normalised by layer norm "
                                    f"{layer.name!r}: zeroing its channels does not emulate removing them")


def _fill(module: nn.Module, dim: int, positions: Tensor | None) -> None:
    """Zero ``positions`` along ``dim`` (``None``: everything) of the module's weight and bias."""
    for name in ("weight", "bias"):
        param = getattr(module, name, None)
        if isinstance(param, Tensor) and param.ndim > dim:
            if positions is None:
                param.zero_()
            else:
                param.index_fill_(dim, positions.to(param.device), 0.0)


def _removed_layers(arch: Architecture, dropped: Mapping[int, Sequence[int]]) -> list[str]:
    """Layers of ``arch`` that the family does not build once every fully dropped removable block is removed."""
    blocks: dict[int, list[int]] = {}
    for s, slot in enumerate(arch.slots):
        if slot.block is not None:
            blocks.setdefault(slot.block, []).append(s)
    gone = [s for slots in blocks.values() if all(len(dropped.get(s, ())) == arch.widths[s] for s in slots)
            for s in slots]
    if not any(arch.widths[s] for s in gone):
        return []
    widths = [0 if s in gone else w for s, w in enumerate(arch.widths)]
    remaining = {layer.name for layer in arch.with_widths(widths).layers}
    return [layer.name for layer in arch.layers if layer.name not in remaining]


def _check_compatible(base_arch: Architecture, arch: Architecture) -> None:
    for what in ("family", "options", "input_shape", "num_classes"):
        ours, theirs = getattr(base_arch, what), getattr(arch, what)
        if ours != theirs:
            ours, theirs = (dict(ours), dict(theirs)) if what == "options" else (ours, theirs)
            raise ArchitectureError(f"cannot inherit weights: base {what} {ours!r} differs from the pruned "
                                    f"architecture's {theirs!r}")


def _full_kept(base_arch: Architecture, arch: Architecture, kept: Mapping[int, Sequence[int]]) -> dict[int, tuple]:
    """``kept`` checked and completed: every slot -> sorted channel indices of ``base_arch``."""
    n = len(arch.widths)
    for slot in kept:
        if not isinstance(slot, int) or not 0 <= slot < n:
            raise ArchitectureError(f"kept names slot {slot!r}; the architecture has slots 0..{n - 1}")
    full: dict[int, tuple] = {}
    for s, (base, width) in enumerate(zip(base_arch.widths, arch.widths)):
        where = f"slot {s} ({arch.slots[s].name!r})"
        if s not in kept:
            if width not in (0, base):
                raise ArchitectureError(f"{where}: its width changes from {base} to {width}, but kept does not "
                                        "say which channels stay")
            full[s] = tuple(range(width))
            continue
        channels = tuple(int(c) for c in kept[s])
        if len(channels) != width:
            raise ArchitectureError(f"{where}: {len(channels)} kept channels for width {width}")
        bad = [c for c in channels if not 0 <= c < base]
        if bad:
            raise ArchitectureError(f"{where}: kept channel {bad[0]} out of range 0..{base - 1}")
        if any(b <= a for a, b in zip(channels, channels[1:])):
            raise ArchitectureError(f"{where}: kept channels must be sorted ascending without repeats")
        _check_groups_kept(arch.slots[s], base, channels, where)
        full[s] = channels
    return full


def _check_groups_kept(slot: Slot, base: int, channels: Sequence[int], where: str) -> None:
    """Grouped convs read the slot group by group: whole groups kept (fixed group width), or as many channels
    of every group (fixed group count)."""
    counts = [len(set(group) & set(channels)) for group in slot.groups_of(base)]
    if slot.group_width > 1 and any(0 < n < slot.group_width for n in counts):
        raise ArchitectureError(f"{where}: kept channels split a group of {slot.group_width}; grouped convs with "
                                "a fixed group width keep or drop whole groups")
    if slot.group_count > 1 and len(set(counts)) > 1:
        raise ArchitectureError(f"{where}: kept channels per group {counts} differ; grouped convs with a fixed "
                                "group count keep as many channels of every group")


def _full_dropped(arch: Architecture, dropped: Mapping[int, Sequence[int]]) -> dict[int, list[int]]:
    """``dropped`` checked: slot -> sorted distinct channel indices."""
    n, full = len(arch.widths), {}
    for slot, channels in dropped.items():
        if not isinstance(slot, int) or not 0 <= slot < n:
            raise ArchitectureError(f"dropped names slot {slot!r}; the architecture has slots 0..{n - 1}")
        chosen = sorted({int(c) for c in channels})
        bad = [c for c in chosen if not 0 <= c < arch.widths[slot]]
        if bad:
            raise ArchitectureError(f"slot {slot} ({arch.slots[slot].name!r}): dropped channel {bad[0]} out of "
                                    f"range 0..{arch.widths[slot] - 1}")
        full[slot] = chosen
    return full


def _state_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """Keys and shapes of ``arch``'s state dict, from a network built on the meta device (no memory, no RNG)."""
    with torch.device("meta"):
        model = arch.family_obj.build(arch)
    return {key: tuple(t.shape) for key, t in model.state_dict().items()}
