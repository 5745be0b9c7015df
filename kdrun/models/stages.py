"""Pieces shared by the CIFAR knowledge-distillation benchmark architectures (``resnet.py``,
``wrn.py``, ``vgg.py``, ``mobilenetv2.py``, ``shufflenet.py``, ``lenet.py``): the input-shape check,
the :class:`Stage` wrapper that exposes a stage's pre-activation output, and the weight
initialisations of the reference code (RepDistiller, Tian et al., ICLR 2020; mdistiller).

Every benchmark network has a ``stages`` ``nn.ModuleList``; its forward runs the input through
``stages.0``, ``stages.1``, ... in order, then pools and classifies, so forward hooks on
``stages.N`` see the features the benchmarks' feature-based losses use (kdrun's ``auto`` layers).
"""

from __future__ import annotations

import math
import operator
from typing import Literal, Sequence

import torch
from torch import nn


def image_shape(name: str, input_shape: Sequence[int], min_size: int = 1) -> tuple[int, int, int]:
    """``input_shape`` as ``(channels, height, width)``, or a ValueError naming the architecture
    when it is not an image's shape or is smaller than ``min_size`` pixels on a side."""
    shape = tuple(input_shape)
    try:
        channels, height, width = (operator.index(d) for d in shape)
    except (TypeError, ValueError):  # not three whole numbers
        raise ValueError(f"{name} needs images [channels, height, width]; the data's examples are {shape} (an MLP takes them)") from None
    if channels < 1:
        raise ValueError(f"{name}: input_shape {shape} has {channels} channels; it needs at least 1")
    if min(height, width) < min_size:
        raise ValueError(f"{name} needs images of at least {min_size}x{min_size} pixels; the data's examples are {height}x{width} ({shape})")
    return channels, height, width


class Stage(nn.Module):
    """``body``, then ``preact`` (an ``nn.Identity``), then ``activation``: a network stage whose
    output before its last nonlinearity passes through ``preact``, so that a forward hook on
    ``stages.N.preact`` sees the stage's pre-activation features (the ``preact`` features of
    RepDistiller / mdistiller, which FitNet, OFD and others read) while ``stages.N`` gives the
    activated output. The body's last layer or block must therefore stop before its activation;
    the activation is not in place, so the pre-activation tensor a hook captures stays intact."""

    def __init__(self, body: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.preact = nn.Identity()
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.preact(self.body(x)))


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    """A bias-free ``kernel_size`` convolution (padding ``kernel_size // 2``) and batch norm."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(out_channels)]


def init_weights(model: nn.Module, linear: Literal["default", "zero_bias", "normal"] = "default") -> None:
    """The references' initialisation: every convolution's weight from N(0, 2 / (k*k*out_channels))
    (He / Kaiming normal, fan-out mode, which both ``kaiming_normal_(mode="fan_out")`` and the older
    ``normal_(0, sqrt(2 / n))`` code draw), its bias (if any) 0; batch norm weight 1, bias 0. The
    classifier: PyTorch's default (``"default"``, the ResNets), default weight and zero bias
    (``"zero_bias"``, the WRNs), or weight N(0, 0.01²) and zero bias (``"normal"``, VGG and
    MobileNetV2)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.out_channels * module.kernel_size[0] * module.kernel_size[1]
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and linear != "default":
            if linear == "normal":
                nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)


def run_stages(stages: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """``x`` through each stage in order (hooks on ``stages.N`` see each output)."""
    for stage in stages:
        x = stage(x)
    return x
