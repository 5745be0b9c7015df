"""A disk cache for models that do not depend on alpha or T: the teacher and the baseline student.

An entry's key is a digest of everything that determines the trained weights: the exact training
tensors and split, the model's sizes, the trainer settings, the seed, the device type and the
kdrun and torch versions. Writers hold a file lock, so two jobs of a parallel sweep that need the
same teacher train it once (a model trained ahead of its turn holds its entry's lock from the
start: ``claim_missing_entry``); entries are written to a temporary file and renamed, so a reader
never sees half an entry. A damaged entry is reported, removed and retrained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

import kdrun
from kdrun.reports import replace_atomically

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock, entries are still written atomically
    fcntl = None

log = logging.getLogger(__name__)


def cache_key(parts: dict[str, Any]) -> str:
    stamped = {**parts, "kdrun": kdrun.__version__, "torch": torch.__version__.split("+")[0]}
    return hashlib.sha256(json.dumps(stamped, sort_keys=True, default=str).encode()).hexdigest()[:32]


_NO_LOCK = object()  # where fcntl is missing


def _acquire(path: Path, wait: bool = True) -> Any:
    """The lock file at ``path``, locked (its open handle); None where ``wait`` is False and
    another process or thread holds it."""
    if fcntl is None:
        return _NO_LOCK
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        if wait:
            raise
        return None
    return handle


def _release(handle: Any) -> None:
    if handle is not None and handle is not _NO_LOCK:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    handle = _acquire(path)
    try:
        yield
    finally:
        _release(handle)


def _entry_path(kind: str, key_parts: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    return directory / f"{kind}-{cache_key({'kind': kind, **key_parts})}.pt"


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename over it."""
    replace_atomically(path, lambda tmp: torch.save(obj, tmp))


def _load_entry(path: Path, device: torch.device) -> Optional[dict]:
    try:
        entry = torch.load(path, map_location=device, weights_only=True)
        if not isinstance(entry, dict) or not {"state_dict", "history"} <= entry.keys():
            raise ValueError("missing fields")
        return entry
    except Exception as error:  # any unreadable entry is retrained, never trusted
        log.warning("cache entry %s is damaged (%s); removing it and training again", path, error)
        path.unlink(missing_ok=True)
        return None


def load_or_train(
    kind: str,
    key_parts: dict[str, Any],
    model: torch.nn.Module,
    train: Callable[[], list[dict]],
    directory: Optional[Path],
) -> tuple[list[dict], str]:
    """Fill ``model`` from the cache, or call ``train()`` (which trains ``model`` in place and
    returns its metrics rows) and store the result. Returns (rows, "cached" or "trained").
    With ``directory=None`` the cache is off and ``train()`` always runs."""
    if directory is None:
        return train(), "trained"
    path = _entry_path(kind, key_parts, directory)
    device = next(model.parameters()).device
    with _locked(path.with_suffix(".lock")):
        entry = _load_entry(path, device) if path.exists() else None
        if entry is not None:
            model.load_state_dict(entry["state_dict"])
            return entry["history"], "cached"
        history = train()
        _store(path, model, history, key_parts)
        return history, "trained"


def _store(path: Path, model: torch.nn.Module, history: list[dict], key_parts: dict[str, Any]) -> None:
    save_atomic({"state_dict": model.state_dict(), "history": history, "key_parts": key_parts}, path)


class ClaimedEntry:
    """A missing entry's lock, held until ``store`` or ``release``: a model trained ahead of its
    turn is stored under it, and no other job trains the same model meanwhile. Without a cache
    (``path`` None) it stores nothing."""

    def __init__(self, path: Optional[Path], handle: Any, key_parts: dict[str, Any]) -> None:
        self.path, self.handle, self.key_parts = path, handle, key_parts

    def store(self, model: torch.nn.Module, history: list[dict]) -> None:
        try:
            if self.path is not None:
                _store(self.path, model, history, self.key_parts)
        finally:
            self.release()

    def release(self) -> None:
        handle, self.handle = self.handle, None
        _release(handle)


def claim_missing_entry(kind: str, key_parts: dict[str, Any], directory: Optional[Path]) -> Optional[ClaimedEntry]:
    """The entry's lock, taken without waiting, where the entry is missing; None where it is
    stored already or another job holds the lock (it is training that model). With
    ``directory=None`` (no cache) there is nothing to hold: an entry that stores nothing."""
    if directory is None:
        return ClaimedEntry(None, None, key_parts)
    path = _entry_path(kind, key_parts, directory)
    handle = _acquire(path.with_suffix(".lock"), wait=False)
    if handle is None:  # another job is training it
        return None
    if path.exists():
        _release(handle)
        return None
    return ClaimedEntry(path, handle, key_parts)
