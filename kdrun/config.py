"""The settings: typed schemas for Hydra's ConfigStore, the value checks run before any work,
and the one way kdrun builds an object from a config node's ``_target_``.

The YAML files in ``conf/`` hold the values; the dataclasses here hold the types of the built-in
options, so that a wrong type (``loss.alpha=abc``) or a misspelt key fails while Hydra composes
the config. Each schema checks its own ranges (``check``), naming the full key the user types.
A user's own option (a YAML file with a ``_target_`` and no schema) is checked by its own code.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import importlib
import inspect
import json
import math
import os
import pkgutil
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Union

from omegaconf import MISSING, DictConfig, OmegaConf

from kdrun.errors import ConfigError
from kdrun.run_files import RESULT_UNCHANGED_KEYS, natural_order


def _fail(key: str, value: object, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_int_at_least(key: str, value: Optional[int], low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        _fail(key, value, f"an integer >= {low}")


def _check_seed(key: str, value: int) -> None:
    """torch's CPU generator takes 32 bits of a seed: 2**32 would repeat seed 0."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**32:
        _fail(key, value, "an integer in [0, 4294967295] (torch's generator takes 32 bits of a seed)")


def _check_fraction(key: str, value: float) -> None:
    if not (_finite(value) and 0 < value < 1):
        _fail(key, value, "a number in (0, 1)")


def _setting(default: Any, meaning: str) -> Any:
    """A schema field with its one line of meaning (``kdrun train --help`` prints it)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": meaning})
    return field(default=default, metadata={"help": meaning})


# --------------------------------------------------------------------------- datasets


@dataclass
class DataConf:
    """Settings every dataset shares: its name, the held-out split and the students' transfer set.
    A user's dataset YAML gets these defaults without naming them."""

    name: Optional[str] = _setting(None, "shown in logs and summary.csv (null: the loader's _target_)")
    val_fraction: float = _setting(0.15, "the validation part, in (0, 1), stratified")
    test_fraction: float = _setting(0.15, "the test part, in (0, 1), where the data has no published test split")
    split_seed: int = _setting(0, "the split's seed (fixed while trainer.seed varies)")
    normalize: bool = _setting(True, "standardise inputs with the training split's mean and std")
    transfer_size: Optional[float] = _setting(
        None, "the students learn from this many (int) or this fraction of the training examples (null: all)"
    )
    transfer_labels: bool = _setting(True, "false: the distilled student learns from the teacher alone, no baseline")
    augment: bool = _setting(False, "random crops (4-pixel padding) and horizontal flips of training images; both students get the same draws")
    published_test: ClassVar[bool] = False  # the data has its own test split, so test_fraction is unused

    def check(self, key: str) -> None:
        _check_fraction(f"{key}.val_fraction", self.val_fraction)
        _check_fraction(f"{key}.test_fraction", self.test_fraction)
        if self.val_fraction + self.test_fraction >= 1 and not self.published_test:
            _fail(
                f"{key}.val_fraction + {key}.test_fraction",
                self.val_fraction + self.test_fraction,
                "the two fractions must sum to less than 1, leaving data to train on",
            )
        _check_seed(f"{key}.split_seed", self.split_seed)
        ts = self.transfer_size
        if ts is not None and not (_finite(ts) and (0 < ts <= 1 or (ts > 1 and float(ts).is_integer()))):
            _fail(f"{key}.transfer_size", ts, "null (the whole training split), a fraction in (0, 1], or a whole count > 1")


DATA_KEYS = tuple(f.name for f in dataclasses.fields(DataConf))


@dataclass
class SyntheticDataConf(DataConf):
    _target_: str = "kdrun.data.synthetic.make_synthetic"
    name: Optional[str] = _setting("synthetic", "shown in logs and summary.csv")
    n_samples: int = _setting(500, "examples drawn")
    input_dim: int = _setting(784, "features per example")
    num_classes: int = _setting(10, "classes")
    signal_scale: float = _setting(0.5, "the class signal's scale (smaller: harder)")
    seed: int = _setting(42, "the data's own seed (the notebook's: 42)")
    normalize: bool = _setting(False, "standardise inputs with the training split's mean and std")

    def check(self, key: str) -> None:
        super().check(key)
        _check_int_at_least(f"{key}.n_samples", self.n_samples, 2)
        _check_int_at_least(f"{key}.input_dim", self.input_dim, 1)
        _check_int_at_least(f"{key}.num_classes", self.num_classes, 2)
        _check_seed(f"{key}.seed", self.seed)
        if not (_finite(self.signal_scale) and self.signal_scale >= 0):
            _fail(f"{key}.signal_scale", self.signal_scale, "a finite number >= 0")


@dataclass
class DigitsDataConf(DataConf):
    _target_: str = "kdrun.data.digits.load_digits"
    name: Optional[str] = _setting("digits", "shown in logs and summary.csv")


@dataclass
class IdxDataConf(DataConf):
    """MNIST-format IDX files with a published train/test split: val is carved from train."""

    published_test: ClassVar[bool] = True

    _target_: str = "kdrun.data.idx.load_mnist"
    name: Optional[str] = _setting("mnist", "shown in logs and summary.csv")
    root: str = _setting("data", "the folder holding the IDX files (or <root>/MNIST/raw/)")
    val_fraction: float = _setting(1 / 12, "the validation part of the training split (1/12: 5,000 of 60,000)")


@dataclass
class CifarDataConf(DataConf):
    """CIFAR-10 / CIFAR-100's python-version files with the published train/test split: val is carved from train."""

    published_test: ClassVar[bool] = True

    _target_: str = "kdrun.data.cifar.load_cifar100"
    name: Optional[str] = _setting("cifar100", "shown in logs and summary.csv")
    root: str = _setting("data", "the folder holding cifar-100-python/ or cifar-100-python.tar.gz (cifar-10-... for CIFAR-10)")
    val_fraction: float = _setting(0.1, "the validation part of the training split (0.1: 5,000 of 50,000)")
    augment: bool = _setting(True, "random crops (4-pixel padding) and horizontal flips of training images; both students get the same draws")


# --------------------------------------------------------------------------- models


@dataclass
class ModelConf:
    """What every built-in architecture's config has besides its own settings."""

    checkpoint: Optional[str] = _setting(
        None, "teacher only: a weights file (.pt, .pth, .safetensors) loaded into this network instead of training it"
    )


@dataclass
class ArchitectureConf(ModelConf):
    """A benchmark architecture: no settings of its own (its _target_ builds it)."""

    _target_: str = MISSING

    def check(self, key: str) -> None:
        pass


@dataclass
class MLPConf(ModelConf):
    _target_: str = "kdrun.models.MLP"
    hidden: List[int] = _setting([], "hidden layer widths, e.g. [256,256] (inputs and classes come from the data)")
    dropout: float = _setting(0.0, "dropout after each hidden layer, in [0, 1)")

    def check(self, key: str) -> None:
        for size in self.hidden:
            if size is None or size < 1:
                _fail(f"{key}.hidden", list(self.hidden), "a list of layer widths, each >= 1 (e.g. [256, 256])")
        if not (_finite(self.dropout) and 0 <= self.dropout < 1):
            _fail(f"{key}.dropout", self.dropout, "a number in [0, 1)")


@dataclass
class CNNConf(ModelConf):
    _target_: str = "kdrun.models.CNN"
    channels: List[int] = _setting([16, 32], "each stage's width (3x3 conv, batch norm, ReLU, 2x2 max pool)")
    dropout: float = _setting(0.0, "dropout before the last linear layer, in [0, 1)")

    def check(self, key: str) -> None:
        if not self.channels or any(c is None or c < 1 for c in self.channels):
            _fail(f"{key}.channels", list(self.channels), "a list of widths, each >= 1 (e.g. [16, 32])")
        if not (_finite(self.dropout) and 0 <= self.dropout < 1):
            _fail(f"{key}.dropout", self.dropout, "a number in [0, 1)")


@dataclass
class ModelPairConf:
    """The two architectures, each an option of its own group (model/teacher, model/student)."""

    teacher: Any = MISSING
    student: Any = MISSING
    recipe_lr: float = _setting(
        0.05, "the CIFAR benchmark recipe's learning rate for this pair (experiment=cifar100_kd): 0.05, 0.01 for MobileNetV2 and ShuffleNet students"
    )
    recipe_dkd_beta: float = _setting(
        8.0, "loss=dkd's beta for this pair in DKD's paper: 8; 2 for resnet56 -> resnet20 and resnet110 -> resnet32, "
        "6 for wrn_40_2 -> wrn_16_2 or wrn_40_1 and vgg13 -> vgg8 or mobilenetv2"
    )


# --------------------------------------------------------------------------- losses


def _check_weight(key: str, value: float) -> None:
    if not (_finite(value) and value >= 0):
        _fail(key, value, "a finite number >= 0")


def _check_some_weight(key: str, names: tuple[str, ...], loss: Any) -> None:
    if all(getattr(loss, name) == 0 for name in names):  # the loss would be 0 whatever the student does
        _fail(f"{key}.{names[-1]}", 0, f"above 0, or {' or '.join(f'{key}.{n}' for n in names[:-1])} above 0: with every weight 0 the student learns nothing")


def _check_temperature(key: str, value: float) -> None:
    if not (_finite(value) and value > 0):
        _fail(key, value, "a finite number > 0")


@dataclass
class AlphaLossConf:
    """A teacher's term weighted by alpha against the cross-entropy (kd, reverse_kl, js)."""

    _target_: str = MISSING
    alpha: float = _setting(0.7, "weight of the teacher's term, in [0, 1] (the rest: cross-entropy with the labels)")
    temperature: float = _setting(3.0, "softmax temperature T > 0")

    def check(self, key: str) -> None:
        if not (_finite(self.alpha) and 0 <= self.alpha <= 1):
            _fail(f"{key}.alpha", self.alpha, "a number in [0, 1] (the weight of the teacher's soft targets)")
        _check_temperature(f"{key}.temperature", self.temperature)


@dataclass
class KDLossConf(AlphaLossConf):
    _target_: str = "kdrun.losses.KDLoss"
    standardize: bool = _setting(False, "z-score both logits before the softmax (Sun et al. 2024)")


@dataclass
class ReverseKLLossConf(AlphaLossConf):
    _target_: str = "kdrun.losses.ReverseKLLoss"


@dataclass
class JSLossConf(AlphaLossConf):
    _target_: str = "kdrun.losses.JSLoss"


@dataclass
class MSELogitsLossConf:
    _target_: str = "kdrun.losses.MSELogitsLoss"
    alpha: float = _setting(1.0, "weight of the logits' squared difference, in [0, 1] (the rest: cross-entropy)")

    def check(self, key: str) -> None:
        if not (_finite(self.alpha) and 0 <= self.alpha <= 1):
            _fail(f"{key}.alpha", self.alpha, "a number in [0, 1]")


@dataclass
class DKDLossConf:
    _target_: str = "kdrun.losses.DKDLoss"
    alpha: float = _setting(1.0, "weight of TCKD, the target-class part")
    beta: float = _setting(8.0, "weight of NCKD, the non-target-class part")
    temperature: float = _setting(4.0, "softmax temperature T > 0")
    warmup_epochs: Optional[int] = _setting(
        None, "epochs over which the DKD term ramps up linearly (null: 1/12 of the run, the paper's 20 of 240; 0: none)"
    )
    ce_weight: float = _setting(1.0, "weight of the cross-entropy with the labels")

    def check(self, key: str) -> None:
        for name in ("alpha", "beta", "ce_weight"):
            _check_weight(f"{key}.{name}", getattr(self, name))
        _check_some_weight(key, ("alpha", "beta", "ce_weight"), self)
        _check_temperature(f"{key}.temperature", self.temperature)
        _check_int_at_least(f"{key}.warmup_epochs", self.warmup_epochs, 0, allow_none=True)


@dataclass
class DISTLossConf:
    _target_: str = "kdrun.losses.DISTLoss"
    beta: float = _setting(2.0, "weight of the inter-class relation (per example)")
    gamma: float = _setting(2.0, "weight of the intra-class relation (per class, across the batch)")
    temperature: float = _setting(1.0, "softmax temperature T > 0")
    ce_weight: float = _setting(1.0, "weight of the cross-entropy with the labels (0: learns without labels)")

    def check(self, key: str) -> None:
        for name in ("beta", "gamma", "ce_weight"):
            _check_weight(f"{key}.{name}", getattr(self, name))
        _check_some_weight(key, ("beta", "gamma", "ce_weight"), self)
        _check_temperature(f"{key}.temperature", self.temperature)


@dataclass
class FitNetLossConf:
    _target_: str = "kdrun.losses.FitNetLoss"
    student_layer: str = _setting(
        "auto", "the student's guided layer (a name from named_modules(); auto: stage n//2 of its n stages or hidden ReLUs)"
    )
    teacher_layer: str = _setting("auto", "the teacher's hint layer (auto: stage n//2 of its n stages or hidden ReLUs)")
    hint_fraction: float = _setting(0.5, "the share of the student's epochs spent on the hint before KD, in (0, 1); KD gets at least one")
    kernel_size: int = _setting(1, "the regressor's convolution for [C, H, W] features: 1 or 3")
    alpha: float = _setting(0.9, "KD stage: weight of the teacher's soft targets, in [0, 1]")
    temperature: float = _setting(4.0, "KD stage: softmax temperature T > 0")

    def check(self, key: str) -> None:
        _check_fraction(f"{key}.hint_fraction", self.hint_fraction)
        if self.kernel_size not in (1, 3):
            _fail(f"{key}.kernel_size", self.kernel_size, "1 or 3")
        if not (_finite(self.alpha) and 0 <= self.alpha <= 1):
            _fail(f"{key}.alpha", self.alpha, "a number in [0, 1]")
        _check_temperature(f"{key}.temperature", self.temperature)


@dataclass
class ATLossConf:
    _target_: str = "kdrun.losses.ATLoss"
    student_layers: Any = _setting("auto", "the student's layers to pair, a list (auto: its stages, in order)")
    teacher_layers: Any = _setting("auto", "the teacher's layers, as many (auto: its stages)")
    beta: float = _setting(1000.0, "weight of the attention term (the paper's 1000)")
    p: float = _setting(2.0, "the power of |activation| averaged over channels, >= 1 (below, NaN gradients where activations are 0)")
    ce_weight: float = _setting(1.0, "weight of the cross-entropy with the labels (0: learns without labels)")

    def check(self, key: str) -> None:
        _check_weight(f"{key}.beta", self.beta)
        _check_weight(f"{key}.ce_weight", self.ce_weight)
        _check_some_weight(key, ("beta", "ce_weight"), self)
        if not (_finite(self.p) and self.p >= 1):
            _fail(f"{key}.p", self.p, "a finite number >= 1 (p < 1 gives NaN gradients where activations are 0)")
        for name in ("student_layers", "teacher_layers"):
            value = getattr(self, name)
            if not (value == "auto" or (isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value))):
                _fail(f"{key}.{name}", value, "auto, or a list of layer names such as [stages.0,stages.1]")


LOSS_SCHEMAS = {"kd": KDLossConf, "reverse_kl": ReverseKLLossConf, "js": JSLossConf, "mse_logits": MSELogitsLossConf,
                "dkd": DKDLossConf, "dist": DISTLossConf, "fitnet": FitNetLossConf, "at": ATLossConf}  # fmt: skip


# --------------------------------------------------------------------------- the rest

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "multistep", "cosine")
PRECISIONS = ("32", "bf16", "16")
REPORTS = ("last", "best_val")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass
class TrainerConf:
    epochs: int = _setting(20, "epochs per model, unless teacher_epochs / student_epochs say otherwise")
    teacher_epochs: Optional[int] = _setting(None, "the teacher's epochs (null: epochs)")
    student_epochs: Optional[int] = _setting(None, "each student's epochs (null: epochs)")
    batch_size: int = _setting(32, "examples per step")
    optimizer: str = _setting("adam", "adam, adamw or sgd")
    lr: float = _setting(1e-3, "learning rate (the schedule's starting value)")
    weight_decay: float = _setting(0.0, "weight decay")
    momentum: float = _setting(0.9, "sgd's momentum, in [0, 1)")
    nesterov: bool = _setting(False, "sgd with Nesterov momentum")
    scheduler: str = _setting("none", "the learning rate per epoch: none, multistep (times gamma after each milestone) or cosine")
    milestones: List[int] = _setting([], "multistep: the epochs after which the learning rate is multiplied by gamma, e.g. [150,180,210]")
    gamma: float = _setting(0.1, "multistep: the factor at each milestone")
    warmup_epochs: int = _setting(0, "the learning rate rises linearly to lr over these first epochs")
    precision: str = _setting("32", "32, bf16 (autocast; CPU and CUDA) or 16 (autocast and a gradient scaler; CUDA)")
    compile: bool = _setting(False, "torch.compile the trained model and the teacher's forward pass (compiles at the first batch)")
    seed: int = _setting(42, "model initialisation and batch order")
    device: str = _setting("auto", "auto (CUDA when present), cpu, cuda, cuda:N or mps")
    threads: Optional[int] = _setting(None, "torch CPU threads (null: 1 when a training step is under 12M multiply-adds, else all cores)")
    checkpoint_every: Optional[int] = _setting(
        None, "epochs between resumable checkpoints (null: at most one a minute, none for short runs; 0: never)"
    )
    keep_checkpoints: bool = _setting(False, "keep the resumable checkpoints once the run completes")
    report: str = _setting("last", "which epoch each model's results and saved weights come from: last or best_val")

    def check(self, key: str) -> None:
        _check_int_at_least(f"{key}.epochs", self.epochs, 1)
        _check_int_at_least(f"{key}.teacher_epochs", self.teacher_epochs, 1, allow_none=True)
        _check_int_at_least(f"{key}.student_epochs", self.student_epochs, 1, allow_none=True)
        _check_int_at_least(f"{key}.batch_size", self.batch_size, 1)
        if not (_finite(self.lr) and self.lr > 0):
            _fail(f"{key}.lr", self.lr, "a finite number > 0")
        if not (_finite(self.weight_decay) and self.weight_decay >= 0):
            _fail(f"{key}.weight_decay", self.weight_decay, "a finite number >= 0")
        if self.optimizer not in OPTIMIZERS:
            _fail(f"{key}.optimizer", self.optimizer, f"one of {', '.join(OPTIMIZERS)}")
        if not (_finite(self.momentum) and 0 <= self.momentum < 1):
            _fail(f"{key}.momentum", self.momentum, "a number in [0, 1)")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):  # else ignored, or torch's ValueError
            _fail(f"{key}.nesterov", self.nesterov, f"true only with optimizer=sgd and a momentum > 0 (here {self.optimizer}, momentum {self.momentum:g})")
        if self.scheduler not in SCHEDULERS:
            _fail(f"{key}.scheduler", self.scheduler, f"one of {', '.join(SCHEDULERS)}")
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.milestones) or list(self.milestones) != sorted(set(self.milestones)):
            _fail(f"{key}.milestones", list(self.milestones), "a list of increasing epochs >= 1, e.g. [150,180,210]")
        if self.scheduler == "multistep" and not self.milestones:  # else the schedule would never change the rate
            _fail(f"{key}.milestones", [], "with scheduler=multistep, the epochs after which the learning rate drops, e.g. [150,180,210]")
        if not (_finite(self.gamma) and self.gamma > 0):
            _fail(f"{key}.gamma", self.gamma, "a finite number > 0")
        _check_int_at_least(f"{key}.warmup_epochs", self.warmup_epochs, 0)
        if str(self.precision) not in PRECISIONS:
            _fail(f"{key}.precision", self.precision, f"one of {', '.join(PRECISIONS)}")
        if not _DEVICE.match(str(self.device)):
            _fail(f"{key}.device", self.device, "one of auto, cpu, cuda, cuda:N, mps")
        _check_int_at_least(f"{key}.threads", self.threads, 1, allow_none=True)
        _check_seed(f"{key}.seed", self.seed)
        _check_int_at_least(f"{key}.checkpoint_every", self.checkpoint_every, 0, allow_none=True)
        if self.report not in REPORTS:
            _fail(f"{key}.report", self.report, f"one of {', '.join(REPORTS)}")


@dataclass
class CacheConf:
    enabled: bool = _setting(True, "reuse trained teachers and baselines from earlier runs")
    dir: Optional[str] = _setting(None, "the cache folder (null: $XDG_CACHE_HOME/kdrun or ~/.cache/kdrun)")


@dataclass
class TensorBoardLoggerConf:
    _target_: str = "kdrun.trackers.TensorBoardTracker"


@dataclass
class MLflowLoggerConf:
    _target_: str = "kdrun.trackers.MLflowTracker"
    tracking_uri: Optional[str] = _setting(None, "the MLflow store (null: SQLite, outputs/mlflow.db under the working directory)")
    experiment_name: str = _setting("kdrun", "the MLflow experiment every run (and sweep job) is logged to")


LOGGER_SCHEMAS = {"tensorboard": TensorBoardLoggerConf, "mlflow": MLflowLoggerConf}


@dataclass
class KDRunConf:
    dataset: Any = MISSING
    model: ModelPairConf = field(default_factory=ModelPairConf)
    loss: Any = MISSING
    trainer: TrainerConf = field(default_factory=TrainerConf)
    cache: CacheConf = field(default_factory=CacheConf)
    plots: bool = _setting(True, "write curves.png and temperature.png")
    logger: Dict[str, Any] = field(default_factory=dict)  # trackers besides the CSVs, by name (logger=[tensorboard,mlflow])


# Where each schema's keys live, for suggestions ("did you mean ...?") and for --help.
SCHEMAS_AT = {
    "trainer": (TrainerConf,),
    "loss": tuple(LOSS_SCHEMAS.values()),
    "model.student": (MLPConf, CNNConf),
    "model.teacher": (MLPConf, CNNConf),  # (ArchitectureConf adds only ModelConf's checkpoint)
    "dataset": (DataConf, SyntheticDataConf, DigitsDataConf, IdxDataConf),
    "cache": (CacheConf,),
    "logger.mlflow": (MLflowLoggerConf,),
}
# What users write for a key's last part, and what kdrun calls it.
ALIASES = {"t": "temperature", "temp": "temperature", "a": "alpha", "epoch": "epochs", "batch": "batch_size", "bs": "batch_size",
           "learning_rate": "lr", "wd": "weight_decay", "hidden_sizes": "hidden"}  # fmt: skip


def known_keys() -> list[str]:
    """Every key of kdrun's built-in options, dotted."""
    keys = [f"{at}.{f.name}" for at, schemas in SCHEMAS_AT.items() for schema in schemas for f in dataclasses.fields(schema) if not f.name.startswith("_")]
    return list(dict.fromkeys([*keys, "plots"]))


def suggest_key(key: str) -> Optional[str]:
    """The built-in key a mistyped or bare ``key`` most likely means (``alpha``: loss.alpha,
    ``loss.T``: loss.temperature), or None."""
    keys = known_keys()
    prefix, _, last = key.lower().rpartition(".")
    last = ALIASES.get(last, last)
    within = [k for k in keys if not prefix or k.startswith(prefix + ".")] or keys
    named = [k for k in within if k.rpartition(".")[2] == last]
    if not named:
        close = difflib.get_close_matches(last, [k.rpartition(".")[2] for k in within], n=1, cutoff=0.75)
        named = [k for k in within if close and k.rpartition(".")[2] == close[0]]
    order = list(SCHEMAS_AT)  # a bare name several groups have (seed): trainer's first
    return min(named, key=lambda k: order.index(k.rpartition(".")[0]) if k.rpartition(".")[0] in order else len(order), default=None)


def config_dir() -> Path:
    """The packaged configs (``kdrun/conf`` in a wheel), else the repository's ``conf/``."""
    packaged = Path(__file__).resolve().parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "conf"


def user_config_dirs(argv: Sequence[str]) -> list[Path]:
    """The folders a command line adds with ``--config-dir DIR`` (or ``-cd DIR``)."""
    spaced = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--config-dir", "-cd")]
    joined = [arg.split("=", 1)[1] for arg in argv if arg.startswith(("--config-dir=", "-cd="))]
    return [Path(folder).expanduser() for folder in spaced + joined]


def searchpath(config_dirs: Sequence[Union[str, Path]]) -> list[str]:
    """The override that adds a user's config folders (``--config-dir DIR``) to those Hydra searches."""
    return [f"hydra.searchpath=[{','.join(f'file://{Path(d).expanduser().absolute()}' for d in config_dirs)}]"] if config_dirs else []


def compose(overrides: Sequence[str] = (), with_hydra: bool = False) -> DictConfig:
    """kdrun's config with ``overrides``, composed as ``kdrun train`` composes it (with Hydra's
    own node ``hydra`` if asked). A mistake is a ConfigError with the message ``kdrun train``
    prints."""
    from hydra import compose as hydra_compose, initialize_config_dir

    register_configs()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return hydra_compose("config", overrides=list(overrides), return_hydra_config=with_hydra)
    except Exception as error:
        message = config_error_message(error)
        if message is None:
            raise
        raise ConfigError(message) from None


# A sweep job's folder is named by its overrides (conf/config.yaml: hydra.sweep.subdir); "/" in
# one (model/student=cnn, a file's path) would nest folders, so the name has "-" there instead.
# Registered on import: every process that names a job's folder (a joblib or submitit worker too)
# has imported kdrun.config by then, through the task it runs.
OmegaConf.register_new_resolver("kdrun.folder_name", lambda name: str(name).replace("/", "-"), replace=True)


def register_configs() -> None:
    """Store the schemas where conf/*.yaml find them (``/schema_...@_here_`` in their defaults
    lists; outside any group, so that they are no option anyone can choose), the split defaults
    that every dataset gets, and Hydra settings kept in code."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="kdrun_schema", node=KDRunConf)
    # Untyped, so that a user's dataset YAML (a _target_ and its own keys) merges onto it.
    cs.store(name="schema_dataset_split", node=dataclasses.asdict(DataConf()))
    cs.store(name="schema_dataset_synthetic", node=SyntheticDataConf)
    cs.store(name="schema_dataset_digits", node=DigitsDataConf)
    cs.store(name="schema_dataset_idx", node=IdxDataConf)
    cs.store(name="schema_dataset_cifar", node=CifarDataConf)
    cs.store(name="schema_model_mlp", node=MLPConf)
    cs.store(name="schema_model_cnn", node=CNNConf)
    cs.store(name="schema_model_architecture", node=ArchitectureConf)
    for name, schema in LOSS_SCHEMAS.items():
        cs.store(name=f"schema_loss_{name}", node=schema)
    for name, schema in LOGGER_SCHEMAS.items():
        cs.store(name=f"schema_logger_{name}", node=schema)
    # Run-folder names leave out the settings that do not change what a run measures.
    exclude = {"job": {"config": {"override_dirname": {"exclude_keys": list(RESULT_UNCHANGED_KEYS)}}}}
    cs.store(name="kdrun_hydra", node={"hydra": exclude})


# --------------------------------------------------------------------------- checks


def _check_known_keys(node: DictConfig, prefix: str = "") -> None:
    """Hydra accepts ``+trainer.epoch=3`` (its own hint for a misspelt key) and the run would
    silently use trainer.epochs: refuse every key a schema does not define."""
    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        known = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in known:
                raise ConfigError(not_a_setting(f"{prefix}{key}", schema))
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _check_known_keys(child, f"{prefix}{key}.")


def _missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """The keys below ``node`` whose value is ??? (required, not given), dotted."""
    missing = []
    for key in node.keys():
        child = node._get_node(key)
        if child._is_missing():
            missing.append(f"{prefix}{key}")
        elif isinstance(child, DictConfig):
            missing += _missing_keys(child, f"{prefix}{key}.")
    return missing


def validate(cfg: DictConfig) -> None:
    """Check that every key is known and every value in range. Raises ConfigError naming the
    first bad key, and the key its value comes from where a preset interpolates it."""
    _check_known_keys(cfg)
    missing = _missing_keys(cfg)
    if missing:
        raise ConfigError(f"{missing[0]} has no value (???): give it one, e.g. {missing[0]}=...")
    try:
        _check_values(cfg)
    except ConfigError as error:
        key = str(error).partition("=")[0]
        parent, _, leaf = key.rpartition(".")
        try:
            node = OmegaConf.select(cfg, parent) if parent else cfg
            source = OmegaConf.to_container(node, resolve=False).get(leaf) if isinstance(node, DictConfig) else None
        except Exception:  # a message about several keys ("a + b=...")
            source = None
        if isinstance(source, str) and re.fullmatch(r"\$\{\w[\w.]*\}", source):  # ${model.recipe_lr}: a key one can set, not ${.lr}
            raise ConfigError(f"{error} ({key} is {source} here: the value to change is {source[2:-1]})") from None
        raise


def _check_values(cfg: DictConfig) -> None:
    for name, node in cfg.logger.items():  # +logger.mlflow.tracking_uri=... makes a node with no tracker
        if isinstance(node, DictConfig) and "_target_" not in node:
            chosen = f"add logger={name} to the command (or logger=[tensorboard,mlflow])" if name in LOGGER_SCHEMAS else "give it a _target_"
            raise ConfigError(f"logger.{name} is set, but no tracker builds it: {chosen}")
    plain = OmegaConf.to_object(cfg)
    dataset = plain.dataset
    if not isinstance(dataset, DataConf):  # a user's dataset: its split settings are still kdrun's
        dataset = DataConf(**{k: dataset[k] for k in DATA_KEYS if k in dataset})
    dataset.check("dataset")
    for key, node in (("model.teacher", plain.model.teacher), ("model.student", plain.model.student), ("loss", plain.loss)):
        if dataclasses.is_dataclass(node) and hasattr(node, "check"):  # a built-in option (a user's checks itself)
            node.check(key)
    if isinstance(plain.loss, (AlphaLossConf, MSELogitsLossConf, FitNetLossConf)):
        if not dataset.transfer_labels and plain.loss.alpha != 1:
            _fail(
                "loss.alpha",
                plain.loss.alpha,
                "with dataset.transfer_labels=false the students have no labels, so alpha must be 1 (soft targets only)",
            )
    if not dataset.transfer_labels and isinstance(plain.loss, (DISTLossConf, ATLossConf)) and plain.loss.ce_weight != 0:
        _fail("loss.ce_weight", plain.loss.ce_weight, "with dataset.transfer_labels=false the students have no labels, so ce_weight must be 0")
    if not dataset.transfer_labels and isinstance(plain.loss, DKDLossConf):
        raise ConfigError("loss=dkd needs labels (TCKD and NCKD split each row at its target class); dataset.transfer_labels=false leaves none")
    plain.trainer.check("trainer")
    _check_warmups(plain)
    if isinstance(getattr(plain.model.teacher, "checkpoint", None), str) and not plain.model.teacher.checkpoint.strip():  # an unset shell variable
        _fail("model.teacher.checkpoint", plain.model.teacher.checkpoint, "a weights file, or null to train the teacher")
    if getattr(plain.model.student, "checkpoint", None) is not None:
        _fail("model.student.checkpoint", plain.model.student.checkpoint, "null: the students train from the same initial weights (a checkpoint is for model.teacher)")


def _trained_epochs(cfg: Any) -> dict[str, int]:
    """Each trained model's epochs, by whose they are: the students', and the teacher's unless it
    comes from model.teacher.checkpoint (``cfg``: a DictConfig or its plain objects)."""
    epochs = {"students'": phase_epochs(cfg, "student")}
    teacher = cfg.model.teacher
    if not (teacher.get("checkpoint") if hasattr(teacher, "get") else getattr(teacher, "checkpoint", None)):  # a user's own: a dict
        epochs["teacher's"] = phase_epochs(cfg, "teacher")
    return epochs


def unused_schedule_settings(cfg: DictConfig) -> list[str]:
    """What of trainer.milestones the schedule never uses (a preset's, with fewer epochs or another
    scheduler): allowed, for a short trial of a recipe, but said."""
    trainer, milestones = cfg.trainer, list(cfg.trainer.milestones)
    if milestones and trainer.scheduler != "multistep":
        return [f"trainer.milestones={milestones} are used only with trainer.scheduler=multistep, not {trainer.scheduler}"]
    models_of: dict[int, list[str]] = {}  # a last epoch, and whose it is
    for whose, epochs in _trained_epochs(cfg).items():
        models_of.setdefault(epochs, []).append(whose)
    said = []
    for epochs, whose in models_of.items():
        late = [m for m in milestones if m >= epochs]
        if late:
            said.append(f"trainer.milestones {late} are at or after the {' and '.join(whose)} last epoch ({epochs}): the learning rate never drops there")
    return said


def _check_warmups(plain: Any) -> None:
    """A warm-up longer than the epochs it ramps over would never reach its full value."""
    for whose, epochs in _trained_epochs(plain).items():
        if plain.trainer.warmup_epochs > epochs:
            _fail("trainer.warmup_epochs", plain.trainer.warmup_epochs,
                  f"at most {epochs}, the {whose} epochs (longer, the learning rate would never reach trainer.lr)")
    dkd_warmup = plain.loss.warmup_epochs if isinstance(plain.loss, DKDLossConf) else None
    if dkd_warmup is not None and dkd_warmup > phase_epochs(plain, "student"):
        _fail("loss.warmup_epochs", dkd_warmup,
              f"null, or at most {phase_epochs(plain, 'student')}, the students' epochs (longer, the DKD term would never reach its full weight)")


def _import(path: str, key: str) -> Any:
    """The object at the dotted ``path`` (a module's attribute, or a nested one)."""
    parts = path.split(".")
    if len(parts) < 2:
        raise ConfigError(f"{key}._target_={path!r} is not allowed: name a module and what it holds, e.g. mypkg.build")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            found = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                continue  # try a shorter module path
            raise  # the module exists but fails to import: its own traceback
        module = found
        try:
            for attribute in parts[split:]:
                found = getattr(found, attribute)
        except AttributeError:
            meant = _closest_path(parts, split, module)
            hint = f"; did you mean {meant}?" if meant else ""
            raise ConfigError(f"{key}._target_={path!r} cannot be found: module {module_name} has no {'.'.join(parts[split:])}{hint}") from None
        return found
    raise ConfigError(
        f"{key}._target_={path!r} cannot be imported: no module {parts[0]!r}; "
        "its module must be importable, e.g. from a folder on PYTHONPATH"
    )


def _closest_path(parts: Sequence[str], split: int, module: Any) -> Optional[str]:
    """``parts`` (a dotted path whose first ``split`` name ``module``) with each name that is not
    there replaced by the closest one that is (a package's modules count), if that leads to an
    object; else None."""
    parts, found = list(parts), module
    try:
        for position in range(split, len(parts)):
            if not hasattr(found, parts[position]):
                names = [n for n in dir(found) if not n.startswith("_")]
                if hasattr(found, "__path__"):  # a package: its modules not imported yet count too
                    names += [m.name for m in pkgutil.iter_modules(list(found.__path__))]
                close = difflib.get_close_matches(parts[position], names, n=1)
                if not close:
                    return None
                parts[position] = close[0]
            found = getattr(found, parts[position]) if hasattr(found, parts[position]) else importlib.import_module(".".join(parts[: position + 1]))
    except Exception:  # a module that fails to import, or lists no names: no suggestion
        return None
    return ".".join(parts)


def names_parameter(node: Any, key: str, name: str) -> bool:
    """Whether ``node``'s ``_target_`` lists a parameter called ``name`` (True when its signature
    cannot be read). ``**kwargs`` does not count."""
    try:
        return name in inspect.signature(_import(str(node.get("_target_")), key)).parameters
    except (TypeError, ValueError):  # no signature to read
        return True


def instantiate(node: Any, key: str, **extra: Any) -> Any:
    """The object ``node``'s ``_target_`` builds, called with the node's other keys and ``extra``
    (Hydra's ``instantiate``, ``_partial_`` and nested ``_target_`` included). A target that
    cannot be imported, or that does not take those keys, is a ConfigError naming ``key``, and so
    is a ValueError from a kdrun target's checks; errors raised inside a user's code pass."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    target = node.get("_target_") if hasattr(node, "get") else None
    if not target:
        raise ConfigError(f"{key} has no _target_: name the class or function that builds it (e.g. _target_: mypkg.build)")
    built_by = _import(str(target), key)
    plain = to_plain(node)
    arguments = {k: v for k, v in plain.items() if not (k.startswith("_") and k.endswith("_"))} | extra  # not Hydra's _x_ keys
    try:
        signature = inspect.signature(built_by)
    except ValueError:  # no signature to check (some builtins)
        signature = None
    try:
        if signature is not None:
            (signature.bind_partial if plain.get("_partial_") else signature.bind)(**arguments)
    except TypeError as error:
        raise ConfigError(_cannot_call(key, str(target), arguments, signature, error, given_by_kdrun=tuple(extra))) from None
    if signature is not None and not str(target).startswith("kdrun."):  # kdrun's own have typed schemas
        _check_types_of_defaults(key, str(target), {k: v for k, v in arguments.items() if k not in extra}, signature)
    try:
        # ``extra`` is passed as it is: given to Hydra, a tuple (input_shape) would arrive as a list.
        if plain.get("_partial_"):  # a partial asked for: Hydra's own
            return hydra_instantiate(node, **extra, _convert_="all")
        return hydra_instantiate(node, _partial_=True, _convert_="all")(**extra)
    except (InstantiationException, ValueError) as error:  # what the target itself raised, unwrapped
        cause = error.__cause__ if isinstance(error, InstantiationException) else error
        if cause is None:
            raise
        if isinstance(cause, ValueError) and not isinstance(cause, ConfigError) and str(target).startswith("kdrun."):
            raise ConfigError(f"{key}: {cause}") from None
        raise cause from None


def _check_types_of_defaults(key: str, target: str, arguments: dict[str, Any], signature: inspect.Signature) -> None:
    """Text given to a parameter of one's own code that defaults to a number or a bool, with no
    annotation to say otherwise (model.student.width=abc): else a traceback from deep inside it."""
    for name, value in arguments.items():
        parameter = signature.parameters.get(name)
        if parameter is None or parameter.annotation is not parameter.empty or not isinstance(value, str):
            continue
        default = parameter.default
        if isinstance(default, (bool, int, float)):
            kind = "a bool" if isinstance(default, bool) else "an integer" if isinstance(default, int) else "a number"
            _fail(f"{key}.{name}", value, f"{kind}, as {target}'s default ({default!r}) is")


def _cannot_call(key: str, target: str, arguments: dict[str, Any], signature: inspect.Signature, error: TypeError,
                 given_by_kdrun: Sequence[str] = ()) -> str:  # fmt: skip
    """Why ``target`` cannot be called with ``arguments``: an argument kdrun passes itself that it
    lacks, the settings it does not take (a typo's likely meaning, else how to remove a preset's),
    or the one it needs."""
    params = signature.parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        lacking = [name for name in given_by_kdrun if name not in params]
        if lacking:
            return f"{key}: kdrun passes {', '.join(lacking)} (from the data) to {target}, which takes no such parameter: add it to {target}'s signature"
        unknown = [name for name in arguments if name not in params]
        if unknown:
            takes = ", ".join(n for n, p in params.items() if p.kind != p.VAR_POSITIONAL) or "no settings"
            them = "it" if len(unknown) == 1 else "them"
            hint = _meant(arguments, signature, key) or f"; remove {them} from the config that sets {them}, or with {' '.join(f'~{key}.{n}' for n in unknown)}"
            return f"{key}: {target} does not take {', '.join(f'{key}.{n}' for n in unknown)} (it takes {takes}){hint}"
    missing = re.search(r"missing a required argument: '(\w+)'", str(error))
    if missing:
        return f"{key}: {target} needs {key}.{missing.group(1)}: set it in its config or on the command line (+{key}.{missing.group(1)}=...)"
    return f"{key}: {target} cannot be called with the settings {sorted(arguments)}: {error}"


def _meant(arguments: dict[str, Any], signature: inspect.Signature, key: str) -> str:
    """"; did you mean key.hidden?" for each argument the signature lacks that is close to one it has."""
    taken = [name for name, p in signature.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    hints = []
    for name in arguments:
        close = difflib.get_close_matches(name, taken, n=1, cutoff=0.75) if name not in signature.parameters else []
        if close:
            hints.append(f"{key}.{close[0]} (not {name})")
    return f"; did you mean {', '.join(hints)}?" if hints else ""


def without_hydra(cfg: DictConfig) -> DictConfig:
    """A copy of a composed config without Hydra's own node: what the task receives."""
    from omegaconf import open_dict, read_write

    task = copy.deepcopy(cfg)
    with read_write(task), open_dict(task):
        task.pop("hydra", None)
    return task


def phase_epochs(cfg: DictConfig, phase: str) -> int:
    """Epochs for the teacher or the students: the per-phase setting, else trainer.epochs."""
    value = cfg.trainer.teacher_epochs if phase == "teacher" else cfg.trainer.student_epochs
    return int(cfg.trainer.epochs if value is None else value)


def model_cache_dir(cfg: DictConfig) -> Optional[Path]:
    """Where trained teachers and baseline students are cached; None with cache.enabled=false."""
    if not cfg.cache.enabled:
        return None
    if cfg.cache.dir:
        return Path(cfg.cache.dir).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kdrun"


def to_plain(node: Any) -> Any:
    """A config node as plain Python containers, for hashing, checkpoints and CSVs."""
    if dataclasses.is_dataclass(node):
        return dataclasses.asdict(node)
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def digest(parts: Any, length: int = 16) -> str:
    """A hex digest of ``parts`` (JSON-able, keys in any order)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]


def file_digest(path: Union[str, Path]) -> str:
    """The file's sha256 (hex)."""
    hashed = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hashed.update(block)
    return hashed.hexdigest()


def teacher_file_digest(cfg: DictConfig) -> Optional[str]:
    """The sha256 of the file ``model.teacher.checkpoint`` names, or None: no such setting or file,
    or an unreadable one (loading it says so, in one message)."""
    teacher_file = OmegaConf.select(cfg, "model.teacher.checkpoint")
    if not teacher_file or not Path(teacher_file).expanduser().is_file():
        return None
    try:
        return file_digest(Path(teacher_file).expanduser())
    except OSError:
        return None


# Losses whose computation changed in a kdrun release, and how often: their runs from before are
# neither continued nor skipped as completed by a rerun. Only these losses' digests changed.
_LOSS_REVISIONS = {"kdrun.losses.ATLoss": 2, "kdrun.losses.FitNetLoss": 2}  # 2: AT leaves the stem out; FitNet regresses with ConvReg
# Settings that change results only through others, which the digest covers resolved: left out, so
# that adding one leaves the digests of earlier runs as they were.
_HASH_FREE_KEYS = ("model.recipe_dkd_beta",)


def config_hash(cfg: DictConfig) -> str:
    """A digest of the settings that change what a run measures: equal digests, equal runs. A
    teacher loaded from a file counts by the file's content, not only its path: a rerun after the
    file changed is a run of other settings."""
    plain = to_plain(cfg)
    teacher = teacher_file_digest(cfg)
    if teacher is not None:
        plain["teacher_weights_sha256"] = teacher
    revision = _LOSS_REVISIONS.get(str(plain.get("loss", {}).get("_target_")))
    if revision is not None:
        plain["loss_revision"] = revision
    for dotted in RESULT_UNCHANGED_KEYS + _HASH_FREE_KEYS:
        *parents, last = dotted.split(".")
        node = plain
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return digest(plain)


def not_a_setting(key: str, schema: Any = None, keys_here: Sequence[str] = ()) -> str:
    """The message for a key no config has: what it may have meant, and the settings beside it
    (those of ``schema``, the dataclass of the node it was looked for in, when there is one, else
    ``keys_here``, the keys of that node: a config of one's own)."""
    prefix = key.rpartition(".")[0]
    if dataclasses.is_dataclass(schema):
        here = [f.name for f in dataclasses.fields(schema) if not f.name.startswith("_")]
    else:
        here = [str(k) for k in keys_here if not str(k).startswith("_")]
    close = difflib.get_close_matches(key.rpartition(".")[2], here, n=1)
    suggestion = f"{prefix}.{close[0]}" if close and prefix else close[0] if close else suggest_key(key)
    hint = f"did you mean {suggestion}? " if suggestion else ""
    if suggestion == key:  # a setting of the group's other options (loss.alpha under loss=dist)
        last = key.rpartition(".")[2]
        owners = [f"loss={name}" for name, owner in LOSS_SCHEMAS.items() if last in {f.name for f in dataclasses.fields(owner)}]
        hint = f"{', '.join(owners)} {'has' if len(owners) == 1 else 'have'} it, not this option; " if prefix == "loss" and owners else ""
    if key.lstrip("+") == "model.teacher.checkpoint" and not dataclasses.is_dataclass(schema):
        return f"{key} is not a setting of this model's config (one of your own): add it with +{key.lstrip('+')}=PATH"
    group, _, option = key.lstrip("+").partition(".")
    if group == "logger" and option in LOGGER_SCHEMAS:  # the node of a tracker not chosen (logger.mlflow.tracking_uri=...)
        return f"{key} is not a setting until its tracker is chosen: add logger={option} (or logger=[tensorboard,mlflow]) to the command"
    if key.lstrip("+") in ("trainer.stack", "trainer.stack_mb"):
        name = key.rpartition(".")[2]
        return f"{key} is not a setting: the launcher's is hydra.launcher.{name} (kdrun train -m hydra.launcher.{name}={'false' if name == 'stack' else '1024'} ...)"
    if here and prefix:
        return f"{key} is not a setting: {hint}the settings here are {', '.join(f'{prefix}.{k}' for k in here)}"
    return f"{key} is not a setting: {hint}kdrun train --help lists them" if hint else f"{key} is not a setting; kdrun train --help lists them"


_SWEEP_EXTRA = "The parallel and cluster launchers and the Optuna sweeper need: pip install 'kdrun[sweep]'"


def config_error_message(error: BaseException, user_dirs: Sequence[Path] = ()) -> Optional[str]:
    """One line for a mistake Hydra finds while composing the config (an unknown key or option,
    a value of the wrong type, an override it cannot read); None for any other error. ``user_dirs``:
    the command's --config-dir folders, whose options count too."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    text = str(error)
    if isinstance(error, MissingConfigException):
        missing = re.search(r"Could not (?:find|load) '([^']+)'", text)
        group, _, option = missing.group(1).rpartition("/") if missing else ("", "", "")
        if "Available options" in text:
            listed = text.split("Available options in", 1)[1].split("Config search path", 1)[0]
            options = re.findall(r"^\t(\S+)$", listed, re.M)
        else:  # an option in a list (logger=[tensorboard,foo]): Hydra lists none; the config folders' are these
            folders = [config_dir(), *user_dirs] if group and not group.startswith("hydra/") else []
            options = sorted({path.stem for folder in folders for path in (Path(folder) / group).glob("*.yaml")})
        if not options:
            line = text.splitlines()[0]
            if re.search(r"Could not load 'hydra/(launcher|sweeper)/", line):  # a preset whose plugin is not installed
                line += f" {_SWEEP_EXTRA}"
            return line
        close = difflib.get_close_matches(option, options, n=1)
        hint = f"did you mean {group}={close[0]}? " if close else ""
        plugin = "" if close or group not in ("hydra/launcher", "hydra/sweeper") else f" ({_SWEEP_EXTRA})"
        return f"{group}={option} is not an option: {hint}choose from {', '.join(sorted(options, key=natural_order))}{plugin}"
    cause = error.__cause__ if isinstance(error, HydraException) and error.__cause__ is not None else error
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None):
        parent = getattr(cause, "parent_node", None)
        return not_a_setting(str(cause.full_key), getattr(cause, "object_type", None), list(parent.keys()) if isinstance(parent, DictConfig) else [])
    if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
        reason = str(cause).splitlines()[0]
        return f"{cause.full_key}={cause.value!r} is not allowed: {reason}"
    if isinstance(error, OverrideParseException):
        first = text.splitlines()[0]
        if "=~" in first:  # the shell expands ~ only at a word's start: not in key=~/path
            return f"cannot read the command line: {first}. Write the path with $HOME (dataset.root=$HOME/data), or spell it out"
        key, _, value = str(getattr(error, "override", None) or "").partition("=")
        if re.search(r"[=/]", value) and re.search(r"[=,()\[\]{}\s]", value) and value[:1] not in "'\"[{":  # a path: a sweep job's folder, say
            return f"cannot read {key}={value}: {first}. A value holding = , ( ) [ ] {{ }} or spaces needs quotes: \"{key}='{value}'\""
        return f"cannot read the command line: {first}"
    pair = re.search(r"In 'model/([^'/]+)': ConfigKeyError .* not in 'ModelPairConf'", text, re.S)
    if pair:  # a network's config put where the teacher/student pair presets go
        return (
            f"model={pair.group(1)}: the model/ folder holds pair presets (model.teacher and model.student); "
            f"put a network's config in model/student/ or model/teacher/ and choose it with model/student={pair.group(1)}"
        )
    searched = re.search(r"Sweeping over Hydra's configuration is not supported : 'hydra\.sweeper\.params\.([^=']+)=([^']*)'", text)
    if searched:  # Optuna's search space on the command line is the setting's own sweep
        return (f"hydra.sweeper.params.{searched.group(1)} is set in a config file; on the command line the search space "
                f"is the setting's own: '{searched.group(1)}={searched.group(2)}'")
    if isinstance(error, ValueError) and text.startswith("Config group override must be a string or a list. Got NoneType"):
        return "a config group cannot be null (logger=null, say): choose one of its options, or [] for none where it takes a list (logger=[])"
    if isinstance(error, HydraException):
        return " ".join(line.strip() for line in text.splitlines() if line.strip())
    return None
