"""Optimisers and learning-rate schedules for the training loops.

Adam and AdamW call PyTorch's fused kernels (``torch._fused_adam_`` / ``torch._fused_adamw_``)
directly: the same arithmetic as ``torch.optim.Adam(fused=True)`` (bit for bit, checked in the
tests), without ``torch.optim.Optimizer``, whose first use imports ``torch._dynamo`` (about a
second; benchmarks/README.md). Where the fused kernel is missing (old torch, some devices) or for SGD,
``torch.optim`` is used.
"""

from __future__ import annotations

import math
from typing import Iterable, Protocol, Sequence

import torch


class Optimizer(Protocol):
    def zero_grad(self, set_to_none: bool = True) -> None: ...
    def step(self) -> None: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state_dict: dict) -> None: ...


class FusedAdam:
    """Adam (or AdamW with ``decoupled_weight_decay=True``) through PyTorch's fused kernel."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
    ) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self._kernel = torch._fused_adamw_ if decoupled_weight_decay else torch._fused_adam_
        self.exp_avgs = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sqs = [torch.zeros_like(p) for p in self.params]
        # One step counter shared by every parameter (the kernel only reads it): one add per step
        # instead of a foreach add over one tensor per parameter.
        self.step_count = torch.zeros((), dtype=torch.float32, device=self.params[0].device if self.params else None)
        self.steps = [self.step_count] * len(self.params)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        """The moments and step counts (for checkpoints; not torch.optim's layout)."""
        shared = bool(self.steps) and self.steps[0] is self.step_count
        return {"exp_avgs": self.exp_avgs, "exp_avg_sqs": self.exp_avg_sqs, "steps": self.steps, "shared_step": shared}

    @torch.no_grad()
    def load_state_dict(self, state_dict: dict) -> None:
        torch._foreach_copy_(self.exp_avgs, state_dict["exp_avgs"])
        torch._foreach_copy_(self.exp_avg_sqs, state_dict["exp_avg_sqs"])
        if state_dict["shared_step"]:
            self.step_count.copy_(state_dict["steps"][0])
            self.steps = [self.step_count] * len(self.params)
        else:
            self.steps = [step.clone() for step in state_dict["steps"]]

    @torch.no_grad()
    def step(self) -> None:
        params, grads = self.params, [p.grad for p in self.params]
        exp_avgs, exp_avg_sqs = self.exp_avgs, self.exp_avg_sqs
        if any(grad is None for grad in grads):
            # As torch.optim: a parameter without a gradient is left alone and its step count
            # stays; from now on each parameter counts its own steps.
            if self.steps and self.steps[0] is self.step_count:
                self.steps = [self.step_count.clone() for _ in self.params]
            kept = [i for i, grad in enumerate(grads) if grad is not None]
            params, grads, exp_avgs, exp_avg_sqs, steps = ([items[i] for i in kept] for items in (params, grads, exp_avgs, exp_avg_sqs, self.steps))
            if not kept:
                return
            torch._foreach_add_(steps, 1)
        elif self.steps and self.steps[0] is self.step_count:
            self.step_count += 1
            steps = self.steps
        else:
            steps = self.steps
            torch._foreach_add_(steps, 1)
        self._kernel(
            params,
            grads,
            exp_avgs,
            exp_avg_sqs,
            [],
            steps,
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=self.weight_decay,
            eps=self.eps,
            amsgrad=False,
            maximize=False,
        )


def _torch_version() -> tuple[int, int]:
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def _fused_adam_supported(device: torch.device) -> bool:
    # The CPU kernel arrived in torch 2.4; CUDA has had it since 2.0.
    return hasattr(torch, "_fused_adam_") and (device.type == "cuda" or (device.type == "cpu" and _torch_version() >= (2, 4)))


def make_optimizer(
    params: Iterable[torch.nn.Parameter],
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    fused: bool = True,
) -> Optimizer:
    """``name`` is adam, adamw or sgd (checked by the config); ``momentum`` and ``nesterov`` are
    SGD's. ``fused=False``: torch.optim's Adam, as a gradient scaler needs."""
    params = [p for p in params if p.requires_grad]
    device = params[0].device if params else torch.device("cpu")
    if name in ("adam", "adamw") and fused and _fused_adam_supported(device):
        return FusedAdam(params, lr=lr, weight_decay=weight_decay, decoupled_weight_decay=name == "adamw")
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


def learning_rate(base: float, epoch: int, epochs: int, schedule: str = "none", milestones: Sequence[int] = (),
                  gamma: float = 0.1, warmup_epochs: int = 0) -> float:  # fmt: skip
    """The learning rate of ``epoch`` (1-based, of ``epochs``), set at its start: a linear rise
    over the first ``warmup_epochs`` (base * epoch / warmup_epochs), then ``schedule``: none
    (base); multistep (base * gamma^k after k milestones: epoch 151 of milestones [150, ...] has
    gamma, as in the CIFAR distillation benchmarks); cosine (from base down towards 0 over the
    epochs after the warm-up, base * (1 + cos(pi * t)) / 2 with t = (epoch - warmup - 1) /
    (epochs - warmup))."""
    if epoch <= warmup_epochs:
        return base * epoch / warmup_epochs
    if schedule == "multistep":
        return base * gamma ** sum(epoch > milestone for milestone in milestones)
    if schedule == "cosine":
        t = (epoch - warmup_epochs - 1) / max(1, epochs - warmup_epochs)
        return base * (1 + math.cos(math.pi * t)) / 2
    return base


def set_learning_rate(optimizer: Optimizer, lr: float) -> None:
    if isinstance(optimizer, FusedAdam):
        optimizer.lr = lr
    else:
        for group in optimizer.param_groups:  # type: ignore[attr-defined]
            group["lr"] = lr
