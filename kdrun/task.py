"""The Hydra task behind ``kdrun train``: one job, with its status recorded in the run directory.

A job's status.json says running, completed, failed or interrupted. A user's mistake (a bad
value, a missing data file, a folder that cannot be written) or a non-finite loss becomes one
message and a failed status, never a traceback (set HYDRA_FULL_ERROR=1 to see one); in a sweep
the other jobs go on. SIGINT and SIGTERM stop the job within a batch or so, mark it interrupted
and keep the metrics rows written so far. Re-running a sweep into the same directory skips the
jobs that completed with the same config and redoes the others.

A job that does not complete leaves no summary.csv and no model files (reports.RESULT_FILES), so
nothing in its folder looks like a finished run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kdrun import cli, figures, training_process
from kdrun.errors import EXIT_FAILED, EXIT_USAGE, failure_of
from kdrun.reports import read_status, remove_results, write_status
from kdrun.training_process import ExperimentFailed, TrainingProcessError

log = logging.getLogger("kdrun")

RESULT_UNCHANGED_KEYS = ("cache", "plots")  # keys that cannot change a job's results

# The signal that stopped this process (SIGINT or SIGTERM); None while none has.
received_signal: Optional[int] = None


def config_hash(cfg: DictConfig) -> str:
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in RESULT_UNCHANGED_KEYS:
        plain.pop(key, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- signals


def _raise_keyboard_interrupt(signum, frame):
    global received_signal
    received_signal = signum
    raise KeyboardInterrupt


def handle_sigterm_as_interrupt():
    """Make SIGTERM raise KeyboardInterrupt, as Ctrl-C does. Returns the previous handler to
    restore, or None where signals cannot be set (not the main thread, as in some launchers)."""
    try:
        return signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    except ValueError:
        return None


def note_signal(interruption: KeyboardInterrupt) -> None:
    """Keep the signal that stopped the training process (training_process.Interrupted) as the
    run's own, unless this process received one first."""
    global received_signal
    if received_signal is None:
        received_signal = getattr(interruption, "signum", None)


def signal_name() -> str:
    return signal.Signals(received_signal or signal.SIGINT).name


def interrupted_exit_code() -> int:
    """128 + the signal number, as shells report it: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(received_signal or signal.SIGINT)


# --------------------------------------------------------------------------- folders


def unwritable(path: Path) -> Optional[str]:
    """Why kdrun could not create or write the folder ``path``, or None if it can."""
    try:
        existing = path.absolute()
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"{existing} is a file, not a folder"
        if not os.access(existing, os.W_OK | os.X_OK):
            return f"no permission to write in {existing}"
    except OSError as error:
        return error.strerror or str(error)
    return None


class OutputDirCheck(Callback):
    """Checks hydra.run.dir / hydra.sweep.dir before Hydra creates it, so that a folder that
    cannot be written gives one message and exit code 2 instead of Hydra's traceback.
    conf/config.yaml lists it in hydra.callbacks."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_output_dir(config, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check_output_dir(config, "hydra.sweep.dir")


def _check_output_dir(config: DictConfig, key: str) -> None:
    try:
        value = OmegaConf.select(config, key)
    except Exception:  # an interpolation that does not resolve: Hydra reports it itself
        return
    if value is None:
        return
    problem = unwritable(Path(str(value)))
    if problem is None:
        return
    message = f"{key}={value} cannot be used as the output folder: {problem}. Choose a folder kdrun can create and write."
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise NotADirectoryError(message)
    print(f"kdrun ERROR: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _check_cache_dir(cfg: DictConfig) -> None:
    """Fail before any training if the model cache is on and its folder cannot be written."""
    from kdrun.config import ConfigError, model_cache_dir

    directory = model_cache_dir(cfg)
    if directory is None:
        return
    problem = unwritable(directory)
    if problem is not None:
        shown = repr(cfg.cache.dir) if cfg.cache.dir else f"null (the default, {directory})"
        raise ConfigError(
            f"cache.dir={shown} is not allowed: {problem}. Set cache.dir to a folder kdrun can write, or cache.enabled=false"
        )


# --------------------------------------------------------------------------- the task


def _fail(run_dir: Path, code: int, message: str, digest: str) -> float:
    """Record a failed job: one message on stderr, status failed, the exit code for cli.
    Called from an ``except`` block; with HYDRA_FULL_ERROR=1 it re-raises for the traceback."""
    figures.queue().discard(run_dir)
    remove_results(run_dir)
    write_status(run_dir, "failed", config_hash=digest, message=message)
    cli.job_exit_codes.append(code)
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise
    log.error("%s", message)
    return math.nan


def _finish(run_dir: Path, digest: str, objective: float, figure_error: Optional[str]) -> None:
    """A job whose figures were drawn after it returned: completed, or failed over a figure."""
    if figure_error is None:
        write_status(run_dir, "completed", config_hash=digest, objective=objective)
        return
    message = f"{run_dir}: {figure_error}"
    remove_results(run_dir)
    write_status(run_dir, "failed", config_hash=digest, message=message)
    cli.job_exit_codes.append(EXIT_FAILED)
    log.error("%s", message)


def _in_training_process(cfg: DictConfig, run_dir: Path, hydra_cfg: DictConfig) -> Optional[dict]:
    """Run the experiment in the training process started by ``kdrun train``, if there is one
    that can take it: its summary, or None (then it runs here)."""
    trainer = training_process.process()
    if not trainer.running():
        return None
    if (
        hydra_cfg.mode != RunMode.RUN  # a sweep without -m (hparams_search): its jobs run here
        or os.environ.get("HYDRA_FULL_ERROR") == "1"  # the traceback is wanted from here
        or hydra_cfg.job.env_set  # environment variables set for this job only
    ):
        trainer.stop()  # it would only hold a core and memory
        if cfg.plots:
            figures.queue().start()
        return None
    return trainer.run(OmegaConf.to_object(cfg), run_dir)


def train_task(cfg: DictConfig) -> float:
    """Run one experiment; return the distilled student's val accuracy (NaN if the job failed)."""
    from kdrun.config import ConfigError, validate

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    digest = config_hash(cfg)
    figures.queue().settle(block=False)  # earlier jobs of this sweep whose figures are now written
    if hydra_cfg.mode == RunMode.MULTIRUN:
        previous = read_status(run_dir)
        if (
            previous
            and previous.get("status") == "completed"
            and previous.get("config_hash") == digest
            and (run_dir / "summary.csv").is_file()
        ):
            log.info("job %s completed in an earlier run of this sweep; skipped (%s)", hydra_cfg.job.num, run_dir)
            return float(previous.get("objective", math.nan))

    previous_sigterm = handle_sigterm_as_interrupt()
    try:
        remove_results(run_dir)  # a rerun into the same folder: the old results no longer hold
        write_status(run_dir, "running", config_hash=digest, pid=os.getpid())
        try:
            validate(cfg)  # before torch is imported: a bad value fails in about a second
            _check_cache_dir(cfg)
        except ConfigError as error:
            return _fail(run_dir, EXIT_USAGE, str(error), digest)

        # In a sweep run by this process, the next job starts while this one's figures are drawn;
        # the job counts as completed once they are written.
        defer = bool(cfg.plots) and figures.defer_in_sweeps and hydra_cfg.mode == RunMode.MULTIRUN
        try:
            summary = _in_training_process(cfg, run_dir, hydra_cfg) if not defer else None
            if summary is None:
                from kdrun.experiment import make_console, run_experiment

                summary = run_experiment(OmegaConf.to_object(cfg), run_dir, make_console(), wait_for_figures=not defer)
        except ExperimentFailed as failure:
            return _fail(run_dir, failure.code, str(failure), digest)
        except TrainingProcessError:
            raise  # a bug in kdrun (failure_of would import torch here only to say so)
        except Exception as error:
            failure = failure_of(error)
            if failure is None:
                raise
            return _fail(run_dir, *failure, digest)
        objective = summary["distilled"]["val_acc"]
        if defer:
            figures.queue().when_written(run_dir, lambda error: _finish(run_dir, digest, objective, error))
        else:
            write_status(run_dir, "completed", config_hash=digest, objective=objective)
        return objective
    except KeyboardInterrupt as interruption:
        note_signal(interruption)
        try:
            figures.queue().settle()  # the earlier jobs of a sweep complete
        finally:
            figures.queue().discard(run_dir)
        remove_results(run_dir)
        write_status(
            run_dir,
            "interrupted",
            config_hash=digest,
            signal=signal_name(),
            message=f"stopped by {signal_name()}; metrics.csv holds the epochs finished before",
        )
        raise
    except Exception as error:  # a bug in kdrun: record it; Hydra prints the traceback
        if (read_status(run_dir) or {}).get("status") != "failed":
            figures.queue().discard(run_dir)
            remove_results(run_dir)
            write_status(run_dir, "failed", config_hash=digest, message=f"internal error: {type(error).__name__}: {error}")
        raise
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
