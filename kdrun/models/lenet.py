"""LeNet-5 (LeCun et al., Proc. IEEE 1998) in its usual modern form for 28×28 digits (MNIST): a
5×5 convolution to 6 channels with padding 2 (so 28×28 inputs stay 28×28, as the paper's 32×32
inputs padded MNIST digits), ReLU, 2×2 max pooling; a 5×5 convolution to 16 channels (no
padding), ReLU, 2×2 max pooling; then fully connected layers of 120 and 84 units (ReLU) and the
classifier. On 1×28×28 inputs with 10 classes that is 61,706 parameters (16·5·5 = 400 features
into the first fully connected layer); other image sizes change only that layer's input width.

As in that common form (not the paper's exact network), the scaled-tanh units become ReLUs, the
trainable subsampling layers become parameter-free max pooling, the second convolution sees all 6
input channels (the paper's C3 connects partially) and the classifier is a linear layer (not RBF
units); 61,706 parameters is this form's count. PyTorch's default initialisation.

Features: ``stages`` holds the two convolution stages (convolution, ReLU, pooling).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kdrun.models.stages import image_shape, run_stages


class LeNet5(nn.Module):
    """LeNet-5 for ``input_shape`` images of at least 12×12 pixels. ``stages``: the two
    convolution stages; then flattening and the 120-84-``num_classes`` fully connected layers."""

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        in_channels, height, width = image_shape("lenet5", input_shape, min_size=12)  # the second pooling needs a 2x2 map
        self.stages = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),
            nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)),
        ])  # fmt: skip
        features = 16 * ((height // 2 - 4) // 2) * ((width // 2 - 4) // 2)
        self.classifier = nn.Sequential(
            nn.Linear(features, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(run_stages(self.stages, x).flatten(1))


def lenet5(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10) -> LeNet5:
    """LeNet-5: conv 6 → conv 16 → 120 → 84 → classes (61,706 parameters for 1×28×28, 10 classes)."""
    return LeNet5(input_shape, num_classes)
