"""Figures drawn in a second process while the first one trains.

Training runs on one thread (models under 1 M parameters), and importing matplotlib and drawing
a figure costs about as much as training the default students here, so kdrun hands its figures
to a worker process (``python -m kdrun.figures``) on another core: it imports matplotlib while
the main process imports torch, draws the temperature figure while the students train and the
curves while the models are evaluated and saved. A request names a function of
``kdrun.plots`` and its arguments; the worker answers each with ``ok`` or the error. Identical
requests (the temperature figure of the same teacher at the same T, in a sweep) are copied from
the first file instead of drawn again.

``FigureQueue.wait(run_dir)`` blocks until the figures of a run are written and raises
``FigureError`` for one that failed. In a sweep that runs its jobs in this process, the task
instead registers what to do once they are written (``when_written``) and the next job starts
at once; ``settle()`` runs those callbacks, and ``cli`` settles everything before the process
ends. Where there is one CPU, or the worker cannot start or dies, figures are drawn in this
process as before, so none is ever lost.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import pickle
import select
import shutil
import signal
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Optional

from kdrun.processes import MessageReader, helpers_worth_starting, send, start_helper

FIGURE_FUNCTIONS = {"plot_curves": "kdrun.plots", "plot_temperature": "kdrun.plots", "draw_heatmap": "kdrun.compare"}
MAX_RUNS_BEHIND = 2  # a sweep waits when the worker falls this many jobs behind
NICENESS = 5


class FigureError(OSError):
    """A figure could not be written."""


def _draw(function: str, path: Path, args: tuple) -> None:
    import importlib

    if function not in FIGURE_FUNCTIONS:
        raise ValueError(f"unknown figure function {function!r}")
    getattr(importlib.import_module(FIGURE_FUNCTIONS[function]), function)(path, *args)


class FigureQueue:
    """The main process's side: submits figures, tracks which runs still wait for theirs."""

    def __init__(self) -> None:
        self.process: Optional[subprocess.Popen] = None
        self.next_id = 0
        self.pending: "OrderedDict[int, tuple[Path, str, Path, tuple]]" = OrderedDict()  # id -> run_dir, function, path, args
        self.errors: dict[Path, str] = {}
        self.callbacks: "OrderedDict[Path, Callable[[Optional[str]], None]]" = OrderedDict()
        self.buffer = b""
        self.disabled = False  # set when a worker died: draw here instead

    # ------------------------------------------------------------------ the worker

    def start(self) -> None:
        """Start the worker now (it imports matplotlib meanwhile); a no-op where it would not help."""
        if self.process is not None or self.disabled or not helpers_worth_starting():
            return
        try:
            self.process = start_helper("kdrun.figures", "serve()", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        except OSError:
            self.process = None

    def running(self) -> bool:
        """Whether a worker is up (then handing it a figure costs no matplotlib import here)."""
        return self.process is not None and self.process.poll() is None

    def _kill_worker(self) -> None:
        process, self.process = self.process, None
        self.buffer = b""
        if process is None:
            return
        try:
            process.kill()
            process.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for stream in (process.stdin, process.stdout):
            try:
                stream.close()
            except OSError:
                pass

    def _abandon_worker(self) -> None:
        """The worker died or cannot be reached: draw what it still owed here, and from now on
        every figure (a worker that died once, e.g. without matplotlib, would die again)."""
        self._kill_worker()
        self.disabled = True
        owed, self.pending = list(self.pending.values()), OrderedDict()
        for run_dir, function, path, args in owed:
            self._draw_here(run_dir, function, path, args)

    def _draw_here(self, run_dir: Path, function: str, path: Path, args: tuple) -> None:
        try:
            _draw(function, path, args)
        except Exception as error:
            self.errors.setdefault(run_dir, f"{path.name} could not be written: {type(error).__name__}: {error}")

    # ------------------------------------------------------------------ requests

    def submit(self, run_dir: Path, function: str, path: Path, *args: Any) -> None:
        """Draw ``<module>.<function>(path, *args)`` (FIGURE_FUNCTIONS), in the worker where there is one."""
        self.start()
        if not self.running():
            self._draw_here(run_dir, function, path, args)
            return
        self.next_id += 1
        self.pending[self.next_id] = (run_dir, function, path, args)
        try:
            send(self.process.stdin, (self.next_id, function, str(path), args))
        except OSError:
            self._abandon_worker()

    def _read_replies(self, timeout: Optional[float]) -> None:
        """Take the worker's answers that arrive within ``timeout`` seconds (None: the next one)."""
        if not self.pending:
            return
        if not self.running():
            self._abandon_worker()
            return
        fd = self.process.stdout.fileno()
        readable, _, _ = select.select([fd], [], [], timeout)
        if not readable:
            return
        chunk = os.read(fd, 65536)
        if not chunk:  # the worker exited
            self._abandon_worker()
            return
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            reply = json.loads(line)
            run_dir, _, path, _ = self.pending.pop(reply["id"])
            if reply["error"]:
                self.errors.setdefault(run_dir, f"{path.name} could not be written: {reply['error']}")

    def _runs_waiting(self) -> list[Path]:
        return list(dict.fromkeys(run_dir for run_dir, *_ in self.pending.values()))

    def _written(self, run_dir: Path) -> bool:
        return all(owner != run_dir for owner, *_ in self.pending.values())

    def _read_until(self, done: Callable[[], bool]) -> None:
        """Take answers until ``done()``. Interrupted meanwhile: the worker is stopped, so that
        nothing writes into a run directory afterwards."""
        try:
            while not done():
                self._read_replies(None)
        except BaseException:
            self.stop()
            raise

    def wait(self, run_dir: Path) -> None:
        """Block until the figures of ``run_dir`` are written; FigureError if one failed."""
        self._read_until(lambda: self._written(run_dir))
        error = self.errors.pop(run_dir, None)
        if error:
            raise FigureError(error)

    def discard(self, run_dir: Path) -> None:
        """Make sure nothing more will be written into ``run_dir`` (a run that failed or was
        interrupted, whose results are about to be removed); forget its errors and callback."""
        self.callbacks.pop(run_dir, None)
        self._read_until(lambda: self._written(run_dir))
        self.errors.pop(run_dir, None)

    def when_written(self, run_dir: Path, callback: Callable[[Optional[str]], None]) -> None:
        """Call ``callback(error or None)`` once the figures of ``run_dir`` are written; meanwhile
        the caller goes on. Waits first if the worker is ``MAX_RUNS_BEHIND`` runs behind."""
        self.callbacks[run_dir] = callback
        self._read_until(lambda: len(self._runs_waiting()) < MAX_RUNS_BEHIND)
        self.settle(block=False)

    def settle(self, block: bool = True) -> None:
        """Run the callbacks of runs whose figures are written (with ``block``: of all runs)."""
        try:
            self._read_replies(0)
            while self.callbacks:
                run_dir = next(iter(self.callbacks))
                if not self._written(run_dir):
                    if not block:
                        return
                    self._read_replies(None)
                    continue
                callback = self.callbacks.pop(run_dir)
                callback(self.errors.pop(run_dir, None))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the worker at once; figures not yet written are not drawn (a later figure starts
        a new worker)."""
        self._kill_worker()
        self.pending.clear()

    def close(self) -> None:
        """Settle every run, wait for the figures still owed, then end the worker. A worker that
        owes nothing is stopped at once (after a typo it may still be loading matplotlib)."""
        self.settle(block=True)
        self._read_until(lambda: not self.pending)
        self._kill_worker()


_queue: Optional[FigureQueue] = None
# Set by kdrun.cli while a sweep runs its jobs in this process and settles the queue at the end.
defer_in_sweeps = False


def queue() -> FigureQueue:
    """The process's figure queue (closed at exit: a caller of the Python API that never waited
    still gets every figure)."""
    global _queue
    if _queue is None:
        _queue = FigureQueue()
        atexit.register(_queue.close)
    return _queue


# ---------------------------------------------------------------------------- the worker side


def _stamp(path: Path) -> Optional[tuple]:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size, status.st_ino


def serve() -> None:
    """The worker: read requests on stdin until it closes, answer one line each on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the main process decides
    os.nice(NICENESS)  # where cores are short (while torch and Hydra load), training goes first
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # a stray print must not corrupt the answers
    from kdrun.plots import warm_up
    from kdrun.reports import replace_atomically

    warm_up()  # matplotlib's import and font loads, while the main process imports torch

    drawn: dict[str, tuple[Path, tuple]] = {}  # request without its path -> the file drawn for it, its stat
    requests = MessageReader(sys.stdin.fileno())
    while True:
        request = requests.receive()
        if request is None:  # the main process is done: every answer is written, skip the teardown
            replies.flush()
            os._exit(0)
        request_id, function, path, args = request
        path = Path(path)
        error = None
        try:
            key = hashlib.sha256(pickle.dumps((function, args))).hexdigest()
            earlier, stamp = drawn.get(key, (None, None))
            if earlier is not None and stamp is not None and _stamp(earlier) == stamp:
                replace_atomically(path, lambda tmp: shutil.copyfile(earlier, tmp))
            else:
                _draw(function, path, args)
                drawn[key] = (path, _stamp(path))
        except Exception as caught:
            error = f"{type(caught).__name__}: {caught}"
        try:
            replies.write(json.dumps({"id": request_id, "error": error}) + "\n")
        except BrokenPipeError:  # the process that asked is gone
            os._exit(0)


if __name__ == "__main__":
    serve()
