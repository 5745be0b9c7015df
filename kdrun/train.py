"""Training loops and evaluation on in-memory tensors.

The loops batch with ``randperm`` + indexing (no DataLoader), take the frozen teacher's logits
precomputed once, and keep the batch losses on the device so that the only host sync is once per
epoch. A non-finite training loss stops the model's training with ``NonFiniteLossError``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.data import Split
from kdrun.losses import _compute_dtype, _soft_term, _teacher_targets, _TeacherTargets
from kdrun.optim import make_optimizer

EVAL_BATCH = 8192
# fit reorders the training tensors once per epoch up to this size (fewer operations per step);
# past it a batch is gathered just before its step, while it is still in cache rather than
# written out in full and read back: MNIST-size (172 MB) students train 1.10-1.12x faster so.
EPOCH_GATHER_BYTES = 32 << 20


class NonFiniteLossError(RuntimeError):
    """A model's training loss became NaN or infinite."""

    def __init__(self, model_name: str, epoch: int, epochs: int, value: float) -> None:
        super().__init__(
            f"{model_name}: training loss is {value} at epoch {epoch} of {epochs}; the run stopped. "
            "Lower trainer.lr, or check the data for NaN or huge values."
        )
        self.model_name, self.epoch = model_name, epoch


@dataclass
class FitSettings:
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    batch_seed: int  # the order of examples; equal seeds give equal batches


@dataclass
class Distillation:
    """What turns plain training into distillation: the teacher's logits on the training rows."""

    teacher_logits: torch.Tensor
    alpha: float
    temperature: float
    use_labels: bool = True


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    logits: torch.Tensor


def resolve_device(name: str) -> torch.device:
    """``auto`` takes CUDA when present, else the CPU. Raises ValueError for unavailable devices."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"trainer.device={name!r} is not allowed: CUDA is not available on this machine (use auto or cpu)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"trainer.device={name!r} is not allowed: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"trainer.device={name!r} is not allowed: MPS is not available on this machine (use auto or cpu)")
    return device


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits in eval mode, in chunks so that large splits need little memory."""
    was_training = model.training
    model.eval()
    if len(x) <= EVAL_BATCH:
        logits = model(x)
    else:
        logits = torch.cat([model(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
    model.train(was_training)
    return logits


def evaluate(model: nn.Module, split: Split) -> Evaluation:
    logits = predict(model, split.x)
    loss = F.cross_entropy(logits, split.y).item() if len(split) else math.nan
    accuracy = (logits.argmax(-1) == split.y).sum().item() / len(split) if len(split) else math.nan
    return Evaluation(loss, accuracy, logits)


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    settings: FitSettings,
    model_name: str,
    distillation: Optional[Distillation] = None,
    on_epoch: Callable[[dict], None] = lambda row: None,
) -> list[dict]:
    """Train ``model`` in place; return one metrics row per epoch (also passed to ``on_epoch``).

    Rows: model, epoch, train_loss, soft_loss, hard_loss, train_acc, val_loss, val_acc, seconds.
    soft_loss and hard_loss are the unweighted parts of the distillation loss (NaN otherwise).

    Small models make a step a few dozen tiny tensor operations whose dispatch costs more than
    their arithmetic, so a step issues as few as it can: the training rows (and the teacher's
    targets) are put in the epoch's order once per epoch and each batch is a view of them; the
    teacher's side of the soft term is computed once per fit; the batch losses and logits are
    kept (detached) and reduced once per epoch, with the validation metrics, in one host sync.
    """
    optimizer = make_optimizer(model, settings.optimizer, settings.lr, settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.batch_seed)
    device = train.x.device
    n, batch_size = len(train), settings.batch_size
    columns = [train.x, train.y.long()]  # then the teacher's targets, row for row
    distill = distillation is not None
    if distill:
        alpha, temperature = float(distillation.alpha), float(distillation.temperature)
        use_labels = distillation.use_labels
        # alpha is folded into the teacher's targets, so the soft term comes out weighted; with
        # alpha = 0 the loss is the hard term alone, computed exactly as plain training does.
        soft_scale = alpha if alpha > 0 else 1.0
        student_dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
        targets = _teacher_targets(distillation.teacher_logits, temperature, soft_scale, student_dtype)
        masked = targets.support is not None
        columns += [targets.weights, targets.log_probs] + ([targets.support] if masked else [])
    gather_epoch = sum(t.numel() * t.element_size() for t in columns) <= EPOCH_GATHER_BYTES
    batch_sizes = torch.tensor([min(batch_size, n - start) for start in range(0, n, batch_size)], device=device)
    history = []
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        if gather_epoch:
            in_order = [column.index_select(0, order) for column in columns]  # 4x faster than column[order] here
            labels_in_order = in_order[1]
            batches = zip(*(column.split(batch_size) for column in in_order))
        else:
            labels_in_order = columns[1].index_select(0, order)
            batches = ([column.index_select(0, index) for column in columns] for index in order.split(batch_size))
        recorded, outputs = [], []  # per batch: the detached loss (and soft, hard parts) and logits
        for batch in batches:
            logits = model(batch[0])
            if not distill:
                loss = F.cross_entropy(logits, batch[1])
                recorded.append(loss.detach())
            else:
                batch_targets = _TeacherTargets(batch[2], batch[3], batch[4] if masked else None)
                loss, soft, hard = _distillation_step(logits, batch_targets, batch[1] if use_labels else None, alpha, temperature)
                recorded += (loss.detach(), soft.detach(), hard.detach()) if use_labels else (loss.detach(), soft.detach())
            outputs.append(logits.detach())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        # The epoch's sums over examples (loss[, soft[, hard]], correct) and the validation
        # metrics, read back in one host sync.
        per_batch = torch.stack(recorded).view(len(batch_sizes), -1)
        per_batch = per_batch.to(_compute_dtype(per_batch.dtype))
        correct = (torch.cat(outputs).argmax(-1) == labels_in_order).sum()
        stats = [batch_sizes.to(per_batch.dtype) @ per_batch, correct.to(per_batch.dtype).reshape(1)]
        if len(val):
            val_logits = predict(model, val.x)
            stats.append(F.cross_entropy(val_logits, val.y).to(per_batch.dtype).reshape(1))
            stats.append((val_logits.argmax(-1) == val.y).sum().to(per_batch.dtype).reshape(1))
        values = torch.cat(stats).tolist()
        train_loss = values[0] / n
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(model_name, epoch, settings.epochs, train_loss)
        width = per_batch.shape[1]
        row = {
            "model": model_name,
            "epoch": epoch,
            "train_loss": train_loss,
            "soft_loss": values[1] / soft_scale / n if distill else math.nan,
            "hard_loss": values[2] / n if distill and use_labels else math.nan,
            "train_acc": round(values[width]) / n,
            "val_loss": values[width + 1] if len(val) else math.nan,
            "val_acc": round(values[width + 2]) / len(val) if len(val) else math.nan,
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        on_epoch(row)
    return history


def _distillation_step(
    logits: torch.Tensor, targets: _TeacherTargets, labels: Optional[torch.Tensor], alpha: float, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(loss, soft, hard) of ``_distillation_terms`` up to rounding, with ``soft`` multiplied by
    alpha when alpha > 0 (folded into ``targets``) and ``hard`` None without labels."""
    soft = _soft_term(logits, targets, temperature)
    if labels is None:
        return (soft if alpha > 0 else alpha * soft), soft, None
    if logits.dtype != soft.dtype:  # float16 logits: cross-entropy in float32, as _distillation_terms does
        logits = logits.to(soft.dtype)
    if logits.dim() != 2:
        logits, labels = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    hard = F.cross_entropy(logits, labels)
    if alpha == 0:  # exactly 0 * soft + 1 * hard: the hard term alone
        return hard, soft, hard
    return torch.add(soft, hard, alpha=1 - alpha), soft, hard
