"""Shared helpers for tests that run ``kdrun`` as a user does: in a subprocess.

    from conftest import run_kdrun

    result = run_kdrun("train", "loss.alpha=0.5", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr

For ``kdrun train`` the helper adds a tiny config that trains in a second or two (TINY, plus
``dataset.n_samples=120`` unless the command picks another dataset) and a private model cache
(``cache.dir=<cwd>/kdrun-cache``); the test's own overrides come after them and win. Pass
``tiny=False`` or ``cache_dir=None`` to leave them out.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Union

# Overrides that make `kdrun train` fast; tests add their own after these.
TINY = ("trainer.epochs=1", "model.teacher.hidden=[16]", "model.student.hidden=[8]", "plots=false")
TINY_SYNTHETIC = ("dataset.n_samples=120",)  # only when the command does not choose a dataset
DEFAULT_CACHE = object()


def kdrun_executable() -> list[str]:
    """The installed ``kdrun`` script of this interpreter's environment, else ``python -m kdrun.cli``."""
    script = Path(sys.executable).with_name("kdrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "kdrun.cli"]


def kdrun_env(**extra: str) -> dict[str, str]:
    """The environment for a run: this one without HYDRA_FULL_ERROR (tests check what users see)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(extra)
    return env


def kdrun_command(*args: str, cwd: Path, tiny: bool = True, cache_dir: Union[Path, None, object] = DEFAULT_CACHE) -> list[str]:
    """The command line for ``kdrun *args``, with the tiny defaults for ``train``.

    The defaults go just before the first override on the command line (or at its end), because
    Hydra needs all overrides next to each other: ``train -m a=1`` and ``train a=1 -m`` both work."""
    args = list(args)
    if args and args[0] == "train":
        defaults: list[str] = []
        if tiny:
            defaults += TINY
            if not any(a.startswith(("dataset=", "+dataset=", "experiment=")) for a in args):
                defaults += TINY_SYNTHETIC
        if cache_dir is DEFAULT_CACHE:
            cache_dir = cwd / "kdrun-cache"
        if cache_dir is not None:
            defaults.append(f"cache.dir={cache_dir}")
        rest = args[1:]
        first = next((i for i, a in enumerate(rest) if "=" in a and not a.startswith("-")), len(rest))
        args = ["train", *rest[:first], *defaults, *rest[first:]]
    return [*kdrun_executable(), *args]


def run_kdrun(
    *args: str,
    cwd: Path,
    check: bool = False,
    tiny: bool = True,
    cache_dir: Union[Path, None, object] = DEFAULT_CACHE,
    env: Optional[dict[str, str]] = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run ``kdrun *args`` in ``cwd``; return the CompletedProcess (text stdout and stderr).
    ``check=True`` fails the test, showing stderr, when the exit code is not 0."""
    result = subprocess.run(
        kdrun_command(*args, cwd=cwd, tiny=tiny, cache_dir=cache_dir),
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=kdrun_env(**(env or {})),
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"kdrun {' '.join(args)} exited with {result.returncode}:\n{result.stderr}")
    return result


def start_kdrun(*args: str, cwd: Path, tiny: bool = True, cache_dir: Union[Path, None, object] = DEFAULT_CACHE, **popen_options) -> subprocess.Popen:
    """Start ``kdrun *args`` without waiting (for signal tests); stdout and stderr are pipes.
    Use it as ``with killed_if_left(start_kdrun(...)) as proc:``. SIGINT starts with its default
    action, as in a terminal: a test suite started in the background (``pytest &``) would
    otherwise pass on the shell's ignored SIGINT, and Python keeps it ignored."""
    return subprocess.Popen(
        kdrun_command(*args, cwd=cwd, tiny=tiny, cache_dir=cache_dir),
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=kdrun_env(),
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **popen_options,
    )  # fmt: skip


@contextlib.contextmanager
def killed_if_left(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Yield ``proc``; kill it on the way out if a failed assertion left it running."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def interrupt(proc: subprocess.Popen, *signals: int, timeout: float = 15) -> tuple[str, float]:
    """Send ``signals`` to kdrun one after the other and wait for it to end: its stderr, and the
    seconds from the first signal to its end."""
    sent = time.monotonic()
    for signum in signals:
        proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=timeout)
    return stderr, time.monotonic() - sent


def wait_for_metrics(proc: subprocess.Popen, folder: Path, pattern: str = "metrics.csv", rows: int = 3, timeout: float = 120) -> None:
    """Wait until the first ``folder.glob(pattern)`` file has more than ``rows`` rows: a job of
    ``proc`` is training. Fails the test, showing kdrun's stderr, if kdrun ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = sorted(folder.glob(pattern))
        if found and found[0].read_text().count("\n") > rows:
            return
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1]
    raise AssertionError(f"no {pattern} with {rows} rows under {folder} after {timeout} s")


def has_traceback(text: str) -> bool:
    return "Traceback (most recent call last)" in text
