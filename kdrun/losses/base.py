"""What kdrun's training loop asks of a distillation loss (``loss=...``).

kdrun builds the loss from its config (``_target_`` plus its keys) and calls it once per batch:

    loss(student_logits, teacher, labels)

``student_logits`` is ``[B, num_classes]``; ``teacher`` is the frozen teacher's logits for the
same rows (or what ``teacher_targets`` made of them, below); ``labels`` is ``[B]`` int64, or None
when the students learn without labels (``dataset.transfer_labels=false``). It returns a scalar
tensor, or a dict holding ``"loss"`` (what is minimised) and other named scalars, whose epoch
means become extra columns of metrics.csv. Any callable of that form works; subclassing
``DistillationLoss`` adds what the optional parts below need:

- ``learns_without_labels``: True if it works with ``labels=None`` (else kdrun refuses
  ``dataset.transfer_labels=false`` with a message). ``with_cross_entropy`` adds a weighted
  cross-entropy that a weight of 0 lets go without labels.

- ``teacher_targets(teacher_logits)``: what the loss wants of the teacher, one row per example
  (a tensor, or a tuple of them; None entries allowed). Computed once for the whole transfer set
  when the teacher's inputs are the same every epoch, else per batch; the rows of a batch are
  passed as ``teacher``. Default: the logits themselves.
- ``student_features`` / ``teacher_features``: names of submodules (as in ``named_modules()``)
  whose outputs the loss needs; they are passed as keyword arguments ``student_features=`` and
  ``teacher_features=`` (dicts name -> tensor), and the teacher then runs on every batch.
- Parameters of its own (an ``nn.Module`` with, say, a regressor) are trained with the student,
  by the student's optimiser. ``setup(student, teacher, inputs)`` is called once, with a batch
  of inputs, before any training (before the teacher trains, so that a mistake shows at once):
  the place to build them once feature shapes are known, and to set the feature names. Then
  kdrun calls the loss once on that batch as training will, and backpropagates; the weights,
  batch norm's statistics and gradients are put back as they were.
- ``set_epoch(epoch, epochs)`` is called at the start of every epoch (1-based), for schedules
  such as a warm-up.

Random draws: the loss is built, and ``setup`` runs, on random states of their own, so that the
distilled student sees the baseline's dropout masks. A loss that draws random numbers at every
batch should use a ``torch.Generator`` of its own for the same reason.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.losses.checks import check_labels_given


class DistillationLoss(nn.Module):
    """Base class with the optional parts' defaults; see the module docstring."""

    learns_without_labels: bool = False
    student_features: Sequence[str] = ()
    teacher_features: Sequence[str] = ()

    def teacher_targets(self, teacher_logits: torch.Tensor) -> Any:
        return teacher_logits

    def setup(self, student: nn.Module, teacher: nn.Module, inputs: torch.Tensor) -> None:
        pass

    def set_epoch(self, epoch: int, epochs: int) -> None:
        pass


def with_cross_entropy(loss: str, distillation: torch.Tensor, parts: dict[str, torch.Tensor], logits: torch.Tensor,
                       labels: Optional[torch.Tensor], ce_weight: float) -> dict[str, torch.Tensor]:  # fmt: skip
    """``{"loss": ce_weight * CE + distillation, **parts, "hard_loss": CE}``, CE the cross-entropy
    of ``logits`` with ``labels``. Without labels (allowed when ce_weight is 0) there is no CE to
    add or log: ``{"loss": distillation, **parts}``. ``loss`` names the caller in the error."""
    if ce_weight != 0:
        check_labels_given(loss, labels, f"for its cross-entropy, ce_weight={ce_weight:g}; with ce_weight=0 it learns without them")
    if labels is None:
        return {"loss": distillation, **parts}
    hard = F.cross_entropy(logits.to(distillation.dtype), labels.long())  # float16 logits: in float32
    return {"loss": ce_weight * hard + distillation, **parts, "hard_loss": hard}
