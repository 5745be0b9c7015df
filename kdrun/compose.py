"""Compose each config once: a single run once instead of twice, each job of a sweep once.

Composing kdrun's config takes ~0.1-0.2 s here (Hydra parses every YAML file again each time).

A single run: before running, Hydra composes the config once just to read ``hydra.mode`` (a
config may ask for a multirun), then composes it again to run it. While
``compose_single_run_once()`` is active, that first composition is done as the run's own (RUN
mode, overrides checked) and, when the config leaves the mode unset, reused for the run with
exactly what Hydra's ``hydra.mode=RUN`` override would change. If it fails, Hydra's own
composition runs as before and reports the error as before.

A sweep:
Hydra's sweepers first compose every job's config to check that it can be composed
(``Sweeper.validate_batch_is_legal``), throw it away, and then the launcher composes it again
to run it, about a third of a sweep job's own work. While ``compose_each_sweep_job_once()`` is active, the configs composed for the check are
kept and handed to the launcher's request for the same job, in order, each at most once; any
other request composes as before. The check still happens before the first job runs, so a bad
override still fails the sweep up front. Launchers that compose in other processes (joblib)
never ask for the kept configs; they are dropped when the sweep ends.

Both lean on Hydra 1.3 internals; where those are missing they do nothing.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def compose_each_sweep_job_once() -> Iterator[None]:
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.plugins.sweeper import Sweeper
    except ImportError:  # pragma: no cover - another Hydra layout
        yield
        return
    original_validate = Sweeper.validate_batch_is_legal
    original_load = ConfigLoaderImpl.load_sweep_config
    if not callable(original_validate) or not callable(original_load):  # pragma: no cover
        yield
        return
    kept: dict[tuple, list] = defaultdict(list)
    checking = False

    def validate_batch_is_legal(self, batch):
        nonlocal checking
        checking = True
        try:
            return original_validate(self, batch)
        finally:
            checking = False

    def load_sweep_config(self, master_config, sweep_overrides):
        key = (id(self), id(master_config), tuple(sweep_overrides))
        if checking:
            config = original_load(self, master_config, sweep_overrides)
            kept[key].append(config)
            return config
        if kept.get(key):
            return kept[key].pop(0)
        return original_load(self, master_config, sweep_overrides)

    Sweeper.validate_batch_is_legal = validate_batch_is_legal
    ConfigLoaderImpl.load_sweep_config = load_sweep_config
    try:
        yield
    finally:
        Sweeper.validate_batch_is_legal = original_validate
        ConfigLoaderImpl.load_sweep_config = original_load
        kept.clear()


RUN_MODE_OVERRIDE = "hydra.mode=RUN"  # what Hydra appends when the config leaves hydra.mode unset


@contextmanager
def compose_single_run_once() -> Iterator[None]:
    try:
        from hydra._internal.config_loader_impl import ConfigLoaderImpl
        from hydra.types import RunMode
        from omegaconf import open_dict
    except ImportError:  # pragma: no cover - another Hydra layout
        yield
        return
    original_load = ConfigLoaderImpl.load_configuration
    kept: dict[tuple, object] = {}

    def load_configuration(self, config_name, overrides, run_mode, from_shell=True, validate_sweep_overrides=True):
        probe = run_mode == RunMode.MULTIRUN and not validate_sweep_overrides  # Hydra.get_mode's composition
        if probe and not kept:
            try:
                config = original_load(self, config_name, list(overrides), RunMode.RUN, from_shell, True)
            except Exception:
                return original_load(self, config_name, overrides, run_mode, from_shell, validate_sweep_overrides)
            if config.hydra.mode is None:
                kept[(id(self), config_name, (*overrides, RUN_MODE_OVERRIDE), from_shell)] = config
            return config
        key = (id(self), config_name, tuple(overrides), from_shell)
        if run_mode == RunMode.RUN and validate_sweep_overrides and key in kept:
            config = kept.pop(key)
            with open_dict(config.hydra):
                config.hydra.mode = RunMode.RUN
                config.hydra.overrides.hydra.append(RUN_MODE_OVERRIDE)
            return config
        return original_load(self, config_name, overrides, run_mode, from_shell, validate_sweep_overrides)

    ConfigLoaderImpl.load_configuration = load_configuration
    try:
        yield
    finally:
        ConfigLoaderImpl.load_configuration = original_load
        kept.clear()
