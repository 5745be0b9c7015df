"""Typed config schemas (Hydra's ConfigStore) and the value checks run before any work starts.

The YAML files in ``conf/`` hold the values; these dataclasses hold the types, so that a wrong
type (``loss.alpha=abc``) or a misspelt key fails when Hydra composes the config. Range checks
live in ``validate`` and name the full key the user types.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional

if TYPE_CHECKING:
    from omegaconf import DictConfig

# omegaconf.MISSING. The schemas below are also the training process's config objects, and that
# process does without omegaconf and Hydra (their import is ~0.3 s on its critical path).
MISSING = "???"


class ConfigError(ValueError):
    """A setting's value is not allowed. The message names the key, the value and what is allowed."""


# --------------------------------------------------------------------------- schemas


@dataclass
class SplitConf:
    """Settings every dataset shares: the held-out split and the students' transfer set."""

    name: str = MISSING
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    normalize: bool = True
    # Students learn from this many training examples (an int) or this fraction of them (a float
    # in (0, 1]); null means the whole training split. The teacher always sees the whole split.
    transfer_size: Optional[float] = None
    transfer_labels: bool = True


@dataclass
class SyntheticDataConf(SplitConf):
    name: str = "synthetic"
    n_samples: int = 500
    input_dim: int = 784
    num_classes: int = 10
    signal_scale: float = 0.5
    seed: int = 42
    normalize: bool = False


@dataclass
class DigitsDataConf(SplitConf):
    name: str = "digits"


@dataclass
class IdxDataConf(SplitConf):
    """MNIST-format IDX files with a published train/test split: val is carved from train."""

    name: str = "mnist"
    root: str = "data"
    test_fraction: float = 0.0  # unused: the published test split is kept
    val_fraction: float = 1 / 12  # 5,000 of MNIST's 60,000


@dataclass
class MLPConf:
    hidden: List[int] = field(default_factory=list)
    dropout: float = 0.0


@dataclass
class ModelConf:
    teacher: MLPConf = field(default_factory=lambda: MLPConf(hidden=[256, 256, 256]))
    student: MLPConf = field(default_factory=lambda: MLPConf(hidden=[64]))


@dataclass
class LossConf:
    alpha: float = 0.7
    temperature: float = 3.0


@dataclass
class TrainerConf:
    epochs: int = 20
    teacher_epochs: Optional[int] = None
    student_epochs: Optional[int] = None
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 42
    device: str = "auto"
    threads: Optional[int] = None


@dataclass
class CacheConf:
    enabled: bool = True
    dir: Optional[str] = None


@dataclass
class KDRunConf:
    dataset: Any = MISSING
    model: ModelConf = field(default_factory=ModelConf)
    loss: LossConf = field(default_factory=LossConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    cache: CacheConf = field(default_factory=CacheConf)
    plots: bool = True


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="kdrun_schema", node=KDRunConf)
    cs.store(group="dataset", name="synthetic_schema", node=SyntheticDataConf)
    cs.store(group="dataset", name="digits_schema", node=DigitsDataConf)
    cs.store(group="dataset", name="idx_schema", node=IdxDataConf)
    cs.store(group="model", name="model_schema", node=ModelConf)
    cs.store(group="loss", name="loss_schema", node=LossConf)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConf)


# --------------------------------------------------------------------------- value checks

OPTIMIZERS = ("adam", "adamw", "sgd")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _fail(key: str, value: object, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _check_int_at_least(key: str, value: Optional[int], low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value < low:
        _fail(key, value, f"an integer >= {low}")


def _check_fraction(key: str, value: float) -> None:
    if not (_finite(value) and 0 < value < 1):
        _fail(key, value, "a number in (0, 1)")


def _check_known_keys(node: DictConfig, prefix: str = "") -> None:
    """Hydra accepts ``+trainer.epoch=3`` (its own hint for a misspelt key) and the run would
    silently use trainer.epochs: refuse every key its schema does not define."""
    from omegaconf import DictConfig, OmegaConf

    schema = OmegaConf.get_type(node)
    if dataclasses.is_dataclass(schema):
        known = [f.name for f in dataclasses.fields(schema)]
        for key in node.keys():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {prefix}{close[0]}? " if close else ""
                raise ConfigError(f"{prefix}{key} is not a setting: {hint}the settings here are {', '.join(prefix + k for k in known)}")
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            _check_known_keys(child, f"{prefix}{key}.")


def validate(cfg: DictConfig) -> None:
    """Check every key is known and every value in range. Raises ConfigError naming the first bad key."""
    _check_known_keys(cfg)
    ds = cfg.dataset
    has_test_split = ds.name in ("synthetic", "digits")
    _check_fraction("dataset.val_fraction", ds.val_fraction)
    if has_test_split:
        _check_fraction("dataset.test_fraction", ds.test_fraction)
        if ds.val_fraction + ds.test_fraction >= 1:
            _fail(
                "dataset.val_fraction + dataset.test_fraction",
                ds.val_fraction + ds.test_fraction,
                "the two fractions must sum to less than 1, leaving data to train on",
            )
    ts = ds.transfer_size
    if ts is not None and not (_finite(ts) and (0 < ts <= 1 or (ts > 1 and float(ts).is_integer()))):
        _fail("dataset.transfer_size", ts, "null (the whole training split), a fraction in (0, 1], or a whole count > 1")
    if ds.name == "synthetic":
        _check_int_at_least("dataset.n_samples", ds.n_samples, 2)
        _check_int_at_least("dataset.input_dim", ds.input_dim, 1)
        _check_int_at_least("dataset.num_classes", ds.num_classes, 2)
        if not (_finite(ds.signal_scale) and ds.signal_scale >= 0):
            _fail("dataset.signal_scale", ds.signal_scale, "a finite number >= 0")

    for role in ("teacher", "student"):
        mlp = cfg.model[role]
        for size in mlp.hidden:
            if size is None or size < 1:
                _fail(f"model.{role}.hidden", list(mlp.hidden), "a list of layer widths, each >= 1 (e.g. [256, 256])")
        if not (_finite(mlp.dropout) and 0 <= mlp.dropout < 1):
            _fail(f"model.{role}.dropout", mlp.dropout, "a number in [0, 1)")

    if not (_finite(cfg.loss.alpha) and 0 <= cfg.loss.alpha <= 1):
        _fail("loss.alpha", cfg.loss.alpha, "a number in [0, 1] (the weight of the teacher's soft targets)")
    if not (_finite(cfg.loss.temperature) and cfg.loss.temperature > 0):
        _fail("loss.temperature", cfg.loss.temperature, "a finite number > 0")
    if not ds.transfer_labels and cfg.loss.alpha != 1:
        _fail(
            "loss.alpha",
            cfg.loss.alpha,
            "with dataset.transfer_labels=false the students have no labels, so alpha must be 1 (soft targets only)",
        )

    tr = cfg.trainer
    _check_int_at_least("trainer.epochs", tr.epochs, 1)
    _check_int_at_least("trainer.teacher_epochs", tr.teacher_epochs, 1, allow_none=True)
    _check_int_at_least("trainer.student_epochs", tr.student_epochs, 1, allow_none=True)
    _check_int_at_least("trainer.batch_size", tr.batch_size, 1)
    if not (_finite(tr.lr) and tr.lr > 0):
        _fail("trainer.lr", tr.lr, "a finite number > 0")
    if not (_finite(tr.weight_decay) and tr.weight_decay >= 0):
        _fail("trainer.weight_decay", tr.weight_decay, "a finite number >= 0")
    if tr.optimizer not in OPTIMIZERS:
        _fail("trainer.optimizer", tr.optimizer, f"one of {', '.join(OPTIMIZERS)}")
    if not _DEVICE.match(str(tr.device)):
        _fail("trainer.device", tr.device, "one of auto, cpu, cuda, cuda:N, mps")
    _check_int_at_least("trainer.threads", tr.threads, 1, allow_none=True)
    if tr.seed < 0:
        _fail("trainer.seed", tr.seed, "an integer >= 0")


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
    """A config node (a schema's dataclass, or Hydra's DictConfig) as plain Python containers,
    for hashing, checkpoints and CSVs."""
    if dataclasses.is_dataclass(node):
        return dataclasses.asdict(node)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
