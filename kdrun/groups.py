"""The jobs of a sweep that train together (kdrun's launcher: ``kdrun train -m``).

Jobs whose settings differ only in the loss's own settings (alpha, temperature, beta, ...) and in
``trainer.seed`` share the data and the architectures; jobs of one seed share the teacher, the
students' initial weights, the batches and the baseline too. ``train_group`` trains such a group
before its jobs run: the data loaded once, each seed's teacher once (teachers of several seeds
stacked, kdrun.stacking), and every job's distilled student with each seed's baseline in stacks
of one pass over the data per step. Each job then takes its models (``TrainedModel``) and writes
its run directory as if it had trained alone.

What does not stack (``plan`` and ``train_group`` say why, and those jobs run one by one):
students other than kdrun's MLP, CNN and LeNet5 and Sequentials of layers that stack
(``kdrun.stacking``), losses with trainable parameters or that read features (fitnet, at),
augmentation (the teacher runs per batch), ``trainer.compile`` and float16 (one student's
overflow would skip every student's step).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from omegaconf import DictConfig

from kdrun import cache
from kdrun.checkpoints import Checkpoint, weights_digest
from kdrun.config import digest, phase_epochs, to_plain
from kdrun.data import DataSplits, Split, load_data
from kdrun.errors import NonFiniteLossError
from kdrun.experiment import TITLES, Prepared, TrainedModel, build_loss, choose_threads, fit_settings, model_key, prepare, set_up_loss
from kdrun.models import count_parameters, multiply_adds, watch_forward
from kdrun.run_files import CHECKPOINTS_DIR, METRICS_FILE, MetricsLog
from kdrun.stacking import Member, fit_stacked, stack_reason
from kdrun.train import FitSettings, copy_state, fit, predict

log = logging.getLogger("kdrun")


class Unstackable(Exception):
    """Why a group's jobs cannot train together; they run one by one."""


def group_key(cfg: DictConfig) -> str:
    """Equal for jobs that may train together: their settings but the loss's own and the seed."""
    plain = to_plain(cfg)
    plain["loss"] = {"_target_": plain["loss"].get("_target_")}
    plain["trainer"] = {key: value for key, value in plain["trainer"].items() if key != "seed"}
    for key in ("logger", "plots"):  # what a job writes, not how it trains
        plain.pop(key, None)
    return digest(plain)


def config_reason(cfg: DictConfig) -> Optional[str]:
    """Why a job's settings keep it from training with others, or None."""
    if cfg.dataset.get("augment", False):
        return "dataset.augment=true (the teacher runs on every augmented batch)"
    if cfg.trainer.compile:
        return "trainer.compile=true"
    if str(cfg.trainer.precision) == "16":
        return "trainer.precision=16 (one student's overflow would skip every student's step)"
    return None


def plan(cfgs: Sequence[DictConfig]) -> tuple[list[list[int]], dict[int, str]]:
    """The groups (indices into ``cfgs``, two jobs or more) that train together, and why each
    other job runs alone."""
    by_key: dict[str, list[int]] = {}
    alone: dict[int, str] = {}
    for index, cfg in enumerate(cfgs):
        reason = config_reason(cfg)
        if reason is None:
            by_key.setdefault(group_key(cfg), []).append(index)
        else:
            alone[index] = reason
    groups = []
    for indices in by_key.values():
        if len(indices) > 1:
            groups.append(indices)
        else:
            alone[indices[0]] = "no other job of the sweep differs from it only in the loss's settings or the seed"
    return groups, alone


def loss_reason(loss: Any) -> Optional[str]:
    """Why a loss keeps its students from training stacked, or None."""
    if getattr(loss, "student_features", ()) or getattr(loss, "teacher_features", ()):
        return f"loss {type(loss).__name__} reads the models' features"
    if isinstance(loss, torch.nn.Module) and any(p.requires_grad for p in loss.parameters()):
        return f"loss {type(loss).__name__} has trainable parameters"
    return None


def _member_bytes(model: torch.nn.Module, batch_size: int, data: DataSplits) -> int:
    """About what one stacked student needs: weights, gradients, two optimiser moments and a
    copy; a step's activations (each layer's output, measured on one example); its teacher
    targets and an epoch's logits."""
    params = count_parameters(model)
    sizes: list[int] = []
    layers = [m for m in model.modules() if next(m.children(), None) is None]
    watch_forward(model, data.prepare(data.train.x[:1]), layers, lambda layer, output: sizes.append(output.numel()))
    rows = len(data.transfer_index) + len(data.val)
    return 4 * (5 * params + 2 * batch_size * sum(sizes) + 4 * rows * data.num_classes)


def train_group(cfgs: Sequence[DictConfig], run_dirs: Sequence[Path], memory_mb: float,
                failed: Optional[dict[int, Exception]] = None) -> tuple[list[Prepared], list[dict[str, TrainedModel]]]:  # fmt: skip
    """Train the models of a group of jobs (``plan``) together; return, per job, what its run
    needs (its data, loss and models: ``Prepared``) and its trained models by name. Raises
    ``Unstackable`` if they cannot train together. ``failed`` gets, by position in ``cfgs``,
    what stopped a job's models (a NaN) however the training ends: an interruption then does not
    hide a failure."""
    data = load_data(cfgs[0].dataset)
    by_seed: dict[int, Prepared] = {}
    jobs = []  # per job: its loss and its distilled student, built before any training
    for cfg in cfgs:
        seed = int(cfg.trainer.seed)
        if seed not in by_seed:
            by_seed[seed] = prepare(cfg, data)
            data = by_seed[seed].data  # on the device now
            jobs.append((by_seed[seed].loss, by_seed[seed].student))
        else:
            setup = by_seed[seed]
            loss, student = build_loss(cfg), copy.deepcopy(setup.baseline)  # the initial weights
            set_up_loss(cfg, loss, student, setup.teacher, data)
            jobs.append((loss, student))
    why = next((r for r in (stack_reason(student) for _, student in jobs) if r), None)  # a loss's setup may hook its own student
    reason = f"model.student: {why}" if why else next((r for r in (loss_reason(loss) for loss, _ in jobs) if r), None)
    if reason is not None:
        raise Unstackable(reason)
    # Each job's metrics.csv grows epoch by epoch meanwhile, as when it trains alone; the job
    # writes it again, in its usual order, when it runs.
    logs = [MetricsLog(run_dir / METRICS_FILE) for run_dir in run_dirs]
    of_seed = {seed: [log for cfg, log in zip(cfgs, logs) if int(cfg.trainer.seed) == seed] for seed in by_seed}
    failed = {} if failed is None else failed
    failed_teachers: dict[int, Exception] = {}  # by seed
    try:
        teachers = _teachers(cfgs[0], by_seed, data, of_seed, failed_teachers)
        students = _students(cfgs, run_dirs, jobs, by_seed, teachers, data, memory_mb, logs, of_seed, failed)
    finally:  # also when interrupted: a job whose teacher failed has failed
        for index, cfg in enumerate(cfgs):
            if int(cfg.trainer.seed) in failed_teachers:
                failed[index] = failed_teachers[int(cfg.trainer.seed)]
    setups = []
    for cfg, (loss, student) in zip(cfgs, jobs):
        setup = by_seed[int(cfg.trainer.seed)]
        setups.append(replace(setup, cfg=cfg, loss=loss, student=student, teacher=copy.deepcopy(setup.teacher), baseline=copy.deepcopy(setup.baseline)))
    return setups, [{**({"teacher": teachers[int(cfg.trainer.seed)]} if teachers else {}), **models} for cfg, models in zip(cfgs, students)]


def _writer(logs: Sequence[MetricsLog]) -> Callable[[dict], None]:
    return lambda row: [log.append([row]) for log in logs]


def _teachers(cfg: DictConfig, by_seed: dict[int, Prepared], data: DataSplits, of_seed: dict[int, list[MetricsLog]],
              failed: dict[int, Exception]) -> dict[int, TrainedModel]:  # fmt: skip
    """Each seed's trained teacher, from the cache or trained (stacked where there are several);
    none when the teacher comes from model.teacher.checkpoint (each job loads that file). Their
    cache entries stay locked meanwhile: the tasks of a parallel sweep that need the same teacher
    train it once. ``failed`` gets, by seed, what stopped a teacher, as soon as it is known."""
    if cfg.model.teacher.get("checkpoint"):
        return {}
    epochs = phase_epochs(cfg, "teacher")
    keys = {seed: model_key(setup, "teacher", setup.teacher, epochs, include_transfer=False) for seed, setup in by_seed.items()}
    with contextlib.ExitStack() as held:
        for seed in sorted(by_seed):  # one order in every task: none waits for another that waits for it
            held.enter_context(cache.locked("teacher", keys[seed], by_seed[seed].cache_dir))
        found, todo = {}, []
        for seed, setup in by_seed.items():
            key = keys[seed]
            rows = cache.lookup("teacher", key, setup.teacher, setup.cache_dir)
            if rows is not None:
                found[seed] = TrainedModel(copy_state(setup.teacher.state_dict()), rows, "cached", 0.0)
                for row in rows:
                    _writer(of_seed[seed])(row)
            else:
                todo.append((seed, setup, key))
        stacked = len(todo) > 1 and stack_reason(todo[0][1].teacher) is None
        if stacked:
            log.info("kdrun: training the teachers of seeds %s together", ", ".join(str(seed) for seed, _, _ in todo))
            members = [Member("teacher", setup.teacher, seed, setup.teacher_rng, on_epoch=_writer(of_seed[seed])) for seed, setup, _ in todo]
            try:
                _fit_stacked(members, data.train, data, fit_settings(cfg, epochs, 0), cfg)
            finally:
                failed.update((seed, m.error) for (seed, _, _), m in zip(todo, members) if m.error is not None)
            trained = [(m.history, m.error, m.seconds) for m in members]
        else:
            trained = []
            for seed, setup, _ in todo:
                started = time.perf_counter()
                with torch.random.fork_rng(devices=[]):
                    torch.set_rng_state(setup.teacher_rng)
                    try:
                        settings = fit_settings(cfg, epochs, seed)
                        rows, error = fit(setup.teacher, data.train, data.val, settings, "teacher", on_epoch=_writer(of_seed[seed]), prepare=data.prepare), None
                    except NonFiniteLossError as stopped:
                        rows, error = [], stopped
                        failed[seed] = stopped
                trained.append((rows, error, time.perf_counter() - started))
        for (seed, setup, key), (rows, error, seconds) in zip(todo, trained):
            if error is None:
                cache.store("teacher", cache.stacked(key) if stacked else key, setup.teacher, rows, setup.cache_dir)
            found[seed] = TrainedModel(copy_state(setup.teacher.state_dict()), rows, "trained", seconds, error)
        return found


def _students(cfgs: Sequence[DictConfig], run_dirs: Sequence[Path], jobs: Sequence[tuple[Any, torch.nn.Module]], by_seed: dict[int, Prepared],
              teachers: dict[int, TrainedModel], data: DataSplits, memory_mb: float, logs: Sequence[MetricsLog],
              of_seed: dict[int, list[MetricsLog]], failed: dict[int, Exception]) -> list[dict[str, TrainedModel]]:  # fmt: skip
    """Every job's distilled student and each seed's baseline (unless cached), trained in stacks
    that fit ``memory_mb``; per job, its distilled student and its seed's baseline. ``failed``:
    see ``train_group``."""
    first = cfgs[0]
    epochs = phase_epochs(first, "student")
    with_labels = bool(first.dataset.transfer_labels)
    transfer = data.transfer
    logits, teacher_digest = {}, {}
    for seed, setup in by_seed.items():
        if seed in teachers and teachers[seed].error is not None:
            continue  # its jobs fail with the teacher's error
        logits[seed] = predict(setup.teacher, transfer.x, data.prepare)
        teacher_digest[seed] = weights_digest(setup.teacher)
    members: list[Member] = []
    owner: list[Any] = []  # per member: the job index (distilled) or ("baseline", seed)
    for index, (cfg, run_dir, (loss, student)) in enumerate(zip(cfgs, run_dirs, jobs)):
        seed = int(cfg.trainer.seed)
        if seed not in logits:
            continue
        targets = getattr(loss, "teacher_targets", lambda z: z)(logits[seed])
        checkpoint = Checkpoint(run_dir / CHECKPOINTS_DIR / "distilled.pt", cfg.trainer.checkpoint_every, TITLES["distilled"], teacher_digest[seed])
        members.append(Member("distilled", student, seed + 1, _seeded_state(seed + 2), loss, targets, with_labels, checkpoint, _writer([logs[index]])))
        owner.append(index)
    baselines: dict[int, TrainedModel] = {}
    keys = {}
    for seed, setup in by_seed.items():
        if not with_labels or seed not in logits:
            continue
        keys[seed] = model_key(setup, "student", setup.baseline, epochs, include_transfer=True)
        rows = cache.lookup("baseline", keys[seed], setup.baseline, setup.cache_dir)
        if rows is not None:
            baselines[seed] = TrainedModel(copy_state(setup.baseline.state_dict()), rows, "cached", 0.0)
        else:
            members.append(Member("baseline", setup.baseline, seed + 1, _seeded_state(seed + 2), on_epoch=_writer(of_seed[seed])))
            owner.append(("baseline", seed))
    per_chunk = max(1, int(memory_mb * 2**20 // _member_bytes(jobs[0][1], first.trainer.batch_size, data)))
    chunks = [list(range(start, min(start + per_chunk, len(members)))) for start in range(0, len(members), per_chunk)]
    if members:  # none when every teacher failed: each job says so
        log.info(
            "kdrun: training %d students together (%d distilled, %d baseline)%s", len(members), sum(isinstance(o, int) for o in owner),
            sum(not isinstance(o, int) for o in owner), f" in {len(chunks)} stacks of at most {per_chunk} (hydra.launcher.stack_mb={memory_mb:g})" if len(chunks) > 1 else "",
        )  # fmt: skip
    try:
        for chunk in chunks:
            _fit_stacked([members[i] for i in chunk], transfer, data, fit_settings(first, epochs, 0), first)
    finally:  # also when interrupted: a job whose student or baseline failed has failed
        seed_errors = {who[1]: m.error for m, who in zip(members, owner) if not isinstance(who, int) and m.error is not None}
        for index, cfg in enumerate(cfgs):
            error = seed_errors.get(int(cfg.trainer.seed))
            if error is not None:
                failed[index] = error
        failed.update((who, m.error) for m, who in zip(members, owner) if isinstance(who, int) and m.error is not None)
    results: list[dict[str, TrainedModel]] = [{} for _ in cfgs]
    for member, who in zip(members, owner):
        trained = TrainedModel(copy_state(member.model.state_dict()), member.history, "trained", member.seconds, member.error)
        if isinstance(who, int):
            results[who]["distilled"] = trained
        else:
            seed = who[1]
            baselines[seed] = trained
            if member.error is None:
                cache.store("baseline", cache.stacked(keys[seed]), member.model, member.history, by_seed[seed].cache_dir)
    for index, cfg in enumerate(cfgs):
        seed = int(cfg.trainer.seed)
        if seed in baselines:
            results[index]["baseline"] = baselines[seed]
    return results


def _fit_stacked(members: Sequence[Member], train: Split, data: DataSplits, settings: FitSettings, cfg: DictConfig) -> None:
    """``fit_stacked``, on as many threads as kdrun gives a model of the whole stack's work."""
    threads = torch.get_num_threads()
    work = len(members) * settings.batch_size * multiply_adds(members[0].model, data.prepare(train.x[:2]))
    torch.set_num_threads(choose_threads(cfg.trainer.threads, work))
    try:
        fit_stacked(members, train, data.val, settings, data.prepare)
    finally:
        torch.set_num_threads(threads)


def _seeded_state(seed: int) -> torch.Tensor:
    """torch's CPU random state after ``torch.manual_seed(seed)``, leaving the current one alone."""
    return torch.Generator().manual_seed(seed).get_state()

