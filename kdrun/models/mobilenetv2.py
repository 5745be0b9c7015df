"""MobileNetV2 (Sandler et al., CVPR 2018) of the CIFAR knowledge-distillation benchmark, as defined
in RepDistiller (Tian et al., ICLR 2020; github.com/HobbitLong/RepDistiller,
``models/mobilenetv2.py``, ``mobile_half``: expansion 6, width multiplier 0.5) and, identically,
mdistiller (``mdistiller/models/cifar/mobilenetv2.py``, its "MobileNetV2"). Same layers, widths
and parameter counts as the reference, including its particulars:

* the stem is a 3×3 stride-2 convolution (32 × width channels), so 32×32 images become 16×16;
* every inverted residual block has its 1×1 expansion convolution, even the first (expansion 1);
* the last 1×1 convolution has 1280 channels whatever the width multiplier (below 1).

Initialisation as the reference: convolutions N(0, 2 / (k*k*out_channels)), batch norm weight 1
and bias 0, the classifier N(0, 0.01²) with bias 0. The reference's ``AvgPool2d`` sized for 32×32
inputs is an adaptive global average pool here (the same on 32×32 images).

Features: ``stages`` holds the stem and four groups of blocks, the reference's feature list
``[f0, ..., f4]``: blocks (t, c, n, s) 1-2, 3, 4-5 and 6-7 of the paper's table. The head's 1×1
convolution to 1280 channels comes after the stages. The blocks' outputs are linear bottlenecks
(no ReLU after the last batch norm), so these features are already pre-activation; the references
have no separate ``preact`` features for this network.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kdrun.models.stages import conv_bn, image_shape, init_weights, run_stages

# The paper's table for CIFAR (stride 1 in the second row): expansion t, channels c, blocks n, stride s.
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
# Which rows of SETTINGS make up stages 1, 2, 3 and 4 (stage 0 is the stem), as the reference's features.
STAGE_ROWS = ((0, 1), (2,), (3, 4), (5, 6))


class InvertedResidual(nn.Module):
    """1×1 expansion (BN, ReLU), 3×3 depthwise (stride, BN, ReLU), 1×1 linear projection (BN);
    plus the input where stride is 1 and the width is unchanged."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        self.residual = stride == 1 and in_channels == out_channels
        self.conv = nn.Sequential(
            *conv_bn(in_channels, hidden, 1), nn.ReLU(),
            *conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU(),
            *conv_bn(hidden, out_channels, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """RepDistiller's CIFAR MobileNetV2 with expansion ``expansion`` (the ``T`` of its
    ``mobilenetv2_T_w``) and width multiplier ``width`` (``W``). ``stages``: the stem and the four
    block groups; then a 1×1 convolution to 1280 channels (BN, ReLU), global average pooling and a
    linear layer."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: float = 0.5, expansion: int = 6) -> None:
        super().__init__()
        in_channels, _, _ = image_shape("mobilenetv2", input_shape)
        if width <= 0 or int(expansion) < 1:
            raise ValueError(f"width={width}, expansion={expansion}: need width > 0 and expansion >= 1")
        channels = int(32 * width)
        stages: list[nn.Module] = [nn.Sequential(*conv_bn(in_channels, channels, 3, stride=2), nn.ReLU())]
        for rows in STAGE_ROWS:
            blocks = []
            for row in rows:
                t, c, n, s = SETTINGS[row]
                t = t if row == 0 else int(expansion)
                for i in range(n):
                    blocks.append(InvertedResidual(channels, int(c * width), s if i == 0 else 1, t))
                    channels = int(c * width)
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        last = int(1280 * width) if width > 1.0 else 1280
        self.head = nn.Sequential(*conv_bn(channels, last, 1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(last, num_classes)
        init_weights(self, linear="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.head(run_stages(self.stages, x))).flatten(1))


def mobilenetv2(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> MobileNetV2:
    """MobileNetV2 with width multiplier 0.5 and expansion 6 (RepDistiller ``mobile_half``)."""
    return MobileNetV2(input_shape, num_classes, width=0.5, expansion=6)
