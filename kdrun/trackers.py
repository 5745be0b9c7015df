"""Trackers: where a run's numbers go besides its CSV files, which are always written and stay the
source of truth.

``logger=tensorboard`` writes TensorBoard event files into ``<run dir>/tensorboard``;
``logger=mlflow`` logs an MLflow run; ``logger=[tensorboard,mlflow]`` does both. Each is given the
run's flattened config (as parameters), every model's per-epoch metrics under the model's name
(``teacher/val_acc``, ``distilled/soft_loss``), the summary numbers (``summary/distilled/test_acc``)
and the figures. Each is built from ``_target_`` (conf/logger/), so a tracker of one's own is a
class with these methods. A tracker that fails while the run goes on is reported once and dropped:
training never stops for a tracker. Ctrl-C and SIGTERM wait for a tracker's call to return
(its threads and database are not left half-way), then stop the run; a second one stops it at
once (a tracker's server may be slow to answer).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from kdrun.errors import ConfigError
from kdrun.interrupts import signals_held

log = logging.getLogger("kdrun")

INSTALL_HINT = "pip install 'kdrun[trackers]'"
DEFAULT_STORE = Path("outputs")  # MLflow's store when logger.mlflow.tracking_uri is null, as Hydra's default run folders


@dataclass
class TrackedRun:
    """What a tracker is told about the run at its start."""

    run_dir: Path
    config: dict[str, Any]  # flattened: {"loss.alpha": 0.9, ...}
    tags: dict[str, str] = field(default_factory=dict)  # overrides, seed


class Tracker:
    """A tracker's methods, in the order kdrun calls them. ``start`` may raise ConfigError (a
    missing package, a store that cannot be opened); the others are reported and then skipped."""

    def start(self, run: TrackedRun) -> None: ...
    def log_epoch(self, row: dict[str, Any]) -> None: ...
    def log_summary(self, summary: dict[str, dict[str, Any]]) -> None: ...
    def log_figure(self, path: Path) -> None: ...
    def finish(self, status: str) -> None: ...  # completed, failed or interrupted


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"loss": {"alpha": 0.9}} -> {"loss.alpha": 0.9}; lists stay whole."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    """A row's finite numbers, without the model and epoch that name them."""
    return {
        key: float(value)
        for key, value in row.items()
        if key not in ("model", "epoch") and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def _import_or_explain(module: str, logger: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"logger={logger} needs the {module.split('.')[0]} package, which is not installed: {INSTALL_HINT}") from None


class TensorBoardTracker(Tracker):
    """Event files in ``<run dir>/tensorboard``: ``tensorboard --logdir outputs/`` shows a sweep's
    runs side by side, their settings and results in the HPARAMS tab."""

    def start(self, run: TrackedRun) -> None:
        _import_or_explain("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.config = run.config
        directory = run.run_dir / "tensorboard"
        shutil.rmtree(directory, ignore_errors=True)  # a rerun or a resumed run logs every epoch again
        self.writer = SummaryWriter(log_dir=str(directory))
        self.writer.add_text("config", "\n".join(f"    {key}: {value}" for key, value in run.config.items()))

    def log_epoch(self, row: dict[str, Any]) -> None:
        for key, value in _numbers(row).items():
            self.writer.add_scalar(f"{row['model']}/{key}", value, row["epoch"])

    def log_summary(self, summary: dict[str, dict[str, Any]]) -> None:
        from torch.utils.tensorboard.summary import hparams

        results = {f"summary/{model}/{key}": value for model, row in summary.items() for key, value in _numbers(row).items()}
        settings = {key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in self.config.items()}
        for event in hparams(settings, results):  # the HPARAMS tab, in this run's own folder
            self.writer.file_writer.add_summary(event)
        for key, value in results.items():
            self.writer.add_scalar(key, value, 0)

    def log_figure(self, path: Path) -> None:
        from matplotlib.image import imread

        self.writer.add_image(f"figures/{path.stem}", imread(path)[..., :3], 0, dataformats="HWC")

    def finish(self, status: str) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    """An MLflow run per kdrun run, in the experiment ``experiment_name``; a sweep's jobs are runs
    of one experiment, tagged with their overrides and seed. ``tracking_uri=None``: a SQLite store
    in ``outputs/`` of the working directory (``mlflow ui --backend-store-uri sqlite:///outputs/mlflow.db``)."""

    RUN_ID_FILE = "mlflow_run_id"  # in the run directory: a resumed run replaces its earlier MLflow run

    def __init__(self, tracking_uri: Optional[str] = None, experiment_name: str = "kdrun") -> None:
        self.tracking_uri, self.experiment_name = tracking_uri, experiment_name

    def start(self, run: TrackedRun) -> None:
        mlflow = _import_or_explain("mlflow", "mlflow")
        uri = self.tracking_uri or f"sqlite:///{DEFAULT_STORE.absolute() / 'mlflow.db'}"
        if not str(self.experiment_name or "").strip():
            raise ConfigError(f"logger.mlflow.experiment_name={self.experiment_name!r} is not allowed: the MLflow experiment's name, e.g. kdrun")
        try:
            self.client = mlflow.MlflowClient(tracking_uri=uri)
            with _few_retries():  # a server that does not answer: one message in seconds, not after MLflow's 4 minutes of retries
                experiment = self.client.get_experiment_by_name(self.experiment_name)
            if experiment is not None:
                experiment_id = experiment.experiment_id
            else:
                location = None if self.tracking_uri else (DEFAULT_STORE / "mlartifacts").absolute().as_uri()
                experiment_id = self.client.create_experiment(self.experiment_name, artifact_location=location)
        except Exception as error:
            raise ConfigError(f"logger.mlflow.tracking_uri={uri!r} cannot be used: {type(error).__name__}: {error}") from None
        id_file = run.run_dir / self.RUN_ID_FILE
        if id_file.is_file():  # an earlier, unfinished attempt of this run: this one logs it all again
            try:
                self.client.delete_run(id_file.read_text().strip())
            except Exception:
                pass  # already gone
        name = f"{run.run_dir.parent.name}/{run.run_dir.name}"
        self.run_id = self.client.create_run(experiment_id, run_name=name, tags={**run.tags, "run_dir": str(run.run_dir)}).info.run_id
        id_file.write_text(self.run_id + "\n")
        from mlflow.entities import Param

        params = [Param(key, str(value)[:6000]) for key, value in run.config.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def _log_metrics(self, values: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in values.items()])

    def log_epoch(self, row: dict[str, Any]) -> None:
        self._log_metrics({f"{row['model']}/{key}": value for key, value in _numbers(row).items()}, row["epoch"])

    def log_summary(self, summary: dict[str, dict[str, Any]]) -> None:
        self._log_metrics({f"summary/{model}/{key}": value for model, row in summary.items() for key, value in _numbers(row).items()}, 0)

    def log_figure(self, path: Path) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path="figures")

    def finish(self, status: str) -> None:
        self.client.set_terminated(self.run_id, {"completed": "FINISHED", "interrupted": "KILLED"}.get(status, "FAILED"))


# For the first request to an MLflow server only, unless the user set them: later calls keep
# MLflow's own patience (7 retries, 120 s timeouts) for a server that hiccups mid-run.
_FIRST_REQUEST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}


@contextlib.contextmanager
def _few_retries() -> Iterator[None]:
    added = [name for name in _FIRST_REQUEST if name not in os.environ]
    os.environ.update({name: _FIRST_REQUEST[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


class Trackers:
    """The configured trackers as one: a call reaches each; one that raises is reported and dropped."""

    def __init__(self, trackers: dict[str, Tracker]) -> None:
        self.trackers = trackers

    def start(self, run: TrackedRun) -> None:
        for tracker in self.trackers.values():
            with signals_held(second_stops=True):
                tracker.start(run)  # a failure here is the user's setting: the run stops before training

    def _each(self, method: str, *args: Any) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                with signals_held(second_stops=True):
                    getattr(tracker, method)(*args)
            except Exception as error:
                log.warning("logger.%s stopped logging (%s: %s); the CSV files have everything", name, type(error).__name__, error)
                del self.trackers[name]

    def log_epoch(self, row: dict[str, Any]) -> None:
        self._each("log_epoch", row)

    def log_summary(self, summary: dict[str, dict[str, Any]]) -> None:
        self._each("log_summary", summary)

    def log_figure(self, path: Path) -> None:
        if path.is_file():
            self._each("log_figure", path)

    def finish(self, status: str) -> None:
        self._each("finish", status)
