"""Hinton-style distillation: a divergence between the teacher's and the student's softened
predictions, weighted against the cross-entropy with the labels.

- ``loss=kd``: Hinton et al. (2015), forward KL; with ``standardize=true``, on z-scored logits
  (Sun et al., CVPR 2024).
- ``loss=reverse_kl``: KL(student ‖ teacher) in place of the forward KL.
- ``loss=js``: the Jensen–Shannon divergence in place of the forward KL.
- ``loss=mse_logits``: the squared difference of the logits themselves (Ba & Caruana, 2014).

All weight the teacher's term by ``alpha`` and the cross-entropy by ``1 - alpha`` (torchdistill
uses the opposite convention), and learn without labels when ``alpha = 1``.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from kdrun.losses.base import DistillationLoss
from kdrun.losses.checks import check_alpha, check_temperature, compute_dtype
from kdrun.losses.functional import SoftTargets, kl_from_log_probs, soft_target_loss, soft_targets, standardize_logits


def _combined(teacher_term: torch.Tensor, name: str, logits: torch.Tensor, labels: Optional[torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """alpha * teacher term + (1 - alpha) * CE, with both parts, unweighted, by name."""
    if labels is None:
        return {"loss": teacher_term if alpha == 1 else alpha * teacher_term, name: teacher_term}
    logits = logits.to(teacher_term.dtype)  # float16 logits: cross-entropy in float32
    hard = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long())
    if alpha == 0:  # exactly the hard term: the same gradients as plain training
        return {"loss": hard, name: teacher_term, "hard_loss": hard}
    return {"loss": torch.add(alpha * teacher_term, hard, alpha=1 - alpha), name: teacher_term, "hard_loss": hard}


class _AlphaLoss(DistillationLoss):
    def __init__(self, alpha: float, temperature: float = 1.0) -> None:
        super().__init__()
        check_alpha(alpha)
        check_temperature(temperature)
        self.alpha, self.temperature = float(alpha), float(temperature)

    @property
    def learns_without_labels(self) -> bool:
        return self.alpha == 1  # the teacher's term alone


class KDLoss(_AlphaLoss):
    r"""``loss=kd``, Hinton et al. (2015):

    .. math::
        L = \alpha \, T^2 \, \mathrm{KL}(\mathrm{softmax}(z_t / T) \,\|\, \mathrm{softmax}(z_s / T))
            + (1 - \alpha) \, \mathrm{CE}(\mathrm{softmax}(z_s), y)

    With ``standardize=True`` both logits are z-scored first (:func:`standardize_logits`, Sun et
    al. 2024: :math:`z \to (z - \bar z) / (\sigma(z) + 10^{-7})`); the cross-entropy keeps the raw
    logits. Returns ``{"loss", "soft_loss": T^2 KL, "hard_loss": CE}`` (parts unweighted).
    Called with the teacher's logits it equals :func:`kdrun.losses.distillation_loss_terms` up to
    rounding; kdrun's loop passes it the ``teacher_targets`` computed once for the transfer set.
    """

    def __init__(self, alpha: float = 0.7, temperature: float = 3.0, standardize: bool = False) -> None:
        super().__init__(alpha, temperature)
        self.standardize = bool(standardize)

    def teacher_targets(self, teacher_logits: torch.Tensor) -> SoftTargets:
        return soft_targets(standardize_logits(teacher_logits) if self.standardize else teacher_logits, self.temperature)

    def forward(
        self, student_logits: torch.Tensor, teacher: Union[torch.Tensor, SoftTargets], labels: Optional[torch.Tensor] = None
    ) -> dict[str, torch.Tensor]:
        targets = teacher if isinstance(teacher, SoftTargets) else self.teacher_targets(teacher)
        softened = standardize_logits(student_logits) if self.standardize else student_logits
        return _combined(soft_target_loss(softened, targets, self.temperature), "soft_loss", student_logits, labels, self.alpha)

    @staticmethod
    def stacked(losses: Sequence["KDLoss"]) -> Optional[Callable[..., dict[str, torch.Tensor]]]:
        """The losses of K students at once, for a stacked sweep (kdrun.stacking): called with
        logits ``[K, B, classes]``, their targets stacked (``SoftTargets`` of ``[K, B, classes]``)
        and labels ``[K, B]`` (or None), it returns ``forward``'s dict with ``[K]`` tensors, each
        student's value computed as ``forward`` computes it alone, up to rounding."""
        if len({loss.standardize for loss in losses}) > 1:
            return None
        standardize = losses[0].standardize
        settings = torch.tensor([[loss.temperature, loss.alpha] for loss in losses], dtype=torch.float64)

        def forward(student_logits: torch.Tensor, targets: SoftTargets, labels: Optional[torch.Tensor]) -> dict[str, torch.Tensor]:
            weights, log_p = targets.weights, targets.log_probs
            dtype = torch.promote_types(weights.dtype, student_logits.dtype)
            temperature, alpha = settings.to(student_logits.device, dtype).unbind(1)
            softened = (standardize_logits(student_logits) if standardize else student_logits).to(dtype)
            log_q = F.log_softmax(softened / temperature.view(-1, 1, 1), dim=-1)
            if targets.support is not None:
                log_q = torch.where(targets.support, log_q, 0.0)
            soft = (weights.to(dtype) * (log_p.to(dtype) - log_q)).mean(dim=(1, 2))
            if labels is None:  # learning without labels: alpha is 1
                return {"loss": soft, "soft_loss": soft}
            hard = F.cross_entropy(student_logits.to(dtype).transpose(1, 2), labels.long(), reduction="none").mean(dim=1)
            return {"loss": alpha * soft + (1 - alpha) * hard, "soft_loss": soft, "hard_loss": hard}

        return forward


class ReverseKLLoss(_AlphaLoss):
    r"""``loss=reverse_kl``: Hinton's loss with the KL divergence reversed, student first:

    .. math::
        L = \alpha \, T^2 \, \mathrm{KL}(\mathrm{softmax}(z_s / T) \,\|\, \mathrm{softmax}(z_t / T))
            + (1 - \alpha) \, \mathrm{CE}

    Mode-seeking: the student is pushed to put mass where the teacher does, not to cover all of
    it. Classes the teacher masks (logit -inf) are left out of the student's softmax too (else
    the KL is infinite). Returns ``{"loss", "soft_loss": T^2 KL(student || teacher), "hard_loss"}``.
    """

    def __init__(self, alpha: float = 0.7, temperature: float = 3.0) -> None:
        super().__init__(alpha, temperature)

    def teacher_targets(self, teacher_logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(teacher_logits.detach().to(compute_dtype(teacher_logits.dtype)) / self.temperature, dim=-1)

    def forward(self, student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, labels: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        # A class the teacher masks (logit -inf, P = 0) would make KL(Q || P) infinite: it is
        # masked in the student's softened distribution too, which then spreads over the rest.
        masked = teacher_log_probs == -math.inf
        softened = (student_logits.to(teacher_log_probs.dtype) / self.temperature).masked_fill(masked, -math.inf)
        reverse = kl_from_log_probs(F.log_softmax(softened, dim=-1), teacher_log_probs).mean()
        return _combined(self.temperature**2 * reverse, "soft_loss", student_logits, labels, self.alpha)


class JSLoss(_AlphaLoss):
    r"""``loss=js``: Hinton's loss with the Jensen–Shannon divergence in place of the forward KL:

    .. math::
        \mathrm{JS}(P, Q) = \tfrac12 \mathrm{KL}(P \,\|\, M) + \tfrac12 \mathrm{KL}(Q \,\|\, M),
        \quad M = \tfrac12 (P + Q)

    with P, Q the teacher's and the student's softmax at T; symmetric and bounded by log 2. A
    class the teacher masks (logit -inf, P = 0) adds 0 to KL(P || M), as in the forward KL.
    ``L = alpha T^2 JS + (1 - alpha) CE``; returns ``{"loss", "soft_loss": T^2 JS, "hard_loss"}``.
    """

    def __init__(self, alpha: float = 0.7, temperature: float = 3.0) -> None:
        super().__init__(alpha, temperature)

    teacher_targets = ReverseKLLoss.teacher_targets

    def forward(self, student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, labels: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        log_p = teacher_log_probs
        log_q = F.log_softmax(student_logits.to(log_p.dtype) / self.temperature, dim=-1)
        log_m = torch.logaddexp(log_p, log_q) - math.log(2.0)
        js = 0.5 * (kl_from_log_probs(log_p, log_m) + kl_from_log_probs(log_q, log_m)).mean()
        return _combined(self.temperature**2 * js, "soft_loss", student_logits, labels, self.alpha)


class MSELogitsLoss(_AlphaLoss):
    r"""``loss=mse_logits``: logit matching (Ba & Caruana, "Do Deep Nets Really Need to be
    Deep?", NeurIPS 2014): the mean squared difference of the logits,

    .. math::
        L = \alpha \, \frac{1}{BC} \sum_{b, c} (z_{s,bc} - z_{t,bc})^2 + (1 - \alpha) \, \mathrm{CE}

    The paper regresses the logits alone (``alpha = 1``, the default), with no labels and no
    temperature. Returns ``{"loss", "mse_loss", "hard_loss"}``.
    """

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__(alpha)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        dtype = compute_dtype(student_logits.dtype)
        mse = F.mse_loss(student_logits.to(dtype), teacher_logits.detach().to(dtype))
        return _combined(mse, "mse_loss", student_logits, labels, self.alpha)
