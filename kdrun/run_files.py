"""What a run leaves behind, and how it is written: the columns of its CSVs, its status file,
the list of its models, and writes that no reader ever sees half of. Imports no torch (kdrun
compare uses it too)."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from kdrun.interrupts import signals_held

MODELS = ("teacher", "distilled", "baseline")
# metrics.csv: these, then the named parts of the distilled student's loss (kd: soft_loss, hard_loss)
METRICS_COLUMNS = ["model", "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"]
SUMMARY_COLUMNS = [
    "model", "params", "epoch", "train_acc", "val_acc", "test_acc", "test_nll", "agreement",
    "dataset", "alpha", "temperature", "seed", "teacher_epochs", "student_epochs",
    "n_train", "n_transfer", "n_val", "n_test", "source", "train_seconds",
]  # fmt: skip
TIMING_COLUMNS = ("seconds", "train_seconds")


@dataclass(frozen=True)
class Metric:
    """A summary.csv column that runs are compared on, and how to show it."""

    column: str
    title: str
    percent: bool  # shown as a percentage, differences in points
    higher_is_better: bool


METRICS = {
    "test_acc": Metric("test_acc", "test accuracy", True, True),
    "val_acc": Metric("val_acc", "val accuracy", True, True),
    "test_nll": Metric("test_nll", "test NLL", False, False),
    "agreement": Metric("agreement", "test agreement with the teacher", True, True),
}


# Settings that do not change what a run measures: left out of run-folder names, of the digest
# that lets a rerun sweep skip its completed jobs, and of the settings kdrun compare tabulates.
RESULT_UNCHANGED_KEYS = (
    "trainer.device", "trainer.threads", "trainer.checkpoint_every", "trainer.keep_checkpoints",
    "cache.enabled", "cache.dir", "dataset.root", "plots", "logger",
)  # fmt: skip
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.csv"
CHECKPOINTS_DIR = "checkpoints"  # resumable training state, one file per model, while a run is unfinished
# What a finished job leaves besides metrics.csv, status.json and its log. A job that starts, fails
# or is interrupted removes these first, so that no stale or partial result looks like a finished run.
RESULT_FILES = ("summary.csv", *(f"{model}.pt" for model in MODELS), "curves.png", "temperature.png")


def natural_order(name: str) -> list:
    """A sort key that orders the numbers in names as numbers: job folders 2_, 10_; resnet8, resnet14."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def short_number(value: float, signed: bool = False) -> str:
    """A number for a table column: 4 decimals, or 3 significant digits once it is huge or tiny
    (a diverged run's NLL of 2e28 keeps the column narrow)."""
    if value != 0 and not 1e-3 <= abs(value) < 1e4:
        return f"{value:+.3g}" if signed else f"{value:.3g}"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _format(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)  # shortest round-trip form: identical runs give identical bytes
    return str(value)


def csv_text(rows: Iterable[dict], columns: Sequence[str], header: bool = True) -> str:
    """``rows`` as CSV text: floats in their shortest round-trip form (identical runs give
    identical bytes), NaN and None as empty cells."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if header:
        writer.writerow(columns)
    for row in rows:
        writer.writerow([_format(row.get(column)) for column in columns])
    return buffer.getvalue()


def replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` a temporary file beside ``path``, then rename it over ``path``: readers see
    the old file or the whole new one, never half of it; a failed write leaves no temporary.
    Ctrl-C, SIGTERM and a scheduler's SIGUSR1/2 take effect once the file is in place: raised
    inside a writer (torch.save's zip writer), they left it broken, and its error replaced the
    interruption."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with signals_held():
            write(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())

    replace_atomically(path, write)


def write_csv_atomic(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> None:
    write_text_atomic(path, csv_text(rows, columns))


class MetricsLog:
    """metrics.csv, one row appended and flushed per epoch, so that what was written before an
    interrupt stays readable. Each row goes out in a single write of whole lines. A row with
    columns the file lacks (a loss's named parts) rewrites the file with them, atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.columns = list(METRICS_COLUMNS)
        self.rows: list[dict] = []
        write_text_atomic(path, csv_text([], self.columns))

    def append(self, rows: Iterable[dict]) -> None:
        rows = list(rows)
        self.rows += rows
        new = [key for row in rows for key in row if key not in self.columns]
        if new:
            self.columns += list(dict.fromkeys(new))
            write_text_atomic(self.path, csv_text(self.rows, self.columns))
            return
        text = csv_text(rows, self.columns, header=False)
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


def remove_results(run_dir: Path, metrics: bool = False) -> None:
    """Delete the files of RESULT_FILES in ``run_dir`` (those present), and metrics.csv too if
    asked (a new run into the folder: its rows would be another run's)."""
    for name in (*RESULT_FILES, METRICS_FILE) if metrics else RESULT_FILES:
        (run_dir / name).unlink(missing_ok=True)


def has_checkpoints(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds resumable training state (kdrun.checkpoints)."""
    return any((run_dir / CHECKPOINTS_DIR).glob("*.pt"))


def remove_checkpoints(run_dir: Path) -> None:
    shutil.rmtree(run_dir / CHECKPOINTS_DIR, ignore_errors=True)
