"""Real tiny sweeps through the ``kdrun`` CLI in subprocesses: Hydra's basic launcher, the joblib
and submitit launchers and the Optuna sweeper (each skipped when its plugin is not installed;
``pip install -e ".[test,sweep]"``). Models and data are tiny so that each sweep takes seconds."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import has_traceback, interrupt, killed_if_left, start_kdrun, wait_for_metrics

from kdrun.run_files import read_status

pytestmark = pytest.mark.slow

TINY = ["trainer.epochs=1", "dataset.n_samples=120", "model.teacher.hidden=[16]", "model.student.hidden=[8]", "plots=false"]
RUN_FILES = ("summary.csv", "metrics.csv", "status.json", ".hydra/overrides.yaml", ".hydra/config.yaml")


KDRUN = [sys.executable, "-m", "kdrun"]


def kdrun_train(tmp_path: Path, *overrides: str, multirun: bool = True) -> subprocess.CompletedProcess:
    command = [*KDRUN, "train", *(["-m"] if multirun else []), *overrides]
    command += [f"hydra.sweep.dir={tmp_path}/sweep", f"cache.dir={tmp_path}/cache", *TINY]
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240)


def job_dirs(sweep: Path) -> list[Path]:
    return sorted((p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: int(p.name.split("_")[0]))


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_full_outputs(sweep: Path, n_jobs: int) -> None:
    assert (sweep / "multirun.yaml").is_file()
    jobs = job_dirs(sweep)
    assert len(jobs) == n_jobs
    for job in jobs:
        for name in RUN_FILES:
            assert (job / name).is_file(), f"{job.name} lacks {name}"


def test_basic_launcher_grid_and_seeds(tmp_path: Path) -> None:
    """alpha × T × seed on Hydra's default launcher: full job outputs, the comparison written
    into the sweep directory by the callback and printed, heatmap and seed-grouped rows."""
    result = kdrun_train(tmp_path, "loss.alpha=0.1,0.9", "loss.temperature=1,4", "trainer.seed=0,1")

    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    assert_full_outputs(sweep, 8)
    rows = read_csv(sweep / "comparison.csv")
    assert len(rows) == 8 and {r["status"] for r in rows} == {"completed"}
    assert {(r["loss.alpha"], r["loss.temperature"], r["trainer.seed"]) for r in rows} == {(a, t, s) for a in ("0.1", "0.9") for t in ("1", "4") for s in ("0", "1")}
    groups = read_csv(sweep / "comparison_by_config.csv")
    assert len(groups) == 4 and {g["n"] for g in groups} == {"2"}
    for group in groups:
        members = [r for r in rows if (r["loss.alpha"], r["loss.temperature"]) == (group["loss.alpha"], group["loss.temperature"])]
        mean = sum(float(r["improvement"]) for r in members) / 2
        assert float(group["improvement_mean"]) == pytest.approx(mean)
    assert (sweep / "heatmap.png").stat().st_size > 1000
    assert "test accuracy: 8 runs" in result.stdout and "95% CI" in result.stdout


def test_joblib_runs_each_group_of_jobs_as_one_task_in_parallel_workers(tmp_path: Path) -> None:
    """Two workers, one torch thread each: two learning rates x two temperatures are two groups
    of jobs that train together, a task per worker. A job that fails in a worker (its loss turns
    NaN) makes the sweep exit non-zero although it ran in another process (the callback reads
    its status.json)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = kdrun_train(tmp_path, "hydra/launcher=kd_joblib", "hydra.launcher.n_jobs=2", "trainer.threads=1", "trainer.lr=0.01,1e30", "loss.temperature=1,4")

    assert result.returncode == 1, result.stderr[-3000:]  # the worst job's: a run that went wrong
    sweep = tmp_path / "sweep"
    multirun = yaml.safe_load((sweep / "multirun.yaml").read_text())
    assert multirun["hydra"]["launcher"]["n_jobs"] == 2 and multirun["hydra"]["launcher"]["_target_"].endswith("KdrunJoblib")
    output = result.stdout + result.stderr
    assert output.count("task of 2 jobs") == 2 and "training 3 students together (2 distilled, 1 baseline)" in output
    statuses = {(float(r["trainer.lr"]), r["loss.temperature"]): r["status"] for r in read_csv(sweep / "comparison.csv")}
    assert statuses == {(0.01, "1"): "completed", (0.01, "4"): "completed", (1e30, "1"): "failed", (1e30, "4"): "failed"}
    for job in job_dirs(sweep):
        assert "1 thread(s)" in (job / "train.log").read_text()
        assert (job / "summary.csv").is_file() == (read_status(job)["status"] == "completed")
    assert "did not complete" in output
    assert "left out: 2 failed" in result.stderr


def test_a_job_of_a_config_group_override_is_one_folder_named_in_a_worker(tmp_path: Path) -> None:
    """model/student=mlp names the job folder with "-" for "/" (one folder, not model/student=...
    nested), in the joblib workers that create the folders too."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = kdrun_train(tmp_path, "hydra/launcher=kd_joblib", "hydra.launcher.n_jobs=2", "model/student=mlp", "loss.alpha=0.1,0.9")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = job_dirs(tmp_path / "sweep")
    named = "{}_dataset.n_samples=120,loss.alpha={},model.student.hidden=[8],model.teacher.hidden=[16],model-student=mlp,trainer.epochs=1"
    assert [job.name for job in jobs] == [named.format(0, 0.1), named.format(1, 0.9)], jobs
    assert all((job / "summary.csv").is_file() for job in jobs)


def test_joblib_cuts_a_group_so_that_every_worker_has_a_task(tmp_path: Path) -> None:
    """One group of four jobs and two workers: two tasks of two jobs, each training its two
    distilled students together (and the baseline, unless the other task cached it first),
    rather than one worker left idle."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    result = kdrun_train(tmp_path, "hydra/launcher=kd_joblib", "hydra.launcher.n_jobs=2", "trainer.threads=1", "loss.temperature=1,2,3,4",
                         "trainer.teacher_epochs=400")  # a teacher long enough to train in both tasks at once, were it not locked

    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert output.count("task of 2 jobs") == 2 and output.count(" students together (2 distilled") == 2, output[-3000:]
    assert_full_outputs(tmp_path / "sweep", 4)
    teachers = [next(r for r in read_csv(job / "summary.csv") if r["model"] == "teacher") for job in job_dirs(tmp_path / "sweep")]
    assert sorted(t["source"] for t in teachers) == ["cached", "cached", "trained", "trained"]  # one task trained it, the other waited


@pytest.mark.parametrize("launcher", ["kd_joblib", "kd_submitit_local"])
def test_sigterm_to_kdrun_alone_marks_every_job_its_parallel_workers_ran_interrupted(tmp_path: Path, launcher: str) -> None:
    """SIGTERM to kdrun's process alone (not its workers'): joblib ends its workers without a
    word to them, and submitit's local tasks would have gone on after kdrun said it was
    interrupted. Every job now says interrupted, and none goes on: with two joblib workers the
    third task never started, and its jobs say so too (they had no folder)."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher" if launcher == "kd_joblib" else "hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    workers = ["hydra.launcher.n_jobs=2"] if launcher == "kd_joblib" else []
    args = ["train", "-m", f"hydra/launcher={launcher}", *workers, "trainer.threads=1", "trainer.lr=0.001,0.002,0.003", "loss.temperature=1,4",
            "trainer.student_epochs=5000", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    with killed_if_left(start_kdrun(*args, cwd=tmp_path)) as proc:
        for number in (0, 2):  # both tasks' students are training
            wait_for_metrics(proc, sweep, f"{number}_*/metrics.csv", rows=10)
        stderr, _ = interrupt(proc, signal.SIGTERM, timeout=30)
    assert proc.returncode == 143, stderr[-3000:]
    jobs = job_dirs(sweep)
    assert len(jobs) == 6 and [read_status(job)["status"] for job in jobs] == ["interrupted"] * 6, [read_status(job) for job in jobs]
    rows = [(job / "metrics.csv").read_text().count("\n") if (job / "metrics.csv").exists() else 0 for job in jobs]
    time.sleep(1)
    assert [(job / "metrics.csv").read_text().count("\n") if (job / "metrics.csv").exists() else 0 for job in jobs] == rows  # no worker trains on


def test_ctrl_c_in_a_terminal_stops_a_submitit_local_sweep_with_one_line(tmp_path: Path) -> None:
    """Ctrl-C reaches kdrun and submitit's local controller processes (one process group): each
    controller printed a KeyboardInterrupt traceback into the terminal. Now their stderr goes to
    .submitit/controllers.err, and the terminal shows kdrun's one line."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "hydra/launcher=kd_submitit_local", "trainer.threads=1", "trainer.lr=0.001,0.002", "trainer.student_epochs=5000",
            f"hydra.sweep.dir={sweep}"]  # fmt: skip
    with killed_if_left(start_kdrun(*args, cwd=tmp_path, start_new_session=True)) as proc:
        for number in (0, 1):
            wait_for_metrics(proc, sweep, f"{number}_*/metrics.csv", rows=10)
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130 and not has_traceback(stderr), stderr[-3000:]
    assert stderr.strip().splitlines()[-1].startswith("kdrun: interrupted by SIGINT"), stderr[-3000:]
    assert [read_status(job)["status"] for job in job_dirs(sweep)] == ["interrupted"] * 2


@pytest.mark.parametrize("stack", [True, False])
def test_submitit_local_runs_each_group_of_jobs_as_one_task(tmp_path: Path, stack: bool) -> None:
    """Two learning rates x two temperatures: two groups of jobs that train together, so two
    submitit tasks (processes), each training its jobs' students together; with stack=false, a
    task per job, as Hydra's submitit launcher runs them."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    rates = "trainer.lr=0.001,0.002"
    result = kdrun_train(tmp_path, "hydra/launcher=kd_submitit_local", f"hydra.launcher.stack={stack}", "trainer.threads=1", rates, "loss.temperature=1,4")

    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    assert_full_outputs(sweep, 4)
    assert len(read_csv(sweep / "comparison.csv")) == 4
    logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
    assert len(logs) == (2 if stack else 4), logs
    together = [log for log in logs if "training 3 students together (2 distilled, 1 baseline)" in log.read_text()]
    assert len(together) == (2 if stack else 0)


def test_submitit_slurm_preset_composes(tmp_path: Path) -> None:
    """No cluster here: check that the SLURM preset composes with an override (Hydra 1.3's
    submitit merge bug, hydra#2697) and exports one torch thread per allotted core."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    command = [*KDRUN, "train", "hydra/launcher=kd_submitit_slurm", "hydra.launcher.partition=cpu", "hydra.launcher.cpus_per_task=4", "--cfg", "hydra", "-p", "hydra.launcher", "--resolve"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    launcher = yaml.safe_load(result.stdout)
    assert launcher["_target_"].endswith("KdrunSubmititSlurm") and launcher["stack"] is True
    assert launcher["partition"] == "cpu" and launcher["setup"] == ["export OMP_NUM_THREADS=4"]


def test_optuna_search_maximises_val_accuracy(tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = kdrun_train(tmp_path, "hparams_search=kd_optuna", "hydra.sweeper.n_trials=3", multirun=False)

    assert result.returncode == 0, result.stderr[-3000:]
    sweep = tmp_path / "sweep"
    jobs = job_dirs(sweep)
    assert len(jobs) == 3
    objectives = []
    for job in jobs:
        config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
        assert 0 <= config["loss"]["alpha"] <= 1 and 1 <= config["loss"]["temperature"] <= 20
        distilled = next(r for r in read_csv(job / "summary.csv") if r["model"] == "distilled")
        assert json.loads((job / "status.json").read_text())["objective"] == pytest.approx(float(distilled["val_acc"]))
        objectives.append(float(distilled["val_acc"]))
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(objectives))  # val accuracy, never test
    assert len(read_csv(sweep / "comparison.csv")) == 3


def test_a_failed_job_reaches_a_sweeper_from_a_worker_process_whole() -> None:
    """Worker processes (joblib, submitit) send a job's exception back pickled."""
    import pickle

    from kdrun.errors import EXIT_USAGE, JobFailed

    back = pickle.loads(pickle.dumps(JobFailed("loss.alpha=2 is not allowed", EXIT_USAGE)))
    assert (str(back), back.exit_code) == ("loss.alpha=2 is not allowed", EXIT_USAGE)


def test_an_optuna_trial_that_fails_is_a_failed_trial_and_the_search_goes_on(tmp_path: Path) -> None:
    """A NaN loss ends its trial (failed, in the study and in status.json), not the search; a
    search with no completed trial, or with no trials, is one message."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = kdrun_train(tmp_path, "hparams_search=kd_optuna", "hydra.sweeper.n_trials=3", "trainer.lr=choice(1e30,0.001)", multirun=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    statuses = {json.loads((job / "status.json").read_text())["status"] for job in job_dirs(tmp_path / "sweep")}
    assert statuses == {"failed", "completed"} and len(job_dirs(tmp_path / "sweep")) == 3
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_params"]["trainer.lr"] == 0.001
    (tmp_path / "none").mkdir()
    none_completed = kdrun_train(tmp_path / "none", "hparams_search=kd_optuna", "hydra.sweeper.n_trials=1", "trainer.lr=1e30", multirun=False)
    assert none_completed.returncode == 1 and "kdrun ERROR: the Optuna search stopped: No trials are completed yet." in none_completed.stderr
    assert "Traceback" not in none_completed.stderr, none_completed.stderr
    # Optuna's own default, max_failure_rate=0: the search stops at the failed trial, and says how not to
    stops = kdrun_train(tmp_path / "none", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "trainer.lr=choice(1e30)")
    last = stops.stderr.strip().splitlines()[-1]
    assert stops.returncode == 1 and last.startswith("kdrun ERROR: the sweeper stopped the sweep at a failed job: teacher: training loss is"), stops.stderr
    assert "hydra.sweeper.max_failure_rate=1.0 lets the search go on" in last and not has_traceback(stops.stderr)
    no_trials = kdrun_train(tmp_path / "none", "hparams_search=kd_optuna", "hydra.sweeper.n_trials=0", multirun=False)
    assert no_trials.returncode == 2 and no_trials.stderr.strip().splitlines() == [
        "kdrun ERROR: hydra.sweeper.n_trials=0 is not allowed: the number of trials the search runs, at least 1"
    ]


def test_kdruns_launcher_composes_each_job_once_and_all_before_the_first(tmp_path: Path, monkeypatch) -> None:
    """Hydra's basic sweeper composes every job's config to check it, then its launcher composes
    it again; kdrun's launcher composes the first job's, derives the others' that differ only in
    plain values, all before the first job runs, and they are what Hydra composes."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from kdrun import app

    composed = []
    original = ConfigLoaderImpl.load_sweep_config

    def counting(self, master_config, sweep_overrides):
        composed.append(list(sweep_overrides))
        return original(self, master_config, sweep_overrides)

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counting)
    monkeypatch.chdir(tmp_path)
    common = ["-m", *TINY, f"cache.dir={tmp_path}/cache"]
    assert app.main([*common, f"hydra.sweep.dir={tmp_path}/sweep", "loss.alpha=0.1,0.5,0.9"]) == 0
    assert len(composed) == 1 and len(job_dirs(tmp_path / "sweep")) == 3
    for job, alpha in zip(job_dirs(tmp_path / "sweep"), (0.1, 0.5, 0.9)):
        assert yaml.safe_load((job / ".hydra" / "config.yaml").read_text())["loss"]["alpha"] == alpha
        hydra_node = yaml.safe_load((job / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert hydra_node["job"]["num"] == int(job.name.split("_")[0]) and f"loss.alpha={alpha}" in hydra_node["overrides"]["task"]
        assert job.name.endswith(hydra_node["job"]["override_dirname"]) and f"loss.alpha={alpha}" in job.name
    derived = yaml.safe_load((job_dirs(tmp_path / "sweep")[2] / ".hydra" / "config.yaml").read_text())
    assert app.main([*common, f"hydra.sweep.dir={tmp_path}/one", "loss.alpha=0.9"]) == 0  # a sweep of one: Hydra composes it
    assert yaml.safe_load((job_dirs(tmp_path / "one")[0] / ".hydra" / "config.yaml").read_text()) == derived
    # A job whose config cannot be composed stops the sweep before any job runs.
    assert app.main([*common, f"hydra.sweep.dir={tmp_path}/bad", "model/student=mlp,nope"]) == 2
    assert not (tmp_path / "bad").exists() or not job_dirs(tmp_path / "bad")


def test_hydras_basic_sweeper_and_launcher_still_run_a_sweep(tmp_path: Path) -> None:
    result = kdrun_train(tmp_path, "hydra/sweeper=basic", "hydra/launcher=basic", "loss.alpha=0.1,0.9")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_full_outputs(tmp_path / "sweep", 2)
    multirun = yaml.safe_load((tmp_path / "sweep" / "multirun.yaml").read_text())
    assert multirun["hydra"]["launcher"]["_target_"].endswith("BasicLauncher")


def test_a_job_folder_that_cannot_be_created_is_one_message_before_any_job_runs(tmp_path: Path) -> None:
    result = kdrun_train(tmp_path, f"hydra.sweep.subdir={'x' * 300}_${{hydra.job.num}}", "loss.alpha=0.1,0.9")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "hydra.sweep.subdir" in result.stderr and "File name too long" in result.stderr, result.stderr
    assert not list((tmp_path / "sweep").glob("*/status.json"))


def test_a_parallel_preset_whose_plugin_is_missing_is_one_message(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked" / "hydra_plugins" / "hydra_joblib_launcher"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "blocked"), os.environ.get("PYTHONPATH", "")])}
    command = [*KDRUN, "train", "-m", "hydra/launcher=kd_joblib", "loss.alpha=0.1,0.9", f"hydra.sweep.dir={tmp_path}/sweep"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "hydra/launcher/kd_joblib" in message and "pip install 'kdrun[sweep]'" in message, result.stderr
    assert "Traceback" not in result.stderr
