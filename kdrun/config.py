"""The settings: typed schemas for Hydra's ConfigStore, the value checks run before any work,
and the one way kdrun builds an object from a config node's ``_target_``.

The YAML files in ``conf/`` hold the values; the dataclasses here hold the types of the built-in
options, so that a wrong type (``loss.alpha=abc``) or a misspelt key fails while Hydra composes
the config. Each schema checks its own ranges (``check``), naming the full key the user types.
A user's own option (a YAML file with a ``_target_`` and no schema) is checked by its own code.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import inspect
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from kdrun.errors import ConfigError
from kdrun.run_files import RESULT_UNCHANGED_KEYS


def _fail(key: str, value: object, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_int_at_least(key: str, value: Optional[int], low: int, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        _fail(key, value, f"an integer >= {low}")


def _check_fraction(key: str, value: float) -> None:
    if not (_finite(value) and 0 < value < 1):
        _fail(key, value, "a number in (0, 1)")


# --------------------------------------------------------------------------- datasets


@dataclass
class DataConf:
    """Settings every dataset shares: its name, the held-out split and the students' transfer set.
    A user's dataset YAML gets these defaults without naming them."""

    name: Optional[str] = None  # shown in logs and summary.csv; null: the loader's _target_
    val_fraction: float = 0.15
    test_fraction: float = 0.15  # unused where the loader returns a published test split
    split_seed: int = 0
    normalize: bool = True
    # Students learn from this many training examples (an int) or this fraction of them (a float
    # in (0, 1]); null means the whole training split. The teacher always sees the whole split.
    transfer_size: Optional[float] = None
    transfer_labels: bool = True

    def check(self, key: str) -> None:
        _check_fraction(f"{key}.val_fraction", self.val_fraction)
        _check_fraction(f"{key}.test_fraction", self.test_fraction)
        if self.val_fraction + self.test_fraction >= 1:
            _fail(
                f"{key}.val_fraction + {key}.test_fraction",
                self.val_fraction + self.test_fraction,
                "the two fractions must sum to less than 1, leaving data to train on",
            )
        _check_int_at_least(f"{key}.split_seed", self.split_seed, 0)
        ts = self.transfer_size
        if ts is not None and not (_finite(ts) and (0 < ts <= 1 or (ts > 1 and float(ts).is_integer()))):
            _fail(f"{key}.transfer_size", ts, "null (the whole training split), a fraction in (0, 1], or a whole count > 1")


DATA_KEYS = tuple(f.name for f in dataclasses.fields(DataConf))


@dataclass
class SyntheticDataConf(DataConf):
    _target_: str = "kdrun.data.synthetic.make_synthetic"
    name: Optional[str] = "synthetic"
    n_samples: int = 500
    input_dim: int = 784
    num_classes: int = 10
    signal_scale: float = 0.5
    seed: int = 42
    normalize: bool = False

    def check(self, key: str) -> None:
        super().check(key)
        _check_int_at_least(f"{key}.n_samples", self.n_samples, 2)
        _check_int_at_least(f"{key}.input_dim", self.input_dim, 1)
        _check_int_at_least(f"{key}.num_classes", self.num_classes, 2)
        if not (_finite(self.signal_scale) and self.signal_scale >= 0):
            _fail(f"{key}.signal_scale", self.signal_scale, "a finite number >= 0")


@dataclass
class DigitsDataConf(DataConf):
    _target_: str = "kdrun.data.digits.load_digits"
    name: Optional[str] = "digits"


@dataclass
class IdxDataConf(DataConf):
    """MNIST-format IDX files with a published train/test split: val is carved from train."""

    _target_: str = "kdrun.data.idx.load_mnist"
    name: Optional[str] = "mnist"
    root: str = "data"
    val_fraction: float = 1 / 12  # 5,000 of MNIST's 60,000


# --------------------------------------------------------------------------- models


@dataclass
class MLPConf:
    _target_: str = "kdrun.models.MLP"
    hidden: List[int] = field(default_factory=list)
    dropout: float = 0.0

    def check(self, key: str) -> None:
        for size in self.hidden:
            if size is None or size < 1:
                _fail(f"{key}.hidden", list(self.hidden), "a list of layer widths, each >= 1 (e.g. [256, 256])")
        if not (_finite(self.dropout) and 0 <= self.dropout < 1):
            _fail(f"{key}.dropout", self.dropout, "a number in [0, 1)")


@dataclass
class ModelPairConf:
    """The two architectures, each an option of its own group (model/teacher, model/student)."""

    teacher: Any = MISSING
    student: Any = MISSING


# --------------------------------------------------------------------------- losses


@dataclass
class KDLossConf:
    _target_: str = "kdrun.losses.KDLoss"
    alpha: float = 0.7
    temperature: float = 3.0

    def check(self, key: str) -> None:
        if not (_finite(self.alpha) and 0 <= self.alpha <= 1):
            _fail(f"{key}.alpha", self.alpha, "a number in [0, 1] (the weight of the teacher's soft targets)")
        if not (_finite(self.temperature) and self.temperature > 0):
            _fail(f"{key}.temperature", self.temperature, "a finite number > 0")


# --------------------------------------------------------------------------- the rest

OPTIMIZERS = ("adam", "adamw", "sgd")
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


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
        if not _DEVICE.match(str(self.device)):
            _fail(f"{key}.device", self.device, "one of auto, cpu, cuda, cuda:N, mps")
        _check_int_at_least(f"{key}.threads", self.threads, 1, allow_none=True)
        _check_int_at_least(f"{key}.seed", self.seed, 0)


@dataclass
class CacheConf:
    enabled: bool = True
    dir: Optional[str] = None


@dataclass
class KDRunConf:
    dataset: Any = MISSING
    model: ModelPairConf = field(default_factory=ModelPairConf)
    loss: Any = MISSING
    trainer: TrainerConf = field(default_factory=TrainerConf)
    cache: CacheConf = field(default_factory=CacheConf)
    plots: bool = True


def register_configs() -> None:
    """Store the schemas where conf/*.yaml find them (``/schema/...@_here_`` in their defaults
    lists), the split defaults that every dataset gets, and Hydra settings kept in code."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="kdrun_schema", node=KDRunConf)
    # Untyped, so that a user's dataset YAML (a _target_ and its own keys) merges onto it.
    cs.store(group="schema/dataset", name="split", node=dataclasses.asdict(DataConf()))
    cs.store(group="schema/dataset", name="synthetic", node=SyntheticDataConf)
    cs.store(group="schema/dataset", name="digits", node=DigitsDataConf)
    cs.store(group="schema/dataset", name="idx", node=IdxDataConf)
    cs.store(group="schema/model", name="mlp", node=MLPConf)
    cs.store(group="schema/loss", name="kd", node=KDLossConf)
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
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {prefix}{close[0]}? " if close else ""
                shown = ", ".join(prefix + k for k in known if not k.startswith("_"))
                raise ConfigError(f"{prefix}{key} is not a setting: {hint}the settings here are {shown}")
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
    first bad key."""
    _check_known_keys(cfg)
    missing = _missing_keys(cfg)
    if missing:
        raise ConfigError(f"{missing[0]} has no value (???): give it one, e.g. {missing[0]}=...")
    plain = OmegaConf.to_object(cfg)
    dataset = plain.dataset
    if not isinstance(dataset, DataConf):  # a user's dataset: its split settings are still kdrun's
        dataset = DataConf(**{k: dataset[k] for k in DATA_KEYS if k in dataset})
    dataset.check("dataset")
    for role in ("teacher", "student"):
        architecture = getattr(plain.model, role)
        if isinstance(architecture, MLPConf):
            architecture.check(f"model.{role}")
    if isinstance(plain.loss, KDLossConf):
        plain.loss.check("loss")
        if not dataset.transfer_labels and plain.loss.alpha != 1:
            _fail(
                "loss.alpha",
                plain.loss.alpha,
                "with dataset.transfer_labels=false the students have no labels, so alpha must be 1 (soft targets only)",
            )
    plain.trainer.check("trainer")


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
        try:
            for attribute in parts[split:]:
                found = getattr(found, attribute)
        except AttributeError:
            raise ConfigError(f"{key}._target_={path!r} cannot be found: module {module_name} has no {'.'.join(parts[split:])}") from None
        return found
    raise ConfigError(
        f"{key}._target_={path!r} cannot be imported: no module {parts[0]!r}; "
        "its module must be importable, e.g. from a folder on PYTHONPATH"
    )


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
        raise ConfigError(f"{key}: {target} does not take the settings {sorted(arguments)}: {error}") from None
    try:
        return hydra_instantiate(node, **extra, _convert_="all")
    except InstantiationException as error:  # what the target itself raised, unwrapped
        cause = error.__cause__
        if cause is None:
            raise
        if isinstance(cause, ValueError) and not isinstance(cause, ConfigError) and str(target).startswith("kdrun."):
            raise ConfigError(f"{key}: {cause}") from None
        raise cause from None


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


def config_hash(cfg: DictConfig) -> str:
    """A digest of the settings that change what a run measures: equal digests, equal runs."""
    plain = to_plain(cfg)
    for dotted in RESULT_UNCHANGED_KEYS:
        *parents, last = dotted.split(".")
        node = plain
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return digest(plain)


def config_error_message(error: BaseException) -> Optional[str]:
    """One line for a mistake Hydra finds while composing the config (an unknown key or option,
    a value of the wrong type, an override it cannot read); None for any other error."""
    from hydra.errors import HydraException, MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    text = str(error)
    if isinstance(error, MissingConfigException):
        missing = re.search(r"Could not find '([^']+)'", text)
        if missing is None or "Available options" not in text:
            return text.splitlines()[0]
        listed = text.split("Available options in", 1)[1].split("Config search path", 1)[0]
        options = re.findall(r"^\t(\S+)$", listed, re.M)
        group, _, option = missing.group(1).rpartition("/")
        close = difflib.get_close_matches(option, options, n=1)
        hint = f"did you mean {group}={close[0]}? " if close else ""
        return f"{group}={option} is not an option: {hint}choose from {', '.join(options)}"
    cause = error.__cause__ if isinstance(error, HydraException) and error.__cause__ is not None else error
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and getattr(cause, "full_key", None):
        key = str(cause.full_key)
        prefix = key.rpartition(".")[0]
        schema = getattr(cause, "object_type", None)
        known = [f.name for f in dataclasses.fields(schema) if not f.name.startswith("_")] if dataclasses.is_dataclass(schema) else []
        close = difflib.get_close_matches(key.rpartition(".")[2], known, n=1)
        hint = f"did you mean {prefix + '.' if prefix else ''}{close[0]}? " if close else ""
        listing = f"the settings here are {', '.join((prefix + '.' if prefix else '') + k for k in known)}" if known else "kdrun train --cfg job lists the settings"
        return f"{key} is not a setting: {hint}{listing}"
    if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
        reason = str(cause).splitlines()[0]
        return f"{cause.full_key}={cause.value!r} is not allowed: {reason}"
    if isinstance(error, OverrideParseException):
        return f"cannot read the command line: {text.splitlines()[0]}"
    if isinstance(error, HydraException):
        return " ".join(line.strip() for line in text.splitlines() if line.strip())
    return None
