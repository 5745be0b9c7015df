"""A multilayer perceptron: the notebook's teacher and student, and Hinton et al.'s MNIST nets."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """inputs -> hidden[0] -> ... -> hidden[-1] -> num_classes, ReLU between, optional dropout
    after each hidden layer. Takes examples of any shape and flattens them itself.

    With hidden=[256, 256, 256] this is the notebook's TeacherModel (335,114 parameters for 784
    inputs and 10 classes); with hidden=[64] its StudentModel (50,890).
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = math.prod(input_shape)
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.network = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.flatten(1))
