"""``loss=at``: attention transfer (Zagoruyko & Komodakis, ICLR 2017)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.errors import ConfigError
from kdrun.losses.base import DistillationLoss, with_cross_entropy
from kdrun.losses.checks import check_at_least, check_float_tensor, check_weight, compute_dtype
from kdrun.losses.features import conv_stage_names, feature_shapes


def _check_p(p: float) -> None:
    # |x|^p has an infinite slope at 0 for p < 1, and ReLU features are often exactly 0: NaN gradients.
    check_at_least("p", p, 1.0)


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H*W]``: the channel mean of |features|^p, L2-normalised per example."""
    return F.normalize(features.to(compute_dtype(features.dtype)).abs().pow(p).mean(1).flatten(1), dim=1)


def attention_transfer_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    r"""One stage pair's attention transfer term (Zagoruyko & Komodakis, ICLR 2017):

    .. math::
        Q = \mathrm{vec}\Big(\frac1C \sum_c |A_c|^p\Big), \quad
        \mathcal{L}_{AT} = \frac{1}{B \, HW} \sum_b \Big\| \frac{Q^S_b}{\|Q^S_b\|_2} - \frac{Q^T_b}{\|Q^T_b\|_2} \Big\|_2^2

    for activations ``[B, C, H, W]`` of the same batch and spatial size (the channel counts may
    differ) and p >= 1. No gradient flows into the teacher's features.
    """
    for name, value in (("student_features", student_features), ("teacher_features", teacher_features)):
        check_float_tensor(name, value)
        if value.dim() != 4:
            raise ValueError(f"{name} must be [B, C, H, W] (got shape {tuple(value.shape)})")
    s, t = student_features.shape, teacher_features.shape
    if s[0] != t[0] or s[2:] != t[2:]:
        raise ValueError(f"student_features {tuple(s)} and teacher_features {tuple(t)} must share the batch and spatial sizes")
    _check_p(p)
    return (attention_map(student_features, p) - attention_map(teacher_features.detach(), p)).pow(2).mean()


class ATLoss(DistillationLoss):
    r"""``loss=at``: :math:`L = w_{ce} \, \mathrm{CE} + \beta \sum_j \mathcal{L}_{AT}(j)` over
    matched stage pairs j (:func:`attention_transfer_loss`, a mean of squares), beta 1000 and p 2:
    the authors' code and RepDistiller's and mdistiller's, whose CIFAR-100 results kdrun quotes
    (the paper writes beta/2 times a p-norm of the difference). p >= 1: below, |x|^p has an
    infinite slope at the many zeros of ReLU features. ``student_layers`` / ``teacher_layers`` name the paired layers (lists of
    equal length); ``auto`` pairs each network's stages after the first, in order (kdrun's CNNs:
    ``stages.1``, ``stages.2``, ...: RepDistiller's ``feat[1:-1]``, mdistiller's ``feats[1:]``,
    which leave out the stem), and refuses a model without them (an MLP). Needs convolutional features
    ``[B, C, H, W]`` of equal spatial size per pair. Returns ``{"loss", "at_loss": the sum over
    pairs, "hard_loss"}``; learns without labels when ``ce_weight = 0`` (then no ``hard_loss``)."""

    def __init__(self, student_layers: Union[str, Sequence[str]] = "auto", teacher_layers: Union[str, Sequence[str]] = "auto",
                 beta: float = 1000.0, p: float = 2.0, ce_weight: float = 1.0) -> None:  # fmt: skip
        super().__init__()
        check_weight("beta", beta)
        check_weight("ce_weight", ce_weight)
        _check_p(p)
        self.student_layers, self.teacher_layers = student_layers, teacher_layers
        self.beta, self.p, self.ce_weight = float(beta), float(p), float(ce_weight)

    @property
    def learns_without_labels(self) -> bool:
        return self.ce_weight == 0  # the attention term alone

    def setup(self, student: nn.Module, teacher: nn.Module, inputs: torch.Tensor) -> None:
        pairs = []
        for role, model, given in (("student", student, self.student_layers), ("teacher", teacher, self.teacher_layers)):
            stages = conv_stage_names(model)
            if given == "auto" and not stages:  # an MLP: no [C, H, W] features to pair
                raise ConfigError(
                    f"loss=at needs convolutional models: the {role} ({type(model).__name__}) has no stages for loss.{role}_layers=auto "
                    "to pair; use model/teacher=cnn model/student=cnn, or name [C, H, W] layers in loss.student_layers and loss.teacher_layers"
                )
            if given == "auto" and len(stages) == 1:
                raise ConfigError(
                    f"loss.{role}_layers=auto pairs the stages after the first (the stem, as RepDistiller and mdistiller leave it out), "
                    f"and the {role} ({type(model).__name__}) has one: give it more (model.{role}.channels=[16,32] for cnn), or name "
                    "the pairs: loss.student_layers and loss.teacher_layers, lists of equal length whose layers give maps of equal "
                    "height and width (loss.student_layers=[stages.0] loss.teacher_layers=[stages.0], say)"
                )  # fmt: skip
            pairs.append(stages[1:] if given == "auto" else [given] if isinstance(given, str) else list(given))
        if len(pairs[0]) != len(pairs[1]) or not pairs[0]:
            raise ConfigError(f"loss=at pairs the student's layers {pairs[0]} with the teacher's {pairs[1]}: name as many of each (loss.student_layers, loss.teacher_layers)")
        s_shapes = feature_shapes(student, pairs[0], inputs, "student", f"loss.student_layers={self.student_layers}")
        t_shapes = feature_shapes(teacher, pairs[1], inputs, "teacher", f"loss.teacher_layers={self.teacher_layers}")
        for s_name, t_name in zip(*pairs):
            s, t = s_shapes[s_name], t_shapes[t_name]
            if len(s) != 3 or len(t) != 3 or s[1:] != t[1:]:
                raise ConfigError(
                    f"loss=at: the student's {s_name} gives {list(s)} and the teacher's {t_name} {list(t)} per example; attention "
                    "transfer needs convolutional features [C, H, W] of the same H and W (a CNN's stages, not an MLP's layers)"
                )
        self.student_features, self.teacher_features = tuple(pairs[0]), tuple(pairs[1])

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: Optional[torch.Tensor],
                student_features: dict, teacher_features: dict) -> dict[str, torch.Tensor]:  # fmt: skip
        at = sum(
            (attention_map(student_features[s], self.p) - attention_map(teacher_features[t].detach(), self.p)).pow(2).mean()
            for s, t in zip(self.student_features, self.teacher_features)
        )
        return with_cross_entropy("ATLoss", self.beta * at, {"at_loss": at}, student_logits, labels, self.ce_weight)
