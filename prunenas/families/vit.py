"""Vision Transformers (Dosovitskiy et al., ICLR 2021) in torchvision's ``VisionTransformer`` layout, and DeiT.

A patch embedding (a ``patch`` x ``patch`` conv of stride ``patch``), a class token and learnt position
embeddings, ``depth`` pre-norm encoder blocks (LayerNorm, multi-head self-attention, residual add; LayerNorm,
MLP with GELU, residual add), a final LayerNorm and a linear head on the class token.

Slots: the residual stream (``embed_dim`` features, tied across the patch embedding, the tokens and every
block), and per block the **number of heads** (``unit="heads"``; the head dimension ``embed_dim // heads`` of
the base network stays fixed) and the **MLP hidden width**. Each block has two independently removable
branches: attention (0 heads) and MLP (0 width) — a removed branch is skipped, its LayerNorm included, so
depth changes through removals. The query/key/value projection is one linear layer whose rows hold the
queries, keys and values of every head (torchvision's packed ``in_proj``), so a head's channels are
``head_dim`` rows in each of its three parts.

Module paths and tensor shapes are torchvision's, so the state dict of ``torchvision.models.vit_b_16`` loads
unchanged (strict) into the base network of options ``{depth: 12, embed_dim: 768, heads: 12, mlp_dim: 3072,
patch: 16}`` and computes the same outputs. Three parameters are stored differently, because every layer
here is a module with a ``weight`` (what the counter, the channel scores and weight inheritance slice):
``self_attention.in_proj_weight/_bias`` live in ``self_attention.in_proj``, the class token and the position
embedding are ``(positions, embed_dim)`` tables in modules ``class_token`` and ``encoder.pos_embedding``. A
load hook renames and reshapes torchvision's keys.

Initialisation: torchvision's (patch embedding truncated-normal with std ``sqrt(1 / fan_in)``, class token 0,
position embedding N(0, 0.02), q/k/v and MLP weights Xavier-uniform), except the head, which keeps PyTorch's
default instead of zeros (torchvision zeroes it for fine-tuning; a zero head also gives every input the same
output, which would blind the channel tests). DeiT's truncated-normal(0.02) everywhere learnt much slower on the
small Fashion-MNIST ViT: 34% vs 52% validation accuracy after 2 short epochs (10k images, same recipe).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from prunenas.errors import ArchitectureError
from prunenas.families.base import INPUT, Family, Layer, Option, Slot
from prunenas.families.common import SlotTable, linear, packed_attention
from prunenas.families.registry import register_family

if TYPE_CHECKING:
    from prunenas.arch import Architecture

STREAM = 0
LN_EPS = 1e-6  # torchvision's VisionTransformer


@register_family("vit")
class VisionTransformer(Family):
    name = "vit"
    description = "Vision Transformer (torchvision layout): patch embedding, class token, pre-norm blocks"
    options = {
        "depth": Option(12, help="encoder blocks"),
        "embed_dim": Option(768, help="residual stream width of the base network"),
        "heads": Option(12, help="attention heads per block of the base network; head_dim = embed_dim / heads"),
        "mlp_dim": Option(3072, help="MLP hidden width of the base network"),
        "patch": Option(16, help="patch size (the input's height and width must be multiples of it)"),
    }

    def check_options(self, options: Mapping[str, Any]) -> None:
        for key in self.options:
            if options[key] < 1:
                raise ArchitectureError(f"vit option {key!r}: {options[key]} must be >= 1")
        if options["embed_dim"] % options["heads"]:
            raise ArchitectureError(f"vit embed_dim {options['embed_dim']} is not divisible by heads "
                                    f"{options['heads']}: the head dimension is embed_dim / heads")

    def slots(self, options: Mapping[str, Any]) -> tuple[Slot, ...]:
        return tuple(_table(tuple(sorted(options.items()))).slots)

    def check(self, arch: Architecture) -> None:
        patch, (_, h, w) = arch.opts["patch"], arch.input_shape
        if h % patch or w % patch:
            raise ArchitectureError(f"vit input {h}x{w} is not a multiple of the patch size {patch}; "
                                    f"allowed: heights and widths divisible by {patch}")

    def layers(self, arch: Architecture) -> list[Layer]:
        opts, w = arch.opts, arch.widths
        index, d, tokens = _table(arch.options), head_dim(opts), token_count(arch)
        grid = (arch.input_shape[1] // opts["patch"], arch.input_shape[2] // opts["patch"])
        seq = (tokens, 1)
        out = [
            Layer("conv_proj", "conv", (INPUT,), STREAM, arch.input_shape[0], w[STREAM], kernel=opts["patch"],
                  stride=opts["patch"], bias=True, out_hw=grid, activation=""),
            Layer("class_token", "embedding", (), STREAM, 1, w[STREAM]),
            Layer("encoder.pos_embedding", "embedding", (), STREAM, tokens, w[STREAM]),
        ]
        for b in range(opts["depth"]):
            name, heads, mlp = f"encoder.layers.encoder_layer_{b}", index["heads", b], index["mlp", b]
            if w[heads]:
                attention = f"{name}.self_attention"
                out += [
                    _layer_norm(f"{name}.ln_1", w[STREAM], tokens),
                    Layer(f"{attention}.in_proj", "linear", (STREAM,), heads, w[STREAM], 3 * w[heads] * d,
                          bias=True, out_hw=seq, out_repeat=d, out_parts=3),
                    Layer(f"{attention}.out_proj", "linear", (heads,), STREAM, w[heads] * d, w[STREAM], bias=True,
                          out_hw=seq, in_repeat=d),
                ]
            if w[mlp]:
                out += [
                    _layer_norm(f"{name}.ln_2", w[STREAM], tokens),
                    Layer(f"{name}.mlp.0", "linear", (STREAM,), mlp, w[STREAM], w[mlp], bias=True, out_hw=seq,
                          activation="gelu"),
                    Layer(f"{name}.mlp.3", "linear", (mlp,), STREAM, w[mlp], w[STREAM], bias=True, out_hw=seq),
                ]
        out.append(_layer_norm("encoder.ln", w[STREAM], tokens))
        out.append(linear("heads.head", (STREAM,), None, w[STREAM], arch.num_classes))
        return out

    def product_macs(self, arch: Architecture) -> int:
        """``QK^T`` and ``A.V``: ``tokens^2 x head_dim`` MACs each, per head of every block."""
        index, tokens = _table(arch.options), token_count(arch)
        heads = sum(arch.widths[index["heads", b]] for b in range(arch.opts["depth"]))
        return 2 * tokens**2 * head_dim(arch.opts) * heads

    def build(self, arch: Architecture) -> nn.Module:
        opts, w, index = arch.opts, arch.widths, _table(arch.options)
        blocks = [EncoderBlock(w[STREAM], w[index["heads", b]], head_dim(opts), w[index["mlp", b]])
                  for b in range(opts["depth"])]
        model = ViT(arch.input_shape[0], opts["patch"], token_count(arch), w[STREAM], blocks, arch.num_classes)
        _init(model)
        return model


def head_dim(options: Mapping[str, Any]) -> int:
    """Features per attention head, fixed by the base network: ``embed_dim / heads``."""
    return options["embed_dim"] // options["heads"]


def token_count(arch: Architecture) -> int:
    """Patches plus the class token."""
    patch = arch.opts["patch"]
    return (arch.input_shape[1] // patch) * (arch.input_shape[2] // patch) + 1


def _layer_norm(name: str, channels: int, tokens: int) -> Layer:
    return Layer(name, "ln", (STREAM,), None, channels, channels, out_hw=(tokens, 1))


@lru_cache(maxsize=64)
def _table(options: tuple) -> SlotTable:
    """The stream, then per block its heads (removable attention branch) and MLP width (removable MLP branch)."""
    opts = dict(options)
    table = SlotTable()
    table.add(("stream",), Slot("stream", opts["embed_dim"], 0, tied=True))
    for b in range(opts["depth"]):
        table.add(("heads", b), Slot(f"encoder_layer_{b}.heads", opts["heads"], 0, block=2 * b, unit="heads"))
        table.add(("mlp", b), Slot(f"encoder_layer_{b}.mlp", opts["mlp_dim"], 0, block=2 * b + 1))
    return table


class TokenTable(nn.Module):
    """A learnt ``(positions, features)`` table added to the tokens (class token, position embedding)."""

    def __init__(self, positions: int, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(positions, features))


class SelfAttention(nn.Module):
    """Multi-head self-attention over ``heads`` heads of ``head_dim`` features (``heads * head_dim`` need not
    equal the stream width). Same arithmetic as ``nn.MultiheadAttention`` with packed q/k/v projections."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.in_proj = nn.Linear(dim, 3 * heads * head_dim)
        self.out_proj = nn.Linear(heads * head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(packed_attention(self.in_proj(x), self.heads, self.head_dim))


class EncoderBlock(nn.Module):
    """Pre-norm block: ``x + attention(ln_1(x))``, then ``+ mlp(ln_2(.))``; a branch of width 0 is skipped."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.has_attention, self.has_mlp = heads > 0, mlp_dim > 0
        if self.has_attention:
            self.ln_1 = nn.LayerNorm(dim, eps=LN_EPS)
            self.self_attention = SelfAttention(dim, heads, head_dim)
        if self.has_mlp:
            self.ln_2 = nn.LayerNorm(dim, eps=LN_EPS)
            # torchvision's MLPBlock: Linear, GELU, Dropout, Linear, Dropout (identities here: p = 0 there too)
            self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Identity(), nn.Linear(mlp_dim, dim),
                                     nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_attention:
            x = x + self.self_attention(self.ln_1(x))
        if self.has_mlp:
            x = x + self.mlp(self.ln_2(x))
        return x


class Encoder(nn.Module):
    def __init__(self, tokens: int, dim: int, blocks: list[EncoderBlock]) -> None:
        super().__init__()
        self.pos_embedding = TokenTable(tokens, dim)
        self.layers = nn.Sequential(OrderedDict((f"encoder_layer_{i}", b) for i, b in enumerate(blocks)))
        self.ln = nn.LayerNorm(dim, eps=LN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.layers(x + self.pos_embedding.weight))


class ViT(nn.Module):
    def __init__(self, c_in: int, patch: int, tokens: int, dim: int, blocks: list[EncoderBlock], classes: int):
        super().__init__()
        self.conv_proj = nn.Conv2d(c_in, dim, patch, patch)
        self.class_token = TokenTable(1, dim)
        self.encoder = Encoder(tokens, dim, blocks)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(dim, classes)))
        self._register_load_state_dict_pre_hook(_accept_torchvision_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.conv_proj(x).flatten(2).transpose(1, 2)
        cls = self.class_token.weight.expand(len(x), -1, -1)
        return self.heads(self.encoder(torch.cat([cls, patches], dim=1))[:, 0])


def _accept_torchvision_keys(state: dict[str, torch.Tensor], prefix: str, *_: Any) -> None:
    """Rename and reshape, in place, the keys of a torchvision ``VisionTransformer`` state dict to ours."""
    for key in [k for k in state if k.startswith(prefix)]:
        local = key[len(prefix):]
        if local in ("class_token", "encoder.pos_embedding"):
            state[f"{key}.weight"] = state.pop(key)[0]  # (1, positions, dim) -> (positions, dim)
        elif local.endswith(".self_attention.in_proj_weight") or local.endswith(".self_attention.in_proj_bias"):
            head, _, part = key.rpartition(".in_proj_")
            state[f"{head}.in_proj.{part}"] = state.pop(key)


def _init(model: ViT) -> None:
    """torchvision's initialisation, except the head (see the module docstring)."""
    fan_in = model.conv_proj.in_channels * model.conv_proj.kernel_size[0] * model.conv_proj.kernel_size[1]
    nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / fan_in))
    nn.init.zeros_(model.conv_proj.bias)
    nn.init.zeros_(model.class_token.weight)
    nn.init.normal_(model.encoder.pos_embedding.weight, std=0.02)
    for m in model.modules():
        if isinstance(m, SelfAttention):
            nn.init.xavier_uniform_(m.in_proj.weight)
            nn.init.zeros_(m.in_proj.bias)
            nn.init.zeros_(m.out_proj.bias)
        elif isinstance(m, EncoderBlock) and m.has_mlp:
            for linear_layer in (m.mlp[0], m.mlp[3]):
                nn.init.xavier_uniform_(linear_layer.weight)
                nn.init.normal_(linear_layer.bias, std=1e-6)
