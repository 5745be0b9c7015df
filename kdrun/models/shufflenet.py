"""ShuffleNet V1 (Zhang et al., CVPR 2018) and V2 (Ma et al., ECCV 2018) of the CIFAR
knowledge-distillation benchmark, as defined in RepDistiller (Tian et al., ICLR 2020;
github.com/HobbitLong/RepDistiller, ``models/ShuffleNetv1.py`` ``ShuffleV1`` and
``models/ShuffleNetv2.py`` ``ShuffleV2``) and, identically, mdistiller
(``mdistiller/models/cifar/ShuffleNetv1.py``, ``ShuffleNetv2.py``). Same layers, widths and
parameter counts as the reference:

* ``shufflev1``: a 1×1 stem of 24 channels (BN, ReLU; no striding or max pooling), three stages of
  4, 8 and 4 bottleneck units of 240, 480 and 960 channels with 3 groups, each stage starting with
  a stride-2 unit whose output concatenates an average-pooled shortcut (the stem-facing first
  1×1 convolution is not grouped), global average pooling and a linear classifier.
* ``shufflev2``: the 1× network: a 1×1 stem of 24 channels, three stages of a stride-2 down-sampling
  unit and 3, 7 and 3 basic units of 116, 232 and 464 channels, a 1×1 convolution to 1024
  channels (BN, ReLU), global average pooling and a linear classifier.

Initialisation: PyTorch's defaults, as the reference (which sets none for these two). The
reference's fixed ``avg_pool2d(out, 4)`` is an adaptive global average pool here (the same on 32×32
images).

Features: ``stages`` holds the stem and the three stages, the reference's feature list
``[f0, f1, f2, f3]``. Each stage is a :class:`~kdrun.models.stages.Stage`: a hook on
``stages.N.preact`` (N >= 1) gives the reference's ``preact`` features (ShuffleNetV1: the last
unit's sum or concatenation before its ReLU; ShuffleNetV2: the last unit's concatenation of its
passed-through half and its branch before the branch's ReLU, unshuffled).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kdrun.models.stages import Stage, conv_bn, image_shape, run_stages


class ChannelShuffle(nn.Module):
    """``[B, C, H, W]``: view the channels as ``[groups, C / groups]``, transpose, flatten."""

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.groups = int(groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _stem(in_channels: int, width: int = 24) -> nn.Sequential:
    return nn.Sequential(*conv_bn(in_channels, width, 1), nn.ReLU())


class ShuffleV1Unit(nn.Module):
    """A ShuffleNet V1 bottleneck unit: grouped 1×1 convolution to a quarter of ``out_channels``
    (BN, ReLU, channel shuffle), 3×3 depthwise (``stride``, BN, ReLU), grouped 1×1 convolution
    (BN); added to the input, or at stride 2 concatenated with the input's 3×3 average pool; then
    ReLU unless ``activate`` is False. ``out_channels`` is the branch's width (at stride 2 the
    unit's output is ``out_channels + in_channels`` wide). ``first_groups``: the groups of the
    first 1×1 convolution (1 for the unit after the stem, as the reference)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, first_groups: int, activate: bool = True) -> None:
        super().__init__()
        mid = out_channels // 4
        self.conv1, self.bn1 = conv_bn(in_channels, mid, 1, groups=first_groups)
        self.relu = nn.ReLU()
        self.shuffle = ChannelShuffle(first_groups)
        self.conv2, self.bn2 = conv_bn(mid, mid, 3, stride, groups=mid)
        self.conv3, self.bn3 = conv_bn(mid, out_channels, 1, groups=groups)
        self.concat = stride == 2
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if self.concat else nn.Identity()
        self.activation = nn.ReLU() if activate else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shuffle(self.relu(self.bn1(self.conv1(x))))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = self.shortcut(x)
        return self.activation(torch.cat([out, shortcut], 1) if self.concat else out + shortcut)


class ShuffleNetV1(nn.Module):
    """RepDistiller's CIFAR ShuffleNet V1: the stem, then per stage ``units[i]`` units ending at
    ``widths[i]`` channels (the first at stride 2), with ``groups`` groups. ``stages``: the stem
    and the three unit stages."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (240, 480, 960),
                 units: Sequence[int] = (4, 8, 4), groups: int = 3) -> None:  # fmt: skip
        super().__init__()
        in_channels, _, _ = image_shape("shufflev1", input_shape)
        if len(widths) != len(units) or not units or min(units) < 1:
            raise ValueError(f"widths={list(widths)!r}, units={list(units)!r}: give as many widths as unit counts, each count >= 1")
        stem_width = 24
        stages: list[nn.Module] = [_stem(in_channels, stem_width)]
        channels = stem_width
        for width, count in zip(widths, units):
            layers = []
            for i in range(count):
                branch = width - channels if i == 0 else width  # the first unit concatenates its input
                first_groups = 1 if channels == stem_width else groups
                layers.append(ShuffleV1Unit(channels, branch, 2 if i == 0 else 1, groups, first_groups, activate=i < count - 1))
                channels = width
            stages.append(Stage(nn.Sequential(*layers), nn.ReLU()))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(run_stages(self.stages, x)).flatten(1))


class ShuffleV2Down(nn.Module):
    """ShuffleNet V2's down-sampling unit: left, 3×3 depthwise stride 2 (BN) and 1×1 (BN, ReLU);
    right, 1×1 (BN, ReLU), 3×3 depthwise stride 2 (BN) and 1×1 (BN, ReLU); each half of
    ``out_channels``; concatenated and shuffled in 2 groups."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        mid = out_channels // 2
        self.conv1, self.bn1 = conv_bn(in_channels, in_channels, 3, 2, groups=in_channels)
        self.conv2, self.bn2 = conv_bn(in_channels, mid, 1)
        self.conv3, self.bn3 = conv_bn(in_channels, mid, 1)
        self.conv4, self.bn4 = conv_bn(mid, mid, 3, 2, groups=mid)
        self.conv5, self.bn5 = conv_bn(mid, mid, 1)
        self.relu = nn.ReLU()
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.relu(self.bn3(self.conv3(x)))
        right = self.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


class ShuffleV2Unit(nn.Module):
    """ShuffleNet V2's basic unit: split the channels in half; the first half passes through, the
    second goes through 1×1 (BN, ReLU), 3×3 depthwise (BN), 1×1 (BN, ReLU); concatenate, then
    shuffle in 2 groups. With ``activate`` False the unit stops before that last ReLU and the
    shuffle (it returns the reference's ``preact``: the unshuffled concatenation), which the
    enclosing :class:`Stage` applies; since the passed-through half is non-negative (every
    channel comes out of a ReLU), ReLU over all channels then equals ReLU over the branch."""

    def __init__(self, channels: int, activate: bool = True) -> None:
        super().__init__()
        self.split = channels // 2  # the reference's int(channels * 0.5)
        branch = self.split
        self.conv1, self.bn1 = conv_bn(branch, branch, 1)
        self.relu = nn.ReLU()
        self.conv2, self.bn2 = conv_bn(branch, branch, 3, groups=branch)
        self.conv3, self.bn3 = conv_bn(branch, branch, 1)
        self.activate = activate
        self.shuffle = ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, branch = x[:, : self.split], x[:, self.split :]
        out = self.bn3(self.conv3(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(branch)))))))
        if not self.activate:
            return torch.cat([kept, out], 1)
        return self.shuffle(torch.cat([kept, self.relu(out)], 1))


class ShuffleNetV2(nn.Module):
    """RepDistiller's CIFAR ShuffleNet V2: the stem, then per stage a down-sampling unit to
    ``widths[i]`` channels and ``units[i]`` basic units, then a 1×1 convolution to ``last_width``
    channels (BN, ReLU), global average pooling and a linear layer. ``stages``: the stem and the
    three unit stages."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, widths: Sequence[int] = (116, 232, 464),
                 units: Sequence[int] = (3, 7, 3), last_width: int = 1024) -> None:  # fmt: skip
        super().__init__()
        in_channels, _, _ = image_shape("shufflev2", input_shape)
        if len(widths) != len(units) or not units or min(units) < 1 or any(int(w) % 2 for w in widths):
            raise ValueError(f"widths={list(widths)!r}, units={list(units)!r}: give as many even widths as unit counts, each count >= 1")
        stages: list[nn.Module] = [_stem(in_channels)]
        channels = 24
        for width, count in zip(widths, units):
            layers: list[nn.Module] = [ShuffleV2Down(channels, width)]
            layers += [ShuffleV2Unit(width, activate=i < count - 1) for i in range(count)]
            stages.append(Stage(nn.Sequential(*layers), nn.Sequential(nn.ReLU(), ChannelShuffle(2))))
            channels = width
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(*conv_bn(channels, last_width, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.head(run_stages(self.stages, x))).flatten(1))


def shufflev1(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> ShuffleNetV1:
    """ShuffleNet V1, 3 groups, widths 240-480-960 (RepDistiller ``ShuffleV1``)."""
    return ShuffleNetV1(input_shape, num_classes)


def shufflev2(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> ShuffleNetV2:
    """ShuffleNet V2 1×, widths 116-232-464, 1024 features (RepDistiller ``ShuffleV2``)."""
    return ShuffleNetV2(input_shape, num_classes)
