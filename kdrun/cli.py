"""The ``kdrun`` command: subcommands dispatched on the first word.

``kdrun train …`` hands the rest of the command line to a Hydra app, so overrides, ``-m``,
``--cfg job``, ``--help`` and shell completion behave as in any Hydra program. ``kdrun --help``
and ``kdrun compare`` import no torch.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

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

# Exit codes of the jobs run in this process (Hydra's basic launcher runs them in-process).
job_exit_codes: list[int] = []


def config_dir() -> Path:
    """The packaged configs (``kdrun/conf`` in a wheel), else the repository's ``conf/``."""
    packaged = Path(__file__).resolve().parent / "conf"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "conf"


def _exit_code(code: object) -> int:
    """The process exit status for ``SystemExit(code)``."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _train(argv: Sequence[str]) -> int:
    import signal

    from kdrun import training_process

    multirun = any(arg in ("-m", "--multirun") for arg in argv)
    runs_a_job = _runs_a_job(argv)
    if runs_a_job and not multirun and os.environ.get("HYDRA_FULL_ERROR") != "1":
        # torch loads there while Hydra composes the config here (it starts the figure worker)
        training_process.process().start(draws_figures=_draws_figures(argv))
    from kdrun import figures

    if runs_a_job and _draws_figures(argv) and not training_process.process().running():
        figures.queue().start()  # the figure worker imports matplotlib while this process imports torch

    import hydra

    from kdrun import task
    from kdrun.compose import compose_each_sweep_job_once, compose_single_run_once
    from kdrun.config import register_configs

    register_configs()
    app = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(task.train_task)
    job_exit_codes.clear()
    task.received_signal = None
    saved_argv = sys.argv
    sys.argv = [saved_argv[0], *argv]
    previous_sigterm = task.handle_sigterm_as_interrupt()  # SIGTERM stops a run as Ctrl-C does
    figures.defer_in_sweeps = True
    try:
        with compose_each_sweep_job_once() if multirun else compose_single_run_once():
            app()
    except KeyboardInterrupt:
        print(f"kdrun: interrupted by {task.signal_name()}; the run directory records it (status.json)", file=sys.stderr)
        return task.interrupted_exit_code()
    except SystemExit as stop:  # Hydra's own errors (already printed), --help, a bad output folder
        return _exit_code(stop.code)
    finally:
        figures.defer_in_sweeps = False
        training_process.process().stop()
        try:
            figures.queue().close()  # the last jobs of a sweep complete once their figures are written
        except BaseException:
            figures.queue().stop()
        sys.argv = saved_argv
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return max(job_exit_codes, default=0)


def _runs_a_job(argv: Sequence[str]) -> bool:
    """Whether ``kdrun train argv`` will probably run a job rather than print help or a config
    (a guess: it only decides which helper processes to start early)."""
    informational = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion", "-p", "--package")
    return not any(arg in informational or arg.startswith(("--cfg=", "--info=", "--shell-completion=")) for arg in argv)


def _draws_figures(argv: Sequence[str]) -> bool:
    """Whether a job of ``kdrun train argv`` will probably draw figures (a guess, as above: the
    last plots= override on the command line)."""
    settings = [arg.replace(" ", "").lower().lstrip("+") for arg in argv]
    plots = [setting.partition("=")[2] for setting in settings if setting.startswith("plots=")]
    return not plots or plots[-1] not in ("false", "0", "no", "off")


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
    """End the process without the interpreter's teardown of torch's ~1,400 modules (about
    0.75 s here): every file kdrun writes is closed or renamed by now; flush what is left."""
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
    # Run the importable module, whose job_exit_codes the jobs and callbacks update (as
    # __main__ this file would be a second copy with its own list).
    from kdrun.cli import main as _main

    _main()
