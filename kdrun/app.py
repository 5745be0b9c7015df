"""``kdrun train`` and ``kdrun.run()``: one job, run in the calling process, its status recorded.

A job's status.json says running, completed, failed or interrupted, and ``_run_job`` is the one
place that writes it. A user's mistake (a bad value, a missing data file, a folder that cannot be
written) or a non-finite loss becomes one message and a failed status, never a traceback; in a
sweep the other jobs go on, and the sweep ends with the exit code of its worst job. SIGINT and
SIGTERM stop the job within a batch or so, mark it interrupted and keep the metrics rows written
so far. A job that does not complete leaves no summary.csv and no model files
(run_files.RESULT_FILES), so nothing in its folder looks like a finished run.

In a sweep run by kdrun's launcher, ``train_together`` first trains the models of the jobs that
can train together (kdrun.groups), each job's status saying running meanwhile (or interrupted);
each job then takes its models when it runs, and those left when the sweep stops say interrupted
(``stop_trained_jobs``).

Running a job again into its folder continues it from its checkpoints (kdrun.checkpoints) when it
did not complete (interrupted, failed, or killed: a ``running`` status whose process is gone) and
its config is the same; an unfinished run of another config there is refused. Re-running a sweep
into the same directory skips the jobs that completed with the same config and continues or
redoes the others.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

from kdrun.config import (
    compose, config_dir, config_error_message, config_hash, model_cache_dir, register_configs, searchpath, suggest_key, teacher_file_digest,
    user_config_dirs, validate, without_hydra,
)  # fmt: skip
from kdrun.errors import EXIT_FAILED, EXIT_USAGE, ConfigError, JobFailed, failure_of, raised_at
from kdrun.interrupts import signal_of, signals_held, sigterm_interrupts
from kdrun.run_files import STATUS_FILE, has_checkpoints, read_status, remove_checkpoints, remove_results, replace_atomically, write_status

if TYPE_CHECKING:
    import pandas
    from torch import nn

    from kdrun.experiment import RunResult

log = logging.getLogger("kdrun")

# HYDRA_FULL_ERROR=1 as the user set it (kdrun train sets it for Hydra, to hear of every mistake).
_show_tracebacks = False
# The run folder BeforeRun created for this process's single run, and the folders it had to create
# above it: removed again if the run is refused.
_created_run_dir: Optional[Path] = None
_created_parents: list[Path] = []
# A sweep's multirun.yaml as it was before this command, and when the command began: a sweep
# refused before any job ran puts it back (or removes the folder it created).
_earlier_multirun: Optional[tuple[Path, Optional[bytes], float]] = None


# --------------------------------------------------------------------------- one job


def _unwritable(path: Path) -> Optional[str]:
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


def _created(path: Path) -> Optional[str]:
    """Create the folder ``path`` (and those above it); None, or why kdrun cannot create or write it
    (access() tells most; the mkdir the rest: /proc takes no folders, a read-only mount)."""
    problem = _unwritable(path)
    if problem is None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            problem = error.strerror or str(error)
    return problem


def _make_folder(path: Path, key: str) -> None:
    """Create the run or sweep folder ``path``; whatever stops it is one ConfigError naming it."""
    problem = _created(path)
    if problem is not None:
        raise ConfigError(f"{key}={path} cannot be used as the output folder: {problem}. Choose a folder kdrun can create and write.")


def _check_cache_dir(cfg: DictConfig) -> None:
    """Fail before any training if the model cache is on and its folder cannot be created or written."""
    directory = model_cache_dir(cfg)
    problem = _created(directory) if directory is not None else None
    if problem is not None:
        shown = repr(cfg.cache.dir) if cfg.cache.dir else f"null (the default, {directory})"
        raise ConfigError(f"cache.dir={shown} is not allowed: {problem}. Set cache.dir to a folder kdrun can write, or cache.enabled=false")


def _still_running(status: dict) -> bool:
    """Whether ``status`` is that of a kdrun process still alive on this machine (another one)."""
    pid = status.get("pid")
    if status.get("status") != "running" or status.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False  # on another machine: a job requeued elsewhere takes over its folder
    if pid == os.getpid() or os.name == "nt":  # (os.kill would end the process on Windows)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


def _check_not_taken(run_dir: Path, digest: str, overrides: Sequence[str]) -> dict:
    """Refuse ``run_dir`` (ConfigError) if a live kdrun process runs there, or if it holds an
    unfinished run of other settings (checkpoints to continue): that run's files stay untouched.
    ``overrides``: this command's, to tell its own run read otherwise. Returns the status.json
    there (empty if none)."""
    previous = read_status(run_dir) or {}
    if _still_running(previous):
        raise ConfigError(
            f"{run_dir} is in use: kdrun process {previous['pid']} has been running there since {previous.get('time')}; "
            "wait for it, stop it, or choose another folder"
        )
    if has_checkpoints(run_dir) and previous.get("status") != "completed" and previous.get("config_hash") != digest:
        settings = " ".join(previous.get("overrides") or []) or "the defaults"
        delete = f"choose another folder, or delete {run_dir / 'checkpoints'} to start this run there"
        if list(previous.get("overrides") or []) == list(overrides):  # the same command, read otherwise
            raise ConfigError(
                f"{run_dir} holds an unfinished run of this same command ({settings}) whose settings came out otherwise (another "
                f"kdrun version, or a config or teacher file changed since): continue it as it was started, {delete}"
            )
        raise ConfigError(
            f"{run_dir} holds an unfinished run of other settings ({settings}), with checkpoints to continue it: "
            f"run that command again to continue it, {delete}"
        )
    return previous


def _resumable(run_dir: Path, digest: str, overrides: Sequence[str]) -> bool:
    """Whether ``run_dir`` holds an unfinished run of this config to continue from its
    checkpoints; refuses it as ``_check_not_taken`` does."""
    previous = _check_not_taken(run_dir, digest, overrides)
    return has_checkpoints(run_dir) and previous.get("status") != "completed"


def _how_stopped(interruption: BaseException) -> tuple[str, dict[str, Any]]:
    """What stopped a job (SIGINT, SIGTERM, a scheduler's exit, or an error elsewhere in its sweep), in
    words and as status fields."""
    if isinstance(interruption, KeyboardInterrupt):
        stopped_by = signal_of(interruption)
        return f"stopped by {stopped_by.name}", {"signal": stopped_by.name, "exit_code": 128 + int(stopped_by)}
    if not isinstance(interruption, SystemExit):  # an error in another job's code ended the sweep
        return f"stopped by an error elsewhere in its sweep ({type(interruption).__name__})", {"exit_code": EXIT_FAILED}
    code = interruption.code if isinstance(interruption.code, int) else EXIT_FAILED
    return "stopped (its process was told to exit)", {"exit_code": code}


def _settings_record(cfg: DictConfig, overrides: Sequence[str]) -> dict[str, Any]:
    """What status.json records of a run's settings: their digest, the command's overrides and,
    for a teacher from model.teacher.checkpoint, the file's sha256 (by which kdrun compare keeps
    runs of different files apart)."""
    record: dict[str, Any] = {"config_hash": config_hash(cfg), "overrides": list(overrides)}
    teacher = teacher_file_digest(cfg)
    if teacher is not None:
        record["teacher_sha256"] = teacher
    return record


_SETTINGS_FIELDS = ("config_hash", "overrides", "teacher_sha256")  # of status.json: see _settings_record


def _mark_failed(run_dir: Path, previous: dict, error: BaseException) -> None:
    """status.json says failed, with ``error``'s exit code and one line of it (where it was raised,
    for a bug), keeping the settings its previous status recorded."""
    kept = {key: previous[key] for key in _SETTINGS_FIELDS if key in previous}
    code, message = failure_of(error) or (EXIT_FAILED, f"{type(error).__name__}: {error} (raised at {raised_at(error)})")
    write_status(run_dir, "failed", **kept, exit_code=code, message=message.splitlines()[0] if message else "")


def _mark_interrupted(run_dir: Path, previous: dict, fields: dict[str, Any], message: str) -> None:
    """status.json says interrupted, keeping the settings its previous status recorded."""
    kept = {key: previous[key] for key in _SETTINGS_FIELDS if key in previous}
    write_status(run_dir, "interrupted", **kept, **fields, message=message)


# Models trained before their jobs ran, with the other jobs of their sweep (``train_together``):
# job folder -> (its data, loss and models: experiment.Prepared; its trained models by name).
_trained_before: dict[str, tuple[Any, dict[str, Any]]] = {}


def completed_earlier(cfg: DictConfig, run_dir: Path) -> bool:
    """Whether a sweep's job completed in an earlier run of the sweep, with these settings."""
    previous = read_status(run_dir)
    return bool(previous) and previous.get("status") == "completed" and previous.get("config_hash") == config_hash(cfg) and (run_dir / "summary.csv").is_file()


def train_together(configs: Sequence[DictConfig], tasks: Sequence[DictConfig], run_dirs: Sequence[Path], memory_mb: float) -> None:
    """Before a sweep's jobs run: train the models of the jobs that can train together
    (kdrun.groups), for each job to take when it runs. Their status.json says running meanwhile,
    and interrupted if the training is stopped. Jobs that completed before, or that continue from
    their checkpoints, are left to run as they would alone. ``tasks``: the configs without
    Hydra's node (``without_hydra``)."""
    from kdrun import groups

    todo = [i for i, task in enumerate(tasks) if not completed_earlier(task, run_dirs[i]) and not has_checkpoints(run_dirs[i])]
    planned, alone = groups.plan([tasks[i] for i in todo])
    for position, reason in sorted(alone.items()):
        log.info("kdrun: job %d trains alone: %s", configs[todo[position]].hydra.job.num, reason)
    for group in planned:
        jobs = [todo[position] for position in group]
        records = {i: _settings_record(tasks[i], configs[i].hydra.overrides.task) for i in jobs}
        for i in jobs:
            write_status(run_dirs[i], "running", **records[i], pid=os.getpid(), host=socket.gethostname())
        failed: dict[int, Exception] = {}  # by position in jobs
        try:
            with sigterm_interrupts():
                setups, trained = groups.train_group([tasks[i] for i in jobs], [run_dirs[i] for i in jobs], memory_mb, failed)
        except (KeyboardInterrupt, SystemExit) as interruption:
            how, fields = _how_stopped(interruption)
            message = f"{how} while it trained with other jobs of the sweep; to continue, run the same command again with hydra.sweep.dir={configs[jobs[0]].hydra.sweep.dir}"
            with signals_held():
                for position, i in enumerate(jobs):
                    remove_results(run_dirs[i])
                    if position in failed:  # a NaN before the interruption: the job failed, as it would have said
                        _mark_failed(run_dirs[i], records[i], failed[position])
                    else:
                        _mark_interrupted(run_dirs[i], records[i], fields, message)
            raise
        except Exception as error:
            if _show_tracebacks and not isinstance(error, groups.Unstackable):
                raise
            numbers = ", ".join(str(configs[i].hydra.job.num) for i in jobs)
            failure = None if isinstance(error, groups.Unstackable) else failure_of(error)
            if isinstance(error, groups.Unstackable) or failure is not None:  # a user's mistake: each job will say it
                log.info("kdrun: jobs %s train one by one: %s", numbers, str(error) if failure is None else failure[1])
            else:
                log.warning("kdrun: jobs %s train one by one: training them together failed (internal error: %s: %s)", numbers, type(error).__name__, error)
            continue
        for i, setup, models in zip(jobs, setups, trained):
            _trained_before[os.path.abspath(run_dirs[i])] = (setup, models)


def stop_trained_jobs(stop: BaseException, sweep_dir: Path) -> None:
    """After a sweep stopped (``stop``) before all of its jobs ran: the jobs whose models trained
    together but that never ran say interrupted (their status said running), and their models are
    dropped. A rerun continues them from their checkpoints, or trains them again."""
    how, fields = _how_stopped(stop)
    message = f"{how} before this job wrote its results; to continue, run the same command again with hydra.sweep.dir={sweep_dir}"
    with signals_held():
        for run_dir in list(_trained_before):
            _, models = _trained_before.pop(run_dir)
            previous = read_status(Path(run_dir)) or {}
            error = next((model.error for model in models.values() if model.error is not None), None)
            if error is not None:  # its models failed (a NaN): so did the job
                _mark_failed(Path(run_dir), previous, error)
            else:
                _mark_interrupted(Path(run_dir), previous, fields, message)


def stop_jobs_not_started(stop: BaseException, sweep_dir: Path, jobs: Sequence[tuple[DictConfig, Path, Sequence[str]]]) -> None:
    """After a sweep stopped (``stop``) before some of ``jobs`` (task config, folder, overrides)
    started: each whose folder holds no status.json says interrupted, so that kdrun compare lists
    it; the same command again runs it."""
    how, fields = _how_stopped(stop)
    message = f"{how} before this job started; to run it, run the same command again with hydra.sweep.dir={sweep_dir}"
    with signals_held():
        for task, run_dir, overrides in jobs:
            if not (run_dir / STATUS_FILE).exists():
                _mark_interrupted(run_dir, _settings_record(task, overrides), fields, message)


def stop_jobs_left_running(sweep_dir: Path, stop: BaseException, wait_s: float = 10.0) -> None:
    """After a sweep whose jobs ran in other processes (a launcher's workers) stopped (``stop``),
    and those processes with it: every job below ``sweep_dir`` whose status still says running in
    a process of this machine says interrupted once that process is gone (waiting up to
    ``wait_s`` for it). A worker ended without a chance to record its job leaves it so."""
    how, fields = _how_stopped(stop)
    message = f"{how} with its sweep; to continue, run the same command again with hydra.sweep.dir={sweep_dir}"
    left = [path.parent for path in sweep_dir.glob("**/status.json") if ".submitit" not in path.parts]
    deadline = time.monotonic() + wait_s
    with signals_held():
        while left:
            for run_dir in list(left):
                status = read_status(run_dir) or {}
                if status.get("status") != "running" or status.get("host") != socket.gethostname() or status.get("pid") == os.getpid():
                    left.remove(run_dir)  # not a worker's job left running
                elif not _still_running(status):
                    _mark_interrupted(run_dir, status, fields, message)
                    left.remove(run_dir)
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.1)


def _run_job(cfg: DictConfig, run_dir: Path, overrides: Sequence[str], again: str) -> "RunResult":
    """Run one experiment into ``run_dir``, its status.json saying how it went, or continue it
    from its checkpoints. Raises what stopped it (after recording it), ``failure_of`` telling a
    user's mistake from a bug. ``overrides``: the command's settings (recorded, and given to the
    trackers); ``again``: how to continue the run if it stops ("run the same command again")."""
    record = _settings_record(cfg, overrides)
    digest = record["config_hash"]
    setup, trained = _trained_before.pop(os.path.abspath(run_dir), (None, None))
    if trained is not None:  # its models trained with other jobs of the sweep, just now
        remove_results(run_dir, metrics=True)
    elif _resumable(run_dir, digest, record["overrides"]):
        remove_results(run_dir)
        log.info("kdrun: continuing the unfinished run in %s from its checkpoints", run_dir)
    else:
        remove_results(run_dir, metrics=True)  # a rerun into the same folder: the old results no longer hold
        remove_checkpoints(run_dir)
    write_status(run_dir, "running", **record, pid=os.getpid(), host=socket.gethostname())
    try:
        validate(cfg)  # before torch is imported: a bad value fails in about a second
        _check_cache_dir(cfg)
        from kdrun.experiment import run_experiment

        tags = {"overrides": " ".join(overrides), "seed": str(cfg.trainer.seed)}
        result = run_experiment(cfg, run_dir, tags=tags, trained=trained, setup=setup)
    except (KeyboardInterrupt, SystemExit) as interruption:  # SystemExit: a scheduler's handler (submitit) ends the job
        with signals_held():
            remove_results(run_dir)
            how, fields = _how_stopped(interruption)
            message = f"{how}; metrics.csv holds the epochs finished before"
            if has_checkpoints(run_dir):
                message += f"; to continue from the last checkpoint, {again}"
            _mark_interrupted(run_dir, record, fields, message)
        log.warning("%s", message)
        raise
    except BaseException as error:
        with signals_held():
            remove_results(run_dir)
            _mark_failed(run_dir, record, error)
        raise
    write_status(run_dir, "completed", **record, objective=result.objective)
    return result


# Sweepers that run a fixed grid: a failed job returns NaN to them, and the sweep goes on.
_SWEEPERS_THAT_IGNORE_RESULTS = ("hydra_plugins.kdrun_sweeps.sweeps.KdrunSweeper", "hydra._internal.core_plugins.basic_sweeper.BasicSweeper")


def train_task(cfg: DictConfig) -> float:
    """The Hydra task behind ``kdrun train``: one job; returns the distilled student's val
    accuracy, the number sweepers optimise (if the job failed: NaN to a sweep over a fixed grid,
    and JobFailed raised to a sweeper that learns from the results, such as Optuna's).

    A user's mistake or a non-finite loss is logged as one line ("kdrun ERROR: ...") and ends a
    single run with its exit code; in a sweep it ends that job alone, and ``SweepEnd`` turns the
    recorded statuses into the sweep's exit code."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir).absolute()
    sweep = hydra_cfg.mode == RunMode.MULTIRUN
    overrides = list(hydra_cfg.overrides.task)
    again = f"run the same command again with hydra.sweep.dir={hydra_cfg.sweep.dir}" if sweep else (
        "run the same command again" if run_dir != _created_run_dir else f"run the same command again with hydra.run.dir={run_dir}"
    )  # fmt: skip
    if sweep and completed_earlier(cfg, run_dir):
        log.info("job %s completed in an earlier run of this sweep; skipped (%s)", hydra_cfg.job.num, run_dir)
        return float((read_status(run_dir) or {}).get("objective", math.nan))
    with sigterm_interrupts():
        try:
            return _run_job(cfg, run_dir, overrides, again).objective
        except Exception as error:
            failure = failure_of(error)
            if failure is None or _show_tracebacks:
                raise  # a bug in kdrun (or HYDRA_FULL_ERROR=1): its traceback
            log.error("%s", failure[1])
            if sweep and hydra_cfg.sweeper.get("_target_") in _SWEEPERS_THAT_IGNORE_RESULTS:
                return math.nan
            if sweep:  # Optuna's: NaN is no value to learn from, an exception a failed trial
                raise JobFailed(failure[1], failure[0]) from None
            if failure[0] == EXIT_USAGE and run_dir == _created_run_dir:
                _remove_created_folders()  # a refused command leaves no folder
            raise SystemExit(failure[0]) from None


def _forget_refused_sweep() -> None:
    """After a sweep refused before any of its jobs ran (a value out of range in one of them):
    the sweep folder this command created is removed, or the multirun.yaml it replaced in an
    earlier sweep's folder is put back, so the folder never describes a sweep that did not run."""
    if _earlier_multirun is None:
        return
    record, earlier, started = _earlier_multirun
    created = _created_run_dir == record.parent
    if any(created or status.stat().st_mtime >= started for status in record.parent.rglob(STATUS_FILE)):
        return  # some job ran (an earlier batch of this sweep): the record is this sweep's
    if created:
        _remove_created_folders()
    elif earlier is not None:
        replace_atomically(record, lambda tmp: tmp.write_bytes(earlier))
    else:
        record.unlink(missing_ok=True)


def _remove_created_folders() -> None:
    shutil.rmtree(_created_run_dir, ignore_errors=True)
    for folder in _created_parents:  # innermost first; one another run uses now is not empty
        try:
            folder.rmdir()
        except OSError:
            break


# --------------------------------------------------------------------------- callbacks (conf/config.yaml)


class BeforeRun(Callback):
    """Checks a run's settings before Hydra creates its folder, so that a rejected command leaves
    none behind; then creates the run or sweep folder, so that one that cannot be created is one
    message (exit 2) instead of Hydra's traceback. A run folder named by the clock (the default)
    that another run took in the same second gets a suffix (-2, -3, ...): runs never share one."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            if not _show_tracebacks:  # else the job's own check raises, with its traceback
                task = without_hydra(config)
                validate(task)
                _check_cache_dir(task)
            run_dir = Path(str(config.hydra.run.dir))
            if any(str(o).startswith("hydra.run.dir=") for o in config.hydra.overrides.hydra):
                _make_folder(run_dir, "hydra.run.dir")  # the user's folder: a rerun may reuse it (and continue it)
                if not _show_tracebacks:  # before Hydra writes .hydra/ there: a folder another run holds stays as it is
                    _check_not_taken(run_dir, config_hash(task), list(config.hydra.overrides.task))
            else:
                global _created_run_dir, _created_parents
                _created_parents = [p.absolute() for p in run_dir.parents if not p.exists()]
                run_dir = _new_folder(run_dir)
                _created_run_dir = run_dir.absolute()
                with read_write(config.hydra.run):
                    config.hydra.run.dir = str(run_dir)
        except ConfigError as error:  # Hydra turns a callback's exceptions into warnings
            print(f"kdrun ERROR: {error}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        global _created_run_dir, _created_parents, _earlier_multirun
        sweep_dir = Path(str(config.hydra.sweep.dir)).absolute()
        if not sweep_dir.exists():
            _created_run_dir, _created_parents = sweep_dir, [p for p in sweep_dir.parents if not p.exists()]
        try:
            trials = config.hydra.sweeper.get("n_trials")
            if isinstance(trials, int) and trials < 1:  # Optuna's: it would end with "No trials are completed yet"
                raise ConfigError(f"hydra.sweeper.n_trials={trials} is not allowed: the number of trials the search runs, at least 1")
            _make_folder(sweep_dir, "hydra.sweep.dir")
            record = sweep_dir / "multirun.yaml"
            _earlier_multirun = (record, record.read_bytes() if record.is_file() else None, datetime.now().timestamp() - 1.0)
        except ConfigError as error:
            print(f"kdrun ERROR: {error}", file=sys.stderr)
            raise SystemExit(EXIT_USAGE) from None


def _new_folder(path: Path) -> Path:
    """Create ``path``, or ``path-2``, ``path-3``, ... if it exists: a folder no other run has."""
    _make_folder(path.parent, "hydra.run.dir")
    for attempt in range(1, 1000):
        candidate = path if attempt == 1 else path.with_name(f"{path.name}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as error:
            raise ConfigError(f"hydra.run.dir={candidate} cannot be used as the output folder: {error.strerror or error}") from None
    raise ConfigError(f"hydra.run.dir={path}: 999 runs started in the same second; choose a folder with hydra.run.dir=...")


class SweepEnd(Callback):
    """When a sweep ends: writes its comparison (comparison.csv, comparison_by_config.csv,
    heatmap.png) into the sweep directory, prints the table, and ends ``kdrun train -m`` with the
    worst exit code of its jobs.

    It runs in the process that launched the sweep, whichever launcher ran the jobs (in-process,
    joblib workers, submitit/SLURM), so it reads what the jobs left on disk. Only jobs whose
    status.json changed during this sweep count, so a failure left over from an earlier sweep
    into the same directory is not reported again."""

    def __init__(self) -> None:
        self.started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = datetime.now().timestamp() - 1.0  # file times can be coarser than the clock

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from kdrun import compare

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir() or not compare.find_run_dirs(sweep_dir):
            return
        print()
        try:
            comparison = compare.compare([sweep_dir], out=sweep_dir)
        except Exception as error:  # never fail a finished sweep over its summary table
            log.warning("kdrun: could not compare the runs of this sweep: %s: %s", type(error).__name__, error)
            return
        unfinished = [run for run in comparison.runs if run.status in ("failed", "interrupted", "running") and self._touched(run.path)]
        if unfinished:
            names = ", ".join(str(r.path.relative_to(sweep_dir)) if r.path.is_relative_to(sweep_dir) else str(r.path) for r in unfinished)
            print(f"kdrun ERROR: {len(unfinished)} of the sweep's jobs did not complete: {names}", file=sys.stderr)
            codes = [(read_status(run.path) or {}).get("exit_code", EXIT_FAILED) for run in unfinished]
            raise SystemExit(max(int(code) for code in codes))

    def _touched(self, run_dir: Path) -> bool:
        try:
            return (run_dir / "status.json").stat().st_mtime >= self.started
        except OSError:
            return False


class BelowWarning(logging.Filter):
    """Lets through records below WARNING, which go to stdout; warnings and errors go to stderr
    (conf/hydra/job_logging/kdrun.yaml)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING


# --------------------------------------------------------------------------- kdrun train


def main(argv: Sequence[str]) -> int:
    """``kdrun train ARGV``: Hydra's command line (overrides, ``-m``, ``--cfg``, ``--help``, shell
    completion) around ``train_task``. Returns the exit code: 0, 1 (a run that went wrong),
    2 (the user's mistake), 130/143 (SIGINT/SIGTERM)."""
    if "-h" in argv or "--help" in argv:
        from kdrun.help import train_help

        print(train_help(argv, config_dir()), end="")
        return 0
    mistake = _flag_mistake(argv)
    if mistake is not None:
        print(f"kdrun ERROR: {mistake}", file=sys.stderr)
        return EXIT_USAGE
    import hydra

    register_configs()
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(train_task)
    global _show_tracebacks, _created_run_dir, _created_parents, _earlier_multirun
    _show_tracebacks = os.environ.get("HYDRA_FULL_ERROR") == "1"
    _created_run_dir, _created_parents, _earlier_multirun = None, [], None
    saved_argv, saved_full_error = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = [saved_argv[0], *argv]
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises what it would print: kdrun says it in one line
    try:
        with sigterm_interrupts():
            app()
    except KeyboardInterrupt as interruption:
        name = signal_of(interruption)
        print(f"kdrun: interrupted by {name.name}; the run directory records it (status.json)", file=sys.stderr)
        return 128 + int(name)
    except SystemExit as stop:  # --help, a sweep's exit code
        return stop.code if isinstance(stop.code, int) else 0 if stop.code is None else _printed(stop.code)
    except Exception as error:
        message = config_error_message(error, user_config_dirs(argv))  # a mistake Hydra found on the command line
        message = _before_the_sweep(argv, message) or message
        failure = (EXIT_USAGE, message) if message is not None else _sweep_stopped_at(error) or failure_of(error) or _search_stopped(error)
        if _show_tracebacks or failure is None:  # a bug in kdrun, or asked for
            traceback.print_exc()
            return EXIT_FAILED
        print(f"kdrun ERROR: {failure[1]}", file=sys.stderr)
        if failure[0] == EXIT_USAGE:
            _forget_refused_sweep()
        return failure[0]
    finally:
        sys.argv = saved_argv
        if saved_full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_full_error
    return 0


def _sweep_stopped_at(error: Exception) -> Optional[tuple[int, str]]:
    """(exit code, message) for a failed job that a sweeper raised again to end the sweep (kdrun's
    own go on past it); None for any other error."""
    if not isinstance(error, JobFailed):
        return None
    message = f"the sweeper stopped the sweep at a failed job: {error}"
    frames = traceback.extract_tb(error.__traceback__)
    if any(f"{os.sep}hydra_optuna_sweeper{os.sep}" in frame.filename for frame in frames):
        message += (" Optuna's sweeper stops once more trials fail than hydra.sweeper.max_failure_rate allows (its default, 0, "
                    "allows none); hydra.sweeper.max_failure_rate=1.0 lets the search go on, as hparams_search=kd_optuna does")  # fmt: skip
    return error.exit_code, message


def _search_stopped(error: Exception) -> Optional[tuple[int, str]]:
    """(exit code, message) for an error Optuna raises that ends its search (no trial completed:
    each failed), or None."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames or f"{os.sep}optuna{os.sep}" not in frames[-1].filename:
        return None
    return EXIT_FAILED, f"the Optuna search stopped: {error} Each trial's status.json says how it ended (kdrun compare lists them)"


def _an_option_has(group: str, options: Sequence[str], setting: str, argv: Sequence[str]) -> bool:
    """Whether one of the group's ``options`` (with the command's --config-dir) has ``setting``."""
    absent = object()
    for option in options:
        try:
            if OmegaConf.select(compose([*searchpath(user_config_dirs(argv)), f"{group}={option}"]), setting, default=absent) is not absent:
                return True
        except ConfigError:  # not an option: the sweep says so when it gets there
            continue
    return False


def _before_the_sweep(argv: Sequence[str], message: Optional[str]) -> Optional[str]:
    """For a setting that only the swept options of a group have (-m dataset=mnist,fashion_mnist
    dataset.root=DIR): Hydra checks the command's settings against the group's default option
    before the sweep begins; ++ sets it in every job. None for any other message."""
    if not message or not {"-m", "--multirun"} & set(argv):
        return None
    for arg in argv:
        group, _, values = arg.partition("=")
        if "," not in values or "." in group or group[:1] in "+~" or group.startswith("hydra"):
            continue
        found = re.match(rf"({re.escape(group.replace('/', '.'))}\.\S+) is not a setting", message)
        if found and _an_option_has(group, values.split(","), found.group(1), argv):
            setting = found.group(1)
            value = next((a.split("=", 1)[1] for a in argv if a.startswith(f"{setting}=")), "VALUE")
            return (
                f"{setting} is not a setting of the default {group} option, which Hydra composes before the sweep over "
                f"{arg} begins: write ++{setting}={value} to set it in every job"
            )
    return None


# The flags of Hydra's command line, with and without their value.
_HYDRA_FLAGS = {
    "-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "--resolve", "-p", "--package", "-r", "--run",
    "-m", "--multirun", "-sc", "--shell-completion", "-cp", "--config-path", "-cn", "--config-name", "-cd",
    "--config-dir", "--experimental-rerun", "-i", "--info",
}  # fmt: skip


# Hydra's flags that take a value (the next word).
_FLAGS_WITH_VALUES = ("-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-i", "--info",
                      "--experimental-rerun")  # fmt: skip


def _flag_mistake(argv: Sequence[str]) -> Optional[str]:
    """A ``--key value`` (or ``-key=value``) that is not one of Hydra's flags, or a flag between
    settings (which Hydra's parser cannot read): what to write instead."""
    for index, arg in enumerate(argv):
        if not arg.startswith("-") or arg.split("=", 1)[0] in _HYDRA_FLAGS or arg.lstrip("-")[:1].isdigit():
            continue
        if index and argv[index - 1] in _FLAGS_WITH_VALUES:
            continue  # a flag's value
        name, _, value = arg.lstrip("-").partition("=")
        if not value and index + 1 < len(argv) and not argv[index + 1].startswith("-") and "=" not in argv[index + 1]:
            value = argv[index + 1]
        key = suggest_key(name.replace("-", "_"))
        example = f"{key}={value or '...'}" if key else "trainer.epochs=5"
        return f"{arg} is not an option of kdrun train: settings are given as key=value, e.g. {example} (kdrun train --help lists them)"
    is_flag = [arg.split("=", 1)[0] in _HYDRA_FLAGS or (i > 0 and argv[i - 1] in _FLAGS_WITH_VALUES) for i, arg in enumerate(argv)]
    settings = [i for i, flag in enumerate(is_flag) if not flag]
    late = [i for i, flag in enumerate(is_flag) if flag and settings and settings[0] < i < settings[-1]]
    if late:
        moved = " ".join([arg for arg, flag in zip(argv, is_flag) if flag] + [argv[i] for i in settings])
        return f"{argv[late[0]]} goes before the settings, which Hydra reads last: kdrun train {moved}"
    return _config_dir_mistake(user_config_dirs(argv))


def _config_dir_mistake(config_dirs: Sequence[Path]) -> Optional[str]:
    """A --config-dir that is a file (Hydra would say it was not found)."""
    files = [folder for folder in config_dirs if folder.is_file()]
    return f"--config-dir {files[0]} is a file: give the folder that holds your config groups (model/, loss/, dataset/, ...)" if files else None


def _printed(message: object) -> int:
    print(message, file=sys.stderr)
    return EXIT_FAILED


# --------------------------------------------------------------------------- kdrun.run()


@dataclass
class Results:
    """What ``kdrun.run`` returns."""

    run_dir: Path
    summary: "pandas.DataFrame"  # one row per model, as summary.csv
    metrics: "pandas.DataFrame"  # one row per model per epoch, as metrics.csv
    models: dict[str, "nn.Module"]  # teacher, distilled, baseline (if trained), in eval mode


def run(overrides: Sequence[str] = (), run_dir: Optional[os.PathLike] = None, config_dir: Optional[os.PathLike] = None) -> Results:
    """Run one kdrun experiment in this process, as ``kdrun train OVERRIDES`` would (with
    ``--config-dir CONFIG_DIR``), e.g. in a notebook: ``kdrun.run(["loss.temperature=5"],
    run_dir="outputs/t5")``. Writes the same run directory (default ``outputs/<date>/<time>``)
    and returns the results. A user's mistake raises
    ConfigError or DataError with the message ``kdrun train`` prints; a non-finite loss raises
    NonFiniteLossError. The caller's torch random state and thread count are left as they were."""
    import pandas
    import torch

    if isinstance(overrides, (str, bytes)):
        raise TypeError(f"kdrun.run takes a list of settings, e.g. ['loss.alpha=0.5']; got the string {overrides!r}")
    overrides = list(overrides)  # an iterator is read once
    mistake = _flag_mistake(overrides) or _config_dir_mistake([Path(config_dir)] if config_dir is not None else [])
    if mistake is not None:
        raise ConfigError(mistake)
    full = compose([*searchpath([config_dir] if config_dir is not None else []), *overrides], with_hydra=True)
    hydra_node, cfg = full.hydra, without_hydra(full)
    validate(cfg)  # before the folder: a refused run leaves none, as with kdrun train
    run_dir = Path(run_dir) if run_dir is not None else Path("outputs") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    _make_folder(run_dir, "run_dir")
    _check_not_taken(run_dir, config_hash(cfg), overrides)  # before .hydra/ is written: another run's folder stays as it is
    (run_dir / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"runtime": {"choices": hydra_node.runtime.choices}}}), run_dir / ".hydra" / "hydra.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), run_dir / ".hydra" / "overrides.yaml")
    threads, level = torch.get_num_threads(), log.level
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        with torch.random.fork_rng():  # every device's generator, restored afterwards
            result = _run_job(cfg, run_dir, overrides, f"call kdrun.run again with run_dir={str(run_dir)!r}")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        handler.close()
        torch.set_num_threads(threads)
    trained = {row["model"] for row in result.summary.values() if row["source"] != "not_trained"}
    models = {name: model.eval() for name, model in result.models.items() if name in trained}
    return Results(run_dir, pandas.DataFrame(list(result.summary.values())), pandas.DataFrame(result.metrics), models)
