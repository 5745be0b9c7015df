"""scikit-learn's 8×8 handwritten digits, shipped inside kdrun (no download, no scikit-learn).

1,797 real images of 8×8 pixel counts in 0..16 and their labels 0..9, read from
``kdrun/data/digits.csv.gz``: a copy of scikit-learn's file (BSD 3-Clause; the data are the
UCI "Optical Recognition of Handwritten Digits" test set, Alpaydin & Kaynak 1998). See
``kdrun/data/README.md`` for the attribution and licence.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from kdrun.errors import DataError

DIGITS_FILE = Path(__file__).resolve().parent / "digits.csv.gz"
N_EXAMPLES, N_FEATURES, N_CLASSES, MAX_VALUE = 1797, 64, 10, 16


def load_digits(path: Path = DIGITS_FILE) -> dict:
    """The digits as one pool (kdrun splits it): images float32 ``[1797, 1, 8, 8]`` scaled to
    [0, 1] (pixel counts / 16), labels int64 in 0..9."""
    try:
        with gzip.open(path, "rt", encoding="ascii") as handle:
            table = np.loadtxt(handle, delimiter=",", dtype=np.float32, ndmin=2)
    except FileNotFoundError:
        raise DataError(f"{path}: kdrun's bundled digits file is missing; reinstall kdrun") from None
    except (OSError, EOFError, ValueError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: kdrun's bundled digits file is damaged ({error}); reinstall kdrun") from None
    if table.shape != (N_EXAMPLES, N_FEATURES + 1):
        raise DataError(
            f"{path}: expected {N_EXAMPLES} rows of {N_FEATURES} pixels and a label, "
            f"found shape {table.shape}; reinstall kdrun"
        )
    pixels, labels = table[:, :N_FEATURES], table[:, N_FEATURES]
    if pixels.min() < 0 or pixels.max() > MAX_VALUE or labels.min() < 0 or labels.max() >= N_CLASSES:
        raise DataError(f"{path}: pixel counts must lie in 0..{MAX_VALUE} and labels in 0..{N_CLASSES - 1}; reinstall kdrun")
    x = torch.from_numpy(np.ascontiguousarray(pixels)).reshape(N_EXAMPLES, 1, 8, 8) / MAX_VALUE
    y = torch.from_numpy(labels.astype(np.int64))
    return {"train": (x, y), "num_classes": N_CLASSES}
