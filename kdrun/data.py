"""Datasets as in-memory tensors, split into train / val / test, plus the students' transfer set.

Every loader returns a ``RawData``: either one pool of examples (split here, stratified and
seeded) or a published train/test split (val is carved from train). Inputs are flattened to
``[n, features]`` float32 and labels are int64 in ``[0, num_classes)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from kdrun.config import DigitsDataConf, IdxDataConf, SplitConf, SyntheticDataConf


class DataError(ValueError):
    """A dataset cannot be loaded; the message names the file or setting and what was expected."""


@dataclass
class RawData:
    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    x_test: Optional[torch.Tensor] = None  # a published test split, kept as published
    y_test: Optional[torch.Tensor] = None


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device) -> "Split":
        return Split(self.x.to(device), self.y.to(device))


@dataclass
class DataSplits:
    name: str
    train: Split
    val: Split
    test: Split
    transfer_index: torch.Tensor  # rows of `train` the students learn from
    num_classes: int

    @property
    def input_dim(self) -> int:
        return self.train.x.shape[1]

    @property
    def transfer(self) -> Split:
        if len(self.transfer_index) == len(self.train):  # the whole split: no copy of the data
            return self.train
        return Split(self.train.x[self.transfer_index], self.train.y[self.transfer_index])

    def fingerprint(self, include_transfer: bool = True) -> str:
        """A digest of the exact tensors and split, for cache keys. The teacher's key leaves the
        transfer set out: the teacher trains on the whole training split whatever it is."""
        digest = hashlib.blake2b(digest_size=16)
        parts = [self.train.x, self.train.y, self.val.x, self.val.y]
        for t in parts + ([self.transfer_index] if include_transfer else []):
            digest.update(t.contiguous().cpu().numpy())  # the buffer itself, not a copy of it
        return digest.hexdigest()


# --------------------------------------------------------------------------- loaders


def make_synthetic(n_samples: int, input_dim: int, num_classes: int, signal_scale: float, seed: int) -> RawData:
    """The notebook's synthetic set, drawn in the notebook's order from a generator seeded with
    ``seed``: the same tensors, bit for bit, as its cell after ``torch.manual_seed(seed)``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n_samples, input_dim, generator=generator)
    y = torch.randint(0, num_classes, (n_samples,), generator=generator)
    for label in range(num_classes):
        class_signal = torch.randn(input_dim, generator=generator) * signal_scale
        x[y == label] += class_signal
    return RawData(x, y, num_classes)


def _load_synthetic(cfg: SyntheticDataConf) -> RawData:
    return make_synthetic(cfg.n_samples, cfg.input_dim, cfg.num_classes, cfg.signal_scale, cfg.seed)


def _load_digits(cfg: DigitsDataConf) -> RawData:
    from kdrun.digits import load_digits

    return load_digits()


def _load_idx(cfg: IdxDataConf) -> RawData:
    from kdrun.idx import load_idx_dataset

    return load_idx_dataset(cfg.root, cfg.name)


LOADERS: dict[str, Callable[[SplitConf], RawData]] = {
    "synthetic": _load_synthetic,
    "digits": _load_digits,
    "mnist": _load_idx,
    "fashion_mnist": _load_idx,
}


# --------------------------------------------------------------------------- splitting


def stratified_split(
    labels: torch.Tensor, fractions: tuple[float, ...], seed: int
) -> list[torch.Tensor]:
    """Split indices class by class: ``fractions`` of each class go to the held-out parts (in
    order), the rest to the first returned part. Returns ``[rest, part_1, part_2, ...]``, each
    sorted, the same for the same labels and seed."""
    generator = torch.Generator().manual_seed(seed)
    parts: list[list[torch.Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        start = 0
        for i, fraction in enumerate(fractions):
            count = int(round(len(members) * fraction))
            parts[i + 1].append(members[start : start + count])
            start += count
        parts[0].append(members[start:])
    return [torch.sort(torch.cat(p)).values if p else torch.empty(0, dtype=torch.long) for p in parts]


def stratified_subset(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """Exactly ``count`` indices, each class represented in proportion (largest remainders get
    the leftover places), sorted; the same for the same labels and seed."""
    generator = torch.Generator().manual_seed(seed)
    classes, sizes = torch.unique(labels, return_counts=True)
    quotas = sizes.double() * count / len(labels)
    take = quotas.floor().long()
    leftover = count - int(take.sum())
    if leftover:
        take[torch.argsort(quotas - take, descending=True, stable=True)[:leftover]] += 1
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
    return min(int(transfer_size), n_train)


def _check_labels(y: torch.Tensor, num_classes: int, where: str) -> None:
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"{where}: labels must lie in [0, {num_classes}) for {num_classes} classes "
            f"(found {int(y.min())}..{int(y.max())})"
        )


def load_data(cfg: SplitConf) -> DataSplits:
    """Load ``cfg`` (the ``dataset`` node), split it, normalise it with training statistics."""
    raw = LOADERS[cfg.name](cfg)
    x, y = raw.x.reshape(len(raw.x), -1).float(), raw.y.long()
    _check_labels(y, raw.num_classes, f"dataset {cfg.name}")
    if raw.x_test is None:
        train_idx, val_idx, test_idx = stratified_split(y, (cfg.val_fraction, cfg.test_fraction), cfg.split_seed)
        train, val, test = (Split(x[i], y[i]) for i in (train_idx, val_idx, test_idx))
    else:
        train_idx, val_idx = stratified_split(y, (cfg.val_fraction,), cfg.split_seed)
        train, val = Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx])
        test = Split(raw.x_test.reshape(len(raw.x_test), -1).float(), raw.y_test.long())
        _check_labels(test.y, raw.num_classes, f"dataset {cfg.name} (test split)")
    for part, split in (("train", train), ("val", val), ("test", test)):
        if len(split) == 0:
            raise DataError(
                f"dataset {cfg.name}: the {part} split is empty ({len(y)} examples with "
                f"val_fraction={cfg.val_fraction}, test_fraction={cfg.test_fraction}); use more data or larger fractions"
            )
    num_classes = raw.num_classes
    del raw, x, y  # each split is a fresh tensor: keep memory near the data's own size
    if cfg.normalize:
        mean, std = train.x.mean(), train.x.std().clamp_min(1e-8)
        for split in (train, val, test):
            split.x.sub_(mean).div_(std)

    n_transfer = transfer_count(cfg.transfer_size, len(train))
    if n_transfer == len(train):
        transfer_index = torch.arange(len(train))
    else:
        transfer_index = stratified_subset(train.y, n_transfer, cfg.split_seed + 1)
    return DataSplits(cfg.name, train, val, test, transfer_index, num_classes)
