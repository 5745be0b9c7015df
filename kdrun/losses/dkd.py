"""``loss=dkd``: Decoupled Knowledge Distillation (Zhao et al., CVPR 2022)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from kdrun.losses.base import DistillationLoss
from kdrun.losses.checks import check_labels, check_logits, check_same_shape, check_temperature, check_weight, compute_dtype


def _log_binary(log_probs: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[log p_target, log (1 - p_target)] per row, the second from the other classes' logits
    (no 1 - p: exact when p_target is close to 1)."""
    log_target = log_probs.gather(-1, target)
    log_rest = torch.logsumexp(logits.masked_fill(F.one_hot(target.squeeze(-1), logits.shape[-1]).bool(), -math.inf), dim=-1, keepdim=True)
    return torch.cat([log_target, log_rest - torch.logsumexp(logits, dim=-1, keepdim=True)], dim=-1)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_i P_i (log P_i - log Q_i) per row; classes with P_i = 0 contribute 0."""
    p = log_p.exp()
    support = p > 0
    return (p * (torch.where(support, log_p, 0.0) - torch.where(support, log_q, 0.0))).sum(-1)


def dkd_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each T^2 times a batch-mean KL, without argument checks."""
    dtype = compute_dtype(torch.promote_types(student_logits.dtype, teacher_logits.dtype))
    s = student_logits.to(dtype) / temperature
    t = teacher_logits.detach().to(dtype) / temperature
    target = labels.long().reshape(-1, 1)
    tckd = _kl_rows(_log_binary(F.log_softmax(t, -1), t, target), _log_binary(F.log_softmax(s, -1), s, target))
    is_target = F.one_hot(target.squeeze(-1), s.shape[-1]).bool()
    nckd = _kl_rows(F.log_softmax(t.masked_fill(is_target, -math.inf), -1), F.log_softmax(s.masked_fill(is_target, -math.inf), -1))
    return temperature**2 * tckd.mean(), temperature**2 * nckd.mean()


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
    if student_logits.dim() != 2 or student_logits.shape[-1] < 2:
        raise ValueError(f"student_logits must be [batch, num_classes] with at least 2 classes (got shape {tuple(student_logits.shape)})")
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
    beta 8, T 4, a 20-epoch warm-up, CE weight 1. Returns ``{"loss", "tckd", "nckd",
    "hard_loss"}`` (TCKD and NCKD times T^2, unweighted)."""

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, warmup_epochs: int = 20, ce_weight: float = 1.0) -> None:
        super().__init__()
        check_weight("alpha", alpha)
        check_weight("beta", beta)
        check_weight("ce_weight", ce_weight)
        check_temperature(temperature)
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs={warmup_epochs!r}: must be an integer >= 0")
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)
        self.warmup_epochs, self.ce_weight = warmup_epochs, float(ce_weight)
        self.warmup = 1.0

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.warmup = min(epoch / self.warmup_epochs, 1.0) if self.warmup_epochs else 1.0

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        tckd, nckd = dkd_parts(student_logits, teacher_logits, labels, self.temperature)
        hard = F.cross_entropy(student_logits.to(tckd.dtype), labels.long())
        loss = self.ce_weight * hard + self.warmup * (self.alpha * tckd + self.beta * nckd)
        return {"loss": loss, "tckd": tckd, "nckd": nckd, "hard_loss": hard}
