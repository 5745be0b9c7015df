"""The networks: built-in architectures by name, any ``nn.Module`` a config's ``_target_`` builds,
and checkpoints that rebuild their model from the file alone.

An architecture is called with keyword arguments ``input_shape`` (one example's shape, e.g.
``(784,)`` or ``(3, 32, 32)``) and ``num_classes``, plus its own settings, and returns a module
mapping ``[B, *input_shape]`` to ``[B, num_classes]`` logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence, Union

import torch
from torch import nn

from kdrun.models.mlp import MLP

__all__ = ["ARCHITECTURES", "MLP", "count_parameters", "create", "load"]

# Option name (conf/model/{teacher,student}/<name>.yaml) -> what builds it.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"mlp": MLP}


def create(name: str, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100, **settings: Any) -> nn.Module:
    """A built-in architecture by its option name, e.g. ``create("mlp", (784,), 10, hidden=[64])``."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name](input_shape=tuple(input_shape), num_classes=num_classes, **settings)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> nn.Module:
    """The model saved in a kdrun checkpoint (``teacher.pt``, ``distilled.pt``, ``baseline.pt``),
    rebuilt from what the file records (``ckpt["model"]``: the ``_target_`` that built it and its
    arguments) and loaded with its weights, in eval mode. The module named by ``_target_`` must be
    importable. ``ckpt["normalization"]`` holds the input statistics the model was trained with."""
    from hydra.utils import instantiate

    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    model = instantiate(checkpoint["model"], _convert_="all")
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
