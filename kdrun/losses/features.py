"""Helpers for losses that read intermediate features: finding a network's layers by name and
the shapes of their outputs."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kdrun.models import named_layers, watch_forward


def conv_stage_names(model: nn.Module) -> list[str]:
    """``stages.0``, ``stages.1``, ... for kdrun's convolutional networks (a ``stages``
    ModuleList); [] for a model without one."""
    stages = getattr(model, "stages", None)
    return [f"stages.{i}" for i in range(len(stages))] if isinstance(stages, nn.ModuleList) else []


def stage_names(model: nn.Module) -> list[str]:
    """The model's stages (:func:`conv_stage_names`), else the outputs of its ReLUs (an MLP's
    hidden layers)."""
    return conv_stage_names(model) or [name for name, module in model.named_modules() if isinstance(module, nn.ReLU)]


def feature_shapes(model: nn.Module, names: Sequence[str], inputs: torch.Tensor, role: str, setting: str) -> dict[str, tuple[int, ...]]:
    """The shapes (batch dimension dropped) of the named submodules' outputs on ``inputs``,
    measured in eval mode without gradients; ``setting`` is what chose the names."""
    modules = named_layers(model, names, role, setting)
    shapes: dict[str, tuple[int, ...]] = {}
    name_of = {modules[name]: name for name in names}
    watch_forward(model, inputs, name_of, lambda layer, output: shapes.__setitem__(name_of[layer], tuple(output.shape[1:])))
    return {name: shapes[name_of[modules[name]]] for name in names}
