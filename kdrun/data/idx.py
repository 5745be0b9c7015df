"""MNIST and Fashion-MNIST from their standard IDX files; kdrun never downloads anything.

The four files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each plain or ``.gz``) are looked for in
torchvision's layout (``<root>/MNIST/raw/``, ``<root>/FashionMNIST/raw/``), then in
``<root>/MNIST/`` and finally in ``<root>`` itself. The published train/test split is kept; the
images stay uint8 ``[n, 1, 28, 28]`` (kdrun's data layer scales them to [0, 1]).

IDX format: a big-endian header (magic number ``0x0000 08 NN``: unsigned bytes, NN dimensions;
then one 32-bit size per dimension) followed by the data. Images are ``0x00000803``
(count × rows × columns), labels ``0x00000801`` (count). Each file is read with one ``readinto``
into a preallocated array: no intermediate copies, so a 60,000 × 784 set needs its 47 MB of bytes.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from kdrun.errors import DataError

IMAGES_MAGIC = 0x00000803
LABELS_MAGIC = 0x00000801
NUM_CLASSES = 10

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# dataset name -> (torchvision's folder name, where the files come from)
SOURCES = {
    "mnist": (
        "MNIST",
        "the MNIST distribution (http://yann.lecun.com/exdb/mnist/, mirrored at "
        "https://ossci-datasets.s3.amazonaws.com/mnist/) or torchvision.datasets.MNIST(root, download=True)",
    ),
    "fashion_mnist": (
        "FashionMNIST",
        "the Fashion-MNIST distribution (https://github.com/zalandoresearch/fashion-mnist, folder data/fashion) "
        "or torchvision.datasets.FashionMNIST(root, download=True)",
    ),
}


def _where_from(name: str, root: Path) -> str:
    folder, source = SOURCES[name]
    return (
        f"Get the four IDX files ({', '.join(f for pair in FILES.values() for f in pair)}, plain or .gz) from "
        f"{source}, which puts them in {root / folder / 'raw'}; a flat folder works too. kdrun never downloads."
    )


def search_dirs(root: Path, name: str) -> list[Path]:
    """Folders searched for ``name``'s files, in order."""
    folder = SOURCES[name][0]
    return [root / folder / "raw", root / folder, root]


def find_file(root: Path, name: str, base: str) -> Path:
    """The first of ``<dir>/<base>`` or ``<dir>/<base>.gz`` over ``search_dirs``."""
    dirs = search_dirs(root, name)
    for directory in dirs:
        for candidate in (directory / base, directory / f"{base}.gz"):
            if candidate.is_file():
                return candidate
    looked = ", ".join(str(d) for d in dirs)
    raise DataError(f"dataset {name}: cannot find {base} (or {base}.gz) in any of: {looked}. {_where_from(name, root)}")


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: Union[str, Path], magic: int, hint: str = "") -> np.ndarray:
    """Read one IDX file of unsigned bytes with the given magic number (``0x0803`` for images,
    ``0x0801`` for labels); returns a uint8 array shaped as its header says. Raises DataError
    naming the file for a wrong magic number, a short header, truncated data or trailing bytes."""
    path = Path(path)
    ndim = magic & 0xFF
    kind = "images" if magic == IMAGES_MAGIC else "labels" if magic == LABELS_MAGIC else f"{ndim}-d data"
    suffix = f" {hint}" if hint else ""
    try:
        with _open(path) as handle:
            header = handle.read(4)
            if len(header) < 4:
                raise DataError(f"{path}: truncated: {len(header)} bytes, shorter than an IDX header.{suffix}")
            (found,) = struct.unpack(">I", header)
            if found != magic:
                detail = ""
                if header[:2] == b"\x1f\x8b":
                    detail = " (the file is gzip-compressed: name it with a .gz suffix)"
                elif found >> 16 == 0 and found & 0xFF00 == 0x0800:
                    detail = f" (an IDX file of unsigned bytes with {found & 0xFF} dimensions; the {kind} file needs {ndim})"
                raise DataError(
                    f"{path}: not an IDX {kind} file: magic number 0x{found:08x}, expected 0x{magic:08x} "
                    f"(unsigned bytes, {ndim} dimension{'s' if ndim != 1 else ''}){detail}.{suffix}"
                )
            dims_bytes = handle.read(4 * ndim)
            if len(dims_bytes) < 4 * ndim:
                raise DataError(f"{path}: truncated: the IDX header ends before its {ndim} dimension sizes.{suffix}")
            dims = struct.unpack(f">{ndim}I", dims_bytes)
            expected = int(np.prod(dims, dtype=np.int64))
            data = np.empty(expected, dtype=np.uint8)
            got = handle.readinto(memoryview(data)) if expected else 0
            # readinto may return less than asked only at the end of the file (gzip reads in loops)
            while got < expected:
                more = handle.readinto(memoryview(data)[got:])
                if not more:
                    break
                got += more
            if got < expected:
                shape = " × ".join(str(d) for d in dims)
                raise DataError(
                    f"{path}: truncated: its header promises {kind} of shape {shape} ({expected:,} bytes of data) "
                    f"but the file holds only {got:,}.{suffix}"
                )
            extra = len(handle.read(1 << 16))
            if extra:
                raise DataError(
                    f"{path}: damaged: more bytes than its header's shape {' × '.join(str(d) for d in dims)} "
                    f"accounts for ({expected:,}).{suffix}"
                )
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise DataError(f"{path}: damaged or truncated gzip file ({error}).{suffix}") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected an IDX file.{suffix}") from None
    except OSError as error:
        raise DataError(f"{path}: cannot be read ({error.strerror or error}).{suffix}") from None
    return data.reshape(dims)


def load_idx_split(root: Path, name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's images as uint8 ``[n, 1, rows, cols]`` and labels as int64."""
    images_base, labels_base = FILES[split]
    hint = _where_from(name, root)
    images_path = find_file(root, name, images_base)
    labels_path = find_file(root, name, labels_base)
    images = read_idx(images_path, IMAGES_MAGIC, hint)
    labels = read_idx(labels_path, LABELS_MAGIC, hint)
    if len(images) != len(labels):
        raise DataError(
            f"dataset {name}: {images_path} holds {len(images):,} images but {labels_path} holds "
            f"{len(labels):,} labels; expected one label per image. {hint}"
        )
    if len(labels) and int(labels.max()) >= NUM_CLASSES:
        raise DataError(f"{labels_path}: labels must lie in 0..{NUM_CLASSES - 1}, found {int(labels.max())}. {hint}")
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).to(torch.int64)


def load_idx_dataset(root: Union[str, Path, None], name: str) -> dict:
    """MNIST or Fashion-MNIST (``name``: ``mnist`` / ``fashion_mnist``) from ``root``: the published
    train and test splits as uint8 images. Raises DataError for a missing or damaged file."""
    if name not in SOURCES:
        raise DataError(f"dataset.name={name!r}: the IDX loader reads {' or '.join(SOURCES)}")
    if root is None or str(root) == "":
        raise DataError(f"dataset.root is not set: name the folder holding the {name} IDX files (dataset.root=PATH)")
    given = str(root)
    root = Path(given).expanduser().absolute()  # messages name absolute paths
    if not root.is_dir():
        raise DataError(
            f"dataset.root={given!r}: no such folder ({root}); "
            f"set dataset.root to the folder holding the {name} IDX files. {_where_from(name, root)}"
        )
    train = load_idx_split(root, name, "train")
    test = load_idx_split(root, name, "test")
    if train[0].shape[1:] != test[0].shape[1:]:
        raise DataError(
            f"dataset {name}: the training images are {tuple(train[0].shape[2:])} but the test images "
            f"{tuple(test[0].shape[2:])}; expected both splits from the same distribution. {_where_from(name, root)}"
        )
    return {"train": train, "test": test, "num_classes": NUM_CLASSES}


def load_mnist(root: Union[str, Path, None] = "data") -> dict:
    """``dataset=mnist``: MNIST's IDX files under ``root``."""
    return load_idx_dataset(root, "mnist")


def load_fashion_mnist(root: Union[str, Path, None] = "data") -> dict:
    """``dataset=fashion_mnist``: Fashion-MNIST's IDX files under ``root``."""
    return load_idx_dataset(root, "fashion_mnist")


def write_idx(path: Union[str, Path], array: np.ndarray, compress: Optional[bool] = None) -> Path:
    """Write a uint8 array as an IDX file (gzip when ``path`` ends in .gz, or when ``compress``).
    For tests and for turning other data into kdrun's input."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">I", 0x00000800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    gz = path.suffix == ".gz" if compress is None else compress
    with (gzip.open(path, "wb", compresslevel=1) if gz else open(path, "wb")) as handle:
        handle.write(header)
        handle.write(array.tobytes())
    return path
