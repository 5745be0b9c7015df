"""Divergences and distillation losses.

- ``kdrun.losses.functional``: the math as functions (KL divergences, Hinton's loss and its
  parts, precomputed soft targets, logit standardisation), all re-exported here.
- One module per method (or family), each a ``DistillationLoss`` that ``conf/loss/<name>.yaml``
  builds, with its formula in the docstring: ``kd`` (KD, reverse KL, JS, logit MSE), ``dkd``,
  ``dist``, ``fitnet``, ``at``.
- ``kdrun.losses.base``: what the training loop asks of a loss, a user's own included.
"""

from kdrun.losses.at import ATLoss, attention_transfer_loss
from kdrun.losses.base import DistillationLoss
from kdrun.losses.dist import DISTLoss, dist_loss
from kdrun.losses.dkd import DKDLoss, dkd_loss
from kdrun.losses.fitnet import FitNetLoss
from kdrun.losses.functional import (
    DistillationLossTerms,
    SoftTargets,
    distillation_loss,
    distillation_loss_terms,
    kl_divergence_discrete,
    kl_divergence_gaussian,
    kl_divergence_gaussian_diagonal,
    soft_target_loss,
    soft_targets,
    standardize_logits,
)
from kdrun.losses.kd import JSLoss, KDLoss, MSELogitsLoss, ReverseKLLoss

__all__ = [
    "ATLoss",
    "DISTLoss",
    "DKDLoss",
    "DistillationLoss",
    "DistillationLossTerms",
    "FitNetLoss",
    "JSLoss",
    "KDLoss",
    "MSELogitsLoss",
    "ReverseKLLoss",
    "SoftTargets",
    "attention_transfer_loss",
    "dist_loss",
    "distillation_loss",
    "distillation_loss_terms",
    "dkd_loss",
    "kl_divergence_discrete",
    "kl_divergence_gaussian",
    "kl_divergence_gaussian_diagonal",
    "soft_target_loss",
    "soft_targets",
    "standardize_logits",
]
