"""One kdrun experiment, step by step: data -> models -> teacher -> students -> evaluation -> run files.

The teacher trains first; then the distilled student learns from it through the configured loss,
and the baseline student from the labels alone. Both students start from the same weights and
see the same batches and dropout masks: the loss is the only difference. The teacher and the
baseline do not depend on the loss, so they come from the disk cache when an earlier run trained
them with the same settings. All three are evaluated on held-out data.

In a sweep, a run's models may have been trained before it started, together with the other
jobs' (kdrun.groups): the run then takes them (``TrainedModel``, with its data and loss already
``prepare``d) and evaluates them and writes its files as it would have after training them.

A model that trains for long writes resumable checkpoints (kdrun.checkpoints) into the run
directory; a rerun into the same directory continues each model from its checkpoint and rebuilds
metrics.csv from the rows the checkpoints hold. The configured trackers (kdrun.trackers) see every
row, the summary and the figures.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from omegaconf import DictConfig
from rich.console import Console
from torch import nn

from kdrun.cache import load_or_train, model_fingerprint, save_atomic
from kdrun.checkpoints import Checkpoint, weights_digest
from kdrun.config import file_digest, instantiate, model_cache_dir, names_parameter, phase_epochs, to_plain, unused_schedule_settings
from kdrun.console import Progress, make_console, print_summary
from kdrun.data import DataSplits, Split, load_data
from kdrun.errors import ConfigError, failure_of, raised_at
from kdrun.models import count_parameters, multiply_adds, named_layers
from kdrun.models.weights import load_weights
from kdrun.plots import plot_curves, plot_temperature
from kdrun.run_files import CHECKPOINTS_DIR, METRICS_FILE, MODELS, SUMMARY_COLUMNS, MetricsLog, remove_checkpoints, write_csv_atomic
from kdrun.trackers import TrackedRun, Tracker, Trackers, flatten
from kdrun.train import Distillation, FitSettings, call_loss_once, evaluate, fit, predict, reported_epoch, resolve_device

log = logging.getLogger("kdrun")

PLOT_TEMPERATURES = (1.0, 2.0, 3.0, 5.0, 10.0)
TITLES = {"teacher": "the teacher", "distilled": "the distilled student", "baseline": "the baseline student"}
# A training step's multiply-adds (batch x a model's per example) below which a model trains on
# one thread: its epochs take a fraction of a second either way (the default MLPs at batch 32,
# 9-11M; the digits CNNs), and one thread is far steadier on a busy machine (two-thread runs had
# 5-20x outliers under contention). Above, two threads trained 1.5-1.8x faster on a 2-core x86
# CPU (LeNet-5 at batch 128, 53M; resnet8 on CIFAR at 64, 800M), whatever the parameter count.
SMALL_STEP_MULTIPLY_ADDS = 12_000_000
# The trainer settings that change a cached teacher's or baseline's weights.
CACHED_TRAINER_KEYS = ("batch_size", "optimizer", "lr", "weight_decay", "seed", "report", "momentum", "nesterov", "scheduler",
                       "milestones", "gamma", "warmup_epochs", "precision")  # fmt: skip
# torch's thread count at start-up follows OMP_NUM_THREADS, which parallel launchers set per job;
# read it before any job of an in-process sweep changes it.
DEFAULT_THREADS = torch.get_num_threads()


@dataclass
class RunResult:
    """What a run produced: its summary rows and metrics rows (as summary.csv and metrics.csv
    hold them) and the trained models."""

    run_dir: Path
    summary: dict[str, dict]  # model name -> its summary row
    metrics: list[dict]
    models: dict[str, nn.Module]

    @property
    def objective(self) -> float:
        """The distilled student's validation accuracy: what sweepers optimise."""
        return self.summary["distilled"]["val_acc"]


@dataclass
class _Run:
    """What the steps of one experiment share."""

    cfg: DictConfig
    data: DataSplits  # on the device
    run_dir: Path
    console: Console
    metrics: MetricsLog
    cache_key: dict[str, Any]  # what every cached model's key shares
    cache_dir: Optional[Path]
    trackers: Trackers
    augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None  # of training batches
    trained: dict[str, TrainedModel] = field(default_factory=dict)  # models trained before the run
    source: dict[str, str] = field(default_factory=dict)  # trained, cached or not_trained
    seconds: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[dict]] = field(default_factory=dict)  # each model's metrics rows


@dataclass
class TrainedModel:
    """A model its job does not train itself: trained with other jobs' models before the job ran
    (kdrun.groups), or found in the cache then. ``error``: what stopped its training, raised when
    its job reaches it, after its rows."""

    state_dict: dict[str, torch.Tensor]
    history: list[dict]
    source: str  # trained or cached
    seconds: float
    error: Optional[Exception] = None


@dataclass
class Prepared:
    """What a run builds before any training: data on the device, the loss, the models."""

    cfg: DictConfig
    device: torch.device
    data: DataSplits
    loss: Any
    teacher: nn.Module  # initialised with trainer.seed, or loaded from model.teacher.checkpoint
    student: nn.Module  # the students' initial weights (seed + 1): the distilled student's
    baseline: nn.Module  # a copy, for the baseline
    teacher_rng: torch.Tensor  # torch's random state the teacher's training starts from (its dropout masks)
    threads: int
    augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]]
    cache_key: dict[str, Any]  # what every cached model's key shares
    cache_dir: Optional[Path]


def build_loss(cfg: DictConfig) -> Any:
    """The configured loss, built on a random state of its own (seed + 3), so that its draws
    never shift the models'."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.trainer.seed + 3)
        loss = instantiate(cfg.loss, "loss")
    _check_callable_as_a_loss(loss, str(cfg.loss.get("_target_")))
    if not cfg.dataset.transfer_labels and not getattr(loss, "learns_without_labels", False):
        raise ConfigError(
            f"dataset.transfer_labels=false leaves the students no labels, and loss ({cfg.loss._target_}) needs them: "
            "use a loss that learns from the teacher alone (loss=kd, reverse_kl, js or fitnet with loss.alpha=1, or loss=mse_logits), "
            "or give your loss's class learns_without_labels = True"
        )
    return loss


def _check_callable_as_a_loss(loss: Any, target: str) -> None:
    """Refuse, before any training, a loss kdrun cannot call as ``loss(student_logits, teacher,
    labels)`` (kdrun/losses/base.py)."""
    contract = "kdrun calls a loss as loss(student_logits, teacher, labels) (see kdrun/losses/base.py)"
    if isinstance(loss, nn.Module) and type(loss).forward is nn.Module.forward:
        raise ConfigError(f"loss: {target} is a torch module without a forward method; {contract}")
    if not callable(loss):
        raise ConfigError(f"loss: {target} builds a {type(loss).__name__}, which cannot be called; {contract}")
    try:
        signature = inspect.signature(loss.forward if isinstance(loss, nn.Module) else loss)
    except (TypeError, ValueError):  # no signature to read
        return
    try:
        signature.bind_partial(None, None, None)
    except TypeError:
        raise ConfigError(f"loss: {target} is called with {signature}; {contract}") from None


def set_up_loss(cfg: DictConfig, loss: Any, student: nn.Module, teacher: nn.Module, data: DataSplits) -> None:
    """A loss's ``setup`` on one batch (seed + 4), then one call of the loss as training makes
    it, before any training: its layers are built and its shapes and results checked, so that a
    mistake shows at once rather than after the teacher trained."""
    device = data.train.x.device
    x = data.prepare(data.train.x[: cfg.trainer.batch_size])
    labels = data.train.y[: cfg.trainer.batch_size].long() if cfg.dataset.transfer_labels else None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if hasattr(loss, "setup"):
            torch.manual_seed(cfg.trainer.seed + 4)
            loss.setup(student, teacher, x)
        for role, model in (("student", student), ("teacher", teacher)):  # names the training loop will hook
            named_layers(model, getattr(loss, f"{role}_features", ()), role, f"the loss's {role}_features")
        call_loss_once(loss, student, teacher, x, labels, phase_epochs(cfg, "student"), str(cfg.trainer.precision), bool(cfg.dataset.get("augment")))


def prepare(cfg: DictConfig, data: Optional[DataSplits] = None) -> Prepared:
    """Load the data (unless given, on the device), build the loss and the models, check what
    can be checked before training, and set torch's thread count."""
    device = resolve_device(cfg.trainer.device)
    seed = cfg.trainer.seed
    data = data if data is not None else load_data(cfg.dataset)
    loss = build_loss(cfg)
    teacher, initial_student = _build_models(cfg, data, seed)
    teacher_rng = torch.get_rng_state()
    teacher_file = cfg.model.teacher.get("checkpoint")
    if teacher_file:  # a teacher trained elsewhere: its weights, and no training
        recorded = load_weights(teacher, teacher_file, "model.teacher.checkpoint")
        if recorded is not None and not _same_normalization(recorded["normalization"], data.normalization):
            log.warning(
                "model.teacher.checkpoint=%s was trained on inputs standardised with %s; this run standardises with %s, "
                "so the teacher sees inputs scaled otherwise than in its training", teacher_file, recorded["normalization"], data.normalization,
            )  # fmt: skip
    augment = _augmentation(cfg, data)
    if str(cfg.trainer.precision) == "16" and device.type != "cuda":
        raise ConfigError(f"trainer.precision=16 is not allowed on {device.type}: float16 training needs CUDA; use trainer.precision=bf16")
    threads = choose_threads(cfg.trainer.threads, cfg.trainer.batch_size * multiply_adds(teacher, data.prepare(data.train.x[:2])))
    torch.set_num_threads(threads)
    data = data.to(device)
    teacher, student = teacher.to(device), initial_student.to(device)
    baseline = copy.deepcopy(student)
    set_up_loss(cfg, loss, student, teacher, data)
    trainer = cfg.trainer
    cache_key = {
        "trainer": {k: to_plain(trainer[k]) for k in CACHED_TRAINER_KEYS},
        "augment": bool(cfg.dataset.augment),
        "device": device.type,
        "threads": threads,
    }
    return Prepared(cfg, device, data, loss, teacher, student, baseline, teacher_rng, threads, augment, cache_key, model_cache_dir(cfg))


def run_experiment(cfg: DictConfig, run_dir: Path, console: Optional[Console] = None, tags: Optional[dict[str, str]] = None,
                   trained: Optional[dict[str, TrainedModel]] = None, setup: Optional[Prepared] = None) -> RunResult:  # fmt: skip
    """Train and evaluate the three models of ``cfg`` (the composed config); write the run
    directory's metrics.csv, summary.csv, models and figures, and tell the trackers (tagged
    with ``tags``: the overrides, the seed). ``trained``: models trained before, by name, which
    the run takes instead of training them; ``setup``: the run's data, loss and models, if they
    were prepared before (``prepare``)."""
    console = console or make_console()
    trackers = Trackers({name: _build_tracker(node, f"logger.{name}") for name, node in cfg.logger.items()})
    if setup is None:
        setup = prepare(cfg)
    else:
        torch.set_num_threads(setup.threads)
    data, loss, teacher, distilled, baseline = setup.data, setup.loss, setup.teacher, setup.student, setup.baseline
    log.info(
        "kdrun: dataset %s (train %d, transfer %d, val %d, test %d, %d classes), device %s, %d thread(s) -> %s",
        data.name, len(data.train), len(data.transfer_index), len(data.val), len(data.test), data.num_classes, setup.device, setup.threads, run_dir,
    )  # fmt: skip
    for unused in unused_schedule_settings(cfg):
        log.warning("%s", unused)
    trainer = cfg.trainer
    run = _Run(cfg, data, run_dir, console, MetricsLog(run_dir / METRICS_FILE), setup.cache_key, setup.cache_dir, trackers, setup.augment,
               trained=dict(trained or {}))  # fmt: skip

    trackers.start(TrackedRun(run_dir, flatten(to_plain(cfg)), tags or {}))
    status = "failed"
    try:
        _train_teacher(run, teacher)
        if cfg.plots:
            _plot_teacher_temperatures(run, teacher, getattr(loss, "temperature", None))
        _train_students(run, teacher, distilled, baseline, loss)
        models = {"teacher": teacher, "distilled": distilled, "baseline": baseline}
        summary = _evaluate(run, models)
        _write_run_files(run, models, summary)
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        trackers.finish(status)
    if not trainer.keep_checkpoints:
        remove_checkpoints(run_dir)
    print_summary(console, summary)
    return RunResult(run_dir, summary, run.metrics.rows, models)


def _same_normalization(a: Optional[dict], b: Optional[dict]) -> bool:
    if a is None or b is None:
        return a is b
    return all(torch.allclose(torch.tensor(a[k], dtype=torch.float64), torch.tensor(b[k], dtype=torch.float64), rtol=1e-3) for k in ("mean", "std"))


def _augmentation(cfg: DictConfig, data: DataSplits) -> Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]]:
    """dataset.augment: random crops and flips of training images, or None."""
    if not cfg.dataset.get("augment", False):
        return None
    if len(data.input_shape) != 3:
        raise ConfigError(f"dataset.augment=true crops and flips images [channels, height, width]; this dataset's examples are {data.input_shape}")
    from kdrun.data.augment import random_crop_flip

    return random_crop_flip


def _build_tracker(node: DictConfig, key: str) -> Tracker:
    tracker = instantiate(node, key)
    missing = [method for method in ("start", "log_epoch", "log_summary", "log_figure", "finish") if not callable(getattr(tracker, method, None))]
    if missing:
        raise ConfigError(f"{key}: {node._target_} returned {type(tracker).__name__}, which lacks {', '.join(missing)}; see kdrun.trackers.Tracker")
    return tracker


def choose_threads(requested: Optional[int], step_multiply_adds: int) -> int:
    """trainer.threads, or for null: one thread for training steps of less work than
    SMALL_STEP_MULTIPLY_ADDS, else the process's thread count."""
    if requested is not None:
        return requested
    return 1 if step_multiply_adds < SMALL_STEP_MULTIPLY_ADDS else max(1, DEFAULT_THREADS)


# --------------------------------------------------------------------------- models


def _model_spec(cfg: DictConfig, role: str) -> dict[str, Any]:
    """What builds the teacher's or the student's network: its config without ``checkpoint``."""
    return {key: value for key, value in to_plain(cfg.model[role]).items() if key != "checkpoint"}


def _data_arguments(cfg: DictConfig, role: str, data: DataSplits) -> dict[str, Any]:
    """What the data tells a model's ``_target_``: ``num_classes``, and ``input_shape`` where the
    target names that parameter (torchvision's and timm's constructors take num_classes alone)."""
    arguments: dict[str, Any] = {"num_classes": data.num_classes}
    if names_parameter(cfg.model[role], f"model.{role}", "input_shape"):
        arguments["input_shape"] = tuple(data.input_shape)
    return arguments


_MODULE_CALL = os.path.join("torch", "nn", "modules", "module.py")  # where torch calls a network's forward


def _build_model(cfg: DictConfig, role: str, data: DataSplits) -> nn.Module:
    key = f"model.{role}"
    model = instantiate(_model_spec(cfg, role), key, **_data_arguments(cfg, role, data))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{key}: {cfg.model[role]._target_} returned {type(model).__name__}; it must return a torch.nn.Module")
    model.to(data.train.x.device)  # the data of a sweep's second seed is on the GPU already (kdrun.groups)
    try:
        output = predict(model, data.train.x[:2], data.prepare)
    except Exception as error:  # the network does not fit the data: its own code, or its settings
        frames = traceback.extract_tb(error.__traceback__)
        if failure_of(error) is not None or not any(f.filename.endswith(_MODULE_CALL) for f in frames):
            raise  # out of memory, or raised before the network was called: not the network's
        where = raised_at(error)
        place = "" if where.startswith(str(Path(__file__).parent) + os.sep) else f" (raised at {where})"  # in its own code, not torch's or kdrun's
        raise ConfigError(
            f"{key}: {cfg.model[role]._target_} fails on inputs of shape {tuple(data.train.x[:2].shape)}: "
            f"{type(error).__name__}: {(str(error) or '?').splitlines()[0]}{place}"
        ) from error
    if not isinstance(output, torch.Tensor) or not output.is_floating_point():  # a tuple, a dict, integer "logits"
        returned = f"a {output.dtype} tensor" if isinstance(output, torch.Tensor) else type(output).__name__
        raise ConfigError(f"{key}: {cfg.model[role]._target_}'s forward returns {returned}; kdrun needs a float tensor of logits [batch, {data.num_classes}]")
    shape = tuple(output.shape)
    if shape != (min(2, len(data.train)), data.num_classes):
        raise ConfigError(
            f"{key}: {cfg.model[role]._target_} maps inputs of shape {tuple(data.train.x[:2].shape)} to {shape}; "
            f"kdrun needs logits of shape [batch, {data.num_classes}] (num_classes={data.num_classes})"
        )
    trained = role == "student" or not cfg.model.teacher.get("checkpoint")
    if trained and not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(
            f"{key}: {cfg.model[role]._target_} builds a model with no trainable parameters: nothing to train "
            "(layers kept in a plain list or dict are not registered; use nn.ModuleList or nn.ModuleDict)"
        )
    return model


def _build_models(cfg: DictConfig, data: DataSplits, seed: int) -> tuple[nn.Module, nn.Module]:
    """The teacher (seeded with ``seed``) and the students' common initial weights (seeded with
    seed + 1, whatever the teacher drew)."""
    torch.manual_seed(seed)
    teacher = _build_model(cfg, "teacher", data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        student = _build_model(cfg, "student", data)
    return teacher, student


def model_key(run: Union[_Run, Prepared], role: str, model: nn.Module, epochs: int, include_transfer: bool) -> dict[str, Any]:
    """Everything that determines a cached model's trained weights. The teacher's key leaves the
    transfer set out: it trains on the whole training split whatever the transfer set is."""
    return {
        **run.cache_key,
        "data": run.data.fingerprint(include_transfer=include_transfer),
        "model": _model_spec(run.cfg, role),
        "architecture": model_fingerprint(model),
        "epochs": epochs,
    }


# --------------------------------------------------------------------------- training


def fit_settings(cfg: DictConfig, epochs: int, batch_seed: int) -> FitSettings:
    """The trainer's settings, as ``fit`` takes them."""
    trainer = cfg.trainer
    return FitSettings(
        epochs, trainer.batch_size, trainer.optimizer, trainer.lr, trainer.weight_decay, batch_seed, trainer.report,
        trainer.momentum, trainer.nesterov, trainer.scheduler, list(trainer.milestones), trainer.gamma, trainer.warmup_epochs,
        str(trainer.precision), trainer.compile,
    )  # fmt: skip


def _train(run: _Run, name: str, model: nn.Module, split: Split, epochs: int, batch_seed: int,
           distillation: Optional[Distillation] = None, cache_kind: Optional[str] = None,
           cache_key: Optional[dict] = None) -> None:  # fmt: skip
    """Train one model (or fill it from the cache), its rows going to metrics.csv and the screen."""
    trainer = run.cfg.trainer
    settings = fit_settings(run.cfg, epochs, batch_seed)
    started = time.perf_counter()
    given = run.trained.get(name)
    with Progress(run.console, name, epochs) as progress:
        def on_epoch(row: dict) -> None:
            run.metrics.append([row])
            run.trackers.log_epoch(row)
            progress.update(row)

        def train() -> list[dict]:
            teacher = weights_digest(distillation.teacher) if distillation is not None else None  # a checkpoint of another teacher's student is not resumed
            checkpoint = Checkpoint(run.run_dir / CHECKPOINTS_DIR / f"{name}.pt", trainer.checkpoint_every, TITLES[name], teacher)
            return fit(model, split, run.data.val, settings, name, distillation, on_epoch, checkpoint, run.data.prepare, run.augment)

        if given is not None:  # trained with other jobs' models (kdrun.groups)
            origin, rows = given.source, given.history
        elif cache_kind is None:
            origin, rows = "trained", train()
        else:
            rows, origin = load_or_train(cache_kind, cache_key, model, train, run.cache_dir)
        if origin == "cached":
            log.info("%-9s reused from the cache (%s); its epochs as they were:", name, run.cache_dir)
        if given is not None or origin == "cached":  # epochs that did not go to the screen and metrics.csv yet
            for row in rows:
                on_epoch(row)
        if given is not None:
            if given.error is not None:
                raise given.error
            model.load_state_dict(given.state_dict)
    run.source[name] = origin
    run.history[name] = rows
    run.seconds[name] = given.seconds if given is not None else time.perf_counter() - started


def _train_teacher(run: _Run, teacher: nn.Module) -> None:
    teacher_file = run.cfg.model.teacher.get("checkpoint")
    if teacher_file:
        run.source["teacher"], run.history["teacher"] = "checkpoint", []
        log.info("teacher   loaded from %s (sha256 %s); not trained", teacher_file, file_digest(Path(teacher_file).expanduser())[:16])
        return
    epochs = phase_epochs(run.cfg, "teacher")
    key = model_key(run, "teacher", teacher, epochs, include_transfer=False)
    _train(run, "teacher", teacher, run.data.train, epochs, run.cfg.trainer.seed, cache_kind="teacher", cache_key=key)


def _train_students(run: _Run, teacher: nn.Module, distilled: nn.Module, baseline: nn.Module, loss: Any) -> None:
    """The distilled student through ``loss``, then the baseline from the labels alone: the same
    initial weights, batches (seed + 1) and dropout masks (seed + 2)."""
    seed, epochs = run.cfg.trainer.seed, phase_epochs(run.cfg, "student")
    with_labels = bool(run.cfg.dataset.transfer_labels)
    transfer = run.data.transfer
    torch.manual_seed(seed + 2)
    _train(run, "distilled", distilled, transfer, epochs, seed + 1, Distillation(loss, teacher, with_labels, set_up=True))
    if not with_labels:
        run.source["baseline"] = "not_trained"
        log.info("baseline  not trained: dataset.transfer_labels=false leaves it no labels to learn from")
        return
    torch.manual_seed(seed + 2)
    key = model_key(run, "student", baseline, epochs, include_transfer=True)
    _train(run, "baseline", baseline, transfer, epochs, seed + 1, cache_kind="baseline", cache_key=key)


# --------------------------------------------------------------------------- evaluation and files


def _evaluate(run: _Run, models: dict[str, nn.Module]) -> dict[str, dict]:
    """One summary row per model: accuracy on each split, test NLL, agreement with the teacher,
    and the run's settings (so that many runs' summaries concatenate into one table)."""
    cfg, data = run.cfg, run.data
    teacher_test = evaluate(models["teacher"], data.test, data.prepare)
    summary = {}
    for name in MODELS:
        trained = run.source[name] != "not_trained"
        on_train, on_val, on_test = (evaluate(models[name], split, data.prepare) for split in (data.train, data.val, data.test))
        agreement = (on_test.logits.argmax(-1) == teacher_test.logits.argmax(-1)).sum().item() / max(1, len(data.test))
        summary[name] = {
            "model": name,
            "params": count_parameters(models[name]),
            "epoch": reported_epoch(run.history[name], cfg.trainer.report) if run.history.get(name) else math.nan,
            "train_acc": on_train.accuracy if trained else math.nan,
            "val_acc": on_val.accuracy if trained else math.nan,
            "test_acc": on_test.accuracy if trained else math.nan,
            "test_nll": on_test.loss if trained else math.nan,
            "agreement": agreement if trained else math.nan,
            "dataset": data.name,
            "alpha": cfg.loss.get("alpha"),
            "temperature": cfg.loss.get("temperature"),
            "seed": cfg.trainer.seed,
            "teacher_epochs": phase_epochs(cfg, "teacher"),
            "student_epochs": phase_epochs(cfg, "student"),
            "n_train": len(data.train),
            "n_transfer": len(data.transfer_index),
            "n_val": len(data.val),
            "n_test": len(data.test),
            "source": run.source[name],
            "train_seconds": run.seconds.get(name, math.nan),
        }
    return summary


def _write_run_files(run: _Run, models: dict[str, nn.Module], summary: dict[str, dict]) -> None:
    """A checkpoint per trained model, summary.csv and curves.png."""
    config = to_plain(run.cfg)
    for name, model in models.items():
        if run.source[name] == "not_trained":
            continue
        role = "teacher" if name == "teacher" else "student"
        data_arguments = _data_arguments(run.cfg, role, run.data)
        built_by = {**_model_spec(run.cfg, role), **{k: list(v) if isinstance(v, tuple) else v for k, v in data_arguments.items()}}
        checkpoint = {"state_dict": model.state_dict(), "model": built_by, "normalization": run.data.normalization, "config": config}
        save_atomic(checkpoint, run.run_dir / f"{name}.pt")
    write_csv_atomic(run.run_dir / "summary.csv", summary.values(), SUMMARY_COLUMNS)
    run.trackers.log_summary(summary)
    if run.cfg.plots:
        plot_curves(run.run_dir / "curves.png", run.metrics.rows, _title(run, summary))
        run.trackers.log_figure(run.run_dir / "curves.png")


def _title(run: _Run, summary: dict[str, dict]) -> str:
    """What a figure of this run is about: the data, the loss and its settings, the result."""
    loss = run.cfg.loss
    settings = ", ".join(f"{key}={loss[key]:g}" for key in ("alpha", "temperature") if isinstance(loss.get(key), (int, float)))
    name = str(loss.get("_target_", "")).rpartition(".")[2]
    accuracy = ", ".join(f"{m} {summary[m]['test_acc']:.1%}" for m in MODELS if not math.isnan(summary[m]["test_acc"]))
    return f"{run.data.name}: {name}({settings}), seed {run.cfg.trainer.seed}; test accuracy {accuracy}"


def _plot_teacher_temperatures(run: _Run, teacher: nn.Module, run_temperature: Optional[float], n_examples: int = 3) -> None:
    """temperature.png: the trained teacher's softmax on a few test examples at several T."""
    logits = predict(teacher, run.data.test.x[:n_examples], run.data.prepare).float().cpu()
    temperatures = sorted(set(PLOT_TEMPERATURES) | ({float(run_temperature)} if run_temperature else set()))
    probabilities = {t: torch.softmax(logits / t, dim=-1).tolist() for t in temperatures}
    labels = run.data.test.y[:n_examples].tolist()
    plot_temperature(run.run_dir / "temperature.png", probabilities, labels, float(run_temperature or math.nan))
    run.trackers.log_figure(run.run_dir / "temperature.png")
