"""CIFAR-10 and CIFAR-100 from their published "python version" files; kdrun never downloads anything.

Where the files are looked for (the first that exists is used, whole; nothing is mixed from two
places). For CIFAR-10, with ``F = cifar-10-batches-py`` and ``A = cifar-10-python.tar.gz``:

1. ``<root>/F/``            -- the archive extracted (torchvision's layout: ``CIFAR10(root)``)
2. ``<root>/A``             -- the archive as published, read in place (nothing is extracted to disk)
3. ``<root>/cifar10/F/``    -- the same two, one folder down (a ``data`` folder shared by datasets)
4. ``<root>/cifar10/A``
5. ``<root>/cifar10/``      -- the batch files loose in that folder
6. ``<root>/``              -- the batch files loose in root (root names the extracted folder itself)

CIFAR-100 is the same with ``F = cifar-100-python``, ``A = cifar-100-python.tar.gz`` and the
subfolder ``cifar100``. A folder counts when it is a folder (3: when it holds ``F``; 5 and 6:
when they hold the first batch file, ``data_batch_1`` / ``train``); ``dataset.root`` may also
name the archive itself.

Format (https://www.cs.toronto.edu/~kriz/cifar.html): each batch file is a pickle (written by
Python 2) of a dict. ``b"data"`` is a uint8 array ``[n, 3072]``: per image the 1024 red values
of its 32×32 pixels row by row, then the green, then the blue -- so a reshape to ``[n, 3, 32, 32]``
is the image, channels first. CIFAR-10: ``data_batch_1`` ... ``data_batch_5`` (training, 10,000
images each) and ``test_batch`` (10,000), labels in ``b"labels"`` (0..9). CIFAR-100: ``train``
(50,000) and ``test`` (10,000), labels in ``b"fine_labels"`` (0..99; the 20 ``b"coarse_labels"``
are not used). The published train/test split is kept; images stay uint8 (kdrun's data layer
scales them to [0, 1]).

Pickles can run code. The files are read with an unpickler that builds only what these files
hold -- dicts, lists, bytes, numbers and numpy uint8 arrays -- and refuses any other global
(``os.system``, ``builtins.eval``, ...) with a DataError naming the file. The numpy names allowed
are the array and dtype constructors numpy's own pickles use (``numpy.core.multiarray._reconstruct``
in the published files; ``numpy._core...`` and ``_frombuffer`` for files re-pickled by numpy 2 or
with protocol 5).

Memory: a batch is unpickled straight from its file (or from the archive's stream, which is read
once, front to back) and the batches are joined into one uint8 array: CIFAR's 60,000 images take
184 MB, with one more copy of the training images (150 MB) for a moment while they are joined.
"""

from __future__ import annotations

import gzip
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np
import torch

from kdrun.errors import DataError

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGE_SHAPE = (3, 32, 32)
IMAGE_BYTES = 3 * 32 * 32


@dataclass(frozen=True)
class CifarSpec:
    name: str  # the dataset's name in messages: cifar10 / cifar100
    title: str  # CIFAR-10 / CIFAR-100
    folder: str  # the folder the archive holds
    archive: str  # the published archive's file name
    subfolder: str  # <root>/<subfolder>/ is searched too
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    num_classes: int
    torchvision: str  # the torchvision class that downloads the same files

    @property
    def files(self) -> tuple[str, ...]:
        return self.train_files + self.test_files


CIFAR10 = CifarSpec(
    name="cifar10",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    archive="cifar-10-python.tar.gz",
    subfolder="cifar10",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    label_key="labels",
    num_classes=10,
    torchvision="CIFAR10",
)
CIFAR100 = CifarSpec(
    name="cifar100",
    title="CIFAR-100",
    folder="cifar-100-python",
    archive="cifar-100-python.tar.gz",
    subfolder="cifar100",
    train_files=("train",),
    test_files=("test",),
    label_key="fine_labels",
    num_classes=100,
    torchvision="CIFAR100",
)
SPECS = {spec.name: spec for spec in (CIFAR10, CIFAR100)}


def _where_from(spec: CifarSpec, root: Path) -> str:
    return (
        f"Get {spec.archive} ({spec.title} python version) from {URL} and put it, or the folder {spec.folder}/ "
        f"it unpacks to, in {root} (torchvision.datasets.{spec.torchvision}({str(root)!r}, download=True) does the "
        f"same). kdrun downloads nothing."
    )


# --------------------------------------------------------------------------- safe unpickling


def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The globals numpy's array pickles name, under numpy 1's and numpy 2's module names."""
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        if hasattr(numeric, "_frombuffer"):  # protocol 5 pickles (numpy >= 1.16)
            allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_ALLOWED = _numpy_globals()


class _CifarUnpickler(pickle.Unpickler):
    """Builds what a CIFAR batch holds and nothing else: any global outside ``_ALLOWED`` (a
    function a malicious pickle would call) is refused before it is looked up."""

    def __init__(self, handle: BinaryIO, where: str) -> None:
        super().__init__(handle, encoding="bytes")  # Python 2 str -> bytes, as the format needs
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        found = _ALLOWED.get((module, name))
        if found is None:
            raise DataError(
                f"{self.where}: refused: the pickle asks for {module}.{name}, which a CIFAR batch never needs "
                f"(it holds only a dict of numpy uint8 arrays, lists and strings); the file is not the published "
                f"CIFAR data and unpickling it could run code."
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"{self.where}: refused: the pickle holds a persistent reference, which a CIFAR batch never has.")


def _unpickle(handle: BinaryIO, where: str, spec: CifarSpec, hint: str) -> Any:
    try:
        batch = _CifarUnpickler(handle, where).load()
        trailing = handle.read(1)
    except (DataError, MemoryError):
        raise
    except (EOFError, gzip.BadGzipFile, zlib.error, tarfile.ReadError) as error:
        detail = f" ({error})" if str(error) else ""
        raise DataError(f"{where}: truncated or damaged: the data ends before the pickle does{detail}. {hint}") from None
    except OSError:
        raise  # a disk that cannot be read: the caller names the file
    except Exception as error:  # pickle.UnpicklingError, and what a garbled opcode stream raises
        raise DataError(
            f"{where}: not a {spec.title} python-version batch (a pickled dict): {type(error).__name__}: {error}. {hint}"
        ) from None
    if trailing:
        raise DataError(f"{where}: damaged: bytes follow the end of the pickle; expected one pickled batch. {hint}")
    return batch


def _value(batch: dict, key: str) -> Any:
    """``batch[b"key"]`` (the published files' bytes keys) or ``batch["key"]`` (a file re-pickled by Python 3)."""
    if key.encode() in batch:
        return batch[key.encode()]
    return batch.get(key)


def _check_batch(batch: Any, where: str, spec: CifarSpec, hint: str) -> tuple[np.ndarray, np.ndarray]:
    """A batch's images as uint8 ``[n, 3072]`` and labels as int64 ``[n]``, checked."""
    label_key = spec.label_key
    expected = f"a dict with b'data' (uint8 [n, 3072]) and b'{label_key}' (n class ids)"
    if not isinstance(batch, dict):
        raise DataError(f"{where}: not a {spec.title} batch: the pickle holds a {type(batch).__name__}, expected {expected}. {hint}")
    data, labels = _value(batch, "data"), _value(batch, label_key)
    if data is None or labels is None:
        keys = ", ".join(repr(k) for k in list(batch)[:10]) or "none"
        missing = " and ".join(f"b'{k}'" for k, v in (("data", data), (label_key, labels)) if v is None)
        raise DataError(f"{where}: not a {spec.title} batch: no {missing} (keys: {keys}); expected {expected}. {hint}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != IMAGE_BYTES:
        found = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(
            f"{where}: b'data' must be a uint8 array [n, 3072] (n 32×32 images, red, green and blue planes), "
            f"found a {found}. {hint}"
        )
    try:
        labels = np.asarray(labels)
    except Exception:  # a ragged or odd list
        labels = np.asarray([], dtype=object)
    if labels.ndim != 1 or labels.dtype.kind not in "iu" or len(labels) != len(data):
        found = f"{labels.dtype} of shape {labels.shape}"
        raise DataError(
            f"{where}: b'{label_key}' must be {len(data):,} integer class ids, one per image of b'data', found {found}. {hint}"
        )
    labels = labels.astype(np.int64, copy=False)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
        raise DataError(
            f"{where}: b'{label_key}' must lie in 0..{spec.num_classes - 1}, found {int(labels.min())}..{int(labels.max())}. {hint}"
        )
    return data, labels


# --------------------------------------------------------------------------- finding and reading


def search_locations(root: Path, spec: CifarSpec) -> list[tuple[str, Path]]:
    """Where ``spec``'s files are looked for, in order: (kind, path) with kind ``folder`` (the
    extracted folder), ``archive`` (the .tar.gz) or ``loose`` (the batch files in that folder)."""
    sub = root / spec.subfolder
    return [
        ("folder", root / spec.folder),
        ("archive", root / spec.archive),
        ("folder", sub / spec.folder),
        ("archive", sub / spec.archive),
        ("loose", sub),
        ("loose", root),
    ]


def find_source(root: Path, spec: CifarSpec) -> tuple[str, Path]:
    """The first of ``search_locations`` that exists, or a DataError listing them all."""
    if root.is_file():  # dataset.root names the archive itself
        return "archive", root
    for kind, path in search_locations(root, spec):
        if kind == "folder" and path.is_dir():
            return kind, path
        if kind == "archive" and path.is_file():
            return kind, path
        if kind == "loose" and (path / spec.files[0]).is_file():
            return kind, path
    looked = ", ".join(
        f"{p}/" if kind == "folder" else str(p) if kind == "archive" else f"{p}/{spec.files[0]}"
        for kind, p in search_locations(root, spec)
    )
    raise DataError(f"dataset {spec.name}: cannot find {spec.folder}/ or {spec.archive}; looked for: {looked}. {_where_from(spec, root)}")


def _read_folder(folder: Path, spec: CifarSpec, hint: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    batches = {}
    for base in spec.files:
        path = folder / base
        if not path.is_file():
            present = sorted(p.name for p in folder.iterdir())[:12] if folder.is_dir() else []
            raise DataError(
                f"dataset {spec.name}: {path} is missing (expected {', '.join(spec.files)} in {folder}; "
                f"it holds: {', '.join(present) or 'nothing'}). {hint}"
            )
        try:
            with open(path, "rb", buffering=1 << 20) as handle:
                batch = _unpickle(handle, str(path), spec, hint)
        except OSError as error:
            raise DataError(f"{path}: cannot be read ({error.strerror or error}). {hint}") from None
        batches[base] = _check_batch(batch, str(path), spec, hint)
    return batches


def _read_archive(archive: Path, spec: CifarSpec, hint: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The batch members of the published archive, read in one pass over its gzip stream (``r|gz``:
    no seeking back, nothing written to disk); other members (readme.html, meta) are skipped."""
    wanted = {f"{spec.folder}/{base}": base for base in spec.files}
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    seen: list[str] = []
    try:
        with tarfile.open(archive, mode="r|gz") as tar:
            for member in tar:
                name = member.name[2:] if member.name.startswith("./") else member.name
                seen.append(name)
                base = wanted.get(name)
                if base is None or base in batches:
                    continue
                where = f"{archive} (member {name})"
                if not member.isfile():
                    raise DataError(f"{where}: is not a file; expected the pickled batch {base}. {hint}")
                handle = tar.extractfile(member)
                assert handle is not None  # a regular file
                batch = _unpickle(handle, where, spec, hint)
                batches[base] = _check_batch(batch, where, spec, hint)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as error:
        got = f" after {', '.join(sorted(batches))}" if batches else ""
        raise DataError(
            f"{archive}: truncated or damaged archive{got} ({type(error).__name__}: {error}); expected the published "
            f"{spec.archive} (a gzip-compressed tar holding {spec.folder}/). {hint}"
        ) from None
    except OSError as error:
        raise DataError(f"{archive}: cannot be read ({error.strerror or error}). {hint}") from None
    missing = [base for base in spec.files if base not in batches]
    if missing:
        shown = ", ".join(seen[:12]) + (", ..." if len(seen) > 12 else "") if seen else "no members"
        raise DataError(
            f"{archive}: has no {', '.join(f'{spec.folder}/{m}' for m in missing)} (it holds: {shown}); "
            f"expected the published {spec.archive}. {hint}"
        )
    return batches


def _join(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Batches as one uint8 ``[n, 3, 32, 32]`` tensor and one int64 label tensor."""
    if len(parts) == 1:
        images, labels = parts[0]
        images = np.ascontiguousarray(images)
        if not images.flags.writeable:  # torch wants a writeable buffer
            images = images.copy()
    else:
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(images).view(len(images), *IMAGE_SHAPE), torch.from_numpy(np.ascontiguousarray(labels))


def load_cifar(root: Union[str, Path, None], name: str) -> dict:
    """CIFAR-10 or CIFAR-100 (``name``: ``cifar10`` / ``cifar100``) from ``root``: the published
    train and test splits as uint8 images ``[n, 3, 32, 32]`` and int64 labels. Raises DataError for
    a missing, damaged or refused file."""
    spec = SPECS.get(name)
    if spec is None:
        raise DataError(f"dataset.name={name!r}: the CIFAR loader reads {' or '.join(SPECS)}")
    if root is None or str(root) == "":
        raise DataError(f"dataset.root is not set: name the folder holding {spec.folder}/ or {spec.archive} (dataset.root=PATH)")
    given = str(root)
    root = Path(given).expanduser().absolute()  # messages name absolute paths
    if not root.is_dir() and not root.is_file():
        raise DataError(
            f"dataset.root={given!r}: no such folder ({root}); set dataset.root to the folder holding "
            f"{spec.folder}/ or {spec.archive}. {_where_from(spec, root)}"
        )
    hint = _where_from(spec, root.parent if root.is_file() else root)
    kind, path = find_source(root, spec)
    batches = _read_archive(path, spec, hint) if kind == "archive" else _read_folder(path, spec, hint)
    train = _join([batches.pop(base) for base in spec.train_files])
    test = _join([batches.pop(base) for base in spec.test_files])
    return {"train": train, "test": test, "num_classes": spec.num_classes}


def load_cifar10(root: Union[str, Path, None] = "data") -> dict:
    """``dataset=cifar10``: CIFAR-10's python-version batches under ``root`` (50,000 train, 10,000 test, 10 classes)."""
    return load_cifar(root, "cifar10")


def load_cifar100(root: Union[str, Path, None] = "data") -> dict:
    """``dataset=cifar100``: CIFAR-100's python-version files under ``root`` (50,000 train, 10,000 test, 100 fine classes)."""
    return load_cifar(root, "cifar100")


def write_cifar_batch(path: Union[str, Path], images: np.ndarray, labels: Any, label_key: str = "labels", **extra: Any) -> Path:
    """Write a batch file in the published layout (a dict with bytes keys, ``b"data"`` uint8
    ``[n, 3072]`` in channel planes), pickled by Python 3 (protocol 4; the originals are Python 2's
    protocol 2, which ``load_cifar`` reads as well). For
    tests and for turning other 32×32 images into kdrun's input: ``images`` may be ``[n, 3, 32, 32]``."""
    path = Path(path)
    data = np.ascontiguousarray(images, dtype=np.uint8).reshape(len(images), IMAGE_BYTES)
    batch = {b"data": data, label_key.encode(): [int(v) for v in labels]}
    batch.update({k.encode(): v for k, v in extra.items()})
    with open(path, "wb") as handle:
        pickle.dump(batch, handle, protocol=4)
    return path


__all__ = ["load_cifar", "load_cifar10", "load_cifar100", "search_locations", "find_source", "write_cifar_batch", "CIFAR10", "CIFAR100"]
