"""Training loops and evaluation on in-memory tensors.

The loops batch with ``randperm`` + indexing (no DataLoader), take the frozen teacher's logits
precomputed once, and keep running sums on the device so that the only host syncs are once per
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
from kdrun.losses import _distillation_terms
from kdrun.optim import make_optimizer

EVAL_BATCH = 8192


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
    logits = torch.cat([model(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)]) if len(x) else model(x)
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
    """
    optimizer = make_optimizer(model, settings.optimizer, settings.lr, settings.weight_decay)
    generator = torch.Generator().manual_seed(settings.batch_seed)
    device = train.x.device
    n = len(train)
    history = []
    for epoch in range(1, settings.epochs + 1):
        started = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator).to(device)
        sums = torch.zeros(4, device=device)  # loss, soft, hard, correct, each summed over examples
        for start in range(0, n, settings.batch_size):
            index = order[start : start + settings.batch_size]
            inputs, labels = train.x[index], train.y[index]
            logits = model(inputs)
            if distillation is None:
                loss = F.cross_entropy(logits, labels)
                soft = hard = loss
            else:
                loss, soft, hard = _distillation_terms(
                    logits,
                    distillation.teacher_logits[index],
                    labels if distillation.use_labels else None,
                    distillation.alpha,
                    distillation.temperature,
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                weight = len(index)
                correct = (logits.argmax(-1) == labels).sum().to(sums.dtype)
                sums += torch.stack((loss.detach() * weight, soft.detach() * weight, hard.detach() * weight, correct))
        loss_sum, soft_sum, hard_sum, correct_count = sums.tolist()
        train_loss, soft_loss, hard_loss, train_acc = loss_sum / n, soft_sum / n, hard_sum / n, round(correct_count) / n
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(model_name, epoch, settings.epochs, train_loss)
        val_result = evaluate(model, val)
        row = {
            "model": model_name,
            "epoch": epoch,
            "train_loss": train_loss,
            "soft_loss": soft_loss if distillation is not None else math.nan,
            "hard_loss": hard_loss if distillation is not None else math.nan,
            "train_acc": train_acc,
            "val_loss": val_result.loss,
            "val_acc": val_result.accuracy,
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        on_epoch(row)
    return history
