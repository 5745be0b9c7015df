"""What a run shows on the terminal: a progress bar per model (plain log lines when the output
is not a terminal) and the results table."""

from __future__ import annotations

import logging
import math
import os
from typing import Optional

from rich.console import Console
from rich.table import Table

from kdrun.run_files import MODELS, short_number

log = logging.getLogger("kdrun")


def make_console(min_width: int = 100) -> Console:
    """A console as wide as the terminal (or $COLUMNS); without either (logs, CI) ``min_width``."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:  # no width to measure: room for the table
        console.width = max(console.width, min_width)
    return console


class Progress:
    """``with Progress(console, "teacher", 20) as progress: progress.update(row)`` per epoch."""

    def __init__(self, console: Console, name: str, epochs: int) -> None:
        self.console, self.name, self.epochs = console, name, epochs
        self.bar = None

    def __enter__(self) -> "Progress":
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self.bar = RichProgress(
                TextColumn(f"{self.name:<9}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), console=self.console, transient=False,
            )  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task(self.name, total=self.epochs, info="")
        return self

    def update(self, row: dict) -> None:
        info = f"loss {row['train_loss']:.4g}  val acc {row['val_acc']:.2%}"
        if self.bar is not None:
            self.bar.update(self.task, advance=1, info=info)
        elif row["epoch"] == self.epochs or row["epoch"] % max(1, self.epochs // 4) == 0:
            log.info("%-9s epoch %d/%d  %s", self.name, row["epoch"], self.epochs, info)
        else:
            log.debug("%-9s epoch %d/%d  %s", self.name, row["epoch"], self.epochs, info)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2%}"


def print_summary(console: Optional[Console], summary: dict[str, dict]) -> None:
    """The results table (one row per model), then the improvement and the gap in points."""
    table = Table(title="Accuracy on each split; test NLL; top-1 agreement with the teacher on test")
    for column in ("model", "params", "train", "val", "test", "test NLL", "agree", "source"):
        table.add_column(column, justify="left" if column in ("model", "source") else "right", no_wrap=True)
    for row in summary.values():
        nll = "-" if math.isnan(row["test_nll"]) else short_number(row["test_nll"])
        table.add_row(
            row["model"], f"{row['params']:,}", _percent(row["train_acc"]), _percent(row["val_acc"]), _percent(row["test_acc"]),
            nll, _percent(row["agreement"]), row["source"].replace("_", " "),
        )  # fmt: skip
    (console or make_console()).print(table)
    teacher, distilled, baseline = (summary[m]["test_acc"] for m in MODELS)
    improvement = "n/a (baseline not trained)" if math.isnan(baseline) else f"{(distilled - baseline) * 100:+.1f} points"
    log.info("Distillation improvement (distilled - baseline, test accuracy): %s", improvement)
    log.info("Gap from teacher (teacher - distilled, test accuracy): %+.1f points", (teacher - distilled) * 100)
