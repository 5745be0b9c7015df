"""Figures, and what a run records of its config.

What users rely on: every run and every job of a sweep ends with its figures written, whichever
launcher ran it; jobs that share a teacher and a T share one temperature figure; a figure kept
and redrawn for the next job is the PNG a new figure gives; an interrupted
job leaves no figures; a config that asks for a multirun gets one; the config a run records is
the one Hydra composed.
"""

from __future__ import annotations

import math
import random
import signal
from pathlib import Path

import pytest
import yaml
from conftest import has_traceback, interrupt, killed_if_left, run_kdrun, start_kdrun, wait_for_metrics

from kdrun import plots
from kdrun.run_files import read_status

PNG = b"\x89PNG\r\n\x1a\n"
PLOTS = "plots=true"  # the tests' tiny config turns figures off


def _job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and p.name[0].isdigit()), key=lambda p: int(p.name.split("_")[0]))


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG


def _history(seed: int, epochs: int, models=("teacher", "distilled", "baseline")) -> list[dict]:
    draw = random.Random(seed)
    return [
        {"model": model, "epoch": epoch, "val_acc": draw.uniform(0.5, 1.0), "val_loss": draw.uniform(0.01, 2.0)}
        for model in models for epoch in range(1, epochs + 1)
    ]  # fmt: skip


def _probabilities(seed: int, temperatures=(1.0, 2.0, 4.0), examples: int = 3, classes: int = 10) -> dict:
    draw = random.Random(seed)
    logits = [[draw.gauss(0, 3) for _ in range(classes)] for _ in range(examples)]
    softmax = lambda row, t: [math.exp(v / t) / sum(math.exp(w / t) for w in row) for v in row]  # noqa: E731
    return {t: [softmax(row, t) for row in logits] for t in temperatures}


@pytest.mark.parametrize("figure", ["curves", "temperature"])
def test_a_figure_redrawn_for_another_job_is_the_png_a_new_figure_gives(tmp_path, monkeypatch, figure):
    # A sweep keeps each figure and redraws it with the next job's data: job B's PNG after job A's
    # must be byte for byte the one a new figure draws for B (limits, ticks, labels all reset).
    if figure == "curves":
        jobs = {"A": _history(0, 20), "B": _history(1, 12)}
        draw = lambda name, path: plots.plot_curves(path, jobs[name], f"job {name}")  # noqa: E731
    else:
        jobs = {"A": (_probabilities(0), 1.0), "B": (_probabilities(1), 2.0)}  # each run's own T drawn large
        draw = lambda name, path: plots.plot_temperature(path, jobs[name][0], [3, 1, 4], jobs[name][1])  # noqa: E731
    for name in ("_curve_figures", "_temperature_figures", "_temperature_pngs"):  # nothing drawn before
        monkeypatch.setattr(plots, name, {})
    draw("B", tmp_path / "new.png")
    for name in ("_curve_figures", "_temperature_figures", "_temperature_pngs"):
        monkeypatch.setattr(plots, name, {})
    draw("A", tmp_path / "a.png")
    draw("B", tmp_path / "redrawn.png")  # A's figure, drawn again
    assert _is_png(tmp_path / "new.png")
    assert (tmp_path / "redrawn.png").read_bytes() == (tmp_path / "new.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "new.png").read_bytes()


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
    assert not (second / "curves.png").exists() and not (second / "temperature.png").exists()
    assert not (second / "summary.csv").exists()


# --------------------------------------------------------------------------- what a run records


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


def test_sweep_values_without_multirun_say_to_add_it(tmp_path):
    result = run_kdrun("train", "loss.alpha=0.1,0.5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "--multirun" in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_heatmap_cell_keeps_its_sign_and_a_zero_reads_plus():
    """'-0.030' once read '+0.030': the '-0.0' of a small negative NLL difference was replaced."""
    from kdrun.run_files import METRICS

    nll, acc = METRICS["test_nll"], METRICS["test_acc"]
    assert [plots.signed_label(v, nll) for v in (-0.0296, -0.0036, -0.0004, 0.0004, 0.25)] == ["-0.030", "-0.004", "+0.000", "+0.000", "+0.250"]
    assert [plots.signed_label(v, acc) for v in (-2.04, -0.04, 0.0, 1.25)] == ["-2.0", "+0.0", "+0.0", "+1.2"]
