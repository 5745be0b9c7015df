"""Divergences and the distillation loss.

Everything is computed in log space and in at least float32: float16 and bfloat16 inputs are
upcast inside and the result is returned in float32 (float64 inputs stay float64). Nothing is
moved between devices. Bad arguments raise ``ValueError`` naming the argument, its value and what
is allowed (never ``assert``, which ``python -O`` strips).

Alpha convention: ``alpha`` weights the *soft* (teacher) term, as in the kdrun notebook and in
Hinton et al. (2015). torchdistill and some other libraries use the opposite convention.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F

from kdrun.losses.checks import (
    check_alpha,
    check_float_tensor,
    check_labels,
    check_logits,
    check_positive,
    check_reduction,
    check_same_shape,
    check_temperature,
    compute_dtype,
)

__all__ = [
    "DistillationLossTerms",
    "SoftTargets",
    "distillation_loss",
    "distillation_loss_terms",
    "kl_divergence_discrete",
    "kl_divergence_gaussian",
    "kl_divergence_gaussian_diagonal",
    "soft_target_loss",
    "soft_targets",
    "standardize_logits",
]

_DISCRETE_REDUCTIONS = ("batchmean", "sum", "none")
_GAUSSIAN_REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------------------- discrete KL


def kl_from_log_probs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """sum_i P_i (log P_i - log Q_i) over the last dimension, classes with P_i = 0 contributing 0:
    the KL of every loss here, from log-probabilities (no argument checks)."""
    p = log_p.exp()
    # Masked classes (logit -inf) have P = 0 and log P = -inf; 0 * (-inf) would be NaN, in the
    # value and in the gradient, so those terms are replaced by 0 before the product.
    support = p > 0
    log_ratio = torch.where(support, log_p, 0.0) - torch.where(support, log_q, 0.0)
    return (p * log_ratio).sum(dim=-1)


def _kl_per_position(p_logits: torch.Tensor, q_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(p_logits / T) || softmax(q_logits / T)) per position, in at least float32."""
    dtype = compute_dtype(torch.promote_types(p_logits.dtype, q_logits.dtype))
    log_p = F.log_softmax(p_logits.to(dtype) / temperature, dim=-1)
    log_q = F.log_softmax(q_logits.to(dtype) / temperature, dim=-1)
    return kl_from_log_probs(log_p, log_q)


def _reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    return values.mean()  # "batchmean" over positions, or "mean" over elements


def kl_divergence_discrete(
    p_logits: torch.Tensor,
    q_logits: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "batchmean",
) -> torch.Tensor:
    r"""KL divergence KL(P || Q) between two categorical distributions given by logits.

    .. math::
        P = \mathrm{softmax}(p\_logits / T), \quad Q = \mathrm{softmax}(q\_logits / T)

        \mathrm{KL}(P \,\|\, Q) = \sum_i P_i \,(\log P_i - \log Q_i)

    computed with ``log_softmax`` over the last dimension. A class with logit ``-inf`` in
    ``p_logits`` (P_i = 0) contributes exactly 0, never NaN.

    Args:
        p_logits: logits of the target distribution P, shape ``[..., num_classes]``.
        q_logits: logits of the approximating distribution Q, same shape.
        temperature: T > 0, finite. Higher T gives softer distributions.
        reduction: ``"batchmean"`` (default, the notebook's): the per-position sums averaged over
            every leading position — for 2-D input this equals
            ``F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)``;
            ``"sum"``: summed over all positions; ``"none"``: shape ``[...]``, one value per position.

    Returns:
        A float32 tensor for float16/bfloat16/float32 inputs, float64 for float64 inputs.
    """
    check_logits("p_logits", p_logits)
    check_logits("q_logits", q_logits)
    check_same_shape("p_logits", p_logits, "q_logits", q_logits)
    check_temperature(temperature)
    check_reduction(reduction, _DISCRETE_REDUCTIONS)
    return _reduce(_kl_per_position(p_logits, q_logits, temperature), reduction)


# --------------------------------------------------------------------------- Gaussian KL


def _gaussian_kl_elementwise(
    mu_p: torch.Tensor, sigma_p: torch.Tensor, mu_q: torch.Tensor, sigma_q: torch.Tensor
) -> torch.Tensor:
    dtype = compute_dtype(torch.promote_types(torch.promote_types(mu_p.dtype, sigma_p.dtype), torch.promote_types(mu_q.dtype, sigma_q.dtype)))
    mu_p, sigma_p, mu_q, sigma_q = (t.to(dtype) for t in (mu_p, sigma_p, mu_q, sigma_q))
    # With x = log(sigma_p^2 / sigma_q^2), log(sigma_q/sigma_p) + sigma_p^2/(2 sigma_q^2) - 1/2
    # equals (expm1(x) - x) / 2: built from log sigma so that neither the ratio's log nor its
    # square underflows, and exactly 0 when sigma_p == sigma_q.
    log_var_ratio = 2.0 * (torch.log(sigma_p) - torch.log(sigma_q))
    mean_term = ((mu_p - mu_q) / sigma_q) ** 2
    return 0.5 * (torch.expm1(log_var_ratio) - log_var_ratio + mean_term)


def _check_gaussian_args(mu_p: torch.Tensor, sigma_p: torch.Tensor, mu_q: torch.Tensor, sigma_q: torch.Tensor) -> None:
    check_float_tensor("mu_p", mu_p)
    check_float_tensor("mu_q", mu_q)
    check_positive("sigma_p", sigma_p)
    check_positive("sigma_q", sigma_q)
    try:
        torch.broadcast_shapes(mu_p.shape, sigma_p.shape, mu_q.shape, sigma_q.shape)
    except RuntimeError:
        raise ValueError(
            "mu_p, sigma_p, mu_q and sigma_q must broadcast to one shape (got "
            f"{tuple(mu_p.shape)}, {tuple(sigma_p.shape)}, {tuple(mu_q.shape)}, {tuple(sigma_q.shape)})"
        ) from None


def kl_divergence_gaussian(
    mu_p: torch.Tensor,
    sigma_p: torch.Tensor,
    mu_q: torch.Tensor,
    sigma_q: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""KL divergence between univariate Gaussians, elementwise with broadcasting.

    .. math::
        \mathrm{KL}(\mathcal{N}(\mu_p, \sigma_p^2) \,\|\, \mathcal{N}(\mu_q, \sigma_q^2))
        = \log\frac{\sigma_q}{\sigma_p} + \frac{\sigma_p^2 + (\mu_p - \mu_q)^2}{2\sigma_q^2} - \frac{1}{2}

    Computed from ``log sigma`` so that ratios sigma_p / sigma_q from 1e-6 to 1e6 stay finite, and
    exactly 0 when the parameters are equal.

    Args:
        mu_p, sigma_p: mean and standard deviation (> 0) of P.
        mu_q, sigma_q: mean and standard deviation (> 0) of Q. All four broadcast together.
        reduction: ``"mean"`` (default, the notebook's) over all elements, ``"sum"``, or ``"none"``.

    Returns:
        float32 for float16/bfloat16/float32 inputs, float64 for float64 inputs.
    """
    _check_gaussian_args(mu_p, sigma_p, mu_q, sigma_q)
    check_reduction(reduction, _GAUSSIAN_REDUCTIONS)
    return _reduce(_gaussian_kl_elementwise(mu_p, sigma_p, mu_q, sigma_q), reduction)


def kl_divergence_gaussian_diagonal(
    mu_p: torch.Tensor,
    sigma_p: torch.Tensor,
    mu_q: torch.Tensor,
    sigma_q: torch.Tensor,
    reduction: str = "mean",
) -> torch.Tensor:
    r"""KL divergence between multivariate Gaussians with diagonal covariance (VAE style).

    .. math::
        \mathrm{KL}(P \,\|\, Q) = \sum_{d} \left[\log\frac{\sigma_{q,d}}{\sigma_{p,d}}
        + \frac{\sigma_{p,d}^2 + (\mu_{p,d} - \mu_{q,d})^2}{2\sigma_{q,d}^2} - \frac{1}{2}\right]

    the sum running over the last dimension (the event dimension), as
    ``torch.distributions.Independent(Normal(mu, sigma), 1)`` does, **then averaged over the
    leading positions** (the batch) by default: the result is a scalar. For one value per
    example (``[batch]``), pass ``reduction="none"``.

    Args:
        mu_p, sigma_p, mu_q, sigma_q: shape ``[..., dim]`` after broadcasting; sigmas > 0.
        reduction: ``"mean"`` (default): the per-position sums averaged over the leading
            positions, a scalar; ``"sum"``: summed over them, a scalar; ``"none"``: shape ``[...]``,
            one KL per position.
    """
    _check_gaussian_args(mu_p, sigma_p, mu_q, sigma_q)
    check_reduction(reduction, _GAUSSIAN_REDUCTIONS)
    per_element = _gaussian_kl_elementwise(mu_p, sigma_p, mu_q, sigma_q)
    if per_element.dim() == 0:
        raise ValueError("kl_divergence_gaussian_diagonal needs at least one dimension (the event dimension, last)")
    return _reduce(per_element.sum(dim=-1), reduction)


# --------------------------------------------------------------------------- distillation


class DistillationLossTerms(NamedTuple):
    """The distillation loss and its parts, each a scalar tensor.

    ``total = alpha * soft + (1 - alpha) * hard``, where ``soft = T^2 * KL(teacher_T || student_T)``
    and ``hard = CE(student, labels)``. Log ``soft`` and ``hard``; back-propagate ``total``.
    """

    total: torch.Tensor
    soft: torch.Tensor
    hard: torch.Tensor


def _distillation_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None,
    alpha: float,
    temperature: float,
) -> DistillationLossTerms:
    """The loss and its parts, once the arguments are checked."""
    soft = temperature**2 * _kl_per_position(teacher_logits.detach(), student_logits, temperature).mean()
    if labels is None:
        hard = torch.full_like(soft, float("nan"))
        return DistillationLossTerms(soft if alpha == 1 else alpha * soft, soft, hard)
    flat_logits = student_logits.to(soft.dtype).reshape(-1, student_logits.shape[-1])
    # cross_entropy accepts only int64 (or uint8) class indices; the argument check admits every
    # integer dtype (int32 labels are common), so widen here.
    hard = F.cross_entropy(flat_logits, labels.reshape(-1).long())
    return DistillationLossTerms(alpha * soft + (1 - alpha) * hard, soft, hard)


def distillation_loss_terms(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.7,
    temperature: float = 3.0,
) -> DistillationLossTerms:
    r"""Hinton et al. (2015) distillation loss, returned with its soft and hard parts.

    .. math::
        L = \alpha \, T^2 \, \mathrm{KL}(\mathrm{softmax}(z_t / T) \,\|\, \mathrm{softmax}(z_s / T))
            + (1 - \alpha) \, \mathrm{CE}(\mathrm{softmax}(z_s), y)

    **alpha weights the soft (teacher) term**, as in the kdrun notebook; torchdistill and others
    use the opposite convention. The T^2 factor keeps the soft term's gradient magnitude roughly
    independent of T. No gradient flows into ``teacher_logits`` (they are detached).

    Args:
        student_logits: ``[batch, num_classes]`` (or ``[batch, seq, num_classes]``).
        teacher_logits: same shape as ``student_logits``.
        labels: integer class indices in ``[0, num_classes)``, shape ``student_logits.shape[:-1]``.
        alpha: weight of the soft term, in [0, 1].
        temperature: T > 0, finite.

    Returns:
        ``DistillationLossTerms(total, soft, hard)``: ``soft`` is T^2 * KL (batchmean) and ``hard``
        the mean cross-entropy, both unweighted; float32 (float64 for float64 inputs).
    """
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    check_same_shape("student_logits", student_logits, "teacher_logits", teacher_logits)
    check_labels(labels, student_logits)
    check_alpha(alpha)
    check_temperature(temperature)
    return _distillation_terms(student_logits, teacher_logits, labels, float(alpha), float(temperature))


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 0.7,
    temperature: float = 3.0,
) -> torch.Tensor:
    r"""Hinton et al. (2015) distillation loss (the total of :func:`distillation_loss_terms`).

    .. math::
        L = \alpha \, T^2 \, \mathrm{KL}(\mathrm{teacher}_T \,\|\, \mathrm{student}_T)
            + (1 - \alpha) \, \mathrm{CE}(\mathrm{student}, \mathrm{labels})

    **alpha weights the soft (teacher) term** (torchdistill uses the opposite convention).
    See :func:`distillation_loss_terms` for the arguments and for the soft and hard parts.
    """
    return distillation_loss_terms(student_logits, teacher_logits, labels, alpha, temperature).total


# --------------------------------------------------------------------------- precomputed soft targets


class SoftTargets(NamedTuple):
    """A frozen teacher's side of the soft term at temperature T, computed once by
    :func:`soft_targets`. Rows line up with the teacher's logits, so a batch is a row selection
    of each tensor."""

    weights: torch.Tensor  # P * T^2 * num_classes (see soft_target_loss)
    log_probs: torch.Tensor  # log P, with 0 where P = 0
    support: Optional[torch.Tensor]  # P > 0; None when every class of every row has P > 0


def soft_targets(teacher_logits: torch.Tensor, temperature: float, dtype: Optional[torch.dtype] = None) -> SoftTargets:
    """P = softmax(teacher_logits / T) and log P, for :func:`soft_target_loss`, in the dtype that
    :func:`kl_divergence_discrete` would compute in (``dtype``: the student logits' dtype, when
    known). One host sync (whether every P is > 0)."""
    check_logits("teacher_logits", teacher_logits)
    check_temperature(temperature)
    compute = compute_dtype(teacher_logits.dtype if dtype is None else torch.promote_types(teacher_logits.dtype, dtype))
    log_p = F.log_softmax(teacher_logits.detach().to(compute) / temperature, dim=-1)
    p = log_p.exp()
    support = p > 0
    full = bool(support.all())
    # As in kl_divergence_discrete: classes with P = 0 (logit -inf) contribute exactly 0, never NaN.
    log_p = log_p if full else torch.where(support, log_p, 0.0)
    weights = p * (temperature**2 * teacher_logits.shape[-1])
    return SoftTargets(weights, log_p, None if full else support)


def soft_target_loss(student_logits: torch.Tensor, targets: SoftTargets, temperature: float) -> torch.Tensor:
    """``T^2 * KL(P || Q)`` averaged over positions (batchmean), Q = softmax(student_logits / T),
    for ``targets = soft_targets(teacher_logits, T)`` (or a row selection of it): the soft term
    of :func:`distillation_loss_terms` up to rounding, in fewer operations. The mean over every
    element of weights * (log P - log Q) is the per-position sum averaged over positions, over
    num_classes; the weights carry the num_classes and T^2 factors. No argument checks: this is
    the training loop's form, called once per batch."""
    weights, log_p = targets.weights, targets.log_probs
    if student_logits.dtype != weights.dtype:  # e.g. float16 logits: computed in float32
        dtype = torch.promote_types(weights.dtype, student_logits.dtype)
        student_logits, weights, log_p = student_logits.to(dtype), weights.to(dtype), log_p.to(dtype)
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    if targets.support is not None:
        log_q = torch.where(targets.support, log_q, 0.0)
    return (weights * (log_p - log_q)).mean()


# --------------------------------------------------------------------------- logit standardisation

# The paper's sigma + 1e-7 scales a flat row (constant logits, as a zero-initialised head gives)
# and its gradient by up to 1e7; flooring sigma at this changes only rows flatter than it.
MIN_LOGIT_STD = 1e-4


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    r"""Each row's logits as z-scores (Sun et al., CVPR 2024, "Logit Standardization in
    Knowledge Distillation"):

    .. math::
        \mathcal{Z}(z)_i = \frac{z_i - \bar z}{\max(\sigma(z), 10^{-4}) + 10^{-7}}

    with :math:`\bar z` the mean and :math:`\sigma(z)` the unbiased standard deviation over the
    last dimension (which therefore needs at least 2 classes). A softmax of standardised logits
    no longer depends on the logits' scale or offset, only on their relations. The paper divides
    by :math:`\sigma(z) + 10^{-7}`; the floor of :math:`10^{-4}` changes only rows flatter than
    that (constant ones, say), whose gradients it keeps below about :math:`10^4` instead of
    :math:`10^7`.

    Returns float32 for float16/bfloat16/float32 inputs, float64 for float64.
    """
    check_logits("logits", logits)
    if logits.shape[-1] < 2:
        raise ValueError(f"logits must have at least 2 classes to standardise (got shape {tuple(logits.shape)})")
    return _standardize(logits)


def _standardize(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.to(compute_dtype(logits.dtype))
    std = logits.std(dim=-1, keepdim=True).clamp_min(MIN_LOGIT_STD)
    return (logits - logits.mean(dim=-1, keepdim=True)) / (std + 1e-7)
