"""Wide residual networks (Zagoruyko & Komodakis, BMVC 2016) of the CIFAR knowledge-distillation
benchmark, as defined in RepDistiller (Tian et al., ICLR 2020; github.com/HobbitLong/RepDistiller,
``models/wrn.py``) and, identically, mdistiller (``mdistiller/models/cifar/wrn.py``): WRN-d-k has
a 3×3 stem of 16 channels, three stages of (d - 4) / 6 pre-activation basic blocks of 16k, 32k
and 64k channels at strides 1, 2, 2, a final batch norm and ReLU, global average pooling and a
linear classifier. Same layers, widths and parameter counts as the reference.

Initialisation as the reference: convolutions N(0, 2 / (k*k*out_channels)), batch norm weight 1
and bias 0, the classifier's bias 0 (its weight PyTorch's default).

Features: ``stages`` holds the stem convolution and the three stages; their outputs are the
reference's feature list ``[f0, f1, f2, f3]`` (pre-activation network: a stage ends with a
residual sum, before any batch norm or ReLU; the final batch norm and ReLU come after the stages,
as ``norm`` and ``relu``). The reference's ``preact`` features are those sums passed through the
*next* batch norm; hooks give them as ``stages.2.0.bn1`` (for f1), ``stages.3.0.bn1`` (for f2) and
``norm`` (for f3), with no extra computation (the reference recomputes them).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.models.stages import image_shape, init_weights, run_stages


class WideBasicBlock(nn.Module):
    """A pre-activation basic block: BN-ReLU-conv3×3(stride)-BN-ReLU-(dropout)-conv3×3, plus the
    input, or, where the width changes, a strided 1×1 convolution of the BN-ReLU'd input (as the
    reference: the shortcut then takes the activated input)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.dropout = float(dropout)
        # As in the reference, only a change of width gets a projection; a stride alone would not.
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(activated)))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + (x if self.shortcut is None else self.shortcut(activated))


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` as in RepDistiller's ``models/wrn.py``; ``dropout`` is the
    reference's ``dropRate`` (0 in the benchmarks). ``stages``: the stem convolution and the three
    block stages."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, depth: int = 16, widen_factor: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        in_channels, _, _ = image_shape("wrn", input_shape)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"depth={depth}: a WRN has depth 6n + 4 (n >= 1), e.g. 16, 28, 40")
        if int(widen_factor) < 1:
            raise ValueError(f"widen_factor={widen_factor}: must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout}: must be in [0, 1)")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        stages: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)]
        for i, stride in enumerate((1, 2, 2)):
            blocks = [WideBasicBlock(widths[i] if j == 0 else widths[i + 1], widths[i + 1], stride if j == 0 else 1, dropout) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self, linear="zero_bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.norm(run_stages(self.stages, x)))
        return self.fc(self.pool(x).flatten(1))


def wrn_16_1(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100, dropout: float = 0.0) -> WideResNet:
    """WRN-16-1 (RepDistiller ``wrn_16_1``)."""
    return WideResNet(input_shape, num_classes, depth=16, widen_factor=1, dropout=dropout)


def wrn_16_2(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100, dropout: float = 0.0) -> WideResNet:
    """WRN-16-2 (RepDistiller ``wrn_16_2``)."""
    return WideResNet(input_shape, num_classes, depth=16, widen_factor=2, dropout=dropout)


def wrn_40_1(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100, dropout: float = 0.0) -> WideResNet:
    """WRN-40-1 (RepDistiller ``wrn_40_1``)."""
    return WideResNet(input_shape, num_classes, depth=40, widen_factor=1, dropout=dropout)


def wrn_40_2(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100, dropout: float = 0.0) -> WideResNet:
    """WRN-40-2 (RepDistiller ``wrn_40_2``)."""
    return WideResNet(input_shape, num_classes, depth=40, widen_factor=2, dropout=dropout)
