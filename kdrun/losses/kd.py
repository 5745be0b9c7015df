"""``loss=kd``: Hinton et al.'s (2015) distillation loss, with the teacher's soft targets
computed once per training run."""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F

from kdrun.losses.base import DistillationLoss
from kdrun.losses.functional import SoftTargets, check_alpha, check_temperature, soft_target_loss, soft_targets


class KDLoss(DistillationLoss):
    r"""Hinton et al. (2015):

    .. math::
        L = \alpha \, T^2 \, \mathrm{KL}(\mathrm{softmax}(z_t / T) \,\|\, \mathrm{softmax}(z_s / T))
            + (1 - \alpha) \, \mathrm{CE}(\mathrm{softmax}(z_s), y)

    **alpha weights the soft (teacher) term** (torchdistill uses the opposite convention).
    Returns ``{"loss": L, "soft_loss": T^2 KL, "hard_loss": CE}`` (the parts unweighted; without
    labels, alpha must be 1 and there is no hard_loss). Called with the teacher's logits it
    equals :func:`kdrun.losses.distillation_loss_terms` up to rounding; kdrun's loop passes it the
    ``teacher_targets`` computed once for the whole transfer set instead.
    """

    def __init__(self, alpha: float = 0.7, temperature: float = 3.0) -> None:
        super().__init__()
        check_alpha(alpha)
        check_temperature(temperature)
        self.alpha, self.temperature = float(alpha), float(temperature)

    @property
    def learns_without_labels(self) -> bool:
        return self.alpha == 1  # the soft term alone

    def teacher_targets(self, teacher_logits: torch.Tensor) -> SoftTargets:
        return soft_targets(teacher_logits, self.temperature)

    def forward(
        self, student_logits: torch.Tensor, teacher: Union[torch.Tensor, SoftTargets], labels: Optional[torch.Tensor] = None
    ) -> dict[str, torch.Tensor]:
        targets = teacher if isinstance(teacher, SoftTargets) else soft_targets(teacher, self.temperature, student_logits.dtype)
        soft = soft_target_loss(student_logits, targets, self.temperature)
        if labels is None:
            return {"loss": soft if self.alpha == 1 else self.alpha * soft, "soft_loss": soft}
        logits = student_logits.to(soft.dtype)  # float16 logits: cross-entropy in float32
        hard = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long())
        if self.alpha == 0:  # exactly the hard term: the same gradients as plain training
            return {"loss": hard, "soft_loss": soft, "hard_loss": hard}
        return {"loss": torch.add(self.alpha * soft, hard, alpha=1 - self.alpha), "soft_loss": soft, "hard_loss": hard}
