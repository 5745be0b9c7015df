"""The ResNets of the CIFAR knowledge-distillation benchmark, as defined in RepDistiller (Tian et
al., "Contrastive Representation Distillation", ICLR 2020; github.com/HobbitLong/RepDistiller,
``models/resnet.py`` and ``models/resnetv2.py``) and, identically, in mdistiller
(github.com/megvii-research/mdistiller, ``mdistiller/models/cifar/resnet.py``, ``resnetv2.py``):
same layers, widths and parameter counts, so that published numbers compare.

* :class:`CifarResNet` (``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4``): He et al.'s
  CIFAR ResNet (ECCV 2016 / CVPR 2016 §4.2): a 3×3 stem, then three stages of n basic blocks
  (depth 6n + 2) at strides 1, 2, 2, global average pooling and a linear classifier. The widths are
  ``[stem, stage1, stage2, stage3]`` = [16, 16, 32, 64], or [32, 64, 128, 256] for the "x4"
  variants. As in the reference, a block gets a 1×1 convolution + batch norm shortcut whenever
  its stride or width changes (so resnet8x4 / resnet32x4 have one in their first stage too).
* :class:`ResNet` (``resnet50``): RepDistiller's ``ResNet50`` from ``resnetv2.py``, the
  ImageNet ResNet-50 (bottleneck blocks [3, 4, 6, 3], widths 64-512, expansion 4) with a 3×3
  stride-1 stem and no max pooling, for 32×32 images.

Initialisation as the reference: convolutions He-normal (fan-out), batch norm weight 1 and bias 0,
the classifier PyTorch's default. The reference's fixed ``AvgPool2d(8)`` is an adaptive global
average pool here (no parameters, the same result on 32×32 images, and other sizes work).

Features: ``stages`` holds the stem (convolution, batch norm, ReLU) and the residual stages,
whose outputs are the reference's feature list ``[f0, f1, f2, f3]`` (``resnet50``: ``f0`` ...
``f4``). Each residual stage is a :class:`~kdrun.models.stages.Stage`: a hook on
``stages.N.preact`` (N >= 1) sees the stage's last block's output before its final ReLU, the
reference's ``preact`` features (``f1_pre``, ...).
"""

from __future__ import annotations

from typing import Sequence, Type, Union

import torch
from torch import nn

from kdrun.models.stages import Stage, conv_bn, image_shape, init_weights, run_stages


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """The identity, or a strided 1×1 convolution and batch norm where the shape changes."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus the shortcut, then ReLU (unless ``activate`` is False: the
    last block of a :class:`Stage`, whose stage applies the ReLU after its ``preact``)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, activate: bool = True) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv_bn(in_channels, channels, 3, stride)
        self.relu = nn.ReLU()
        self.conv2, self.bn2 = conv_bn(channels, channels, 3)
        self.shortcut = _shortcut(in_channels, channels, stride)
        self.activation = nn.ReLU() if activate else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.activation(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """conv1×1-BN-ReLU-conv3×3(stride)-BN-ReLU-conv1×1(4× wider)-BN plus the shortcut, then ReLU
    (unless ``activate`` is False, as in :class:`BasicBlock`)."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, activate: bool = True) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1, self.bn1 = conv_bn(in_channels, channels, 1)
        self.conv2, self.bn2 = conv_bn(channels, channels, 3, stride)
        self.conv3, self.bn3 = conv_bn(channels, out_channels, 1)
        self.relu = nn.ReLU()
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.activation = nn.ReLU() if activate else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.activation(out + self.shortcut(x))


Block = Union[Type[BasicBlock], Type[Bottleneck]]


def residual_stage(block: Block, in_channels: int, channels: int, blocks: int, stride: int) -> Stage:
    """``blocks`` blocks, the first with ``stride``; the last one's ReLU is the stage's, after
    its ``preact``."""
    layers = []
    for i in range(blocks):
        layers.append(block(in_channels, channels, stride if i == 0 else 1, activate=i < blocks - 1))
        in_channels = channels * block.expansion
    return Stage(nn.Sequential(*layers), nn.ReLU())


def _stem(in_channels: int, width: int) -> nn.Sequential:
    return nn.Sequential(*conv_bn(in_channels, width, 3), nn.ReLU())


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet as in RepDistiller's ``models/resnet.py``: a 3×3 convolution to
    ``widths[0]`` channels (batch norm, ReLU), three stages of (depth - 2) / 6 basic blocks (or
    (depth - 2) / 9 bottlenecks) of ``widths[1:]`` channels at strides 1, 2, 2, global average
    pooling and a linear layer. ``stages``: the stem and the three residual stages."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int = 32, widths: Sequence[int] = (16, 16, 32, 64),
                 block: str = "basic") -> None:  # fmt: skip
        super().__init__()
        in_channels, _, _ = image_shape("resnet", input_shape)
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block={block!r}: choose 'basic' or 'bottleneck'")
        kind: Block = BasicBlock if block == "basic" else Bottleneck
        per_block = 2 if block == "basic" else 3
        if depth < 3 * per_block + 2 or (depth - 2) % (3 * per_block):
            raise ValueError(f"depth={depth}: a CIFAR ResNet of {block} blocks has depth {3 * per_block}n + 2 (n >= 1), e.g. 8, 14, 20, 32, 56, 110")
        if len(widths) != 4 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths={list(widths)!r}: give four widths >= 1, [stem, stage1, stage2, stage3], e.g. [16, 16, 32, 64]")
        n = (depth - 2) // (3 * per_block)
        stages: list[nn.Module] = [_stem(in_channels, widths[0])]
        channels = widths[0]
        for width, stride in zip(widths[1:], (1, 2, 2)):
            stages.append(residual_stage(kind, channels, width, n, stride))
            channels = width * kind.expansion
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(run_stages(self.stages, x)).flatten(1))


class ResNet(nn.Module):
    """RepDistiller's ``models/resnetv2.py`` ResNet for 32×32 images: a 3×3 stride-1 convolution to
    64 channels (batch norm, ReLU; no max pooling), four stages of ``blocks`` blocks of 64, 128,
    256 and 512 (× expansion) channels at strides 1, 2, 2, 2, global average pooling and a linear
    layer. ``stages``: the stem and the four residual stages."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, blocks: Sequence[int] = (3, 4, 6, 3), block: str = "bottleneck") -> None:
        super().__init__()
        in_channels, _, _ = image_shape("resnet", input_shape)
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block={block!r}: choose 'basic' or 'bottleneck'")
        if len(blocks) != 4 or any(int(b) < 1 for b in blocks):
            raise ValueError(f"blocks={list(blocks)!r}: give four block counts >= 1, e.g. [3, 4, 6, 3]")
        kind: Block = BasicBlock if block == "basic" else Bottleneck
        stages: list[nn.Module] = [_stem(in_channels, 64)]
        channels = 64
        for width, count, stride in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)):
            stages.append(residual_stage(kind, channels, width, int(count), stride))
            channels = width * kind.expansion
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(run_stages(self.stages, x)).flatten(1))


_NARROW = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def resnet8(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    """CIFAR ResNet-8, widths 16-16-32-64 (RepDistiller ``resnet8``)."""
    return CifarResNet(input_shape, num_classes, depth=8, widths=_NARROW)


def resnet14(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    """CIFAR ResNet-14, widths 16-16-32-64 (RepDistiller ``resnet14``)."""
    return CifarResNet(input_shape, num_classes, depth=14, widths=_NARROW)


def resnet20(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    """CIFAR ResNet-20, widths 16-16-32-64 (RepDistiller ``resnet20``)."""
    return CifarResNet(input_shape, num_classes, depth=20, widths=_NARROW)


def resnet32(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    """CIFAR ResNet-32, widths 16-16-32-64 (RepDistiller ``resnet32``)."""
    return CifarResNet(input_shape, num_classes, depth=32, widths=_NARROW)


def resnet44(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    """CIFAR ResNet-44, widths 16-16-32-64 (RepDistiller ``resnet44``)."""
    return CifarResNet(input_shape, num_classes, depth=44, widths=_NARROW)


def resnet56(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    """CIFAR ResNet-56, widths 16-16-32-64 (RepDistiller ``resnet56``)."""
    return CifarResNet(input_shape, num_classes, depth=56, widths=_NARROW)


def resnet110(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    """CIFAR ResNet-110, widths 16-16-32-64 (RepDistiller ``resnet110``)."""
    return CifarResNet(input_shape, num_classes, depth=110, widths=_NARROW)


def resnet8x4(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    """CIFAR ResNet-8 four times as wide, widths 32-64-128-256 (RepDistiller ``resnet8x4``)."""
    return CifarResNet(input_shape, num_classes, depth=8, widths=_WIDE)


def resnet32x4(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> CifarResNet:
    """CIFAR ResNet-32 four times as wide, widths 32-64-128-256 (RepDistiller ``resnet32x4``)."""
    return CifarResNet(input_shape, num_classes, depth=32, widths=_WIDE)


def resnet50(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> ResNet:
    """ResNet-50 for 32×32 images, bottleneck blocks [3, 4, 6, 3] (RepDistiller ``ResNet50``)."""
    return ResNet(input_shape, num_classes, blocks=(3, 4, 6, 3), block="bottleneck")
