"""Weights from a file into a built network: a teacher trained elsewhere (``model.teacher.checkpoint``).

Reads a kdrun checkpoint (``teacher.pt``: ``{"state_dict", ...}``), a checkpoint that keeps its
weights under ``"model"`` or ``"state_dict"`` (as many training scripts do; the parameter names
must still be the configured network's), a plain ``state_dict`` (``.pt`` / ``.pth``), or
``.safetensors`` when that package is installed. A file
that cannot be read, weights that do not fit the network, or NaN or inf weights, is one
ConfigError naming the file and the keys or shapes at fault.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from kdrun.errors import ConfigError


def read_state_dict(path: Union[str, Path], key: str) -> tuple[dict[str, torch.Tensor], Optional[dict]]:
    """The tensors of the weights file ``path`` (``key``: the setting that named it, for messages),
    and ``{"normalization": ...}`` where the file records its inputs' scaling (a kdrun checkpoint;
    the value is None when inputs were not standardised), else None."""
    path = Path(path).expanduser()
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "no such file"
        raise ConfigError(f"{key}={path}: {what} (give a .pt, .pth or .safetensors file of the teacher's weights)")
    try:
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import load_file
            except ImportError:
                raise ConfigError(f"{key}={path}: reading .safetensors needs the safetensors package (pip install safetensors)") from None
            loaded = load_file(str(path))
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(f"{key}={path} cannot be read as weights ({type(error).__name__}: {error}); expected a state_dict saved with torch.save") from None
    recorded = {"normalization": loaded["normalization"]} if isinstance(loaded, dict) and "normalization" in loaded else None
    for field in ("state_dict", "model"):  # a checkpoint that keeps its weights under a key
        if isinstance(loaded, dict) and isinstance(loaded.get(field), dict):
            loaded = loaded[field]
            break
    if not isinstance(loaded, dict) or not loaded or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ConfigError(f"{key}={path} holds no state_dict (a dict of tensors, or one under 'state_dict' or 'model')")
    return loaded, recorded


def load_weights(model: nn.Module, path: Union[str, Path], key: str) -> Optional[dict]:
    """Load the weights file ``path`` into ``model``; every key and shape must match. Returns
    ``{"normalization": ...}`` where the file records its inputs' scaling (kdrun checkpoints), else None."""
    state, recorded = read_state_dict(path, key)
    own = model.state_dict()
    missing = [name for name in own if name not in state]
    unexpected = [name for name in state if name not in own]
    wrong = [f"{name} {tuple(state[name].shape)} (the model's: {tuple(own[name].shape)})" for name in own if name in state and state[name].shape != own[name].shape]
    problems = []
    for what, names in (("missing", missing), ("not in the model", unexpected), ("of other shapes", wrong)):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            problems.append(f"{what}: {shown}")
    if problems:
        raise ConfigError(f"{key}={path} does not fit the configured teacher ({type(model).__name__}): weights {'; '.join(problems)}")
    broken = [name for name, tensor in state.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if broken:  # a teacher that would score near chance, or pass NaN on as the students' targets
        shown = ", ".join(broken[:5]) + (f" and {len(broken) - 5} more" if len(broken) > 5 else "")
        raise ConfigError(f"{key}={path} holds NaN or inf weights: {shown}")
    model.load_state_dict(state)
    return recorded
