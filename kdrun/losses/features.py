"""Helpers for losses that read intermediate features: finding a network's layers by name and
the shapes of their outputs."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from kdrun.errors import ConfigError


def conv_stage_names(model: nn.Module) -> list[str]:
    """``stages.0``, ``stages.1``, ... for kdrun's convolutional networks (a ``stages``
    ModuleList); [] for a model without one."""
    stages = getattr(model, "stages", None)
    return [f"stages.{i}" for i in range(len(stages))] if isinstance(stages, nn.ModuleList) else []


def stage_names(model: nn.Module) -> list[str]:
    """The model's stages (:func:`conv_stage_names`), else the outputs of its ReLUs (an MLP's
    hidden layers)."""
    return conv_stage_names(model) or [name for name, module in model.named_modules() if isinstance(module, nn.ReLU)]


def feature_shapes(model: nn.Module, names: Sequence[str], inputs: torch.Tensor, role: str) -> dict[str, tuple[int, ...]]:
    """The shapes (batch dimension dropped) of the named submodules' outputs on ``inputs``,
    measured in eval mode without gradients."""
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        known = ", ".join(name for name in modules if name) or "none"
        raise ConfigError(f"the loss asks for {role} layers {missing}, which the {role} lacks; its submodules: {known}")
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [modules[n].register_forward_hook(lambda m, a, out, n=n: shapes.__setitem__(n, tuple(out.shape[1:]))) for n in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(inputs)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return shapes
