"""``loss=dist``: DIST, Knowledge Distillation from A Stronger Teacher (Huang et al., NeurIPS 2022)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from kdrun.losses.base import DistillationLoss, with_cross_entropy
from kdrun.losses.checks import check_logits, check_same_shape, check_temperature, check_weight, compute_dtype

_EPS = 1e-8  # as the paper's code, in the cosine similarity's denominator


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson's correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + _EPS)


def dist_parts(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra), each T^2 times 1 - a mean Pearson correlation, without argument checks;
    intra is 0 for a batch of one row."""
    dtype = compute_dtype(torch.promote_types(student_logits.dtype, teacher_logits.dtype))
    y_s = F.softmax(student_logits.to(dtype) / temperature, dim=1)
    y_t = F.softmax(teacher_logits.detach().to(dtype) / temperature, dim=1)
    inter = 1 - _pearson_rows(y_s, y_t).mean()  # each example: its classes' relations
    if len(y_s) < 2:  # one row has no relations across the batch: 1 - 0, a constant with no gradient
        return temperature**2 * inter, inter.new_zeros(())
    intra = 1 - _pearson_rows(y_s.t(), y_t.t()).mean()  # each class: its relations across the batch
    return temperature**2 * inter, temperature**2 * intra


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0, gamma: float = 1.0, temperature: float = 1.0) -> torch.Tensor:
    r"""The DIST term (Huang et al., NeurIPS 2022), alone (no cross-entropy). With
    :math:`Y = \mathrm{softmax}(Z / T)` row-wise (``[batch, classes]``) and :math:`\rho` Pearson's
    correlation coefficient (:math:`\varepsilon = 10^{-8}` in its denominator):

    .. math::
        \mathcal{L}_{inter} = T^2 \Big(1 - \frac1B \sum_i \rho(Y^S_{i,:}, Y^T_{i,:})\Big), \quad
        \mathcal{L}_{intra} = T^2 \Big(1 - \frac1C \sum_j \rho(Y^S_{:,j}, Y^T_{:,j})\Big)

    .. math::
        \mathrm{DIST} = \beta \, \mathcal{L}_{inter} + \gamma \, \mathcal{L}_{intra}

    Matching correlations rather than values lets a student follow a much stronger teacher's
    relations without matching its confidence. Needs a batch of at least 2 (intra compares rows)
    and 2 classes; :class:`DISTLoss`, which must take an epoch's last batch whatever its size,
    counts intra as 0 for a single row instead.
    """
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    if student_logits.dim() != 2 or min(student_logits.shape) < 2:
        raise ValueError(f"student_logits must be [batch, num_classes], each at least 2 (got shape {tuple(student_logits.shape)})")
    check_weight("beta", beta)
    check_weight("gamma", gamma)
    check_temperature(temperature)
    inter, intra = dist_parts(student_logits, teacher_logits, float(temperature))
    return beta * inter + gamma * intra


class DISTLoss(DistillationLoss):
    r"""``loss=dist``: :math:`L = w_{ce} \, \mathrm{CE} + \beta \, \mathcal{L}_{inter} + \gamma \,
    \mathcal{L}_{intra}` (:func:`dist_loss`). Defaults: the authors' ImageNet settings (beta 2,
    gamma 2, T 1, CE weight 1: their code's DIST(beta=1, gamma=1) under a loss weight of 2). Returns ``{"loss", "inter", "intra", "hard_loss"}`` (times T^2, unweighted). A
    batch of one row (an epoch's last, say) has no intra-class term: it counts 0. Learns
    without labels when ``ce_weight = 0`` (then no ``hard_loss``)."""

    def __init__(self, beta: float = 2.0, gamma: float = 2.0, temperature: float = 1.0, ce_weight: float = 1.0) -> None:
        super().__init__()
        for name, value in (("beta", beta), ("gamma", gamma), ("ce_weight", ce_weight)):
            check_weight(name, value)
        check_temperature(temperature)
        self.beta, self.gamma, self.temperature, self.ce_weight = float(beta), float(gamma), float(temperature), float(ce_weight)

    @property
    def learns_without_labels(self) -> bool:
        return self.ce_weight == 0  # the teacher's terms alone

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
        inter, intra = dist_parts(student_logits, teacher_logits, self.temperature)
        distillation = self.beta * inter + self.gamma * intra
        return with_cross_entropy("DISTLoss", distillation, {"inter": inter, "intra": intra}, student_logits, labels, self.ce_weight)
