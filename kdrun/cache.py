"""A disk cache for the models the distillation loss does not change: the teacher and the baseline.

An entry's key is a digest of everything that determines the trained weights: the exact training
tensors and split, the model's sizes, the trainer settings, the seed, the device type and the
kdrun and torch versions, and for a model that is not kdrun's own, the source of the module that
defines it. Writers hold a file lock, so two jobs of a parallel sweep that need the same teacher
train it once; entries are written to a temporary file and renamed, so a reader never sees half
an entry. A damaged entry is reported, removed and retrained.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

import kdrun
from kdrun.config import digest
from kdrun.run_files import replace_atomically

try:
    import fcntl
except ImportError:  # Windows: no cross-process lock, entries are still written atomically
    fcntl = None

log = logging.getLogger(__name__)


def cache_key(parts: dict[str, Any]) -> str:
    return digest({**parts, "kdrun": kdrun.__version__, "torch": torch.__version__.split("+")[0]}, length=32)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    if fcntl is None:
        yield
        return
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def stacked(key_parts: dict[str, Any]) -> dict[str, Any]:
    """The key of a model of these parts trained in a stack with others (kdrun.groups): equal to
    one trained alone up to floating-point rounding, so stored apart from it."""
    return {**key_parts, "stacked": True}


def lookup(kind: str, key_parts: dict[str, Any], model: torch.nn.Module, directory: Optional[Path]) -> Optional[list[dict]]:
    """Fill ``model`` from the cache entry of this key, else from the one trained in a stack, and
    return its metrics rows; None when there is neither (or the cache is off: ``directory=None``).
    The stacked one stands in, so that every job of a sweep and a later run alone get the same
    teacher and baseline."""
    if directory is None:
        return None
    for key in (key_parts, stacked(key_parts)):
        path = _entry_path(kind, key, directory)
        entry = _load_entry(path, next(model.parameters()).device) if path.exists() else None
        if entry is not None:
            model.load_state_dict(entry["state_dict"])
            return entry["history"]
    return None


def store(kind: str, key_parts: dict[str, Any], model: torch.nn.Module, history: list[dict], directory: Optional[Path]) -> None:
    """Save a trained model and its rows as the entry of this key (nothing if the cache is off)."""
    if directory is not None:
        save_atomic({"state_dict": model.state_dict(), "history": history, "key_parts": key_parts}, _entry_path(kind, key_parts, directory))


@contextlib.contextmanager
def locked(kind: str, key_parts: dict[str, Any], directory: Optional[Path]) -> Iterator[None]:
    """Hold this entry's file lock meanwhile: another process that needs the entry waits, then
    finds it stored (nothing to hold when the cache is off: ``directory=None``)."""
    if directory is None:
        yield
        return
    with _locked(_entry_path(kind, key_parts, directory).with_suffix(".lock")):
        yield


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
    with locked(kind, key_parts, directory):
        history = lookup(kind, key_parts, model, directory)
        if history is not None:
            return history, "cached"
        history = train()
        store(kind, key_parts, model, history, directory)
        return history, "trained"


def model_fingerprint(model: torch.nn.Module) -> dict[str, str]:
    """What identifies an architecture beyond its config: its layers (``repr``) and, for a model
    defined outside kdrun, a digest of its module's source, so that editing a user's model code
    retrains it instead of reusing a stale entry."""
    fingerprint = {"layers": repr(model)}
    cls = type(model)
    if not cls.__module__.startswith("kdrun."):
        try:
            fingerprint["source"] = hashlib.sha256(inspect.getsource(sys.modules[cls.__module__]).encode()).hexdigest()[:16]
        except (OSError, TypeError, KeyError):  # no source to read (built in, or made at run time)
            fingerprint["source"] = cls.__qualname__
    return fingerprint
