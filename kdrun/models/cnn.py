"""A small convolutional network for small images (``model/teacher=cnn``, ``model/student=cnn``),
with its stages exposed for feature-based losses (attention transfer, FitNets)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class CNN(nn.Module):
    """One stage per width of ``channels``: a 3×3 convolution, batch norm, ReLU and 2×2 max
    pooling (while the image is at least 2×2); then the channels' global average, dropout and a
    linear layer to the classes. ``stages`` (a ModuleList: ``stages.0``, ``stages.1``, ...) holds
    the stages, whose outputs ``[B, C, H, W]`` feature-based losses read."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32), dropout: float = 0.0) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"cnn needs images [channels, height, width]; the data's examples are {tuple(input_shape)} (an MLP takes them)")
        if not channels or any(int(c) < 1 for c in channels):
            raise ValueError(f"channels={list(channels)!r}: must be a list of widths, each >= 1 (e.g. [16, 32])")
        in_channels, size = input_shape[0], min(input_shape[1:])
        stages = []
        for width in channels:
            layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            stages.append(nn.Sequential(*layers))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.head = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = stage(x)
        return self.head(self.dropout(x.mean(dim=(2, 3))))
