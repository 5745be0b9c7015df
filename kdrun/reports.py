"""What a run leaves behind: CSVs written so that no reader sees half a row, the status file,
plots, and the console table. Imports no torch; matplotlib is imported only to draw."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

METRICS_COLUMNS = ["model", "epoch", "train_loss", "soft_loss", "hard_loss", "train_acc", "val_loss", "val_acc", "seconds"]
SUMMARY_COLUMNS = [
    "model", "params", "train_acc", "val_acc", "test_acc", "test_nll", "agreement",
    "dataset", "alpha", "temperature", "seed", "teacher_epochs", "student_epochs",
    "n_train", "n_transfer", "n_val", "n_test", "source", "train_seconds",
]  # fmt: skip
TIMING_COLUMNS = ("seconds", "train_seconds")
MODELS = ("teacher", "distilled", "baseline")
STATUS_FILE = "status.json"
# What a finished job leaves besides metrics.csv, status.json and its log. A job that starts, fails
# or is interrupted removes these first, so that no stale or partial result looks like a finished run.
RESULT_FILES = ("summary.csv", "teacher.pt", "distilled.pt", "baseline.pt", "curves.png", "temperature.png")


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form: identical runs give identical bytes
    return str(value)


def _csv_text(rows: Iterable[dict], columns: Sequence[str], header: bool = True) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    for row in rows:
        writer.writerow([_format(row.get(column)) for column in columns])
    return buffer.getvalue()


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, then rename: readers see all or nothing."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_csv_atomic(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> None:
    write_text_atomic(path, _csv_text(rows, columns))


class MetricsLog:
    """metrics.csv, one row appended and flushed per epoch, so that what was written before an
    interrupt stays readable. Each row goes out in a single write of whole lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        write_text_atomic(path, _csv_text([], METRICS_COLUMNS))

    def append(self, rows: Iterable[dict]) -> None:
        text = _csv_text(rows, METRICS_COLUMNS, header=False)
        if text:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()


def write_status(run_dir: Path, status: str, **fields: Any) -> None:
    """status.json: running, completed, failed or interrupted, with a message where there is one."""
    record = {"status": status, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **fields}
    write_text_atomic(run_dir / STATUS_FILE, json.dumps(record, indent=2, sort_keys=True) + "\n")


def read_status(run_dir: Path) -> Optional[dict]:
    """The status record, or None when there is none or it cannot be read."""
    try:
        record = json.loads((run_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def remove_results(run_dir: Path) -> None:
    """Delete the files of RESULT_FILES in ``run_dir`` (those present)."""
    for name in RESULT_FILES:
        (run_dir / name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _savefig_atomic(fig, path: Path, **kwargs: Any) -> None:
    """Save a figure beside ``path`` and rename it into place: no reader sees half an image."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", **kwargs)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def plot_curves(path: Path, history: Sequence[dict]) -> None:
    """Train loss and val accuracy per epoch, the three models on one figure."""
    plt = _pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4))
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
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _savefig_atomic(fig, path, dpi=110)
    plt.close(fig)


def plot_temperature(path: Path, probabilities: dict[float, Sequence[Sequence[float]]], labels: Sequence[int], run_temperature: float) -> None:
    """The trained teacher's softmax on a few held-out examples (rows) at several temperatures
    (columns); the run's own temperature is marked."""
    plt = _pyplot()
    temperatures = sorted(probabilities)
    n_examples = len(labels)
    fig, axes = plt.subplots(n_examples, len(temperatures), figsize=(2.3 * len(temperatures), 1.9 * n_examples), squeeze=False, sharey=True)
    for column, temperature in enumerate(temperatures):
        for row in range(n_examples):
            ax = axes[row][column]
            probs = probabilities[temperature][row]
            colours = ["tab:orange" if k == labels[row] else "tab:blue" for k in range(len(probs))]
            ax.bar(range(len(probs)), probs, color=colours)
            ax.set_ylim(0, 1)
            ax.grid(axis="y", alpha=0.3)
            if row == 0:
                mark = " (this run)" if temperature == run_temperature else ""
                ax.set_title(f"T={temperature:g}{mark}", fontweight="bold" if mark else "normal")
            if column == 0:
                ax.set_ylabel(f"test #{row}\nlabel {labels[row]}")
    fig.suptitle("Trained teacher's soft targets on held-out examples (orange: true class)")
    fig.tight_layout()
    _savefig_atomic(fig, path, dpi=100)
    plt.close(fig)
