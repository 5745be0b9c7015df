"""Argument checks shared by the losses: each raises ``ValueError`` naming the argument, its value
and what is allowed (never ``assert``, which ``python -O`` strips); and the dtype losses compute in.
The checks of plain numbers use no torch, so that they could move to a module the torch-free
config schemas import."""

from __future__ import annotations

import math
from numbers import Real

import torch


def check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, Real):
        raise ValueError(f"temperature={temperature!r}: must be a real number > 0 (got {type(temperature).__name__})")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature={temperature!r}: must be finite and > 0")


def check_alpha(alpha: float) -> None:
    if isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise ValueError(f"alpha={alpha!r}: must be a real number in [0, 1] (got {type(alpha).__name__})")
    if not (math.isfinite(alpha) and 0.0 <= alpha <= 1.0):
        raise ValueError(f"alpha={alpha!r}: must be in [0, 1]")


def check_choice(name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}: must be one of {', '.join(map(repr, allowed))}")


def check_reduction(reduction: str, allowed: tuple[str, ...]) -> None:
    check_choice("reduction", reduction, allowed)


def check_at_least(name: str, value: float, low: float) -> None:
    """A finite real number >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and value >= low):
        raise ValueError(f"{name}={value!r}: must be a finite number >= {low:g}")


def check_weight(name: str, value: float) -> None:
    """A loss weight: a finite number >= 0."""
    check_at_least(name, value, 0.0)


def check_fraction(name: str, value: float) -> None:
    """A share of something, strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and 0 < value < 1):
        raise ValueError(f"{name}={value!r}: must be a number in (0, 1)")


def check_int_at_least(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r}: must be an integer >= {low}")


def check_float_tensor(name: str, value: object) -> None:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{name} must be a floating-point torch.Tensor (got {kind})")


def check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{name_a} and {name_b} must have the same shape: {name_a} has {tuple(a.shape)}, {name_b} has {tuple(b.shape)}"
        )


def check_logits(name: str, logits: torch.Tensor) -> None:
    check_float_tensor(name, logits)
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a class dimension last (got shape {tuple(logits.shape)})")


def check_labels(labels: object, logits: torch.Tensor) -> None:
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        kind = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be an integer torch.Tensor of class indices (got {kind})")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels must have one class index per row of student_logits: labels has shape {tuple(labels.shape)}, "
            f"student_logits has {tuple(logits.shape)} (expected labels of shape {tuple(logits.shape[:-1])})"
        )
    num_classes = logits.shape[-1]
    if labels.numel() and bool(((labels < 0) | (labels >= num_classes)).any()):
        bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
        raise ValueError(f"labels must lie in [0, {num_classes}) for {num_classes} classes (found {bad})")


def check_labels_given(loss: str, labels: object, why: str) -> None:
    """For a loss called with ``labels=None`` (a transfer set without labels) that cannot do without."""
    if labels is None:
        raise ValueError(f"{loss} needs labels ({why}); it was called with labels=None")


def check_positive(name: str, sigma: torch.Tensor) -> None:
    check_float_tensor(name, sigma)
    if bool((~(sigma > 0)).any()):  # ~(x > 0) also catches NaN
        bad = sigma[~(sigma > 0)].flatten()[0].item()
        raise ValueError(f"{name} must be > 0 everywhere (found {bad})")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)
