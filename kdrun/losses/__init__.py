"""Divergences and distillation losses.

- ``kdrun.losses.functional``: the math as functions (KL divergences, Hinton's loss and its
  parts, precomputed soft targets), all re-exported here.
- One module per method, each a ``DistillationLoss`` that ``conf/loss/<name>.yaml`` builds:
  ``kd`` (``KDLoss``).
- ``kdrun.losses.base``: what the training loop asks of a loss, a user's own included.
"""

from kdrun.losses.base import DistillationLoss
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
)
from kdrun.losses.kd import KDLoss

__all__ = [
    "DistillationLoss",
    "DistillationLossTerms",
    "KDLoss",
    "SoftTargets",
    "distillation_loss",
    "distillation_loss_terms",
    "kl_divergence_discrete",
    "kl_divergence_gaussian",
    "kl_divergence_gaussian_diagonal",
    "soft_target_loss",
    "soft_targets",
]
