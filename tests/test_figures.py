"""Figures drawn by the worker process (kdrun.figures) and configs composed once (kdrun.compose).

What users rely on: every run and every job of a sweep ends with its figures written, whichever
launcher ran it; a job counts as completed only once they are; a figure that cannot be written
fails the run like any file that cannot be written; an interrupted job leaves no figures; and
the config a run records is the one Hydra itself would compose.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from conftest import has_traceback, interrupt, killed_if_left, run_kdrun, start_kdrun, wait_for_metrics

from kdrun import figures
from kdrun.reports import read_status

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = "plots=true"  # the tests' tiny config turns figures off


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()), key=lambda p: int(p.name.split("_")[0]))


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def test_single_run_writes_both_figures(tmp_path):
    run = tmp_path / "run"
    run_kdrun("train", f"hydra.run.dir={run}", PLOTS, cwd=tmp_path, check=True)
    assert _is_png(run / "curves.png") and _is_png(run / "temperature.png")
    assert read_status(run)["status"] == "completed"
    assert not list(run.glob(".*.tmp"))


def test_sweep_in_process_completes_every_job_with_its_figures(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_kdrun("train", "-m", f"hydra.sweep.dir={sweep}", PLOTS, "loss.alpha=0.2,0.8", "loss.temperature=1,4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = _job_dirs(sweep)
    assert len(jobs) == 4
    for job in jobs:
        assert read_status(job)["status"] == "completed", job
        assert _is_png(job / "curves.png") and _is_png(job / "temperature.png"), job
    assert _is_png(sweep / "heatmap.png")
    # Same teacher and T: the same figure (copied, not redrawn); another T: another figure.
    by_t: dict[float, set] = {}
    for job in jobs:
        temperature = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["loss"]["temperature"]
        by_t.setdefault(temperature, set()).add((job / "temperature.png").read_bytes())
    assert sorted(by_t) == [1, 4] and all(len(images) == 1 for images in by_t.values())
    assert by_t[1] != by_t[4]


def test_joblib_sweep_writes_figures_in_its_workers(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_kdrun(
        "train", "-m", "hydra/launcher=kd_joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", PLOTS,
        "loss.alpha=0.2,0.8", cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for job in _job_dirs(sweep):
        assert read_status(job)["status"] == "completed"
        assert _is_png(job / "curves.png") and _is_png(job / "temperature.png")


def test_interrupted_sweep_job_leaves_no_figures_and_the_earlier_job_completes(tmp_path):
    sweep = tmp_path / "sweep"
    with killed_if_left(start_kdrun("train", "-m", f"hydra.sweep.dir={sweep}", PLOTS, "trainer.epochs=1,100000", "cache.enabled=false", cwd=tmp_path)) as proc:
        wait_for_metrics(proc, sweep, "1_*/metrics.csv")
        stderr, _ = interrupt(proc, signal.SIGINT)
    assert proc.returncode == 130, stderr
    assert not has_traceback(stderr), stderr
    first, second = _job_dirs(sweep)
    assert read_status(first)["status"] == "completed"
    assert _is_png(first / "curves.png") and _is_png(first / "temperature.png")
    assert read_status(second)["status"] == "interrupted"
    time.sleep(0.5)  # a figure drawn late would land now
    assert not (second / "curves.png").exists() and not (second / "temperature.png").exists()
    assert not (second / "summary.csv").exists()


# --------------------------------------------------------------------------- the queue itself

HISTORY = [
    {"model": model, "epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": 0.5 + epoch / 10}
    for model in ("teacher", "distilled", "baseline")
    for epoch in (1, 2, 3)
]


def test_queue_draws_in_the_worker_and_reports_a_figure_it_could_not_write(tmp_path):
    queue = figures.FigureQueue()
    try:
        queue.start()
        assert queue.running()
        queue.submit(tmp_path, "plot_curves", tmp_path / "curves.png", HISTORY)
        queue.wait(tmp_path)
        assert _is_png(tmp_path / "curves.png")
        missing = tmp_path / "no" / "such" / "folder"
        queue.submit(missing, "plot_curves", missing / "curves.png", HISTORY)
        with pytest.raises(figures.FigureError, match="curves.png could not be written"):
            queue.wait(missing)
        assert queue.running()  # one failed figure does not stop the worker
    finally:
        queue.close()
    assert queue.process is None


def test_queue_draws_here_when_the_worker_dies(tmp_path):
    queue = figures.FigureQueue()
    try:
        queue.start()
        os.kill(queue.process.pid, signal.SIGKILL)
        queue.process.wait()
        queue.submit(tmp_path, "plot_curves", tmp_path / "curves.png", HISTORY)
        queue.wait(tmp_path)
        assert _is_png(tmp_path / "curves.png")
        assert not queue.running()  # no new worker after one died: figures are drawn here
    finally:
        queue.close()


def test_queue_runs_a_callback_once_the_figures_are_written(tmp_path):
    queue = figures.FigureQueue()
    seen = []
    try:
        queue.submit(tmp_path, "plot_curves", tmp_path / "curves.png", HISTORY)
        queue.when_written(tmp_path, seen.append)
        queue.settle()
    finally:
        queue.close()
    assert seen == [None] and _is_png(tmp_path / "curves.png")


# --------------------------------------------------------------------------- composing once


def _hydra_record(run_dir: Path) -> dict:
    return yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]


def test_single_run_records_the_config_hydra_composes(tmp_path):
    run = tmp_path / "run"
    run_kdrun("train", f"hydra.run.dir={run}", "loss.alpha=0.3", cwd=tmp_path, check=True)
    record = _hydra_record(run)
    assert record["mode"] == "RUN"
    assert record["overrides"]["hydra"] == [f"hydra.run.dir={run}", "hydra.mode=RUN"]
    assert "loss.alpha=0.3" in record["overrides"]["task"]
    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["loss"]["alpha"] == 0.3


def test_config_asking_for_a_multirun_still_gets_one(tmp_path):
    """hparams_search=kd_optuna sets hydra.mode=MULTIRUN: no -m needed."""
    sweep = tmp_path / "sweep"
    result = run_kdrun("train", "hparams_search=kd_optuna", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(_job_dirs(sweep)) == 2


def test_sweep_values_without_multirun_get_hydras_message(tmp_path):
    result = run_kdrun("train", "loss.alpha=0.1,0.5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode != 0
    assert "--multirun" in result.stderr


def test_each_sweep_job_is_composed_once(tmp_path, monkeypatch):
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from kdrun import cli

    compositions = []
    original = ConfigLoaderImpl._load_configuration_impl

    def counting(self, *args, **kwargs):
        compositions.append(kwargs.get("overrides"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ConfigLoaderImpl, "_load_configuration_impl", counting)
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    tiny = ["trainer.epochs=1", "model.teacher.hidden=[8]", "model.student.hidden=[4]", "dataset.n_samples=60", "plots=false"]
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "-m", *tiny, f"cache.dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}", "loss.alpha=0.1,0.5,0.9"])
    assert stop.value.code == 0
    assert len(_job_dirs(sweep)) == 3
    # Hydra reads hydra.mode (1), composes the sweep (1), then each job: 3, not 3 to check + 3 to run.
    assert len(compositions) == 5, compositions
    for job, alpha in zip(_job_dirs(sweep), ("0.1", "0.5", "0.9")):
        assert yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["loss"]["alpha"] == float(alpha)
        assert _hydra_record(job)["job"]["num"] == int(job.name.split("_")[0])
