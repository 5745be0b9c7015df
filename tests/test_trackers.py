"""logger=tensorboard and logger=mlflow, read back with the trackers' own readers: what they hold
must be what metrics.csv and summary.csv say."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import kdrun_command, kdrun_env, killed_if_left, run_kdrun, start_kdrun

from kdrun.interrupts import Terminated, sigterm_interrupts
from kdrun.run_files import read_status
from kdrun.trackers import Tracker, Trackers

pytest.importorskip("tensorboard")
mlflow = pytest.importorskip("mlflow")


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _image_tags(log_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    return events.Tags()["images"]


def _assert_series(found: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    """The same steps; the same values, to float32's precision (TensorBoard's)."""
    assert [step for step, _ in sorted(found)] == [step for step, _ in expected]
    assert [value for _, value in sorted(found)] == pytest.approx([value for _, value in expected], rel=1e-6)


def _expected_per_epoch(metrics: list[dict], column: str, model: str) -> list[tuple[int, float]]:
    return [(int(row["epoch"]), float(row[column])) for row in metrics if row["model"] == model]


def test_tensorboard_holds_every_epoch_the_summary_and_the_figures(tmp_path):
    run = tmp_path / "run"
    run_kdrun("train", f"hydra.run.dir={run}", "logger=tensorboard", "trainer.epochs=3", "plots=true", cwd=tmp_path, check=True)
    scalars, metrics = _scalars(run / "tensorboard"), _csv(run / "metrics.csv")
    for model in ("teacher", "distilled", "baseline"):
        for column in ("train_loss", "val_acc"):
            _assert_series(scalars[f"{model}/{column}"], _expected_per_epoch(metrics, column, model))
    _assert_series(scalars["distilled/soft_loss"], _expected_per_epoch(metrics, "soft_loss", "distilled"))
    for row in _csv(run / "summary.csv"):
        assert scalars[f"summary/{row['model']}/test_acc"] == [(0, pytest.approx(float(row["test_acc"])))]
    assert set(_image_tags(run / "tensorboard")) == {"figures/curves", "figures/temperature"}
    assert (run / "metrics.csv").is_file() and (run / "summary.csv").is_file()  # the CSVs are always written


def test_mlflow_sweep_jobs_are_runs_of_one_experiment(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = tmp_path / "sweep"
    run_kdrun(
        "train", "-m", f"hydra.sweep.dir={sweep}", "logger=mlflow", f"logger.mlflow.tracking_uri={store}",
        "logger.mlflow.experiment_name=kd-test", "loss.alpha=0.5,0.9", "trainer.epochs=2", "plots=true", cwd=tmp_path, check=True,
    )  # fmt: skip
    runs = _search(store, "kd-test")
    assert sorted(runs["params.loss.alpha"]) == ["0.5", "0.9"]
    assert set(runs["status"]) == {"FINISHED"}
    client = mlflow.MlflowClient(tracking_uri=store)
    for _, found in runs.iterrows():
        job = Path(found["tags.run_dir"])
        assert f"loss.alpha={found['params.loss.alpha']}" in found["tags.overrides"] and found["tags.seed"] == "42"
        summary = {row["model"]: row for row in _csv(job / "summary.csv")}
        assert found["metrics.summary/distilled/test_acc"] == pytest.approx(float(summary["distilled"]["test_acc"]))
        history = client.get_metric_history(found["run_id"], "teacher/val_acc")
        _assert_series([(m.step, m.value) for m in history], _expected_per_epoch(_csv(job / "metrics.csv"), "val_acc", "teacher"))
        assert {a.path for a in client.list_artifacts(found["run_id"], "figures")} == {"figures/curves.png", "figures/temperature.png"}


def _search(store: str, experiment: str):
    """mlflow.search_runs of ``experiment`` in ``store``."""
    mlflow.set_tracking_uri(store)
    return mlflow.search_runs(experiment_names=[experiment])


def test_a_resumed_run_logs_every_epoch_once_to_both_trackers(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = tmp_path / "run"
    args = (
        f"hydra.run.dir={run}", "logger=[tensorboard,mlflow]", f"logger.mlflow.tracking_uri={store}",
        "trainer.teacher_epochs=200", "trainer.student_epochs=5", "trainer.checkpoint_every=7", "cache.enabled=false",
    )  # fmt: skip
    with killed_if_left(start_kdrun("train", *args, cwd=tmp_path)) as proc:
        deadline = time.monotonic() + 120
        while not (run / "metrics.csv").is_file() or (run / "metrics.csv").read_text().count("\nteacher,") < 20:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    assert read_status(run)["status"] == "interrupted"
    run_kdrun("train", *args, cwd=tmp_path, check=True)

    metrics = _csv(run / "metrics.csv")
    expected = _expected_per_epoch(metrics, "val_acc", "teacher")
    assert [epoch for epoch, _ in expected] == list(range(1, 201))
    _assert_series(_scalars(run / "tensorboard")["teacher/val_acc"], expected)
    runs = _search(store, "kdrun")  # the interrupted attempt's MLflow run was replaced
    assert len(runs) == 1 and runs["status"][0] == "FINISHED"
    history = mlflow.MlflowClient(tracking_uri=store).get_metric_history(runs["run_id"][0], "teacher/val_acc")
    _assert_series([(m.step, m.value) for m in history], expected)


def test_a_tracker_whose_package_is_missing_is_one_message(tmp_path):
    blocked = tmp_path / "blocked" / "mlflow"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('not installed')\n")
    env = kdrun_env(PYTHONPATH=os.pathsep.join([str(tmp_path / "blocked"), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run(kdrun_command("train", "logger=mlflow", cwd=tmp_path), cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "logger=mlflow" in lines[0] and "pip install 'kdrun[trackers]'" in lines[0], result.stderr
    assert not (tmp_path / "outputs").exists()  # a refused command leaves no folder


@pytest.mark.parametrize("setting, named", [
    ("logger.mlflow.tracking_uri=bogus://store", "logger.mlflow.tracking_uri='bogus://store'"),  # no such scheme
    ("logger.mlflow.tracking_uri={tmp}/a_file.pt", "logger.mlflow.tracking_uri="),  # a file: MLflow's retired file store
    ("logger.mlflow.experiment_name=", "logger.mlflow.experiment_name=''"),
    ("logger.mlflow.tracking_uri=http://127.0.0.1:9", "logger.mlflow.tracking_uri='http://127.0.0.1:9'"),  # no server: in seconds, not minutes
])
def test_an_mlflow_setting_it_cannot_use_is_one_message(tmp_path, setting, named):
    (tmp_path / "a_file.pt").write_text("not a store")
    result = run_kdrun("train", "trainer.epochs=1", "logger=mlflow", setting.format(tmp=tmp_path), cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], result.stderr
    assert not (tmp_path / "outputs").exists()


class _SignalledMidCall(Tracker):
    """A tracker whose call is interrupted half-way: SIGTERM reaches the process ``signals`` times,
    then the call goes on."""

    def __init__(self, signals: int) -> None:
        self.signals, self.finished = signals, []

    def log_epoch(self, row: dict) -> None:
        for _ in range(self.signals):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the signal has arrived; raised here, it would leave the call half done
        self.finished.append(row["epoch"])


@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_during_a_trackers_call_stops_the_run_once_the_call_returns_or_at_once_if_sent_twice(signals):
    # TensorBoard's writer, cut short inside its queue, left its thread asleep for up to two
    # minutes when the run closed it. A second signal must still stop a call that hangs (a
    # tracker's server not answering). Another thread is alive, as torch's and TensorBoard's are:
    # a signal blocked in this thread would go there and its handler still run here.
    tracker, stop = _SignalledMidCall(signals), threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with sigterm_interrupts(), pytest.raises(Terminated):
            Trackers({"t": tracker}).log_epoch({"model": "teacher", "epoch": 3, "val_acc": 0.5})
    finally:
        stop.set()
        other.join()
    assert tracker.finished == ([3] if signals == 1 else [])
