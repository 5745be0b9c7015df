"""The batch-norm VGGs of the CIFAR knowledge-distillation benchmark (Simonyan & Zisserman, ICLR
2015, for CIFAR), as defined in RepDistiller (Tian et al., ICLR 2020; github.com/HobbitLong/
RepDistiller, ``models/vgg.py``: ``vgg8_bn`` ... ``vgg19_bn``, which its model dictionary names
``vgg8`` ... ``vgg19``) and, identically, mdistiller (``mdistiller/models/cifar/vgg.py``): five
blocks of 3×3 convolutions (with bias) + batch norm + ReLU, 2×2 max pooling between the first
four, global average pooling and one linear layer from 512 features (no fully connected
hidden layers). Same layers, widths and parameter counts as the reference.

As in the reference, on 32×32 images there is no pooling between the fourth and fifth block (both
run at 4×4); the reference pools there only for 64×64 inputs (Tiny-ImageNet), and so does this
code for inputs of at least 64×64 pixels.

Initialisation as the reference: convolutions N(0, 2 / (k*k*out_channels)) with bias 0, batch
norm weight 1 and bias 0, the classifier N(0, 0.01²) with bias 0.

Features: ``stages`` holds the five blocks, each a :class:`~kdrun.models.stages.Stage` (the max
pooling before it, its layers up to the last batch norm, then ``preact`` and the ReLU), whose
outputs are the reference's feature list ``[f0, ..., f4]``; a hook on ``stages.N.preact`` gives the
reference's ``preact`` features (its last batch norm's output, before the ReLU; the references use
the activated ``f0`` for stage 0).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kdrun.models.stages import Stage, image_shape, init_weights, run_stages

# Each configuration: the widths of the five blocks' convolutions (RepDistiller's cfg "S", "A", "B", "D", "E").
CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class VGG(nn.Module):
    """RepDistiller's batch-norm VGG for small images; ``config`` names the block widths (a key of
    :data:`CONFIGS`, or five lists of convolution widths). ``stages``: the five blocks."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, config: "str | Sequence[Sequence[int]]" = "vgg13") -> None:
        super().__init__()
        in_channels, height, width = image_shape("vgg", input_shape, min_size=8)  # four 2x2 poolings from 8x8 leave 1x1 (five need 16x16)
        if isinstance(config, str):
            if config not in CONFIGS:
                raise ValueError(f"config={config!r}: choose one of {', '.join(CONFIGS)} or give five lists of widths")
            blocks = CONFIGS[config]
        else:
            blocks = tuple(tuple(int(w) for w in block) for block in config)
            if len(blocks) != 5 or any(not block or min(block) < 1 for block in blocks):
                raise ValueError(f"config={config!r}: give five non-empty lists of widths >= 1")
        pool_before_last = min(height, width) >= 64
        stages = []
        for i, block in enumerate(blocks):
            layers: list[nn.Module] = [nn.MaxPool2d(2)] if 0 < i < 4 or (i == 4 and pool_before_last) else []
            for out_channels in block:
                layers += [nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), nn.ReLU()]
                in_channels = out_channels
            stages.append(Stage(nn.Sequential(*layers[:-1]), nn.ReLU()))  # the last ReLU is the stage's, after preact
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self, linear="normal")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(run_stages(self.stages, x)).flatten(1))


def vgg8(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> VGG:
    """VGG-8 with batch norm (RepDistiller ``vgg8``, i.e. ``vgg8_bn``, cfg "S")."""
    return VGG(input_shape, num_classes, config="vgg8")


def vgg11(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> VGG:
    """VGG-11 with batch norm (RepDistiller ``vgg11``, i.e. ``vgg11_bn``, cfg "A")."""
    return VGG(input_shape, num_classes, config="vgg11")


def vgg13(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> VGG:
    """VGG-13 with batch norm (RepDistiller ``vgg13``, i.e. ``vgg13_bn``, cfg "B")."""
    return VGG(input_shape, num_classes, config="vgg13")


def vgg16(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> VGG:
    """VGG-16 with batch norm (RepDistiller ``vgg16``, i.e. ``vgg16_bn``, cfg "D")."""
    return VGG(input_shape, num_classes, config="vgg16")


def vgg19(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100) -> VGG:
    """VGG-19 with batch norm (RepDistiller ``vgg19``, i.e. ``vgg19_bn``, cfg "E")."""
    return VGG(input_shape, num_classes, config="vgg19")
