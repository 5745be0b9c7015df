"""The CIFAR knowledge-distillation benchmark architectures (kdrun/models/resnet.py, wrn.py, vgg.py,
mobilenetv2.py, shufflenet.py, lenet.py): their exact parameter counts against the reference
definitions (RepDistiller / CRD, Tian et al., ICLR 2020; mdistiller), a training step each, their
``stages`` features, and kdrun's feature losses (attention transfer, FitNets) on them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdrun.data import Split
from kdrun.losses import ATLoss, FitNetLoss
from kdrun.models import ARCHITECTURES, BENCHMARK_ARCHITECTURES, count_parameters, create
from kdrun.models.shufflenet import ChannelShuffle
from kdrun.train import Distillation, FitSettings, fit

CIFAR = (3, 32, 32)

# Parameters at 100 classes on 3x32x32 (lenet5: 10 classes on 1x28x28). Each equals the count of the
# reference network (RepDistiller models/*.py, identical in mdistiller/models/cifar/*.py), and rounds
# to the figures papers print (CRD, ReviewKD, DKD tables: resnet56 0.86M, resnet110 1.74M,
# resnet32x4 7.43M, wrn_40_2 2.26M, vgg13 9.46M, ResNet50 23.71M, resnet8x4 1.23M, wrn_16_2 0.70M,
# wrn_40_1 0.57M, resnet20 0.28M, resnet32 0.47M, vgg8 3.96M, MobileNetV2 0.81M, ShuffleV1 0.95M,
# ShuffleV2 1.36M).
PARAMETERS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "resnet50": 23_705_252,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "mobilenetv2": 812_836,
    "shufflev1": 949_258,
    "shufflev2": 1_355_528,
    "lenet5": 61_706,
}
NAMES = list(PARAMETERS)


def _build(name: str, input_shape=CIFAR, num_classes: int = 100) -> nn.Module:
    torch.manual_seed(0)
    return create(name, input_shape, num_classes)


def _on_meta(name: str, input_shape=CIFAR, num_classes: int = 100) -> nn.Module:
    """The network with its tensors on the meta device: shapes without storage or arithmetic,
    for counting parameters and following feature-map sizes quickly."""
    with torch.device("meta"):
        return create(name, input_shape, num_classes)


def test_every_benchmark_architecture_is_registered_and_counted():
    assert set(BENCHMARK_ARCHITECTURES) == set(PARAMETERS)
    assert all(ARCHITECTURES[name] is builder for name, builder in BENCHMARK_ARCHITECTURES.items())
    assert {"cnn", "mlp"} <= set(ARCHITECTURES)


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_is_the_reference_networks(name):
    shape, classes = ((1, 28, 28), 10) if name == "lenet5" else (CIFAR, 100)
    assert count_parameters(_on_meta(name, shape, classes)) == PARAMETERS[name]


def test_multiply_adds_count_each_linear_and_convolution_once_per_output():
    from kdrun.models import CNN, LeNet5, MLP, multiply_adds

    mlp = MLP((20,), 10, [512, 512], dropout=0.5)
    assert multiply_adds(mlp, torch.randn(1, 20)) == 20 * 512 + 512 * 512 + 512 * 10 and mlp.training  # its mode left as it was
    # LeNet-5 on 28x28: 6 maps of 28x28 from 5x5 kernels, 16 of 10x10 from 6x5x5, then 400-120-84-10
    assert multiply_adds(LeNet5((1, 28, 28), 10), torch.randn(1, 1, 28, 28)) == 6 * 28 * 28 * 25 + 16 * 10 * 10 * 150 + 400 * 120 + 120 * 84 + 84 * 10
    grouped = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.Flatten(), nn.Linear(8 * 5 * 5, 3))
    assert multiply_adds(grouped, torch.randn(1, 4, 5, 5)) == 8 * 5 * 5 * 2 * 9 + 200 * 3
    assert multiply_adds(CNN((1, 8, 8), 10, (8, 16)), torch.randn(2, 1, 8, 8)) == 8 * 64 * 9 + 16 * 16 * 8 * 9 + 16 * 10  # per example

    class Squeezing(nn.Module):  # a user's model that cannot take a batch of one, as kdrun's check allows
        def __init__(self) -> None:
            super().__init__()
            self.hidden, self.out = nn.Linear(16, 1), nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(x * self.hidden(x).squeeze().unsqueeze(1))  # a batch of one: squeezed to a scalar

    assert multiply_adds(Squeezing(), torch.randn(2, 16)) == 16 + 160


def test_threads_follow_a_steps_work_not_the_parameter_count():
    """LeNet-5 (62k parameters) at batch 128 trained 1.9x faster on two threads than on one
    (benchmarks); the default MLPs at batch 32 are faster and steadier on one."""
    from kdrun.experiment import DEFAULT_THREADS, SMALL_STEP_MULTIPLY_ADDS, choose_threads
    from kdrun.models import LeNet5, multiply_adds

    lenet_step = 128 * multiply_adds(LeNet5((1, 28, 28), 10), torch.randn(1, 1, 28, 28))
    assert choose_threads(None, lenet_step) == max(1, DEFAULT_THREADS) and lenet_step > SMALL_STEP_MULTIPLY_ADDS
    assert choose_threads(None, 32 * (20 * 512 + 512 * 512 + 512 * 10)) == 1
    assert choose_threads(3, lenet_step) == 3 and choose_threads(2, 1) == 2  # trainer.threads decides when given


def test_counting_on_the_meta_device_counts_the_real_network():
    assert count_parameters(_build("resnet8x4")) == PARAMETERS["resnet8x4"]


def test_only_the_classifier_depends_on_the_number_of_classes():
    for name, features in (("resnet32x4", 256), ("wrn_40_2", 128), ("vgg13", 512), ("mobilenetv2", 1280), ("shufflev2", 1024), ("resnet50", 2048)):
        assert count_parameters(_on_meta(name, CIFAR, 10)) == PARAMETERS[name] - 90 * (features + 1), name


class Step:
    """One training step of a network on a batch of 2 CIFAR-sized images: the logits, and the
    outputs of ``stages.N`` and ``stages.N.preact`` that forward hooks saw, in the order they ran."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.model = _build(name).train()
        self.stage_names = [f"stages.{i}" for i in range(len(self.model.stages))]
        self.preact_names = [f"stages.{i}.preact" for i, stage in enumerate(self.model.stages) if hasattr(stage, "preact")]
        self.outputs: dict[str, torch.Tensor] = {}
        self.order: list[str] = []
        modules = dict(self.model.named_modules())
        handles = [modules[n].register_forward_hook(self._recorder(n)) for n in self.stage_names + self.preact_names]
        try:
            x, y = torch.randn(2, *CIFAR, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 97])
            self.logits = self.model(x)
            F.cross_entropy(self.logits, y).backward()
        finally:
            for handle in handles:
                handle.remove()

    def _recorder(self, name: str):
        def record(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            self.outputs[name] = output.detach()
            self.order.append(name)

        return record


@pytest.fixture(scope="module", params=NAMES)
def step(request) -> Step:
    return Step(request.param)


def test_a_training_step_runs_forward_and_backward(step):
    assert step.logits.shape == (2, 100) and torch.isfinite(step.logits).all()
    missing = [n for n, p in step.model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient reached {missing}"
    assert all(torch.isfinite(p.grad).all() for p in step.model.parameters())


def test_stages_give_feature_maps_of_decreasing_size_in_order(step):
    assert isinstance(step.model.stages, nn.ModuleList) and len(step.stage_names) >= 2
    assert [n for n in step.order if n in step.stage_names] == step.stage_names  # each stage ran once, in order
    sizes = []
    for name in step.stage_names:
        output = step.outputs[name]
        assert output.dim() == 4 and output.shape[0] == 2, (name, tuple(output.shape))
        sizes.append(tuple(output.shape[2:]))
    assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in zip(sizes, sizes[1:])), sizes
    assert sizes[-1][0] < sizes[0][0], sizes


def test_preact_hooks_give_each_stage_before_its_last_relu(step):
    """``stages.N.preact``: the residual stages (all but the stem) of the ResNets and ShuffleNets
    and every VGG block; none for the pre-activation WRNs, the linear-bottleneck MobileNetV2 and
    LeNet-5, whose stage outputs the references use as they are."""
    expected = {"resnet": 1, "shuffle": 1, "vgg": 0}
    first = next((v for k, v in expected.items() if step.name.startswith(k)), None)
    if first is None:
        assert not step.preact_names
        return
    assert step.preact_names == [f"{n}.preact" for n in step.stage_names[first:]]
    for name in step.stage_names[first:]:
        out, pre = step.outputs[name], step.outputs[f"{name}.preact"]
        assert pre.shape == out.shape and (pre < 0).any()  # not yet rectified
        rectified = F.relu(pre)
        if step.name == "shufflev2":  # its units shuffle the channels after the ReLU; the preact is unshuffled
            rectified = ChannelShuffle(2)(rectified)
        torch.testing.assert_close(out, rectified, rtol=0, atol=0)


def _stage_shapes(model: nn.Module, x: torch.Tensor) -> list[tuple[int, ...]]:
    """The shapes (batch dropped) of the stages' outputs on ``x``."""
    shapes: list[tuple[int, ...]] = []
    handles = [stage.register_forward_hook(lambda m, a, out: shapes.append(tuple(out.shape[1:])) and None) for stage in model.stages]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


# The stages' outputs [C, H, W] on 32x32 images: the reference's feature maps.
STAGE_SHAPES = {
    "resnet8x4": [(32, 32), (64, 32), (128, 16), (256, 8)],
    "resnet56": [(16, 32), (16, 32), (32, 16), (64, 8)],
    "resnet50": [(64, 32), (256, 32), (512, 16), (1024, 8), (2048, 4)],
    "wrn_40_2": [(16, 32), (32, 32), (64, 16), (128, 8)],
    "vgg13": [(64, 32), (128, 16), (256, 8), (512, 4), (512, 4)],
    "mobilenetv2": [(16, 16), (12, 16), (16, 8), (48, 4), (160, 2)],
    "shufflev1": [(24, 32), (240, 16), (480, 8), (960, 4)],
    "shufflev2": [(24, 32), (116, 16), (232, 8), (464, 4)],
    "lenet5": [(6, 16), (16, 6)],
}


@pytest.mark.parametrize("name", list(STAGE_SHAPES))
def test_stage_shapes_are_the_reference_feature_maps(name):
    shapes = _stage_shapes(_on_meta(name), torch.empty(2, *CIFAR, device="meta"))
    assert shapes == [(c, s, s) for c, s in STAGE_SHAPES[name]]


def test_wrn_preact_features_are_the_next_batch_norms_outputs():
    """A pre-activation network: the stages end in residual sums; the reference's preact features
    are those through the next batch norm, hooked at stages.2.0.bn1, stages.3.0.bn1 and norm."""
    model = _build("wrn_16_1").eval()
    pairs = {"stages.1": "stages.2.0.bn1", "stages.2": "stages.3.0.bn1", "stages.3": "norm"}
    modules = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    for name in [*pairs, *pairs.values()]:
        modules[name].register_forward_hook(lambda m, a, out, name=name: outputs.__setitem__(name, out))
    with torch.no_grad():
        model(torch.randn(2, *CIFAR))
        for stage, norm in pairs.items():
            assert isinstance(modules[norm], nn.BatchNorm2d)
            torch.testing.assert_close(modules[norm](outputs[stage]), outputs[norm])


# One network of each family (the others differ only in depth or width).
FAMILIES = ["resnet8", "resnet50", "wrn_16_1", "vgg8", "mobilenetv2", "shufflev1", "shufflev2", "lenet5"]


@pytest.mark.parametrize("name", FAMILIES)
def test_other_image_sizes_and_channel_counts(name):
    assert _on_meta(name, (1, 28, 28), 10)(torch.empty(2, 1, 28, 28, device="meta")).shape == (2, 10)
    assert _on_meta(name, (4, 20, 24), 7)(torch.empty(2, 4, 20, 24, device="meta")).shape == (2, 7)


def test_a_real_step_on_one_channel_28_pixel_images():
    model = _build("resnet8", (1, 28, 28), 10).train()
    F.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([0, 9])).backward()
    assert model.stages[0][0].weight.grad.abs().sum() > 0


def test_vgg_pools_before_its_last_block_on_64_pixel_images_as_the_reference():
    model = _on_meta("vgg8", (3, 64, 64), 200)
    assert [s[1] for s in _stage_shapes(model, torch.empty(2, 3, 64, 64, device="meta"))] == [64, 32, 16, 8, 4]
    assert count_parameters(model) == PARAMETERS["vgg8"] + 100 * 513  # the pooling has no parameters


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("shape", [(784,), (3, 32), (3, 32, 32, 1), (0, 32, 32)])
def test_non_image_input_shapes_raise_value_error(name, shape):
    with pytest.raises(ValueError, match=r"needs images \[channels, height, width\]|at least 1"):
        _on_meta(name, shape, 10)


@pytest.mark.parametrize("name, shape", [("vgg8", (3, 4, 4)), ("lenet5", (1, 8, 8))])
def test_images_too_small_for_the_poolings_raise_value_error(name, shape):
    with pytest.raises(ValueError, match="needs images of at least"):
        _on_meta(name, shape, 10)


def _fit(student: nn.Module, teacher: nn.Module, loss: nn.Module, epochs: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, *CIFAR, generator=generator), torch.randint(0, 100, (2,), generator=generator)
    settings = FitSettings(epochs=epochs, batch_size=2, optimizer="sgd", lr=0.01, weight_decay=0.0, batch_seed=0)
    return fit(student, Split(x, y), Split(x, y), settings, "distilled", Distillation(loss, teacher))


def test_attention_transfer_auto_trains_resnet8x4_from_resnet32x4():
    """kdrun's training loop with loss=at's auto layers: every stage pair but the stems (as
    RepDistiller and mdistiller pair them), all of equal size."""
    teacher, student = _build("resnet32x4"), _build("resnet8x4")
    before = student.stages[1].body[0].conv1.weight.detach().clone()
    loss = ATLoss()
    (row,) = _fit(student, teacher, loss, epochs=1)
    assert loss.student_features == loss.teacher_features == ("stages.1", "stages.2", "stages.3")
    assert row["at_loss"] > 0 and torch.isfinite(torch.tensor(row["train_loss"]))
    assert not torch.equal(student.stages[1].body[0].conv1.weight, before)


def test_fitnet_auto_hints_wrn_16_2_from_wrn_40_2():
    """kdrun's training loop with loss=fitnet's auto layers: the middle stage of each WRN."""
    teacher, student = _build("wrn_40_2"), _build("wrn_16_2")
    loss = FitNetLoss()
    rows = _fit(student, teacher, loss, epochs=2)  # the first epoch is the hint stage
    assert (loss.student_features, loss.teacher_features) == (("stages.2",), ("stages.2",))
    conv, norm, relu = loss.regressor  # RepDistiller's and mdistiller's ConvReg
    assert isinstance(conv, nn.Conv2d) and (conv.in_channels, conv.out_channels, conv.kernel_size) == (64, 64, (1, 1))
    assert isinstance(norm, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    assert rows[0]["train_loss"] == pytest.approx(rows[0]["hint_loss"]) and rows[0]["hint_loss"] > 0
    assert all(torch.isfinite(torch.tensor(row["train_loss"])) for row in rows)
