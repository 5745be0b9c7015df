"""kdrun's helper processes (the figure worker, the training process): when one is worth
starting, how it starts, and the messages that pass to it: length-prefixed pickles over pipes."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, BinaryIO, Optional

_HEADER = struct.Struct("<Q")


def helpers_worth_starting() -> bool:
    """A helper process pays where it gets a core of its own (and pipes work as used here)."""
    if os.name != "posix":
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return cpus >= 2


def start_helper(module: str, call: str, **popen_options: Any) -> subprocess.Popen:
    """``python -c "from <module> import serve; <call>"`` with this kdrun first on sys.path (a
    source checkout works as an installed one). Raises OSError where it cannot start."""
    package_parent = str(Path(__file__).resolve().parent.parent)
    code = f"import sys; sys.path.insert(0, {package_parent!r}); from {module} import serve; {call}"
    return subprocess.Popen([sys.executable, "-c", code], close_fds=True, **popen_options)


def send(stream: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _read_exactly(fd: int, size: int) -> Optional[bytes]:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def receive(fd: int) -> Optional[Any]:
    """The next message on ``fd``; None once the other side has closed it."""
    header = _read_exactly(fd, _HEADER.size)
    if header is None:
        return None
    data = _read_exactly(fd, _HEADER.unpack(header)[0])
    return None if data is None else pickle.loads(data)
