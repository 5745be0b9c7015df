"""The Hydra task behind ``kdrun train``: one job, with its status recorded in the run directory.

A job's status.json says running, completed, failed or interrupted. A user's mistake (a bad
value, a missing data file) or a non-finite loss becomes one message and a failed status, never
a traceback (set HYDRA_FULL_ERROR=1 to see one); in a sweep the other jobs go on. Re-running a
sweep into the same directory skips the jobs that completed with the same config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kdrun import cli
from kdrun.reports import read_status, write_status

log = logging.getLogger("kdrun")

EXIT_FAILED = 1  # training went wrong (a non-finite loss)
EXIT_USAGE = 2  # the user's input was wrong
RESULT_UNCHANGED_KEYS = ("cache", "plots")  # keys that cannot change a job's results


def config_hash(cfg: DictConfig) -> str:
    plain = OmegaConf.to_container(cfg, resolve=True)
    for key in RESULT_UNCHANGED_KEYS:
        plain.pop(key, None)
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _handle_sigterm_as_interrupt():
    try:
        return signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    except ValueError:  # not the main thread (some launchers): leave signals alone
        return None


def _fail(run_dir: Path, code: int, message: str) -> float:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise
    log.error("%s", message)
    write_status(run_dir, "failed", message=message)
    cli.job_exit_codes.append(code)
    return math.nan


def train_task(cfg: DictConfig) -> float:
    """Run one experiment; return the distilled student's val accuracy (NaN if the job failed)."""
    from rich.console import Console

    from kdrun.config import ConfigError, validate
    from kdrun.data import DataError
    from kdrun.train import NonFiniteLossError

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    digest = config_hash(cfg)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        previous = read_status(run_dir)
        if previous and previous.get("status") == "completed" and previous.get("config_hash") == digest and (run_dir / "summary.csv").is_file():
            log.info("job %s completed in an earlier run of this sweep; skipped (%s)", hydra_cfg.job.num, run_dir)
            return float(previous["objective"])

    write_status(run_dir, "running", config_hash=digest, pid=os.getpid())
    previous_sigterm = _handle_sigterm_as_interrupt()
    try:
        validate(cfg)
        from kdrun.experiment import run_experiment

        console = Console()
        if not console.is_terminal:  # logs and CI: no terminal to measure, so room for the table
            console.width = max(console.width, 100)
        summary = run_experiment(cfg, run_dir, console)
    except (ConfigError, DataError) as error:
        return _fail(run_dir, EXIT_USAGE, str(error))
    except NonFiniteLossError as error:
        return _fail(run_dir, EXIT_FAILED, str(error))
    except ValueError as error:  # trainer.device names a device this machine lacks
        if not str(error).startswith("trainer."):
            raise
        return _fail(run_dir, EXIT_USAGE, str(error))
    except KeyboardInterrupt:
        write_status(run_dir, "interrupted", message="stopped by SIGINT or SIGTERM; metrics.csv holds the epochs finished before")
        raise
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    objective = summary["distilled"]["val_acc"]
    write_status(run_dir, "completed", config_hash=digest, objective=objective)
    return objective
