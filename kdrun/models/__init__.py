"""The networks: built-in architectures by name, any ``nn.Module`` a config's ``_target_`` builds,
and checkpoints that rebuild their model from the file alone.

An architecture is called with keyword arguments ``input_shape`` (one example's shape, e.g.
``(784,)`` or ``(3, 32, 32)``) and ``num_classes``, plus its own settings, and returns a module
mapping ``[B, *input_shape]`` to ``[B, num_classes]`` logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import torch
from torch import nn

from kdrun.errors import ConfigError
from kdrun.models.cnn import CNN
from kdrun.models.lenet import LeNet5, lenet5
from kdrun.models.mlp import MLP
from kdrun.models.mobilenetv2 import MobileNetV2, mobilenetv2
from kdrun.models.resnet import (
    CifarResNet, ResNet, resnet8, resnet8x4, resnet14, resnet20, resnet32, resnet32x4, resnet44, resnet50, resnet56, resnet110,
)  # fmt: skip
from kdrun.models.shufflenet import ShuffleNetV1, ShuffleNetV2, shufflev1, shufflev2
from kdrun.models.vgg import VGG, vgg8, vgg11, vgg13, vgg16, vgg19
from kdrun.models.wrn import WideResNet, wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2

# The CIFAR knowledge-distillation benchmark's networks (RepDistiller / CRD, mdistiller), by option name.
BENCHMARK_ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "resnet8": resnet8, "resnet14": resnet14, "resnet20": resnet20, "resnet32": resnet32, "resnet44": resnet44,
    "resnet56": resnet56, "resnet110": resnet110, "resnet8x4": resnet8x4, "resnet32x4": resnet32x4, "resnet50": resnet50,
    "wrn_16_1": wrn_16_1, "wrn_16_2": wrn_16_2, "wrn_40_1": wrn_40_1, "wrn_40_2": wrn_40_2,
    "vgg8": vgg8, "vgg11": vgg11, "vgg13": vgg13, "vgg16": vgg16, "vgg19": vgg19,
    "mobilenetv2": mobilenetv2, "shufflev1": shufflev1, "shufflev2": shufflev2,
    "lenet5": lenet5,
}  # fmt: skip

__all__ = [
    "ARCHITECTURES", "BENCHMARK_ARCHITECTURES", "CNN", "MLP", "Standardized", "count_parameters", "create", "load", "multiply_adds", "named_layers", "watch_forward",
    "CifarResNet", "LeNet5", "MobileNetV2", "ResNet", "ShuffleNetV1", "ShuffleNetV2", "VGG", "WideResNet",
    *BENCHMARK_ARCHITECTURES,
]  # fmt: skip

# Option name (conf/model/{teacher,student}/<name>.yaml) -> what builds it.
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"cnn": CNN, "mlp": MLP, **BENCHMARK_ARCHITECTURES}


def create(name: str, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 100, **settings: Any) -> nn.Module:
    """A built-in architecture by its option name, e.g. ``create("mlp", (784,), 10, hidden=[64])``."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[name](input_shape=tuple(input_shape), num_classes=num_classes, **settings)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def named_layers(model: nn.Module, names: Sequence[str], role: str, setting: str) -> dict[str, nn.Module]:
    """``model``'s submodules by these names (``named_modules()``'s); a name it lacks is one
    ConfigError naming ``setting`` (what chose the names) and the layers the ``role`` has."""
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        known = ", ".join(name for name in modules if name) or "none"
        raise ConfigError(f"{setting}: the {role} has no layer {', '.join(missing)}; its layers: {known}")
    return {name: modules[name] for name in names}


def watch_forward(model: nn.Module, inputs: torch.Tensor, layers: Iterable[nn.Module], seen: Callable[[nn.Module, torch.Tensor], None]) -> None:
    """Run ``inputs`` through ``model`` once, in eval mode and without gradients, calling
    ``seen(layer, output)`` for each of ``layers`` as it runs; the model's mode is left as it was."""
    hooks = [layer.register_forward_hook(lambda layer, args, output: seen(layer, output)) for layer in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(inputs)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()


def multiply_adds(model: nn.Module, examples: torch.Tensor) -> int:
    """The multiply-adds of the model's Linear layers and 2-d convolutions per example, counted
    in an eval-mode forward pass of ``examples``, a batch (kdrun passes two: some models cannot
    take a batch of one): the work of a training step, per example."""
    counts: list[int] = []

    def count(layer: nn.Module, output: torch.Tensor) -> None:
        if isinstance(layer, nn.Linear):
            counts.append(output.numel() * layer.in_features)
        else:
            counts.append(output.numel() * (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1])

    watch_forward(model, examples, [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))], count)
    return sum(counts) // max(1, len(examples))


class Standardized(nn.Module):
    """A trained network with the input scaling it was trained with in front: takes the inputs
    as the dataset's loader gives them (uint8 images are scaled to [0, 1] first, as kdrun's data
    layer does), subtracts ``mean`` and divides by ``std``. ``.model`` is the network itself."""

    def __init__(self, model: nn.Module, mean: Union[float, Sequence[float]], std: Union[float, Sequence[float]]) -> None:
        super().__init__()
        self.model = model
        # one value, or one per channel of [B, C, H, W] images
        shape = (-1, 1, 1) if isinstance(mean, (list, tuple)) else ()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x
        return self.model((x - self.mean) / self.std)


def load(path: Union[str, Path], map_location: Union[str, torch.device] = "cpu", raw_inputs: bool = True) -> nn.Module:
    """The model saved in a kdrun checkpoint (``teacher.pt``, ``distilled.pt``, ``baseline.pt``),
    rebuilt from what the file records (``ckpt["model"]``: the ``_target_`` that built it and its
    arguments) and loaded with its weights, in eval mode. The module named by ``_target_`` must be
    importable. The model comes wrapped in ``Standardized`` and takes raw inputs, as the dataset's
    loader returns them (uint8 images scaled to [0, 1], then standardised as the run did, per
    ``ckpt["normalization"]``); ``raw_inputs=False`` gives the bare network, which expects inputs
    as training fed them."""
    from kdrun.config import instantiate

    checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    spec = dict(checkpoint["model"])
    data_arguments = {"input_shape": tuple(spec.pop("input_shape"))} if "input_shape" in spec else {}  # a tuple, as in training
    try:
        model = instantiate(spec, "model", **data_arguments)
    except ConfigError as error:  # its _target_ cannot be imported here, say
        raise ConfigError(f"{path}: {error}") from None
    model.load_state_dict(checkpoint["state_dict"])
    normalization = checkpoint.get("normalization") or {"mean": 0.0, "std": 1.0}
    if raw_inputs:
        model = Standardized(model, normalization["mean"], normalization["std"]).to(map_location)
    return model.eval()
