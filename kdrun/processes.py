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
    source checkout works as an installed one) and without the current directory on it (as for
    the ``kdrun`` script, a file there must not stand in for a module). Raises OSError where it
    cannot start."""
    package_parent = str(Path(__file__).resolve().parent.parent)
    code = (
        f"import sys; sys.path[:] = [{package_parent!r}] + [p for p in sys.path if p != '']; "
        f"from {module} import serve; {call}"
    )
    return subprocess.Popen([sys.executable, "-c", code], close_fds=True, **popen_options)


def send(stream: BinaryIO, message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


class MessageReader:
    """Reads the messages ``send`` wrote to a pipe. The bytes of a read that a signal
    interrupts midway are kept for the next call, so the messages never get out of step."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""

    def receive(self) -> Optional[Any]:
        """The next message; None once the other side has closed the pipe."""
        while True:
            if len(self.buffer) >= _HEADER.size:
                end = _HEADER.size + _HEADER.unpack_from(self.buffer)[0]
                if len(self.buffer) >= end:
                    data, self.buffer = self.buffer[_HEADER.size : end], self.buffer[end:]
                    return pickle.loads(data)
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
