"""The notebook's synthetic data set (``dataset=synthetic``, the default)."""

from __future__ import annotations

import torch


def make_synthetic(n_samples: int = 500, input_dim: int = 784, num_classes: int = 10, signal_scale: float = 0.5, seed: int = 42) -> dict:
    """N(0, 1) features plus a per-class signal of ``signal_scale`` * N(0, 1), drawn in the
    notebook's order from a generator seeded with ``seed``: the same tensors, bit for bit, as its
    cell after ``torch.manual_seed(seed)``. One pool of examples; kdrun splits it."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_samples, input_dim, generator=generator)
    y = torch.randint(0, num_classes, (n_samples,), generator=generator)
    for label in range(num_classes):
        class_signal = torch.randn(input_dim, generator=generator) * signal_scale
        x[y == label] += class_signal
    return {"train": (x, y), "num_classes": num_classes}
