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
stopped writing before it removes the results (a second Ctrl-C stops it at once). The training
process leads a process group of its own with its figure worker: a Ctrl-C at the terminal
reaches this process only, which passes it on once; Ctrl-Z and ``fg`` are passed on to the
group; ``stop`` ends the group; and the group ends itself when this process is gone. Where the
training process cannot start, or dies before taking the job, the job runs in this process.
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

from kdrun.processes import MessageReader, helpers_worth_starting, send, start_helper

log = logging.getLogger(__name__)

STOP_SECONDS = 60.0  # an interrupted training process finishes the batch or file it is on first
EXIT_SECONDS = 2.0  # a training process told to end, before it is killed


class ExperimentFailed(Exception):
    """The experiment failed over a user's mistake or a failed run (an exit code and a message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class TrainingProcessError(RuntimeError):
    """A bug in kdrun surfaced in the training process, or the process ended mid-job."""


class Interrupted(KeyboardInterrupt):
    """The training process stopped the job on a signal: ``signum``, SIGINT or SIGTERM (a batch
    system may signal every process of a job, not only the main one)."""

    def __init__(self, signum: int) -> None:
        super().__init__()
        self.signum = signum


class RemoteTraceback(Exception):
    """The training process's traceback, shown as the cause of a TrainingProcessError."""

    def __str__(self) -> str:
        return self.args[0]


def _lowest_log_level() -> int:
    """The lowest level any logger here handles: records below it need not be sent."""
    loggers = [logging.getLogger(), *logging.root.manager.loggerDict.values()]
    return min(logger.getEffectiveLevel() for logger in loggers if isinstance(logger, logging.Logger))


class TrainingProcess:
    """This process's side: starts the training process and hands it a job."""

    def __init__(self) -> None:
        self.process: Optional[subprocess.Popen] = None
        self.requests = None  # jobs and acknowledgements to the training process
        self.replies: Optional[MessageReader] = None
        self.previous_sigtstp: Any = None

    def start(self, draws_figures: bool) -> None:
        if self.process is not None or not helpers_worth_starting():
            return
        requests_read, requests_write = os.pipe()
        replies_read, replies_write = os.pipe()
        try:
            self.process = start_helper(
                "kdrun.training_process", f"serve({requests_read}, {replies_write}, {draws_figures!r})",
                stdin=subprocess.DEVNULL, pass_fds=(requests_read, replies_write), start_new_session=True,
            )  # fmt: skip
        except OSError:
            os.close(requests_write)
            os.close(replies_read)
        else:
            self.requests = os.fdopen(requests_write, "wb")
            self.replies = MessageReader(replies_read)
            self._pass_on_job_control()
        finally:
            os.close(requests_read)
            os.close(replies_write)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def run(self, cfg: Any, run_dir: Path) -> Optional[dict]:
        """Run the experiment for ``cfg`` (the schema's dataclasses) there; its summary, or None
        when the process could not take the job (then run it here). Raises ExperimentFailed,
        KeyboardInterrupt (this process was interrupted), Interrupted (that one was) or
        TrainingProcessError."""
        if not self.running():
            return None
        started = False
        try:
            try:
                send(self.requests, ("job", cfg, str(run_dir), os.getcwd(), _lowest_log_level()))
            except OSError:
                self.stop()
                return None
            log.debug("job handed to the training process (pid %d)", self.process.pid)
            while True:
                reply = self.replies.receive()
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
                    raise Interrupted(*content)
                else:
                    description, remote_traceback = content
                    raise TrainingProcessError(f"in the training process: {description}") from RemoteTraceback(remote_traceback)
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
            send(self.requests, ("handled",))
        except OSError:  # it died meanwhile: the next read says so
            pass

    def _interrupt_and_wait(self) -> None:
        """Pass the interrupt on; return once the training process answered or ended (it may be
        writing a file). Interrupted again meanwhile, or past STOP_SECONDS, it is killed."""
        if not self.running():
            return
        answered = False
        try:
            self.process.send_signal(signal.SIGINT)
            deadline = time.monotonic() + STOP_SECONDS
            while not answered and self.running() and time.monotonic() < deadline:
                readable, _, _ = select.select([self.replies.fd], [], [], max(0.0, deadline - time.monotonic()))
                if readable:
                    reply = self.replies.receive()
                    answered = reply is None or reply[0] != "log"  # its answer for the job: it stopped writing
                    if not answered:
                        self._handle_record(reply[1])
        finally:
            self.stop(grace=EXIT_SECONDS if answered else 0.0)

    def stop(self, grace: float = EXIT_SECONDS) -> None:
        """End the training process and its figure worker: waiting for a job or done with one,
        it ends itself when told, within ``grace`` seconds; else the group is killed."""
        process, self.process = self.process, None
        if process is not None:
            try:
                self.requests.close()
                process.wait(timeout=grace)
            except (OSError, subprocess.TimeoutExpired):
                pass
            finally:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # it leads its group: the figure worker too
                except OSError:  # the group has ended
                    pass
                process.wait()
                self._restore_job_control()
        if self.replies is not None:
            os.close(self.replies.fd)
            self.replies = None

    # Ctrl-Z stops the terminal's foreground group, which the training process is not in.
    def _pass_on_job_control(self) -> None:
        try:
            self.previous_sigtstp = signal.signal(signal.SIGTSTP, self._suspend)
        except (ValueError, AttributeError):  # not the main thread; no job control here
            self.previous_sigtstp = None

    def _restore_job_control(self) -> None:
        if self.previous_sigtstp is not None:
            signal.signal(signal.SIGTSTP, self.previous_sigtstp)
            self.previous_sigtstp = None

    def _suspend(self, signum: int, frame: Any) -> None:
        group = self.process.pid if self.process is not None else None
        if group is not None:
            os.killpg(group, signal.SIGSTOP)
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # this process stops here until it is continued
        signal.signal(signal.SIGTSTP, self._suspend)
        if group is not None:
            os.killpg(group, signal.SIGCONT)


_process: Optional[TrainingProcess] = None


def process() -> TrainingProcess:
    global _process
    if _process is None:
        _process = TrainingProcess()
    return _process


# ---------------------------------------------------------------------------- the other side


def _exit(code: int) -> None:
    """End without the interpreter's teardown of torch's modules, output flushed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _end_with_parent(parent: int) -> None:
    """Mid-job nothing reads the main process's pipe, so a main process that was killed would go
    unnoticed: look for it twice a second, and end the group (the figure worker too)."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os.killpg(0, signal.SIGKILL)


class _ToParent(logging.Handler):
    """Hands each log record to the main process and waits until it has been handled there, so
    that log lines and what this process prints itself (the results table) keep their order."""

    def __init__(self, replies, requests: MessageReader) -> None:
        super().__init__()
        self.replies, self.requests = replies, requests

    def emit(self, record: logging.LogRecord) -> None:
        try:
            attributes = dict(record.__dict__)
            attributes.update(msg=record.getMessage(), args=None, exc_info=None)
            if record.exc_info:
                attributes["exc_text"] = logging.Formatter().formatException(record.exc_info)
            send(self.replies, ("log", attributes))
        except Exception:
            self.handleError(record)
            return
        self.requests.receive()  # ("handled",)


_received_signal = signal.SIGINT  # the signal that interrupted the job (the main process sends SIGINT)


def _interrupt(signum: int, frame: Any) -> None:
    global _received_signal
    _received_signal = signum
    raise KeyboardInterrupt


def serve(requests_fd: int, replies_fd: int, draws_figures: bool) -> None:
    """Import torch and kdrun's training code, then run the jobs the main process sends."""
    signal.signal(signal.SIGINT, _interrupt)  # even where it was ignored
    signal.signal(signal.SIGTERM, _interrupt)  # sent here directly: stop as on SIGINT
    replies = os.fdopen(replies_fd, "wb")
    requests = MessageReader(requests_fd)
    threading.Thread(target=_end_with_parent, args=(os.getppid(),), daemon=True).start()
    try:
        from kdrun import figures

        if draws_figures:
            figures.queue().start()  # matplotlib loads there (at a lower priority) while torch loads here
        importlib.import_module("kdrun.experiment")  # torch and the training code, while Hydra composes
    except BaseException:  # torch missing, or interrupted: the job runs in the main process
        _exit(1)

    root = logging.getLogger()
    root.handlers[:] = [_ToParent(replies, requests)]
    try:
        while True:
            request = requests.receive()
            if request is None:  # the main process is done with this one
                figures.queue().stop()
                _exit(0)
            if request[0] != "job":  # an acknowledgement that came too late
                continue
            reply = _run_job(replies, root, *request[1:])
            send(replies, reply)
            if reply[0] == "interrupted":
                _exit(128 + reply[1])
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    except BaseException:  # the main process is gone, or this one was stopped between jobs
        figures.queue().stop()
        _exit(1)


def _run_job(replies, root: logging.Logger, cfg: Any, run_dir: str, cwd: str, level: int) -> tuple:
    """Run one experiment; the answer for the main process. Once it has failed or was
    interrupted, further signals wait until the figures are settled and the answer is sent."""
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
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        reply = ("interrupted", int(_received_signal))
    except BaseException as error:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        failure = failure_of(error)
        if failure is not None:
            reply = ("failed", *failure)
        else:
            reply = ("internal", f"{type(error).__name__}: {error}", traceback.format_exc())
    try:  # the main process removes the results next: no figure may land after that
        figures.queue().discard(Path(run_dir))
    except BaseException:
        figures.queue().stop()
    return reply
