"""Model factories for the traced-family tests: a user's own small CNN, built-in families as plain modules,
and factories that misbehave (bad input)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return x * gate


class UserNet(nn.Module):
    """A stem, a residual block, two concatenated branches, a squeeze-excitation gate and a flatten head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 12) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.res = nn.Sequential(nn.Conv2d(width, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.left = nn.Conv2d(width, 6, 1)
        self.right = nn.Sequential(nn.Conv2d(width, 10, 3, stride=1, padding=1), nn.ReLU())
        self.norm = nn.BatchNorm2d(16)
        self.mix = nn.Conv2d(16, 14, 1)
        self.se = SqueezeExcite(14, 4)
        self.head = nn.Linear(14 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(x + self.res(x))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        x = self.se(self.mix(F.relu(self.norm(x))))
        x = F.adaptive_avg_pool2d(x, 4)
        return self.head(x.view(x.size(0), -1))


def user_net(**kwargs) -> nn.Module:
    return UserNet(**kwargs)


def family_net(family: str, channels: int = 3, classes: int = 10, **options) -> nn.Module:
    """The base network of a built-in family (options in the reference), as a user would hand it over."""
    from prunenas.arch import Architecture

    return Architecture.create(family, options=options, input_shape=(channels, 32, 32), num_classes=classes).build()


def not_a_module() -> str:
    return "a string"


def raises() -> nn.Module:
    raise RuntimeError("the factory broke\nsecond line")


class Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if y.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return y
        return -y


def branchy() -> nn.Module:
    return Branchy()


class Shuffle(nn.Module):
    """A channel shuffle between two convs: the pass must freeze the channels it mixes."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.b = nn.Conv2d(8, 8, 3)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.a(x)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = self.b(x)
        return self.fc(x.mean((2, 3)))


def shuffle() -> nn.Module:
    return Shuffle()


class GroupedBlock(nn.Module):
    """A ResNeXt bottleneck: 1x1 conv, grouped 3x3 conv, 1x1 conv, residual add."""

    def __init__(self, channels: int, inner: int, groups: int) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(channels, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(inner, inner, 3, padding=1, groups=groups, bias=False),
                               nn.BatchNorm2d(inner), nn.ReLU())
        self.c = nn.Sequential(nn.Conv2d(inner, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.c(self.b(self.a(x))))


class TinyResNeXt(nn.Module):
    """Two stages of grouped bottlenecks with the same number of groups (4) and different group widths (4 and
    8 channels): the tracer reads it as a fixed-group-count model."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.stage1 = GroupedBlock(16, 16, groups=4)
        self.down = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(24),
                                  nn.ReLU())
        self.stage2 = GroupedBlock(24, 32, groups=4)
        self.head = nn.Linear(24, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.head(x.mean((2, 3)))


def tiny_resnext() -> nn.Module:
    return TinyResNeXt()
