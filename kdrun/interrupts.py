"""Ctrl-C and SIGTERM: both stop a job the same way, as KeyboardInterrupt (SIGTERM as its subclass
``Terminated``), raised wherever the main thread is, except while signals are held: then the
code that holds them (a file write, a tracker's call) finishes first and the signal takes
effect right after it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

# Ctrl-C, SIGTERM, and the signals schedulers send before they end a job (SLURM's --signal,
# submitit's requeue on SIGUSR2, whose handler calls sys.exit wherever the job is)
_HELD = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so that both stop a job alike."""

    signum = signal.SIGTERM


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises ``Terminated`` meanwhile (where signals can be set: the main thread),
    unless the process has its own handler: a scheduler's (submitit's) then stays in charge."""
    if signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, _raise_terminated):
        yield
        return
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread, as in some launchers
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def signal_of(interruption: KeyboardInterrupt) -> signal.Signals:
    return signal.Signals(getattr(interruption, "signum", signal.SIGINT))


@contextlib.contextmanager
def signals_held(second_stops: bool = False) -> Iterator[None]:
    """SIGINT, SIGTERM, SIGUSR1 and SIGUSR2 wait meanwhile and take effect when it ends, so that an exception raised
    by a signal cannot cut short a file write or a tracker's call. (TensorBoard's writer, cut
    short in its queue, could leave its thread asleep for up to two minutes when the run closed
    it; torch.save's, a broken checkpoint whose error replaced the interruption.) With
    ``second_stops``, a second signal takes effect at once: a call that waits on a network (a
    tracker's server) can still be stopped.

    The Python handlers are swapped rather than the signals masked: a masked signal goes to
    another thread (torch's, a tracker's), and Python still runs its handler in this one."""
    if threading.current_thread() is not threading.main_thread():  # Python runs no handler there
        yield
        return
    caught: list[int] = []
    previous: dict[int, Any] = {}

    def hold(signum: int, frame: Any) -> None:
        caught.append(signum)
        if second_stops and len(caught) == 2:
            _restore(previous)
            signal.raise_signal(signum)  # the restored handler takes it now

    try:
        for number in _HELD:  # one at a time, inside the try: a signal between the two leaves none swapped
            previous[number] = signal.signal(number, hold)
        yield
    finally:
        _restore(previous)
        if len(caught) == 1 or (caught and not second_stops):
            signal.raise_signal(caught[0])


def _restore(handlers: dict[int, Any]) -> None:
    for number, handler in handlers.items():
        if handler is not None:  # None: a handler not set from Python, which cannot be restored
            signal.signal(number, handler)
