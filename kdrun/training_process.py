"""The training process: a single ``kdrun train`` run trains in a second process started first.

Importing torch is about half of a default run here, and Hydra's import and composition another
~0.5 s, all on one core. So ``kdrun train`` (a single run, two or more CPUs) first starts
``python -c "...serve()"``, which imports torch and kdrun's training code (and neither Hydra nor
omegaconf) while this process composes the config and sets up the run directory. The task then
hands it the job (the config as the schema's dataclasses, the run directory) and waits. Each log
record of the training process is handled here, by the logging Hydra configured (console,
stderr, train.log), before that process goes on, so lines keep their order with what it prints
itself (the results table).

This process stays in charge: it writes status.json, turns a failure into one message and an
exit code, and on SIGINT/SIGTERM passes a SIGINT on and waits until the training process has
stopped writing before it removes the results. The training process runs in its own session (a
Ctrl-C at the terminal reaches this process only, which passes it on once) and ends itself when
this process is gone. Where it cannot start or dies before taking the job, the job runs in this
process as before.
"""

from __future__ import annotations

import importlib
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from kdrun.processes import helpers_worth_starting, receive, send, start_helper

STOP_SECONDS = 10.0  # how long an interrupted training process may take to stop writing


class ExperimentFailed(Exception):
    """The experiment failed over a user's mistake or a failed run (an exit code and a message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class TrainingProcessError(RuntimeError):
    """A bug in kdrun surfaced in the training process, or the process ended mid-job."""


class TrainingProcess:
    """This process's side: starts the training process and hands it one job."""

    def __init__(self) -> None:
        self.process: Optional[subprocess.Popen] = None
        self.replies: Optional[int] = None  # the read end of the training process's answers

    def start(self, draws_figures: bool) -> None:
        if self.process is not None or not helpers_worth_starting():
            return
        read_end, write_end = os.pipe()
        try:
            self.process = start_helper(
                "kdrun.training_process", f"serve({write_end}, {draws_figures!r})",
                stdin=subprocess.PIPE, pass_fds=(write_end,), start_new_session=True,
            )  # fmt: skip
        except OSError:
            os.close(read_end)
            self.process = None
        else:
            self.replies = read_end
        finally:
            os.close(write_end)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def run(self, cfg: Any, run_dir: Path) -> Optional[dict]:
        """Run the experiment for ``cfg`` (the schema's dataclasses) there; its summary, or None
        when the process could not take the job (then run it here). Its log records are handled
        by this process's logging, as Hydra configured it. Raises ExperimentFailed,
        KeyboardInterrupt (this process was interrupted, or that one) or TrainingProcessError."""
        if not self.running():
            return None
        try:
            send(self.process.stdin, (cfg, str(run_dir), os.getcwd(), logging.getLogger("kdrun").getEffectiveLevel()))
        except OSError:
            self.stop()
            return None
        started = False
        try:
            while True:
                reply = receive(self.replies)
                if reply is None:
                    code = self.process.wait()
                    self.stop()
                    if not started:
                        return None
                    raise TrainingProcessError(f"the training process ended before the job did (exit code {code})")
                kind, *content = reply
                if kind == "log":
                    self._handle_record(content[0])
                elif kind == "started":
                    started = True
                elif kind == "ok":
                    return content[0]
                elif kind == "failed":
                    raise ExperimentFailed(*content)
                elif kind == "interrupted":
                    raise KeyboardInterrupt
                else:
                    raise TrainingProcessError(f"in the training process:\n{content[0]}")
        except KeyboardInterrupt:
            self._interrupt_and_wait()
            raise

    def _handle_record(self, attributes: dict) -> None:
        """Log a record of the training process here, then let it go on."""
        record = logging.makeLogRecord(attributes)
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
        try:
            self.process.stdin.write(b"\n")
            self.process.stdin.flush()
        except OSError:  # it died meanwhile: the next read says so
            pass

    def _interrupt_and_wait(self) -> None:
        """Pass the interrupt on; return once the training process answered or ended (it may
        still be writing a file when this process is interrupted)."""
        if not self.running():
            return
        try:
            self.process.send_signal(signal.SIGINT)
            deadline = time.monotonic() + STOP_SECONDS
            while self.running() and time.monotonic() < deadline:
                readable, _, _ = select.select([self.replies], [], [], max(0.0, deadline - time.monotonic()))
                if not readable:
                    continue
                reply = receive(self.replies)
                if reply is None or reply[0] == "interrupted":
                    break
                if reply[0] == "log":
                    self._handle_record(reply[1])
        finally:
            self.stop()

    def stop(self) -> None:
        """End the training process (it is waiting for a job or has finished it)."""
        process, self.process = self.process, None
        if process is not None:
            try:
                process.stdin.close()
            except OSError:
                pass
            if process.poll() is None:
                process.kill()
                process.wait()
        if self.replies is not None:
            os.close(self.replies)
            self.replies = None


_process: Optional[TrainingProcess] = None


def process() -> TrainingProcess:
    global _process
    if _process is None:
        _process = TrainingProcess()
    return _process


# ---------------------------------------------------------------------------- the other side


def _end_with_parent(parent: int) -> None:
    """Mid-job nothing reads the main process's pipe, so a main process that was killed would go
    unnoticed: look for it twice a second."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(1)


class _ToParent(logging.Handler):
    """Hands each log record to the main process and waits until it has been handled there, so
    that log lines and what this process prints itself (the results table) keep their order."""

    def __init__(self, replies) -> None:
        super().__init__()
        self.replies = replies

    def emit(self, record: logging.LogRecord) -> None:
        attributes = dict(record.__dict__)
        attributes.update(msg=record.getMessage(), args=None, exc_info=None)
        if record.exc_info:
            attributes["exc_text"] = logging.Formatter().formatException(record.exc_info)
        send(self.replies, ("log", attributes))
        os.read(sys.stdin.fileno(), 1)  # the main process has handled it


def serve(reply_fd: int, draws_figures: bool) -> None:
    """Import torch and kdrun's training code, then run the jobs read on stdin."""
    replies = os.fdopen(reply_fd, "wb")
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # sent here directly: stop as on SIGINT
    threading.Thread(target=_end_with_parent, args=(os.getppid(),), daemon=True).start()
    try:
        from kdrun import figures

        if draws_figures:
            figures.queue().start()  # matplotlib loads there (at a lower priority) while torch loads here
        importlib.import_module("kdrun.experiment")  # torch and the training code, while Hydra composes
    except BaseException:  # torch missing, or interrupted: the job runs in the main process
        os._exit(1)

    root = logging.getLogger()
    root.handlers[:] = [_ToParent(replies)]
    try:
        while True:
            request = receive(sys.stdin.fileno())
            if request is None:  # the main process is done with this one
                os._exit(0)
            reply = _run_job(replies, root, *request)
            send(replies, reply)
            if reply[0] == "interrupted":
                os._exit(130)
    except BaseException:  # the main process is gone, or this one was stopped between jobs
        os._exit(1)


def _run_job(replies, root: logging.Logger, cfg: Any, run_dir: str, cwd: str, level: int) -> tuple:
    """Run one experiment; the answer for the main process."""
    import traceback

    from kdrun import figures
    from kdrun.errors import failure_of
    from kdrun.experiment import make_console, run_experiment

    try:
        send(replies, ("started",))
        os.chdir(cwd)
        root.setLevel(level)
        return ("ok", run_experiment(cfg, Path(run_dir), make_console()))
    except KeyboardInterrupt:
        reply = ("interrupted",)
    except BaseException as error:
        failure = failure_of(error)
        reply = ("failed", *failure) if failure is not None else ("internal", traceback.format_exc())
    try:  # the main process removes the results next: no figure may land after that
        figures.queue().discard(Path(run_dir))
    except BaseException:
        figures.queue().stop()
    return reply
