"""The teacher and student networks: plain MLPs whose sizes come from config and the dataset."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """input_dim -> hidden[0] -> ... -> hidden[-1] -> num_classes, ReLU between, optional dropout.

    With hidden=[256, 256, 256] this is the notebook's TeacherModel (335,114 parameters for
    784 inputs and 10 classes); with hidden=[64] its StudentModel (50,890).
    """

    def __init__(self, input_dim: int, hidden: Sequence[int], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.network = nn.Sequential(*layers)
        self.input_dim, self.hidden, self.num_classes, self.dropout = input_dim, list(hidden), num_classes, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
