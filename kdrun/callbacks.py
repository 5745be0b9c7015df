"""Hydra callbacks configured in conf/config.yaml (``hydra.callbacks``).

They run in the process that launched the sweep, whichever launcher ran the jobs (in-process,
joblib workers, submitit/SLURM), so they read what the jobs left on disk rather than anything
held in memory. Imports no torch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("kdrun")

FAILED_STATUSES = ("failed", "interrupted", "running")  # "running" after the sweep: the job died


class CompareOnMultirunEnd(Callback):
    """When a sweep ends, writes its comparison (comparison.csv, comparison_by_config.csv,
    heatmap.png) into the sweep directory and prints the table.

    It also turns failed jobs into a non-zero exit of ``kdrun train -m``: jobs run by another
    launcher live in other processes, so their exit codes never reach ``kdrun.cli``; their
    status.json files do. Only jobs whose status.json changed during this sweep count, so a
    failure left over from an earlier sweep into the same directory is not reported again.
    """

    def __init__(self) -> None:
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time() - 1.0  # file times can be coarser than time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from kdrun import figures

        figures.queue().settle()  # jobs run in this process complete once their figures are written
        try:
            self._compare(Path(str(config.hydra.sweep.dir)))
        except Exception as error:  # never fail a finished sweep over its summary table
            log.warning("kdrun: could not compare the runs of this sweep: %s: %s", type(error).__name__, error)

    def _compare(self, sweep_dir: Path) -> None:
        from kdrun import cli, compare

        if not sweep_dir.is_dir() or not compare.find_run_dirs(sweep_dir):
            return
        print()
        comparison = compare.compare([sweep_dir], out=sweep_dir)
        failed = [r for r in comparison.runs if r.status in FAILED_STATUSES and self._touched(r.path)]
        if failed:
            log.error("kdrun: %d of the sweep's jobs did not complete: %s", len(failed), ", ".join(r.path.name for r in failed))
            cli.job_exit_codes.append(1)

    def _touched(self, run_dir: Path) -> bool:
        try:
            return (run_dir / "status.json").stat().st_mtime >= self.started
        except OSError:
            return False
