"""The errors a user can cause, and the exit codes a job ends with.

A ``ConfigError`` (a setting) or a ``DataError`` (a data file or loader) is the user's mistake:
one message naming the setting or file, exit code 2. A ``NonFiniteLossError`` is a run that
went wrong: exit code 1. Anything else is a bug, reported with its traceback. Imports nothing
heavy, so every layer can raise these.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Optional

EXIT_FAILED = 1  # training went wrong (a non-finite loss, a file that cannot be written)
EXIT_USAGE = 2  # the user's input was wrong


class ConfigError(ValueError):
    """A setting's value is not allowed. The message names the key, the value and what is allowed."""


class DataError(ValueError):
    """A dataset cannot be loaded; the message names the file or setting and what was expected."""


class NonFiniteLossError(RuntimeError):
    """A model's training loss (or a part of it) became NaN or infinite, or its loss on held-out
    data did (``split``): its weights or outputs are no longer finite."""

    def __init__(self, model_name: str, epoch: int, epochs: int, value: float, part: str = "", split: str = "training") -> None:
        what = f"the training loss's part {part!r}" if part else f"{split} loss"
        super().__init__(
            f"{model_name}: {what} is {value} at epoch {epoch} of {epochs}; the run stopped. "
            "Lower trainer.lr, check the loss's settings, or check the data for NaN or huge values."
        )
        self.model_name, self.epoch = model_name, epoch


class JobFailed(RuntimeError):
    """A sweep's job that failed (its status.json says why), raised to a sweeper that chooses the
    next settings by the results (Optuna), which then counts the trial as failed, not as a value."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self) -> tuple:  # both arguments, when a worker process sends it back
        return type(self), (str(self), self.exit_code)


def describe_os_error(error: OSError) -> str:
    if error.strerror is None:  # raised with a message of its own (a loader's FileNotFoundError("data.npz")): its type says what
        return f"{type(error).__name__}: {error}"
    return f"{error.filename}: {error.strerror}" if error.filename is not None else error.strerror


def failure_of(error: BaseException) -> Optional[tuple[int, str]]:
    """(exit code, message) for an error that is a user's mistake or a failed run; None for a
    bug in kdrun, whose traceback is wanted."""
    if isinstance(error, (ConfigError, DataError)):
        return EXIT_USAGE, str(error)
    if isinstance(error, NonFiniteLossError):
        return EXIT_FAILED, str(error)
    if isinstance(error, JobFailed):
        return error.exit_code, str(error)
    if isinstance(error, OSError):  # a file or folder that cannot be read or written (disk full, ...)
        return EXIT_FAILED, describe_os_error(error)
    if _out_of_memory(error):
        detail = re.sub(r"^\[enforce fail at [^\]]*\] [^.]*\. ", "", str(error).splitlines()[0] if str(error) else "")
        return EXIT_FAILED, f"out of memory: {detail or type(error).__name__}; a smaller model or trainer.batch_size, or more memory, would fit"
    return None


def _out_of_memory(error: BaseException) -> bool:
    """torch's failed allocations: CUDA's OutOfMemoryError, the CPU allocator's RuntimeError."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def raised_at(error: BaseException) -> str:
    """Where ``error`` was raised: the innermost frame's file and line outside torch (kdrun's, or
    the user's code that called torch wrongly)."""
    frames = traceback.extract_tb(error.__traceback__)
    torch_dir = os.path.dirname(sys.modules["torch"].__file__) + os.sep if "torch" in sys.modules else None
    ours = [f for f in frames if torch_dir is None or not f.filename.startswith(torch_dir)] or frames
    return f"{ours[-1].filename}:{ours[-1].lineno}" if ours else "unknown"
