"""``loss=dkd``: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from kdrun.losses.base import DistillationLoss, with_cross_entropy
from kdrun.losses.checks import (
    check_int_at_least,
    check_labels,
    check_labels_given,
    check_logits,
    check_same_shape,
    check_temperature,
    check_weight,
    compute_dtype,
)
from kdrun.losses.functional import kl_from_log_probs

_PAPER_WARMUP, _PAPER_EPOCHS = 20, 240  # DKD's CIFAR-100 schedule: the warm-up's share of the run


def _log_binary(log_probs: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[log p_target, log (1 - p_target)] per row, the second from the other classes' logits
    (no 1 - p: exact when p_target is close to 1)."""
    log_target = log_probs.gather(-1, target)
    log_rest = torch.logsumexp(logits.masked_fill(F.one_hot(target.squeeze(-1), logits.shape[-1]).bool(), -math.inf), dim=-1, keepdim=True)
    return torch.cat([log_target, log_rest - torch.logsumexp(logits, dim=-1, keepdim=True)], dim=-1)


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each T^2 times a batch-mean KL, without argument checks."""
    dtype = compute_dtype(torch.promote_types(student_logits.dtype, teacher_logits.dtype))
    s = student_logits.to(dtype) / temperature
    t = teacher_logits.detach().to(dtype) / temperature
    target = labels.long().reshape(-1, 1)
    tckd = kl_from_log_probs(_log_binary(F.log_softmax(t, -1), t, target), _log_binary(F.log_softmax(s, -1), s, target))
    is_target = F.one_hot(target.squeeze(-1), s.shape[-1]).bool()
    nckd = kl_from_log_probs(F.log_softmax(t.masked_fill(is_target, -math.inf), -1), F.log_softmax(s.masked_fill(is_target, -math.inf), -1))
    return temperature**2 * tckd.mean(), temperature**2 * nckd.mean()


def _check_two_classes(logits: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[-1] < 2:  # one class: no non-target class, and NaN
        raise ValueError(f"student_logits must be [batch, num_classes] with at least 2 classes (got shape {tuple(logits.shape)})")


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    temperature: float = 4.0,
) -> torch.Tensor:
    r"""The DKD term (Zhao et al., CVPR 2022), alone: no cross-entropy, no warm-up.

    With :math:`p = \mathrm{softmax}(z / T)` and :math:`t` the target class, the binary
    distribution :math:`b = (p_t, 1 - p_t)` and the distribution among the non-target classes
    :math:`\hat p_i = p_i / (1 - p_t)`, :math:`i \ne t`:

    .. math::
        \mathrm{TCKD} = T^2 \, \mathrm{KL}(b^{\mathcal T} \,\|\, b^{\mathcal S}), \quad
        \mathrm{NCKD} = T^2 \, \mathrm{KL}(\hat p^{\mathcal T} \,\|\, \hat p^{\mathcal S}), \quad
        \mathrm{DKD} = \alpha \, \mathrm{TCKD} + \beta \, \mathrm{NCKD}

    each KL averaged over the batch. Hinton's KD is TCKD + (1 - p_t^T) NCKD; DKD frees NCKD's
    weight from the teacher's confidence. Computed in log space (float32 at least), the
    non-target softmax with the target masked out exactly.

    Args:
        student_logits, teacher_logits: ``[batch, num_classes]``, at least 2 classes.
        labels: ``[batch]`` integer class ids.
        alpha, beta: the weights of TCKD and NCKD, finite and >= 0.
        temperature: T > 0.
    """
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    _check_two_classes(student_logits)
    check_labels(labels, student_logits)
    check_weight("alpha", alpha)
    check_weight("beta", beta)
    check_temperature(temperature)
    tckd, nckd = dkd_parts(student_logits, teacher_logits, labels, float(temperature))
    return alpha * tckd + beta * nckd


class DKDLoss(DistillationLoss):
    r"""``loss=dkd``: :math:`L = w_{ce} \, \mathrm{CE} + \min(e / E_w, 1) \, (\alpha \,
    \mathrm{TCKD} + \beta \, \mathrm{NCKD})`, where e is the epoch and :math:`E_w` the warm-up
    (:func:`dkd_loss` for the rest). The paper's CIFAR-100 settings are the defaults: alpha 1,
    beta 8 (2 or 6 for some pairs: ``loss=dkd`` takes the pair preset's ``recipe_dkd_beta``),
    T 4, a 20-epoch warm-up, CE weight 1. Returns ``{"loss", "tckd", "nckd",
    "hard_loss"}`` (TCKD and NCKD times T^2, unweighted). Needs labels: they pick each row's
    target class.

    ``warmup_epochs=None`` (the default) takes the paper's share of the run, 20 of its 240 epochs:
    :math:`E_w = \lceil E / 12 \rceil` for a run of E epochs (``set_epoch`` tells it E), so a
    20-epoch run ramps over 2 epochs instead of reaching full weight only in its last. A number
    is taken as it is.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup_epochs: Optional[int] = None,
                 ce_weight: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        for name, value in (("alpha", alpha), ("beta", beta), ("ce_weight", ce_weight)):
            check_weight(name, value)
        check_temperature(temperature)
        if warmup_epochs is not None:
            check_int_at_least("warmup_epochs", warmup_epochs, 0)
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.warmup_epochs, self.ce_weight = warmup_epochs, float(ce_weight)
        self.warmup = 1.0

    def set_epoch(self, epoch: int, epochs: int) -> None:
        warmup_epochs = math.ceil(epochs * _PAPER_WARMUP / _PAPER_EPOCHS) if self.warmup_epochs is None else self.warmup_epochs
        self.warmup = min(epoch / warmup_epochs, 1.0) if warmup_epochs else 1.0

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        check_labels_given("DKDLoss", labels, "TCKD and NCKD split each row at its target class")
        _check_two_classes(student_logits)
        tckd, nckd = dkd_parts(student_logits, teacher_logits, labels, self.temperature)
        distillation = self.warmup * (self.alpha * tckd + self.beta * nckd)
        return with_cross_entropy("DKDLoss", distillation, {"tckd": tckd, "nckd": nckd}, student_logits, labels, self.ce_weight)
