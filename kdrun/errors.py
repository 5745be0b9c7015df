"""How a job that went wrong ends: an exit code and one message, or a traceback for a bug.

Imports neither torch nor Hydra, so that both the Hydra process and the training process
(``kdrun.training_process``) can classify an error the same way.
"""

from __future__ import annotations

from typing import Optional

EXIT_FAILED = 1  # training went wrong (a non-finite loss, a file that cannot be written)
EXIT_USAGE = 2  # the user's input was wrong


def describe_os_error(error: OSError) -> str:
    where = error.filename if error.filename is not None else ""
    reason = error.strerror or str(error)
    return f"{where}: {reason}" if where else reason


def failure_of(error: BaseException) -> Optional[tuple[int, str]]:
    """(exit code, message) for an error of ``run_experiment`` that is a user's mistake or a
    failed run; None for a bug in kdrun (then the traceback is wanted). Called once the
    experiment's modules are loaded."""
    from kdrun.config import ConfigError
    from kdrun.data import DataError
    from kdrun.train import NonFiniteLossError

    if isinstance(error, (ConfigError, DataError)):
        return EXIT_USAGE, str(error)
    if isinstance(error, NonFiniteLossError):
        return EXIT_FAILED, str(error)
    if isinstance(error, ValueError) and str(error).startswith("trainer."):  # a device this machine lacks
        return EXIT_USAGE, str(error)
    if isinstance(error, OSError):  # a file or folder that cannot be read or written (disk full, ...)
        return EXIT_FAILED, describe_os_error(error)
    return None
