"""One kdrun experiment: config -> data -> models -> training -> reports.

Trains the teacher, then the distilled student, then the baseline student (the same initial
weights and the same batches as the distilled one: the loss is the only difference), evaluates
all three on held-out data and writes the run directory. Where a second core is free, the
baseline trains beside the teacher and its results come out in its turn (``TrainedAhead``).
Returns the distilled student's validation accuracy, the number a sweeper optimises.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from rich.console import Console
from rich.table import Table

from kdrun import figures
from kdrun.cache import ClaimedEntry, claim_missing_entry, load_or_train, save_atomic
from kdrun.config import KDRunConf, MLPConf, model_cache_dir, phase_epochs, to_plain
from kdrun.data import DataSplits, load_data
from kdrun.models import MLP, count_parameters
from kdrun.reports import SUMMARY_COLUMNS, MetricsLog, write_csv_atomic
from kdrun.train import Distillation, FitSettings, evaluate, fit, predict, resolve_device

log = logging.getLogger("kdrun")

PLOT_TEMPERATURES = (1.0, 2.0, 3.0, 5.0, 10.0)
SMALL_MODEL_PARAMS = 1_000_000  # below this, one thread is as fast as two and far steadier here
# torch's thread count at start-up follows OMP_NUM_THREADS, which parallel launchers set per job;
# read it before any job of an in-process sweep changes it.
DEFAULT_THREADS = torch.get_num_threads()


def choose_threads(requested: Optional[int], teacher_params: int) -> int:
    if requested is not None:
        return requested
    return 1 if teacher_params < SMALL_MODEL_PARAMS else max(1, DEFAULT_THREADS)


def _build(spec: MLPConf, data: DataSplits) -> MLP:
    return MLP(data.input_dim, list(spec.hidden), data.num_classes, spec.dropout)


class Progress:
    """A rich progress bar per phase on a terminal; a few plain log lines elsewhere."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live = console.is_terminal

    def phase(self, name: str, epochs: int):
        return _Phase(self, name, epochs)


class _Phase:
    def __init__(self, owner: Progress, name: str, epochs: int) -> None:
        self.owner, self.name, self.epochs = owner, name, epochs
        self.bar = None

    def __enter__(self) -> "_Phase":
        if self.owner.live:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self.bar = RichProgress(
                TextColumn(f"{self.name:<9}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(), console=self.owner.console, transient=False,
            )  # fmt: skip
            self.bar.start()
            self.task = self.bar.add_task(self.name, total=self.epochs, info="")
        return self

    def update(self, row: dict) -> None:
        info = f"loss {row['train_loss']:.4g}  val acc {row['val_acc']:.2%}"
        if self.bar is not None:
            self.bar.update(self.task, advance=1, info=info)
        elif row["epoch"] == self.epochs or row["epoch"] % max(1, self.epochs // 4) == 0:
            log.info("%-9s epoch %d/%d  %s", self.name, row["epoch"], self.epochs, info)
        else:
            log.debug("%-9s epoch %d/%d  %s", self.name, row["epoch"], self.epochs, info)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


class _Cancelled(Exception):
    pass


class TrainedAhead:
    """A model trained on a second thread ahead of its turn; its rows wait to be replayed then.

    The baseline student depends on neither the teacher nor alpha and T, so where this process
    has a second core and the models run on one thread each (small models on the CPU), it trains
    beside the teacher. It is the same model, bit for bit, as one trained in its turn: the same
    initial weights and batches, one thread, and no draws from the global RNG (no dropout), which
    the teacher's dropout uses meanwhile. Replayed in its turn, its rows reach metrics.csv, the
    progress display and the log in the usual order, and its error (a NaN loss) is raised there.
    """

    def __init__(self, train: Callable[[Callable[[dict], None]], list[dict]], entry: ClaimedEntry) -> None:
        self.entry = entry  # the cache entry's lock, held until the model is stored or dropped
        self.rows: list[dict] = []
        self.error: Optional[BaseException] = None
        self.seconds = math.nan
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(train,), name="kdrun-train-ahead", daemon=True)
        self._thread.start()

    def _run(self, train: Callable[[Callable[[dict], None]], list[dict]]) -> None:
        started = time.perf_counter()

        def collect(row: dict) -> None:
            if self._cancelled.is_set():
                raise _Cancelled
            self.rows.append(row)

        try:
            train(collect)
        except BaseException as error:
            self.error = error
        self.seconds = time.perf_counter() - started

    def replay(self, on_epoch: Callable[[dict], None]) -> list[dict]:
        """Wait for the model; pass each row to ``on_epoch``; raise the error it stopped on."""
        self._thread.join()
        for row in self.rows:
            on_epoch(row)
        if self.error is not None:
            raise self.error
        return self.rows

    def cancel(self) -> None:
        """Stop it after its current epoch and drop it (the cache entry is released unwritten)."""
        self._cancelled.set()
        self._thread.join()
        self.entry.release()


def _trains_baseline_ahead(cfg: KDRunConf, device: torch.device, threads: int) -> bool:
    return (
        device.type == "cpu"
        and cfg.trainer.threads is None  # chosen here: small models, one thread each
        and threads == 1
        and DEFAULT_THREADS >= 2  # this process has a second core (parallel launchers give each job one)
        and cfg.model.student.dropout == 0
        and bool(cfg.dataset.transfer_labels)
    )


def _teacher_probabilities(teacher: MLP, data: DataSplits, run_temperature: float, n_examples: int = 3):
    logits = predict(teacher, data.test.x[:n_examples]).float().cpu()
    temperatures = sorted(set(PLOT_TEMPERATURES) | {float(run_temperature)})
    probabilities = {t: torch.softmax(logits / t, dim=-1).tolist() for t in temperatures}
    return probabilities, data.test.y[:n_examples].tolist()


def make_console() -> Console:
    console = Console()
    if not console.is_terminal:  # logs and CI: no terminal to measure, so room for the table
        console.width = max(console.width, 100)
    return console


def run_experiment(cfg: KDRunConf, run_dir: Path, console: Console, wait_for_figures: bool = True) -> dict:
    """Train and evaluate the three models; write the run directory. Returns the summary rows
    keyed by model name. ``cfg`` is the schema's dataclasses (``OmegaConf.to_object`` of the
    composed config) or the composed DictConfig itself. The figures are drawn by
    ``kdrun.figures`` alongside; with ``wait_for_figures=False`` they may still be on their way
    when this returns (the caller then waits for them through ``figures.queue()``)."""
    device = resolve_device(cfg.trainer.device)
    data = load_data(cfg.dataset)
    seed = cfg.trainer.seed
    torch.manual_seed(seed)
    teacher = _build(cfg.model.teacher, data)
    threads = choose_threads(cfg.trainer.threads, count_parameters(teacher))
    torch.set_num_threads(threads)
    teacher.to(device)
    train, val, test = data.train.to(device), data.val.to(device), data.test.to(device)
    transfer = data.transfer.to(device)
    log.info(
        "kdrun: dataset %s (train %d, transfer %d, val %d, test %d, %d classes), device %s, %d thread(s) -> %s",
        data.name, len(train), len(transfer), len(val), len(test), data.num_classes, device, threads, run_dir,
    )  # fmt: skip

    cache_dir = model_cache_dir(cfg)
    trainer_cfg = to_plain(cfg.trainer)
    common_key = {
        "trainer": {k: trainer_cfg[k] for k in ("batch_size", "optimizer", "lr", "weight_decay", "seed")},
        "device": device.type,
        "threads": threads,
    }
    metrics = MetricsLog(run_dir / "metrics.csv")
    progress = Progress(console)
    history: list[dict] = []
    source: dict[str, str] = {}
    seconds: dict[str, float] = {}

    def settings_for(epochs: int, batch_seed: int) -> FitSettings:
        trainer = cfg.trainer
        return FitSettings(epochs, trainer.batch_size, trainer.optimizer, trainer.lr, trainer.weight_decay, batch_seed)

    def run_phase(name: str, model: MLP, split, epochs: int, batch_seed: int, distillation=None, cache_kind=None, key=None, ahead=None):
        started = time.perf_counter()
        with progress.phase(name, epochs) as phase:
            def train_now() -> list[dict]:
                def on_epoch(row: dict) -> None:
                    metrics.append([row])
                    phase.update(row)
                    figures.queue().settle(block=False)  # an earlier sweep job whose figures are written completes

                if ahead is not None:
                    return ahead.replay(on_epoch)
                return fit(model, split, val, settings_for(epochs, batch_seed), name, distillation, on_epoch=on_epoch)

            if ahead is not None:
                rows, origin = train_now(), "trained"
                ahead.entry.store(model, rows)
            elif cache_kind is None:
                rows, origin = train_now(), "trained"
            else:
                rows, origin = load_or_train(cache_kind, key, model, train_now, cache_dir)
                if origin == "cached":
                    metrics.append(rows)
                    for row in rows:
                        phase.update(row)
        history.extend(rows)
        source[name] = origin
        seconds[name] = ahead.seconds if ahead is not None else time.perf_counter() - started
        if origin == "cached":
            log.info("%-9s reused from the cache (%s)", name, cache_dir)

    teacher_epochs, student_epochs = phase_epochs(cfg, "teacher"), phase_epochs(cfg, "student")
    # Both students start from the same weights and see the same batches. Their initial weights
    # come from seed + 1 whatever the teacher drew meanwhile.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        initial_student = _build(cfg.model.student, data).to(device)
    distilled, baseline = copy.deepcopy(initial_student), copy.deepcopy(initial_student)
    baseline_ahead = baseline_key = None
    if cfg.dataset.transfer_labels:  # else there is no baseline (and no need to hash the data for its key)
        baseline_key = {**common_key, "data": data.fingerprint(), "model": to_plain(cfg.model.student), "epochs": student_epochs}
    if _trains_baseline_ahead(cfg, device, threads):
        entry = claim_missing_entry("baseline", baseline_key, cache_dir)
        if entry is not None:  # else it is in the cache, or another job is training it
            settings = settings_for(student_epochs, seed + 1)
            baseline_ahead = TrainedAhead(lambda on_epoch: fit(baseline, transfer, val, settings, "baseline", on_epoch=on_epoch), entry)
            log.debug("baseline  trains on a second thread beside the teacher")
    try:
        run_phase(
            "teacher", teacher, train, teacher_epochs, seed, cache_kind="teacher",
            key={**common_key, "data": data.fingerprint(include_transfer=False), "model": to_plain(cfg.model.teacher), "epochs": teacher_epochs},
        )  # fmt: skip
        if cfg.plots:
            probabilities, labels = _teacher_probabilities(teacher, data, cfg.loss.temperature)
            figures.queue().submit(
                run_dir, "plot_temperature", run_dir / "temperature.png", probabilities, labels, float(cfg.loss.temperature)
            )

        teacher_logits = predict(teacher, transfer.x)
        distillation = Distillation(teacher_logits, cfg.loss.alpha, cfg.loss.temperature, cfg.dataset.transfer_labels)
        torch.manual_seed(seed + 2)  # dropout masks
        run_phase("distilled", distilled, transfer, student_epochs, seed + 1, distillation=distillation)
        if cfg.dataset.transfer_labels:
            torch.manual_seed(seed + 2)
            run_phase("baseline", baseline, transfer, student_epochs, seed + 1, cache_kind="baseline", key=baseline_key, ahead=baseline_ahead)
        else:
            source["baseline"] = "not_trained"
            log.info("baseline  not trained: dataset.transfer_labels=false leaves it no labels to learn from")
    finally:
        if baseline_ahead is not None:
            baseline_ahead.cancel()  # a no-op once it is stored

    if cfg.plots:
        figures.queue().submit(run_dir, "plot_curves", run_dir / "curves.png", history)

    models = {"teacher": teacher, "distilled": distilled, "baseline": baseline}
    teacher_test = evaluate(teacher, test)
    summary = {}
    for name, model in models.items():
        trained = source[name] != "not_trained"
        result_train, result_val, result_test = (evaluate(model, s) for s in (train, val, test))
        agreement = (result_test.logits.argmax(-1) == teacher_test.logits.argmax(-1)).sum().item() / max(1, len(test))
        summary[name] = {
            "model": name,
            "params": count_parameters(model),
            "train_acc": result_train.accuracy if trained else math.nan,
            "val_acc": result_val.accuracy if trained else math.nan,
            "test_acc": result_test.accuracy if trained else math.nan,
            "test_nll": result_test.loss if trained else math.nan,
            "agreement": agreement if trained else math.nan,
            "dataset": data.name,
            "alpha": cfg.loss.alpha,
            "temperature": cfg.loss.temperature,
            "seed": seed,
            "teacher_epochs": teacher_epochs,
            "student_epochs": student_epochs,
            "n_train": len(train),
            "n_transfer": len(transfer),
            "n_val": len(val),
            "n_test": len(test),
            "source": source[name],
            "train_seconds": seconds.get(name, math.nan),
        }
        if trained:
            save_atomic(
                {
                    "state_dict": model.state_dict(),
                    "model": {"input_dim": model.input_dim, "hidden": model.hidden, "num_classes": model.num_classes, "dropout": model.dropout},
                    "config": to_plain(cfg),
                },
                run_dir / f"{name}.pt",
            )

    write_csv_atomic(run_dir / "summary.csv", summary.values(), SUMMARY_COLUMNS)
    print_summary(console, summary)
    if cfg.plots and wait_for_figures:
        figures.queue().wait(run_dir)
    return summary


def print_summary(console: Console, summary: dict) -> None:
    table = Table(title="Accuracy on each split; test NLL; top-1 agreement with the teacher on test")
    for column in ("model", "params", "train", "val", "test", "test NLL", "agree", "source"):
        table.add_column(column, justify="left" if column in ("model", "source") else "right", no_wrap=True)

    def pct(value: float) -> str:
        return "-" if math.isnan(value) else f"{value:.2%}"

    for row in summary.values():
        nll = "-" if math.isnan(row["test_nll"]) else f"{row['test_nll']:.4f}"
        table.add_row(
            row["model"], f"{row['params']:,}", pct(row["train_acc"]), pct(row["val_acc"]), pct(row["test_acc"]),
            nll, pct(row["agreement"]), row["source"].replace("_", " "),
        )  # fmt: skip
    console.print(table)
    teacher, distilled, baseline = (summary[m]["test_acc"] for m in ("teacher", "distilled", "baseline"))
    improvement = "n/a (baseline not trained)" if math.isnan(baseline) else f"{(distilled - baseline) * 100:+.1f} points"
    log.info("Distillation improvement (distilled - baseline, test accuracy): %s", improvement)
    log.info("Gap from teacher (teacher - distilled, test accuracy): %+.1f points", (teacher - distilled) * 100)
