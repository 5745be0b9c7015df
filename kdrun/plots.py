"""The figures of a run (and of a comparison). matplotlib is imported only when one is drawn, and
each figure is written to a temporary file and renamed, so no reader sees half an image.

Figures are kept cheap on purpose: a sweep draws them once per job, and a grid of bar-chart
axes cost seconds per figure here where a few line plots cost a fraction of one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

MODELS = ("teacher", "distilled", "baseline")


def new_figure(**kwargs: Any):
    """A matplotlib Figure drawn by the Agg canvas, without importing pyplot (0.7 s here)."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def savefig_atomic(fig, path: Path, **kwargs: Any) -> None:
    """Save ``fig`` beside ``path`` and rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def plot_curves(path: Path, history: Sequence[dict]) -> None:
    """Train loss and val accuracy per epoch, the three models on one figure."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(figsize=(11, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for model in MODELS:
        rows = [r for r in history if r["model"] == model]
        if not rows:
            continue
        epochs = [r["epoch"] for r in rows]
        loss_ax.plot(epochs, [r["train_loss"] for r in rows], marker=".", label=model)
        acc_ax.plot(epochs, [r["val_acc"] for r in rows], marker=".", label=model)
    loss_ax.set(title="Training loss", xlabel="epoch", ylabel="loss (distilled: its own objective)")
    loss_ax.set_yscale("log")
    acc_ax.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.91, wspace=0.22)  # tight_layout would draw twice
    savefig_atomic(fig, path, dpi=110)


def plot_temperature(
    path: Path, probabilities: dict[float, Sequence[Sequence[float]]], labels: Sequence[int], run_temperature: float
) -> None:
    """The trained teacher's softmax on a few held-out examples (one panel each), one line per
    temperature: how T spreads the probability mass over the wrong classes, which is what the
    student learns from. The run's own T is drawn thick."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    temperatures = sorted(probabilities)
    fig = new_figure(figsize=(4.2 * len(labels), 3.6))
    axes = fig.subplots(1, len(labels), squeeze=False, sharey=True)
    colours = colormaps["viridis"]
    for column, ax in enumerate(axes[0]):
        for rank, temperature in enumerate(temperatures):
            probs = probabilities[temperature][column]
            own = temperature == run_temperature
            ax.plot(
                range(len(probs)), probs, marker="o", markersize=4 if own else 3, linewidth=2.6 if own else 1.2,
                color="black" if own else colours(rank / max(1, len(temperatures) - 1)),
                label=f"T={temperature:g}" + (" (this run)" if own else ""),
            )  # fmt: skip
        ax.axvline(labels[column], color="tab:orange", alpha=0.35, linewidth=6)
        ax.set(title=f"held-out example {column} (true class {labels[column]})", xlabel="class", ylim=(0, 1.02))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("teacher probability")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle("The trained teacher's soft targets at several temperatures (orange band: true class)")
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.14, top=0.82, wspace=0.06)
    savefig_atomic(fig, path, dpi=100)
