"""The ``kdrun`` command: subcommands dispatched on the first word.

``kdrun train …`` hands the rest of the command line to a Hydra app (``kdrun.app``), so
overrides, ``-m``, ``--cfg job``, ``--help`` and shell completion behave as in any Hydra program.
``kdrun compare …`` tabulates runs (``kdrun.compare``). ``kdrun --help`` imports neither torch
nor Hydra.
"""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence, TextIO

from kdrun import __version__

SUBCOMMANDS = {
    "train": "train a teacher, a distilled student and a baseline student; evaluate them on held-out data",
    "compare": "tabulate and plot the results of runs and sweeps (kdrun compare outputs/)",
}

USAGE = f"""usage: kdrun <command> [arguments]

Knowledge-distillation experiments: does distilling a teacher into a small student beat training
the student alone, and at which alpha and temperature?

commands:
{chr(10).join(f"  {name:<9} {text}" for name, text in SUBCOMMANDS.items())}

examples:
  kdrun train                                   the default experiment (the notebook's)
  kdrun train loss.temperature=5 trainer.epochs=10
  kdrun train -m loss.alpha=0.5,0.9 loss.temperature=1,3,5
  kdrun compare outputs/

  kdrun train --help     every setting and config group
  kdrun compare --help

kdrun {__version__}
"""


class _ReaderMayLeave:
    """stdout or stderr read by a pipe that may close first (``kdrun train | head -3``): writes
    after the reader left are dropped, so that a closed pipe never fails a run."""

    def __init__(self, stream: TextIO) -> None:
        self._stream, self._gone = stream, False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._gone = True
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone = True

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def _train(argv: Sequence[str]) -> int:
    from kdrun import app

    return app.main(argv)


def _complete(argv: Sequence[str]) -> Optional[int]:
    """Shell completion: Hydra's bash script calls ``kdrun -sc query=bash`` with the whole
    command line in COMP_LINE. Complete the subcommand word here; past it, hand over to the
    subcommand with that word removed from COMP_LINE (else Hydra reads 'train' as an override)."""
    line = os.environ.get("COMP_LINE")
    if line is None or not any(a == "-sc" or a.startswith("--shell-completion") or a.startswith("query=") for a in argv):
        return None
    words = line.split()
    at_command_word = len(words) == 1 or (len(words) == 2 and not line.endswith(" "))
    if at_command_word:
        prefix = words[1] if len(words) == 2 else ""
        print(" ".join(name for name in SUBCOMMANDS if name.startswith(prefix)))
        return 0
    if words[1] == "train":
        head, _, rest = line.partition(" train")
        os.environ["COMP_LINE"] = head + rest
        return _train(argv)
    print("")
    return 0


def _exit_now(code: int) -> None:
    """End the process without the interpreter's teardown of torch's modules (most of a second,
    benchmarks/README.md): every file kdrun writes is closed or renamed by now; flush the rest."""
    import logging
    import threading

    if threading.active_count() > 1:  # e.g. joblib's worker manager: let normal shutdown stop it
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Optional[Sequence[str]] = None) -> None:
    from_command_line = argv is None
    if from_command_line:
        sys.stdout, sys.stderr = _ReaderMayLeave(sys.stdout), _ReaderMayLeave(sys.stderr)
    argv = list(sys.argv[1:] if argv is None else argv)
    completed = _complete(argv)
    if completed is not None:
        sys.exit(completed)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        sys.exit(0 if argv else 2)
    if argv[0] == "--version":
        print(f"kdrun {__version__}")
        sys.exit(0)
    command, rest = argv[0], argv[1:]
    if command == "train" or command.startswith("-sc") or command == "--shell-completion":
        code = _train(rest if command == "train" else argv)
        if from_command_line:
            _exit_now(code)
        sys.exit(code)
    if command == "compare":
        from kdrun.compare import main as compare_main

        sys.exit(compare_main(rest))
    print(f"kdrun: unknown command {command!r}; choose from: {', '.join(SUBCOMMANDS)} (kdrun --help)", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
