"""Hydra callbacks configured in conf/config.yaml."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class CompareOnMultirunEnd(Callback):
    """When a sweep ends, writes its comparison into the sweep directory and prints the table."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        pass
