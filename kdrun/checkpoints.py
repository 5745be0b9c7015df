"""Resumable training state: one file per model in ``<run dir>/checkpoints/``, written atomically.

``fit`` writes a model's state at the end of an epoch when ``Checkpoint.due`` says so: the weights,
the optimiser, the loss's own parameters, the batch-order generator, torch's random generators,
the metrics rows so far and the best epoch yet. Restoring all of it continues the training exactly
where it stopped, so a resumed run ends bit for bit where an uninterrupted one would (on the CPU).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from kdrun.run_files import replace_atomically

log = logging.getLogger("kdrun")

AUTO_SECONDS = 60.0  # trainer.checkpoint_every=null: at most one checkpoint a minute
FORMAT = 2  # of the files written; a file of a format not in READABLE is not resumed from
READABLE = (1, 2)  # 1: Adam's moments of channels-last weights in memory order (kdrun.train reads them)


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of the model's weights and buffers: by it a student's checkpoint knows the teacher
    it learnt from (a teacher equal up to rounding is another teacher)."""
    hashed = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        hashed.update(name.encode())
        hashed.update(tensor.detach().reshape(-1).contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return hashed.hexdigest()[:16]


@dataclass
class Checkpoint:
    """Where one model's training state lives, and when ``fit`` writes it. ``every``: epochs
    between writes (and at the last epoch); 0 never; None at most once a minute, so a model that
    trains in under a minute writes none."""

    path: Path
    every: Optional[int]
    title: str  # "the distilled student", for messages
    teacher: Optional[str] = None  # weights_digest of the teacher a distilled student learns from
    _last_write: float = field(default_factory=time.monotonic)
    _written: bool = False

    def due(self, epoch: int, epochs: int) -> bool:
        if self.every is None:
            waited = time.monotonic() - self._last_write >= AUTO_SECONDS
            return waited or (epoch == epochs and self._written)  # a written model's last epoch too
        return self.every > 0 and (epoch % self.every == 0 or epoch == epochs)

    def save(self, state: dict[str, Any]) -> None:
        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                torch.save({"format": FORMAT, **state, **({"teacher": self.teacher} if self.teacher else {})}, handle)
                handle.flush()
                os.fsync(handle.fileno())  # a machine that goes away keeps the whole file or the old one

        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(self.path, write)
        self._last_write, self._written = time.monotonic(), True

    def load(self, device: torch.device) -> Optional[dict[str, Any]]:
        """The saved state, or None when there is none (or it cannot be read: then the model
        trains from its first epoch, with a warning)."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location=device, weights_only=True)
            if not isinstance(state, dict) or state.get("format") not in READABLE:
                raise ValueError(f"not a kdrun checkpoint of format {' or '.join(map(str, READABLE))}")
        except Exception as error:
            log.warning("%s: cannot read %s (%s); training it from the first epoch", self.title, self.path, error)
            return None
        if self.teacher and state.get("teacher") not in (None, self.teacher):
            log.warning(
                "%s: %s was trained against another teacher than this run's (one trained again, as when a sweep's stacked "
                "teacher was not cached); training it from the first epoch", self.title, self.path,
            )  # fmt: skip
            return None
        self._last_write, self._written = time.monotonic(), True
        return state

