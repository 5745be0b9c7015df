"""kdrun: knowledge-distillation experiments with held-out evaluation.

``kdrun.run(overrides, run_dir)`` runs one experiment in this process (kdrun.app); the command
line is ``kdrun`` (kdrun.cli). Importing kdrun imports neither torch nor Hydra.
"""

from typing import Any

__version__ = "0.3.0"


def __getattr__(name: str) -> Any:
    if name == "run":  # loaded on first use: `kdrun --help` stays light
        from kdrun.app import run

        return run
    raise AttributeError(f"module 'kdrun' has no attribute {name!r}")
