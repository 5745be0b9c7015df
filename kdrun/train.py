"""Training and evaluation on in-memory tensors, whatever the model and whatever the loss.

``fit`` trains one model: with plain cross-entropy, or distilled from a frozen teacher through
any loss of the form ``kdrun.losses.base`` describes. Small models make a step a few dozen tiny
tensor operations whose dispatch costs more than their arithmetic, so a step issues as few as it
can: the training rows (and the teacher's targets, computed once) are put in the epoch's order
once per epoch and each batch is a view of them; the batch losses are kept on the device and
reduced once per epoch, with the validation metrics, in one host sync. A non-finite training
loss stops the model's training with ``NonFiniteLossError``. Given a ``Checkpoint``, ``fit``
writes its resumable state now and then and, finding one, continues from it (kdrun.checkpoints).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.checkpoints import Checkpoint
from kdrun.data import Split
from kdrun.errors import ConfigError, NonFiniteLossError
from kdrun.models import named_layers
from kdrun.optim import learning_rate, make_optimizer, set_learning_rate
from kdrun.run_files import METRICS_COLUMNS

log = logging.getLogger("kdrun")

EVAL_BATCH = 8192
# fit reorders the training tensors once per epoch up to this size (fewer operations per step);
# past it a batch is gathered just before its step, while it is still in cache rather than
# written out in full and read back (benchmarks/README.md has the measurement).
EPOCH_GATHER_BYTES = 32 << 20
AUGMENT_SEED_OFFSET = 1_000_003  # the augmentation's generator: seeded apart from the batch order's


@dataclass
class FitSettings:
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    batch_seed: int  # the order of examples and the augmentation's draws; equal seeds, equal batches
    report: str = "last"  # best_val: end with the weights of the epoch of best validation accuracy
    momentum: float = 0.9  # SGD's
    nesterov: bool = False
    scheduler: str = "none"  # none, multistep or cosine (kdrun.optim.learning_rate)
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    warmup_epochs: int = 0
    precision: str = "32"  # 32, bf16 (autocast) or 16 (autocast and a gradient scaler; CUDA)
    compile: bool = False  # torch.compile the forward passes of training

    def learning_rate(self, epoch: int) -> float:
        return learning_rate(self.lr, epoch, self.epochs, self.scheduler, self.milestones, self.gamma, self.warmup_epochs)


@dataclass
class Distillation:
    """What turns plain training into distillation: a loss and the frozen teacher it learns from."""

    loss: Callable[..., Any]
    teacher: nn.Module
    use_labels: bool = True
    set_up: bool = False  # the loss's setup() ran already (kdrun runs it before training the teacher)


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    logits: torch.Tensor


def resolve_device(name: str) -> torch.device:
    """``auto`` takes CUDA when present, else the CPU. Raises ConfigError for unavailable devices."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} is not allowed: CUDA is not available on this machine (use auto or cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"trainer.device={name!r} is not allowed: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"trainer.device={name!r} is not allowed: MPS is not available on this machine (use auto or cpu)")
    return device


def _unchanged(x: torch.Tensor) -> torch.Tensor:
    return x


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, prepare: Callable[[torch.Tensor], torch.Tensor] = _unchanged) -> torch.Tensor:
    """Logits in eval mode, in chunks so that large splits need little memory. ``prepare`` turns
    stored rows into the model's inputs (``DataSplits.prepare``: uint8 images scaled)."""
    was_training = model.training
    model.eval()
    if len(x) <= EVAL_BATCH:
        logits = model(prepare(x))
    else:
        logits = torch.cat([model(prepare(x[i : i + EVAL_BATCH])) for i in range(0, len(x), EVAL_BATCH)])
    model.train(was_training)
    return logits


def evaluate(model: nn.Module, split: Split, prepare: Callable[[torch.Tensor], torch.Tensor] = _unchanged) -> Evaluation:
    logits = predict(model, split.x, prepare)
    loss = F.cross_entropy(logits, split.y).item() if len(split) else math.nan
    accuracy = (logits.argmax(-1) == split.y).sum().item() / len(split) if len(split) else math.nan
    return Evaluation(loss, accuracy, logits)


# --------------------------------------------------------------------------- the loss's side


def row_columns(targets: Any) -> tuple[list[torch.Tensor], Callable[[Sequence[torch.Tensor]], Any]]:
    """The row-aligned tensors of a loss's teacher targets (a tensor, or a tuple of tensors and
    Nones), and the function that puts a batch's rows of them back into the same structure."""
    if isinstance(targets, torch.Tensor):
        return [targets], lambda columns: columns[0]
    fields = list(targets)
    present = [i for i, value in enumerate(fields) if value is not None]
    make = type(targets) if hasattr(targets, "_fields") else lambda *values: tuple(values)  # a NamedTuple

    def rebuild(columns: Sequence[torch.Tensor]) -> Any:
        values: list[Optional[torch.Tensor]] = [None] * len(fields)
        for i, column in zip(present, columns):
            values[i] = column
        return make(*values)

    return [fields[i] for i in present], rebuild


@contextlib.contextmanager
def _features(model: nn.Module, names: Sequence[str], role: str) -> Iterator[dict[str, torch.Tensor]]:
    """The outputs of ``model``'s submodules ``names`` at its latest forward pass, by name."""
    modules = named_layers(model, names, role, f"the loss's {role}_features")
    captured: dict[str, torch.Tensor] = {}
    hooks = [modules[name].register_forward_hook(lambda module, args, output, name=name: captured.__setitem__(name, output)) for name in names]
    try:
        yield captured
    finally:
        for hook in hooks:
            hook.remove()


def loss_and_parts(result: Any, parts: Optional[list[str]], loss_fn: Any = None) -> tuple[torch.Tensor, list[torch.Tensor], list[str]]:
    """A loss's result (a scalar tensor, or a dict with "loss" and other named scalars) as
    (loss, the other values, their names). ``parts``: the names the first batch returned;
    ``loss_fn``: the loss, named in messages."""
    who = f"the loss {_qualified_name(loss_fn)}" if loss_fn is not None else "the loss"
    if isinstance(result, torch.Tensor):
        loss, values, names = result, [], []
    elif isinstance(result, dict) and "loss" in result:
        loss = result["loss"]
        names = [name for name in result if name != "loss"]
        values = [result[name] for name in names]
    else:
        got = f"a dict with keys {list(result)}" if isinstance(result, dict) else _described(result)
        raise ConfigError(f"{who} returned {got}; it must return a scalar tensor or a dict holding 'loss'")
    if parts is None:  # checked once, on the first batch
        for name, value in zip(["loss", *names], [loss, *values]):
            if not (isinstance(value, torch.Tensor) and value.dim() == 0):
                raise ConfigError(f"{who} returned {_described(value)} as {name!r}; it must return scalar tensors (the batch mean), in its dict too")
        if torch.is_grad_enabled() and not loss.requires_grad:  # else the student would never learn, silently in a stack
            raise ConfigError(f"{who} returned a value with no gradient: compute it from the student's logits, without .detach(), .item() or torch.no_grad()")
        taken = [name for name in names if name in METRICS_COLUMNS]
        if taken:
            raise ConfigError(f"{who} names a part {taken[0]!r}, a column metrics.csv has already; choose another name")
    elif names != parts:
        raise ConfigError(f"{who} returned the parts {names} after {parts}; it must return the same parts every batch")
    return loss, values, names


def call_loss_once(loss_fn: Any, student: nn.Module, teacher: nn.Module, x: torch.Tensor, labels: Optional[torch.Tensor],
                   epochs: int, precision: str = "32", teacher_per_batch: bool = False) -> None:  # fmt: skip
    """Call ``loss_fn`` on a batch of model inputs ``x`` as ``fit`` will, and backpropagate, before
    any model trains: a loss that raises or breaks the contract of kdrun/losses/base.py stops the
    run then, not at the distilled student's first batch (after a teacher's hours). As in ``fit``:
    ``set_epoch(1, epochs)`` first, the student in train mode and the teacher in eval mode, images
    and networks channels-last, the teacher's targets in full precision unless it runs per batch
    (``teacher_per_batch``: augmented inputs; or features). Afterwards every weight and buffer
    (batch norm's statistics), their strides, each module's mode and every gradient are as they
    were. Run it under ``torch.random.fork_rng``: dropout draws."""
    modules = [m for m in (student, teacher, loss_fn) if isinstance(m, nn.Module)]
    modes = [m.training for m in modules]
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(x.device)
    # Each tensor's strides, and the values of those the call may change (the teacher's it cannot: eval mode, no gradients)
    kept = [(t, None if m is teacher else t.detach().clone(), t.stride()) for m in modules for t in (*m.parameters(), *m.buffers())]
    if hasattr(loss_fn, "set_epoch"):
        loss_fn.set_epoch(1, epochs)
    names = {role: tuple(getattr(loss_fn, f"{role}_features", ())) for role in ("student", "teacher")}
    targets_of = getattr(loss_fn, "teacher_targets", lambda logits: logits)
    per_batch = teacher_per_batch or bool(names["teacher"])
    try:
        if x.dim() == 4 and x.device.type in ("cpu", "cuda"):  # as fit lays images and networks out
            x = x.contiguous(memory_format=torch.channels_last)
            for network in (student, teacher):
                network.to(memory_format=torch.channels_last)
        student.train()
        teacher_in = None if per_batch else targets_of(predict(teacher, x))
        teacher.eval()
        with _features(student, names["student"], "student") as student_features, \
                _features(teacher, names["teacher"], "teacher") as teacher_features, autocast(x.device, precision):  # fmt: skip
            logits = student(x)
            if per_batch:
                with torch.no_grad():
                    teacher_in = targets_of(teacher(x))
            features = {f"{role}_features": found for role, found in (("student", student_features), ("teacher", teacher_features)) if names[role]}
            loss, _, _ = loss_and_parts(loss_fn(logits, teacher_in, labels, **features), None, loss_fn)
        loss.backward()
    finally:
        with torch.no_grad():
            for tensor, value, stride in kept:
                if value is not None or tensor.stride() != stride:
                    tensor.data = torch.empty_strided(tensor.shape, stride, dtype=tensor.dtype, device=tensor.device).copy_(
                        tensor.data if value is None else value)  # fmt: skip
                tensor.grad = None
        for module, mode in zip(modules, modes):
            module.train(mode)


def _described(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {list(value.shape)}"
    name = type(value).__name__
    return "None" if value is None else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _qualified_name(obj: Any) -> str:
    """module.Name of a loss: its class, or the function (inside a partial) it is."""
    target = obj
    while isinstance(target, functools.partial):  # Hydra's partial, or one around it
        target = target.func
    named = target if hasattr(target, "__qualname__") else type(target)
    return f"{named.__module__}.{named.__qualname__}"


# --------------------------------------------------------------------------- fit


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    settings: FitSettings,
    model_name: str,
    distillation: Optional[Distillation] = None,
    on_epoch: Callable[[dict], None] = lambda row: None,
    checkpoint: Optional[Checkpoint] = None,
    prepare: Callable[[torch.Tensor], torch.Tensor] = _unchanged,
    augment: Optional[Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = None,
) -> list[dict]:
    """Train ``model`` in place; return one metrics row per epoch (also passed to ``on_epoch``).

    Rows: model, epoch, train_loss (the epoch mean of what is minimised), the loss's named parts
    (epoch means), train_acc, val_loss, val_acc, seconds. Without ``distillation`` the loss is
    cross-entropy on the labels. With ``settings.report="best_val"`` the model ends with the
    weights of its first epoch of best validation accuracy (``reported_epoch`` says which). With a
    ``checkpoint`` that holds saved state, training continues after its epoch; the rows of the
    epochs before are passed to ``on_epoch`` again and returned too.

    ``prepare`` turns a batch of stored rows into the model's inputs (``DataSplits.prepare``);
    ``augment(rows, generator)`` changes training batches before that (random crops and flips),
    drawing from a generator seeded by ``settings.batch_seed``: equal seeds, equal draws. With
    augmentation the teacher's targets are computed per batch, on the augmented images.
    """
    device = train.x.device
    n, batch_size = len(train), settings.batch_size
    columns = [train.x, train.y.long()]  # then the teacher's targets, row for row
    params = list(model.parameters())
    loss_fn = teacher = None
    student_names: Sequence[str] = ()
    teacher_names: Sequence[str] = ()
    if distillation is not None:
        loss_fn, teacher = distillation.loss, distillation.teacher
        teacher.eval()
        if hasattr(loss_fn, "setup") and not distillation.set_up:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the student's dropout masks stay the baseline's
                loss_fn.setup(model, teacher, prepare(train.x[:batch_size]))
        student_names = tuple(getattr(loss_fn, "student_features", ()))
        teacher_names = tuple(getattr(loss_fn, "teacher_features", ()))
        targets_of = getattr(loss_fn, "teacher_targets", lambda logits: logits)
        teacher_per_batch = bool(teacher_names) or augment is not None
        if not teacher_per_batch:  # the teacher's inputs are the same every epoch: its targets once
            target_columns, rebuild = row_columns(targets_of(predict(teacher, train.x, prepare)))
            columns += target_columns
        if isinstance(loss_fn, nn.Module):
            loss_fn.to(device)
            params += list(loss_fn.parameters())
    # Images in channels-last layout: most CNNs trained 1.1-1.7x faster so on a 2-core x86 CPU
    # (ShuffleNetV2 0.93x; benchmarks/README.md), and it is the layout cuDNN's fast kernels take.
    # Before the optimiser: Adam's moments take the weights' layout, so checkpoints hold them in order.
    channels_last = train.x.dim() == 4 and device.type in ("cpu", "cuda")
    if channels_last:
        for network in (model, teacher):
            if network is not None:
                network.to(memory_format=torch.channels_last)
    scaler = _grad_scaler(device) if settings.precision == "16" else None
    optimizer = make_optimizer(params, settings.optimizer, settings.lr, settings.weight_decay, settings.momentum, settings.nesterov, fused=scaler is None)
    generator = torch.Generator().manual_seed(settings.batch_seed)
    draws = torch.Generator().manual_seed(settings.batch_seed + AUGMENT_SEED_OFFSET) if augment is not None else None
    # Compiled forward passes share the modules' parameters; the modules themselves are what is saved.
    forward = torch.compile(model) if settings.compile else model
    teacher_forward = torch.compile(teacher) if settings.compile and teacher is not None else teacher
    gather_epoch = sum(t.numel() * t.element_size() for t in columns) <= EPOCH_GATHER_BYTES
    batch_sizes = torch.tensor([min(batch_size, n - start) for start in range(0, n, batch_size)], device=device)
    use_labels = distillation is None or distillation.use_labels
    set_epoch = getattr(loss_fn, "set_epoch", None)
    parts: Optional[list[str]] = None
    history: list[dict] = []
    best: Optional[dict] = None  # report=best_val: the epoch of best val_acc so far and its weights
    first_epoch = 1
    saved = checkpoint.load(device) if checkpoint is not None else None
    if saved is not None and not _fits(saved, model, loss_fn):
        log.warning("%s: %s holds weights of other shapes than this run's (written by another kdrun version?); training it from the first epoch",
                    checkpoint.title, checkpoint.path)  # fmt: skip
        saved = None
    if saved is not None and saved["epochs"] == settings.epochs:
        history, best = saved["history"], saved["best"]
        _restore(saved, model, optimizer, loss_fn, generator, draws, scaler, device)
        first_epoch = saved["epoch"] + 1
        if first_epoch > settings.epochs:
            log.info("%s trained all %d epochs before the run stopped (%s); its epochs as they were:", checkpoint.title, settings.epochs, checkpoint.path)
        else:
            before = "epoch 1 as it was" if first_epoch == 2 else f"epochs 1-{first_epoch - 1} as they were"
            log.info("resuming %s at epoch %d of %d (%s); %s:", checkpoint.title, first_epoch, settings.epochs, checkpoint.path, before)
        for row in history:
            on_epoch(row)
    with contextlib.ExitStack() as stack:
        student_features = stack.enter_context(_features(model, student_names, "student"))
        teacher_features = stack.enter_context(_features(teacher, teacher_names, "teacher")) if teacher is not None else {}
        feature_kwargs = {}
        if student_names:
            feature_kwargs["student_features"] = student_features
        if teacher_names:
            feature_kwargs["teacher_features"] = teacher_features
        for epoch in range(first_epoch, settings.epochs + 1):
            started = time.perf_counter()
            if set_epoch is not None:
                set_epoch(epoch, settings.epochs)
            set_learning_rate(optimizer, settings.learning_rate(epoch))
            model.train()
            order = torch.randperm(n, generator=generator).to(device)
            if gather_epoch:
                in_order = [column.index_select(0, order) for column in columns]  # faster than column[order]
                labels_in_order = in_order[1]
                batches = zip(*(column.split(batch_size) for column in in_order))
            else:
                labels_in_order = columns[1].index_select(0, order)
                batches = ([column.index_select(0, index) for column in columns] for index in order.split(batch_size))
            recorded, outputs = [], []  # per batch: the detached loss (and its parts) and logits
            for batch in batches:
                x, labels = batch[0], batch[1]
                x = augment(x, draws) if augment is not None else x
                if channels_last:  # before prepare: uint8 rows are a quarter of the bytes to move
                    x = x.contiguous(memory_format=torch.channels_last)
                x = prepare(x)
                with autocast(device, settings.precision):
                    logits = forward(x)
                    if loss_fn is None:
                        loss = F.cross_entropy(logits, labels)
                        recorded.append(loss.detach())
                    else:
                        if teacher_per_batch:
                            with torch.no_grad():
                                teacher_in = targets_of(teacher_forward(x))
                        else:
                            teacher_in = rebuild(batch[2:])
                        result = loss_fn(logits, teacher_in, labels if use_labels else None, **feature_kwargs)
                        loss, values, parts = loss_and_parts(result, parts, loss_fn)
                        recorded.append(loss.detach())
                        recorded += [value.detach() for value in values]
                outputs.append(logits.detach())
                optimizer.zero_grad()
                if scaler is None:
                    loss.backward()
                    optimizer.step()
                else:  # float16: a scaled loss, steps skipped where gradients overflow
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()

            # The epoch's sums over examples (loss and its parts, correct) and the validation
            # metrics, read back in one host sync.
            per_batch = torch.stack(recorded).view(len(batch_sizes), -1)
            per_batch = per_batch.to(torch.promote_types(per_batch.dtype, torch.float32))
            correct = (torch.cat(outputs).argmax(-1) == labels_in_order).sum()
            stats = [batch_sizes.to(per_batch.dtype) @ per_batch, correct.to(per_batch.dtype).reshape(1)]
            if len(val):
                val_logits = predict(model, val.x, prepare)
                stats.append(F.cross_entropy(val_logits, val.y).to(per_batch.dtype).reshape(1))
                stats.append((val_logits.argmax(-1) == val.y).sum().to(per_batch.dtype).reshape(1))
            values = torch.cat(stats).tolist()
            train_loss = values[0] / n
            width = per_batch.shape[1]
            for name, value in zip(parts or [], values[1:width]):  # else written as an empty cell
                if not math.isfinite(value):  # named before the total it makes non-finite
                    raise NonFiniteLossError(model_name, epoch, settings.epochs, value / n, part=name)
            if not math.isfinite(train_loss):
                raise NonFiniteLossError(model_name, epoch, settings.epochs, train_loss)
            if len(val) and not math.isfinite(values[width + 1]):  # the epoch's last steps broke the weights
                raise NonFiniteLossError(model_name, epoch, settings.epochs, values[width + 1], split="validation")
            row = {"model": model_name, "epoch": epoch, "train_loss": train_loss}
            row.update((name, value / n) for name, value in zip(parts or [], values[1:width]))
            row.update(
                train_acc=round(values[width]) / n,
                val_loss=values[width + 1] if len(val) else math.nan,
                val_acc=round(values[width + 2]) / len(val) if len(val) else math.nan,
                seconds=time.perf_counter() - started,
            )
            history.append(row)
            on_epoch(row)
            if settings.report == "best_val" and (best is None or row["val_acc"] > best["val_acc"]) and not math.isnan(row["val_acc"]):
                best = {"epoch": epoch, "val_acc": row["val_acc"], "weights": copy_state(model.state_dict())}
            if checkpoint is not None and checkpoint.due(epoch, settings.epochs):
                checkpoint.save(training_state(epoch, settings.epochs, model, optimizer, loss_fn, generator, draws, scaler, device, history, best))
    if best is not None:
        model.load_state_dict(best["weights"])
    return history


def reported_epoch(history: Sequence[dict], report: str) -> int:
    """The epoch whose weights ``fit`` ended with: the last, or the first of best val_acc (the
    last when no epoch has one)."""
    scored = [row for row in history if not math.isnan(row["val_acc"])] if report == "best_val" else []
    if scored:
        return max(scored, key=lambda row: (row["val_acc"], -row["epoch"]))["epoch"]
    return history[-1]["epoch"] if history else 0


def _grad_scaler(device: torch.device) -> Any:
    if hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler(device.type)
    return torch.cuda.amp.GradScaler()


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass and the loss: bf16 (CPU and CUDA) or float16."""
    if precision == "32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


# --------------------------------------------------------------------------- resumable state


def copy_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A copy of a state dict's tensors, detached from the model's."""
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def training_state(epoch: int, epochs: int, model: nn.Module, optimizer: Any, loss_fn: Any, generator: torch.Generator,
           draws: Optional[torch.Generator], scaler: Any, device: torch.device, history: list[dict],
           best: Optional[dict]) -> dict[str, Any]:  # fmt: skip
    """Everything the next epoch depends on, for ``Checkpoint.save``."""
    return {
        "epoch": epoch,
        "epochs": epochs,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "loss": loss_fn.state_dict() if isinstance(loss_fn, nn.Module) else None,
        "batch_order": generator.get_state(),
        "augmentation": draws.get_state() if draws is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": torch.get_rng_state(),  # dropout masks
        "device_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "history": history,
        "best": best,
    }


def _format_1_moments(state: dict[str, Any], optimizer: Any) -> dict[str, Any]:
    """Checkpoints of format 1 were written by a ``fit`` that made Adam's moments before it turned
    the model channels-last, so a convolution weight's moments hold their values in channels-last
    memory order under plain strides. Read them as the fused kernel updated them."""
    if "exp_avgs" not in state:  # torch.optim's, made at the first step in the weights' own layout
        return state

    def as_updated(moment: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
        if moment.dim() == 4 and param.is_contiguous(memory_format=torch.channels_last) and not param.is_contiguous():
            n, c, h, w = moment.shape
            return moment.reshape(n, h, w, c).permute(0, 3, 1, 2)
        return moment

    return {**state, **{key: [as_updated(m, p) for m, p in zip(state[key], optimizer.params)] for key in ("exp_avgs", "exp_avg_sqs")}}


def _fits(saved: dict[str, Any], model: nn.Module, loss_fn: Any) -> bool:
    """Whether a checkpoint's weights, the model's and the loss's own, have this run's names and
    shapes (the optimiser's state follows them)."""
    def same(state: Optional[dict], expected: dict) -> bool:
        state = state or {}
        return state.keys() == expected.keys() and all(getattr(state[k], "shape", None) == getattr(v, "shape", None) for k, v in expected.items())

    loss_fits = saved["loss"] is None or same(saved["loss"], loss_fn.state_dict() if isinstance(loss_fn, nn.Module) else {})  # None: not saved (a stack's)
    return same(saved["model"], model.state_dict()) and loss_fits


def _restore(saved: dict[str, Any], model: nn.Module, optimizer: Any, loss_fn: Any, generator: torch.Generator,
             draws: Optional[torch.Generator], scaler: Any, device: torch.device) -> None:  # fmt: skip
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(_format_1_moments(saved["optimizer"], optimizer) if saved["format"] == 1 else saved["optimizer"])
    if isinstance(loss_fn, nn.Module) and saved["loss"] is not None:
        loss_fn.load_state_dict(saved["loss"])
    generator.set_state(saved["batch_order"].cpu())
    if draws is not None and saved.get("augmentation") is not None:
        draws.set_state(saved["augmentation"].cpu())
    if scaler is not None and saved.get("scaler") is not None:
        scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["rng"].cpu())
    if saved["device_rng"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(saved["device_rng"].cpu(), device)
