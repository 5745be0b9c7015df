"""``loss=fitnet``: FitNets, hints for thin deep nets (Romero et al., ICLR 2015)."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from kdrun.errors import ConfigError
from kdrun.losses.base import DistillationLoss
from kdrun.losses.checks import check_choice, check_fraction, compute_dtype
from kdrun.losses.features import feature_shapes, stage_names
from kdrun.losses.kd import KDLoss


class FitNetLoss(DistillationLoss):
    r"""Two stages, as in the paper. First, for the first ``hint_fraction`` of the student's
    epochs, the hint: a regressor :math:`r`, trained with the student, maps the student's guided
    layer :math:`g_s` onto the teacher's hint layer :math:`h_t`,

    .. math::
        \mathcal{L}_{hint} = \frac{1}{N} \, \| r(g_s(x)) - h_t(x) \|_2^2

    (the mean over every element). Then KD (:class:`KDLoss` with ``alpha`` and ``temperature``)
    for the rest. The regressor is a linear layer for ``[B, D]`` features (MLPs) and, for
    ``[B, C, H, W]`` ones (equal H and W), a ``kernel_size`` convolution, batch norm and ReLU:
    RepDistiller's and mdistiller's ``ConvReg`` (the paper gives the regressor the hint layer's
    non-linearity; the stages ``auto`` picks end in a ReLU). ``student_layer`` /
    ``teacher_layer`` name the layers (``named_modules()``); ``auto`` takes stage number n // 2
    (from 0) of each network's n stages, or of its n hidden ReLUs for an MLP: the middle one when
    n is odd, the later of the two middle ones when n is even. For kdrun's 2-stage CNNs that is
    ``stages.1``, the last stage: ``stages.0`` is a single convolution, too shallow to guide.
    Returns ``{"loss", "hint_loss", "soft_loss", "hard_loss"}``; ``loss`` is the hint in the
    first stage and KD's total in the second.

    The hint stage lasts ``ceil(hint_fraction * E)`` of the E epochs, but always leaves the KD
    stage at least one: the classifier head learns only there (with E = 1, there is no hint).
    """

    def __init__(self, student_layer: str = "auto", teacher_layer: str = "auto", hint_fraction: float = 0.5,
                 kernel_size: int = 1, alpha: float = 0.9, temperature: float = 4.0) -> None:  # fmt: skip
        super().__init__()
        check_fraction("hint_fraction", hint_fraction)
        check_choice("kernel_size", kernel_size, (1, 3))
        self.kd = KDLoss(alpha, temperature)
        self.student_layer, self.teacher_layer = student_layer, teacher_layer
        self.hint_fraction, self.kernel_size = float(hint_fraction), int(kernel_size)
        self.hinting = True

    @property
    def learns_without_labels(self) -> bool:
        return self.kd.learns_without_labels

    def setup(self, student: nn.Module, teacher: nn.Module, inputs: torch.Tensor) -> None:
        names = []
        for role, model, given in (("student", student, self.student_layer), ("teacher", teacher, self.teacher_layer)):
            candidates = stage_names(model)
            if given == "auto" and not candidates:
                raise ConfigError(f"loss.{role}_layer=auto: the {role} has no stages or ReLUs to take a hint from; name a layer")
            names.append(candidates[len(candidates) // 2] if given == "auto" else given)
        self.student_features, self.teacher_features = (names[0],), (names[1],)
        (s_shape,) = feature_shapes(student, names[:1], inputs, "student", f"loss.student_layer={self.student_layer}").values()
        (t_shape,) = feature_shapes(teacher, names[1:], inputs, "teacher", f"loss.teacher_layer={self.teacher_layer}").values()
        if len(s_shape) == 1 and len(t_shape) == 1:
            regressor: nn.Module = nn.Linear(s_shape[0], t_shape[0])
        elif len(s_shape) == 3 and len(t_shape) == 3 and s_shape[1:] == t_shape[1:]:
            conv = nn.Conv2d(s_shape[0], t_shape[0], self.kernel_size, padding=self.kernel_size // 2)
            regressor = nn.Sequential(conv, nn.BatchNorm2d(t_shape[0]), nn.ReLU())
        else:
            raise ConfigError(
                f"loss=fitnet: the student's {names[0]} gives {list(s_shape)} and the teacher's {names[1]} {list(t_shape)} "
                "per example; a hint needs [D] and [D'], or [C, H, W] and [C', H, W] (choose loss.student_layer / loss.teacher_layer)"
            )
        self.regressor = regressor.to(inputs.device)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.hinting = epoch <= min(math.ceil(self.hint_fraction * epochs), epochs - 1)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: Optional[torch.Tensor],
                student_features: dict, teacher_features: dict) -> dict[str, torch.Tensor]:  # fmt: skip
        (guided,), (hint,) = student_features.values(), teacher_features.values()
        dtype = compute_dtype(hint.dtype)
        hint_loss = F.mse_loss(self.regressor(guided).to(dtype), hint.detach().to(dtype))
        parts = self.kd(student_logits, teacher_logits, labels)
        return {**parts, "loss": hint_loss if self.hinting else parts["loss"], "hint_loss": hint_loss}
