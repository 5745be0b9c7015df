"""kdrun.training_process: a single ``kdrun train`` run trains in a second process that imported
torch while Hydra composed the config. Same results as in-process, failures and interrupts
handled by the main process, and the job still runs where that process cannot take it."""

from __future__ import annotations

import csv
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, interrupt, killed_if_left, run_kdrun, start_kdrun, wait_for_metrics
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from kdrun import training_process
from kdrun.cli import config_dir
from kdrun.config import register_configs
from kdrun.processes import helpers_worth_starting
from kdrun.reports import read_status

pytestmark = pytest.mark.skipif(not helpers_worth_starting(), reason="no training process on one CPU or off POSIX")



def job_config(*overrides: str, cache_dir: Path):
    """A composed config as the task hands it over: the schema's dataclasses."""
    register_configs()
    data = [] if any(o.startswith("dataset=") for o in overrides) else ["dataset.n_samples=120"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, *data, f"cache.dir={cache_dir}", *overrides])
    return OmegaConf.to_object(cfg)


@pytest.fixture
def trainer():
    process = training_process.TrainingProcess()
    process.start(draws_figures=False)
    assert process.running()
    yield process
    process.stop()


def _without_timing(summary: dict) -> dict:
    return {model: {k: v for k, v in row.items() if k != "train_seconds"} for model, row in summary.items()}


def test_same_results_there_as_here(tmp_path, trainer, caplog):
    from rich.console import Console

    from kdrun.experiment import run_experiment

    cfg = job_config("trainer.epochs=3", cache_dir=tmp_path / "cache-there")
    for run in ("there", "here"):
        (tmp_path / run).mkdir()  # as Hydra does before the task starts
    with caplog.at_level(logging.INFO, logger="kdrun"):
        there = trainer.run(cfg, tmp_path / "there")
    records = [r for r in caplog.records if r.name == "kdrun"]
    here = run_experiment(
        job_config("trainer.epochs=3", cache_dir=tmp_path / "cache-here"), tmp_path / "here", Console(file=open(os.devnull, "w"))
    )
    assert _without_timing(there) == _without_timing(here)
    for name in ("metrics.csv", "summary.csv"):
        rows = [list(csv.reader(open(tmp_path / run / name))) for run in ("there", "here")]
        columns = rows[0][0]
        keep = [i for i, c in enumerate(columns) if "seconds" not in c]
        assert [[r[i] for i in keep] for r in rows[0]] == [[r[i] for i in keep] for r in rows[1]]
    assert {p.name for p in (tmp_path / "there").iterdir()} == {p.name for p in (tmp_path / "here").iterdir()}
    # Its log records were handled by this process's logging, in order.
    messages = [r.getMessage() for r in records]
    epochs = [m for m in messages if " epoch " in m]
    assert [m.split()[0] for m in epochs] == ["teacher"] * 3 + ["distilled"] * 3 + ["baseline"] * 3, messages
    assert messages[-1].startswith("Gap from teacher")
    assert all(r.process == trainer.process.pid for r in records)
    assert trainer.running()  # ready for another job


def test_a_users_mistake_comes_back_as_exit_code_and_message(tmp_path, trainer):
    cfg = job_config("dataset=mnist", f"dataset.root={tmp_path / 'nowhere'}", cache_dir=tmp_path / "cache")
    (tmp_path / "run").mkdir()
    with pytest.raises(training_process.ExperimentFailed) as failure:
        trainer.run(cfg, tmp_path / "run")
    assert failure.value.code == 2
    assert "nowhere" in str(failure.value) and "Traceback" not in str(failure.value)


def test_a_bug_comes_back_with_its_traceback(tmp_path, trainer):
    cfg = job_config(cache_dir=tmp_path / "cache")
    cfg.model = None  # no such config can be composed: stands in for a bug in kdrun
    with pytest.raises(training_process.TrainingProcessError) as failure:
        trainer.run(cfg, tmp_path / "run")
    assert "\n" not in str(failure.value) and "AttributeError" in str(failure.value)  # one line for status.json
    cause = failure.value.__cause__
    assert isinstance(cause, training_process.RemoteTraceback)
    assert "Traceback" in str(cause) and "run_experiment" in str(cause)  # the training process's own traceback


def test_a_training_process_that_cannot_import_torch_leaves_the_job_to_this_one(tmp_path, monkeypatch):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "torch.py").write_text("raise ImportError('no torch here')\n")
    monkeypatch.setenv("PYTHONPATH", str(fake))
    trainer = training_process.TrainingProcess()
    trainer.start(draws_figures=False)
    try:
        assert trainer.process is not None
        assert trainer.run(job_config(cache_dir=tmp_path / "cache"), tmp_path / "run") is None
        assert not trainer.running()
    finally:
        trainer.stop()


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.is_file() else []


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _helpers(pid: int) -> list[int]:
    """The training process started by kdrun ``pid`` and the figure worker it started."""
    trainers = [child for child in _children(pid) if "kdrun.training_process" in _command_line(child)]
    return trainers + [child for t in trainers for child in _children(t) if "kdrun.figures" in _command_line(child)]


def _eventually(condition, seconds: float = 10) -> bool:
    """Whether ``condition()`` holds within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


def _wait_gone(pids: list[int], seconds: float = 5) -> bool:
    return _eventually(lambda: not any("kdrun" in _command_line(pid) for pid in pids), seconds)


# The teacher trains for one epoch, so temperature.png is on its way while the students train.
LONG_RUN = ("trainer.teacher_epochs=1", "trainer.student_epochs=100000", "cache.enabled=false", "plots=true")
needs_proc = pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").is_file(), reason="needs Linux /proc")


@needs_proc
@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)], ids=["SIGINT", "SIGTERM", "SIGINT twice"])
def test_kdrun_train_trains_there_and_an_interrupt_stops_both(tmp_path, signals):
    """A user's single run: the training process does the work; a signal to the main process
    (a second one too) stops it and its figure worker before the run is marked interrupted."""
    run = tmp_path / "run"
    with killed_if_left(start_kdrun("train", f"hydra.run.dir={run}", *LONG_RUN, cwd=tmp_path)) as proc:
        wait_for_metrics(proc, run)
        helpers = _helpers(proc.pid)
        assert len(helpers) == 2, helpers  # the training process, and the figure worker it started
        assert "libtorch" not in Path(f"/proc/{proc.pid}/maps").read_text()  # the main process never loaded torch
        stderr, _ = interrupt(proc, *signals)
    assert proc.returncode == 128 + signals[0], stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert _wait_gone(helpers), "a helper process still runs"
    status = read_status(run)
    assert status["status"] == "interrupted" and status["signal"] == signals[0].name
    time.sleep(0.5)  # a figure drawn late would land now
    assert not (run / "summary.csv").exists() and not list(run.glob("*.pt")) and not list(run.glob("*.png"))


@needs_proc
def test_sigterm_stops_a_run_started_with_sigint_ignored(tmp_path):
    """`kdrun train ... &` in a script starts with SIGINT ignored: SIGTERM must still stop it."""
    run = tmp_path / "run"
    ignoring_sigint = start_kdrun(
        "train", f"hydra.run.dir={run}", *LONG_RUN, cwd=tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
    )
    with killed_if_left(ignoring_sigint) as proc:
        wait_for_metrics(proc, run)
        helpers = _helpers(proc.pid)
        stderr, stopped_after = interrupt(proc, signal.SIGTERM)
    assert proc.returncode == 143 and stopped_after < 5, (stopped_after, stderr)
    assert _wait_gone(helpers) and read_status(run)["status"] == "interrupted"


@needs_proc
def test_sigterm_to_the_training_process_alone_is_reported_as_sigterm(tmp_path):
    """A batch system may signal any process of a job: the run says which signal stopped it."""
    run = tmp_path / "run"
    with killed_if_left(start_kdrun("train", f"hydra.run.dir={run}", *LONG_RUN, cwd=tmp_path)) as proc:
        wait_for_metrics(proc, run)
        training_process = _helpers(proc.pid)[0]
        os.kill(training_process, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 143 and "interrupted by SIGTERM" in stderr, stderr
    status = read_status(run)
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"


@needs_proc
def test_killed_main_process_takes_the_training_process_with_it(tmp_path):
    run = tmp_path / "run"
    with killed_if_left(start_kdrun("train", f"hydra.run.dir={run}", *LONG_RUN, cwd=tmp_path)) as proc:
        wait_for_metrics(proc, run)
        helpers = _helpers(proc.pid)
        assert len(helpers) == 2
        proc.kill()
        proc.communicate()
    assert _wait_gone(helpers, seconds=5), "the training process outlived a killed kdrun"


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@needs_proc
def test_ctrl_z_suspends_the_training_process_too(tmp_path):
    run = tmp_path / "run"

    def rows() -> int:
        return (run / "metrics.csv").read_text().count("\n")

    with killed_if_left(start_kdrun("train", f"hydra.run.dir={run}", *LONG_RUN, cwd=tmp_path)) as proc:
        wait_for_metrics(proc, run)
        trainer = _helpers(proc.pid)[0]
        proc.send_signal(signal.SIGTSTP)
        assert _eventually(lambda: (_state(proc.pid), _state(trainer)) == ("T", "T"))
        suspended_at = rows()
        time.sleep(1)
        assert rows() == suspended_at  # no training while suspended
        proc.send_signal(signal.SIGCONT)
        assert _eventually(lambda: rows() > suspended_at)  # going on after `fg`
        stderr, _ = interrupt(proc, signal.SIGINT)
    assert proc.returncode == 130, stderr


def test_output_order_and_files_of_a_run(tmp_path):
    """Log lines of the training process and the table it prints keep their order on stdout."""
    result = run_kdrun(
        "train", f"hydra.run.dir={tmp_path / 'run'}", "trainer.epochs=4", "plots=true", "hydra.verbose=kdrun.training_process",
        cwd=tmp_path, check=True,
    )  # fmt: skip
    assert "job handed to the training process" in result.stdout
    lines = result.stdout.splitlines()
    first_epoch = next(i for i, line in enumerate(lines) if line.startswith("teacher   epoch"))
    last_epoch = max(i for i, line in enumerate(lines) if line.startswith("baseline  epoch"))
    table = next(i for i, line in enumerate(lines) if "distilled" in line and "│" in line)
    improvement = next(i for i, line in enumerate(lines) if line.startswith("Distillation improvement"))
    assert first_epoch < last_epoch < table < improvement, result.stdout
    log = (tmp_path / "run" / "train.log").read_text()
    assert "teacher   epoch 4/4" in log and "Distillation improvement" in log
    run = tmp_path / "run"
    assert {"summary.csv", "teacher.pt", "curves.png", "temperature.png"} <= {p.name for p in run.iterdir()}
    assert read_status(run)["status"] == "completed"
    assert not math.isnan(read_status(run)["objective"])


def test_log_levels_follow_the_main_process(tmp_path):
    """hydra.verbose=true turns on DEBUG here; the training process then sends its DEBUG records
    (the epochs between the quarter marks) too."""
    for verbose in (False, True):
        run = tmp_path / f"verbose-{verbose}"
        run_kdrun("train", f"hydra.run.dir={run}", "trainer.epochs=8", f"hydra.verbose={str(verbose).lower()}", cwd=tmp_path, check=True)
        log = (run / "train.log").read_text()
        assert "teacher   epoch 8/8" in log
        assert ("teacher   epoch 1/8" in log) is verbose, log


def test_the_training_code_loads_without_hydra_or_omegaconf():
    """What the training process imports while Hydra composes: torch and kdrun's training code,
    not Hydra or omegaconf (~0.35 s more on its critical path). Its config objects are the
    schema's dataclasses, whose MISSING must be omegaconf's."""
    import omegaconf

    from kdrun.config import MISSING

    code = "import sys, kdrun.experiment, kdrun.errors; print(sorted({'hydra', 'omegaconf', 'matplotlib'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]"
    assert MISSING == omegaconf.MISSING
