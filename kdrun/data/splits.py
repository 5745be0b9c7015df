"""From a loader's examples to the splits a run trains and evaluates on.

A dataset is a config node: kdrun's split settings (``DataConf``) plus a ``_target_`` and its
arguments. The target returns ``{"train": (x, y)}`` and optionally ``"test": (x, y)`` (a
published test split, kept as published) and ``"num_classes"``; ``x`` is float or uint8 of any
per-example shape, ``y`` integer class ids. Val (and test, when the loader has none) are carved
out stratified and seeded; the students' transfer set is a stratified subset of train.

uint8 inputs (images) stay uint8 in memory, a quarter of float32 (CIFAR: 150 MB instead of
600 MB); ``DataSplits.prepare`` turns a batch of them into the models' inputs: scaled to [0, 1]
and, with ``normalize``, standardised with the training split's statistics (per channel for
images ``[C, H, W]``). Float inputs are standardised once, when loaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from kdrun.config import DATA_KEYS, DataConf, instantiate, to_plain
from kdrun.errors import DataError, describe_os_error

log = logging.getLogger("kdrun")


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class Inputs:
    """How stored rows become model inputs: uint8 rows are scaled to [0, 1], then standardised
    with ``mean`` and ``std`` (shaped to broadcast against a batch); float rows were standardised
    when loaded and pass as they are."""

    mean: Optional[torch.Tensor] = None
    std: Optional[torch.Tensor] = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x
        x = x.float().div_(255.0)
        return x if self.mean is None else x.sub_(self.mean).div_(self.std)

    def to(self, device: torch.device) -> "Inputs":
        return Inputs(*(t.to(device) if t is not None else None for t in (self.mean, self.std)))


@dataclass
class DataSplits:
    name: str
    train: Split
    val: Split
    test: Split
    transfer_index: torch.Tensor  # rows of `train` the students learn from
    num_classes: int
    normalization: Optional[dict[str, Any]]  # {"mean", "std"}: floats, or one per channel; or None
    prepare: Inputs = field(default_factory=Inputs)  # a batch of stored rows -> the models' inputs

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    def to(self, device: torch.device) -> "DataSplits":
        moved = (split.to(device) for split in (self.train, self.val, self.test))
        return DataSplits(self.name, *moved, self.transfer_index.to(device), self.num_classes, self.normalization, self.prepare.to(device))

    @property
    def transfer(self) -> Split:
        if len(self.transfer_index) == len(self.train):  # the whole split: no copy of the data
            return self.train
        return Split(self.train.x[self.transfer_index], self.train.y[self.transfer_index])

    def fingerprint(self, include_transfer: bool = True) -> str:
        """A digest of the exact tensors and split, for cache keys. The teacher's key leaves the
        transfer set out: the teacher trains on the whole training split whatever it is."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(repr(self.normalization).encode())  # uint8 rows are standardised per batch
        parts = [self.train.x, self.train.y, self.val.x, self.val.y]
        for t in parts + ([self.transfer_index] if include_transfer else []):
            digest.update(t.contiguous().cpu().numpy())  # the buffer itself, not a copy of it
        return digest.hexdigest()


# --------------------------------------------------------------------------- splitting


def _largest_remainder(quotas: torch.Tensor, total: int) -> torch.Tensor:
    """Whole counts, each the floor of its quota or one more, summing to ``total``."""
    counts = quotas.floor().long()
    leftover = total - int(counts.sum())
    if leftover > 0:
        counts[torch.argsort(quotas - counts, descending=True, stable=True)[:leftover]] += 1
    return counts


def stratified_split(labels: torch.Tensor, fractions: tuple[float, ...], seed: int) -> list[torch.Tensor]:
    """Split indices class by class: about ``fractions`` of each class go to the held-out parts
    (in order), the rest to the first returned part. Each held-out part holds exactly
    round(fraction × n) examples, spread over the classes in proportion (largest remainders get
    the leftover places). Returns ``[rest, part_1, part_2, ...]``, each sorted, the same for the
    same labels and seed."""
    generator = torch.Generator().manual_seed(seed)
    classes, sizes = torch.unique(labels, return_counts=True)
    takes = [_largest_remainder(sizes.double() * f, int(round(f * len(labels)))) for f in fractions]
    parts: list[list[torch.Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for index, label in enumerate(classes.tolist()):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        start = 0
        for part, take in enumerate(takes, start=1):
            count = int(take[index])
            parts[part].append(members[start : start + count])
            start += count
        parts[0].append(members[start:])
    return [torch.sort(torch.cat(p)).values if p else torch.empty(0, dtype=torch.long) for p in parts]


def stratified_subset(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Exactly ``count`` indices, each class represented in proportion (largest remainders get
    the leftover places), sorted; the same for the same labels and seed."""
    generator = torch.Generator().manual_seed(seed)
    classes, sizes = torch.unique(labels, return_counts=True)
    take = _largest_remainder(sizes.double() * count / len(labels), count)
    chosen = [
        torch.nonzero(labels == label).flatten()[torch.randperm(int(size), generator=generator)[:k]]
        for label, size, k in zip(classes.tolist(), sizes.tolist(), take.tolist())
    ]
    return torch.sort(torch.cat(chosen)).values


def transfer_count(transfer_size: Optional[float], n_train: int) -> int:
    """How many training examples the students see: all (null), a fraction, or a count."""
    if transfer_size is None:
        return n_train
    if transfer_size <= 1:
        return max(1, int(round(transfer_size * n_train)))
    if int(transfer_size) > n_train:  # taking fewer than asked would pass unseen
        raise DataError(
            f"dataset.transfer_size={transfer_size:g} is more examples than the training split's {n_train}; "
            f"give a count up to {n_train}, a fraction in (0, 1], or null for the whole split"
        )
    return int(transfer_size)


# --------------------------------------------------------------------------- loading


def _examples(loaded: Any, part: str, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``loaded[part]`` as (inputs, int64 labels), checked."""
    pair = loaded[part]
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise DataError(f"{where}: {part!r} must be a pair (x, y) of tensors, got {type(pair).__name__}")
    x, y = (torch.as_tensor(t) for t in pair)
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.dim() != 1:
        raise DataError(f"{where}: {part} labels must be a 1-d tensor of integer class ids, got {y.dtype} of shape {tuple(y.shape)}")
    if x.dim() < 2 or len(x) != len(y):
        raise DataError(f"{where}: {part} inputs must be [n, ...] with one row per label: {tuple(x.shape)} for {len(y)} labels")
    if x.dtype.is_floating_point:  # NaN in held-out rows would pass silently, argmax-ed into some class
        bad = torch.cat([~torch.isfinite(chunk.float()).flatten(1).all(dim=1) for chunk in x.split(4096)])  # as the models see them
        if bad.any():
            raise DataError(
                f"{where}: {part} inputs hold NaN or inf (or values beyond float32's ±3.4e38): row {int(bad.nonzero()[0])} ({int(bad.sum())} rows in all)"
            )
    return x, y.long()


def _check_labels(y: torch.Tensor, num_classes: int, where: str) -> None:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"{where}: labels must lie in [0, {num_classes}) for {num_classes} classes (found {int(y.min())}..{int(y.max())})")


def _stored(x: torch.Tensor) -> torch.Tensor:
    """uint8 rows as they are (scaled per batch); anything else as float32."""
    return x if x.dtype in (torch.uint8, torch.float32) else x.float()


def _statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and unbiased std of the training rows as the models see them (uint8 scaled to
    [0, 1]): per channel for images [n, C, H, W] (shaped [C, 1, 1]), else over everything
    (0-d). Summed in float64 chunks, so uint8 data is never copied whole as floats."""
    dims = (0, 2, 3) if x.dim() == 4 else tuple(range(x.dim()))
    total = total_sq = 0.0
    for chunk in x.split(4096):
        values = chunk.double() / 255.0 if x.dtype == torch.uint8 else chunk.double()
        total = total + values.sum(dims)
        total_sq = total_sq + values.square().sum(dims)
    count = x.numel() // (x.shape[1] if x.dim() == 4 else 1)
    mean = total / count
    std = ((total_sq - count * mean.square()) / max(1, count - 1)).clamp_min(0).sqrt().clamp_min(1e-8)
    shape = (-1, 1, 1) if x.dim() == 4 else ()
    return mean.float().reshape(shape), std.float().reshape(shape)


def load_data(node: Any) -> DataSplits:
    """Load the ``dataset`` config node, split it, standardise it with training statistics."""
    plain = to_plain(node)
    settings = DataConf(**{k: plain[k] for k in DATA_KEYS if k in plain})
    name = settings.name or str(plain.get("_target_"))
    where = f"dataset {name}"
    try:
        loaded = instantiate({k: v for k, v in plain.items() if k not in DATA_KEYS}, "dataset")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as error:  # a path to fix, as kdrun's loaders say
        raise DataError(f"{where}: its loader cannot read a file: {describe_os_error(error)} (relative paths start at {os.getcwd()})") from error
    if not isinstance(loaded, dict) or "train" not in loaded:
        got = f"a dict with keys {sorted(map(str, loaded))}" if isinstance(loaded, dict) else type(loaded).__name__
        raise DataError(f"{where}: its loader must return a dict with 'train': (x, y) and optionally 'test': (x, y), got {got}")
    x, y = _examples(loaded, "train", where)
    if not len(y):
        raise DataError(f"{where}: its loader returned no training examples")
    test = _examples(loaded, "test", where) if loaded.get("test") is not None else None
    if test is not None and test[0].shape[1:] != x.shape[1:]:
        raise DataError(f"{where}: test examples are {tuple(test[0].shape[1:])} but training examples {tuple(x.shape[1:])}")
    num_classes = loaded.get("num_classes")
    if num_classes is None:  # the largest class id seen, plus one
        num_classes = 1 + max(int(labels.max()) for labels in (y, test[1] if test is not None else y) if len(labels))
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise DataError(f"{where}: num_classes={num_classes!r}: a classifier needs an integer number of classes >= 2 (labels 0..num_classes-1)")
    _check_labels(y, num_classes, where)
    if test is None:
        train_idx, val_idx, test_idx = stratified_split(y, (settings.val_fraction, settings.test_fraction), settings.split_seed)
        train, val, test_split = (Split(_stored(x[i]), y[i]) for i in (train_idx, val_idx, test_idx))
    else:
        if settings.test_fraction != DataConf.test_fraction:  # set, but the data decides its test split
            log.warning("dataset.test_fraction=%g is not used: %s has its own test split (%d examples)", settings.test_fraction, where, len(test[1]))
        _check_labels(test[1], num_classes, f"{where} (test split)")
        train_idx, val_idx = stratified_split(y, (settings.val_fraction,), settings.split_seed)
        train, val = Split(_stored(x[train_idx]), y[train_idx]), Split(_stored(x[val_idx]), y[val_idx])
        test_x = _stored(test[0])
        owned = test_x is not test[0] or test_x.dtype == torch.uint8
        test_split = Split(test_x if owned else test_x.clone(), test[1])  # float rows: standardised in place below
    published_test = test is not None  # the data's own test split: the fractions carve val (and train) only
    del loaded, x, y, test  # each split is a fresh tensor: keep memory near the data's own size
    for part, split in (("train", train), ("val", val), ("test", test_split)):
        if len(split) == 0:
            if part == "test" and published_test:
                raise DataError(f"{where}: its loader returned an empty 'test' split")
            carved = len(train) + len(val) + (0 if published_test else len(test_split))
            fractions = f"dataset.val_fraction={settings.val_fraction}" + ("" if published_test else f", dataset.test_fraction={settings.test_fraction}")
            raise DataError(
                f"{where}: the {part} split is empty: {carved} examples split with {fractions} "
                f"(each part gets round(fraction x {carved})); use more data or larger fractions"
            )
    unseen = (torch.bincount(train.y, minlength=num_classes) == 0).nonzero().flatten().tolist()
    if unseen:  # allowed (a class only the test split has, say), but no model can learn it
        listed = ", ".join(map(str, unseen[:10])) + (", ..." if len(unseen) > 10 else "")
        log.warning("%s: %d of its %d classes (%s) have no example in the training split: no model can learn them", where, len(unseen), num_classes, listed)
    normalization, prepare = None, Inputs()
    if settings.normalize:
        mean, std = _statistics(train.x)
        if train.x.dtype == torch.uint8:
            prepare = Inputs(mean, std)
        else:
            for split in (train, val, test_split):
                split.x.sub_(mean).div_(std)
        normalization = {key: value.flatten().tolist() if value.dim() else value.item() for key, value in (("mean", mean), ("std", std))}

    n_transfer = transfer_count(settings.transfer_size, len(train))
    if n_transfer == len(train):
        transfer_index = torch.arange(len(train))
    else:
        transfer_index = stratified_subset(train.y, n_transfer, settings.split_seed + 1)
    return DataSplits(name, train, val, test_split, transfer_index, num_classes, normalization, prepare)
