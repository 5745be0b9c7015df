"""kdrun's sweeper and launcher (``hydra/sweeper=kdrun``, ``hydra/launcher=kdrun``, the defaults).

They run a grid as Hydra's basic ones do (the cartesian product of comma-separated values, in
order, in this process), but compose each job's config once: Hydra's basic sweeper composes every
job's config to check it (``Sweeper.validate_batch_is_legal``), throws it away, and the launcher
composes it again. Here the launcher composes all of a batch's configs before its first job runs,
so a bad override (a value out of range, or a job folder that cannot be created) stops the sweep
before any training, and the sweeper skips its own check. The launcher then trains the students
of the jobs that differ only in the loss's settings and the seed together (kdrun.groups), before
the jobs run one after the other. kdrun's joblib and submitit launchers (group_launchers.py) do
the same, a task per group of jobs. With another launcher (Hydra's own) the sweeper checks as
Hydra's does.

Hydra finds plugins in the ``hydra_plugins`` namespace package; the configs are stored below.
(Hydra loads this module without registering it in sys.modules: no ``from __future__ import
annotations``, which dataclasses would then fail to resolve.)
"""

import copy
import itertools
import logging
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.errors import HydraException
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class KdrunSweeperConf:
    _target_: str = "hydra_plugins.kdrun_sweeps.sweeps.KdrunSweeper"
    max_batch_size: Optional[int] = None  # jobs handed to the launcher at a time (None: all)
    params: Optional[Dict[str, str]] = None  # sweeps set in a config: {key: "value1,value2"}


@dataclass
class KdrunLauncherConf:
    _target_: str = "hydra_plugins.kdrun_sweeps.sweeps.KdrunLauncher"
    stack: bool = True  # train the jobs that differ only in the loss's settings and the seed together
    stack_mb: float = 2048.0  # memory for one stack of students; a larger group trains in several


ConfigStore.instance().store(group="hydra/sweeper", name="kdrun", node=KdrunSweeperConf, provider="kdrun")
ConfigStore.instance().store(group="hydra/launcher", name="kdrun", node=KdrunLauncherConf, provider="kdrun")


class KdrunLauncher(Launcher):
    """Runs a batch of jobs in this process: every job's config first (composed once, or derived
    from the first job's), then the students of the jobs that can train together, trained together
    (``kdrun.app.train_together``; ``stack=false``: not), then the jobs one after the other."""

    composes_configs = True  # before any job runs: the sweeper need not compose them to check them

    def __init__(self, stack: bool = True, stack_mb: float = 2048.0) -> None:
        self.stack, self.stack_mb = stack, stack_mb

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        check_stack_mb(self.stack_mb)
        setup_globals()
        numbers = range(initial_job_idx, initial_job_idx + len(job_overrides))
        return run_jobs_here(self.hydra_context, self.task_function, self.config, job_overrides, numbers, self.stack_mb if self.stack else None)


def run_jobs_here(
    hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig, job_overrides: Sequence[Sequence[str]],
    numbers: Sequence[int], stack_mb: Optional[float], job_id: Optional[str] = None,
) -> List[JobReturn]:  # fmt: skip
    """Run these jobs (numbered ``numbers``) in this process: every job's config first, then the
    models of the jobs that can train together, trained together (unless ``stack_mb`` is None),
    then the jobs one after the other through Hydra's ``run_job``."""
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    Path(str(config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    configs, tasks = composed_jobs(hydra_context, config, job_overrides)
    job_dirs = _numbered_job_dirs(configs, numbers, job_id)
    together = stack_mb is not None and len(configs) > 1
    if together:
        from kdrun.app import stop_trained_jobs, train_together
    returns = []
    try:
        if together:
            train_together(configs, tasks, job_dirs, stack_mb)
        log.info(f"Launching {len(job_overrides)} jobs locally")
        for number, overrides, job in zip(numbers, job_overrides, configs):
            log.info(f"\t#{number} : {' '.join(filter_overrides(overrides))}")
            returns.append(
                run_job(
                    hydra_context=hydra_context, task_function=task_function, config=job,
                    job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir",
                )  # fmt: skip
            )
            configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    except BaseException as stop:  # Ctrl-C, SIGTERM, a scheduler's exit: the jobs still to run say so
        if together:
            stop_trained_jobs(stop, Path(str(config.hydra.sweep.dir)))
        _record_jobs_not_started(stop, config, configs, tasks, job_dirs)
        raise
    return returns


def _numbered_job_dirs(configs: Sequence[DictConfig], numbers: Sequence[int], job_id: Optional[str] = None) -> List[Path]:
    """Number each job's config as Hydra does and create its folder; return the folders."""
    job_dirs = []
    for number, job in zip(numbers, configs):
        with open_dict(job):
            job.hydra.job.id = job_id if job_id is not None else number
            job.hydra.job.num = number
        job_dirs.append(_make_job_dir(job))
    return job_dirs


def record_jobs_not_started(stop: BaseException, config: DictConfig, configs: Sequence[DictConfig], tasks: Sequence[DictConfig],
                            numbers: Sequence[int]) -> None:  # fmt: skip
    """After a launcher whose jobs (``composed_jobs``, numbered ``numbers``) run in other processes
    stopped: each job that no worker started gets its folder, saying interrupted, as in-process
    sweeps leave theirs."""
    _record_jobs_not_started(stop, config, configs, tasks, _numbered_job_dirs(configs, numbers))


def _record_jobs_not_started(stop: BaseException, config: DictConfig, configs: Sequence[DictConfig], tasks: Sequence[DictConfig],
                             job_dirs: Sequence[Path]) -> None:  # fmt: skip
    from kdrun.app import stop_jobs_not_started

    jobs = [(task, job_dir, list(job.hydra.overrides.task)) for task, job_dir, job in zip(tasks, job_dirs, configs)]
    stop_jobs_not_started(stop, Path(str(config.hydra.sweep.dir)), jobs)
    _record_jobs_not_run(configs, tasks, job_dirs)


def _record_jobs_not_run(configs: Sequence[DictConfig], tasks: Sequence[DictConfig], job_dirs: Sequence[Path]) -> None:
    """For each job that says how it stopped (status.json) but never reached Hydra's ``run_job``
    (it trained with others, or waited to run): the ``.hydra`` files run_job would have written,
    by which ``kdrun compare`` finds the job and reads its settings."""
    from kdrun.run_files import STATUS_FILE, write_text_atomic

    for job, task, job_dir in zip(configs, tasks, job_dirs):
        subdir = job.hydra.output_subdir
        if subdir is None or not (job_dir / STATUS_FILE).is_file() or (job_dir / str(subdir) / "config.yaml").exists():
            continue
        (job_dir / str(subdir)).mkdir(parents=True, exist_ok=True)
        write_text_atomic(job_dir / str(subdir) / "config.yaml", OmegaConf.to_yaml(task))
        write_text_atomic(job_dir / str(subdir) / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.masked_copy(job, "hydra")))
        write_text_atomic(job_dir / str(subdir) / "overrides.yaml", OmegaConf.to_yaml(job.hydra.overrides.task))


def composed_jobs(hydra_context: HydraContext, config: DictConfig, job_overrides: Sequence[Sequence[str]]) -> Tuple[List[DictConfig], List[DictConfig]]:
    """Every job's config and its task config, checked: a bad value anywhere stops the sweep."""
    configs = _compose(hydra_context, config, job_overrides)
    return configs, [_checked(job) for job in configs]


def job_groups(tasks: Sequence[DictConfig], stack: bool) -> List[List[int]]:
    """The jobs (positions in ``tasks``, their task configs) to run together, in job order: each
    group of jobs that can train together (kdrun.groups.plan; none unless ``stack``), and each
    other job alone."""
    if not stack:
        return [[i] for i in range(len(tasks))]
    from kdrun.groups import plan

    groups, alone = plan(tasks)
    return sorted(groups + [[i] for i in alone], key=min)


def check_stack_mb(stack_mb: float) -> None:
    if not stack_mb > 0:  # NaN too
        from kdrun.errors import ConfigError

        raise ConfigError(f"hydra.launcher.stack_mb={stack_mb} is not allowed: the memory one stack of students may take, in MB, > 0")


def _compose(hydra_context: HydraContext, config: DictConfig, job_overrides: Sequence[Sequence[str]]) -> List[DictConfig]:
    """Each job's config. Hydra composes one in about 0.3 s (the defaults list, then a merge of
    every config file): most of a small sweep's time. A job whose overrides differ from the
    first job's only in the values of plain keys (``loss.alpha=0.5``: no config group, no
    hydra key, no + or ~) gets a copy of the first job's config with those values set as
    Hydra sets them (``OmegaConf.update``), in about 0.01 s. Anything else, and any value
    the copy refuses, is composed by Hydra, which then reports the mistake its own way."""
    loader = hydra_context.config_loader
    common = set(job_overrides[0]).intersection(*job_overrides[1:])  # a job is named by the rest
    first = _composed(loader, config, job_overrides[0], common)
    parser = OverridesParser.create()
    groups = set(loader.list_groups(""))
    parsed_first = parser.parse_overrides(list(job_overrides[0]))
    configs = [first]
    for overrides in job_overrides[1:]:
        derived = _derived(first, parsed_first, parser.parse_overrides(list(overrides)), groups)
        configs.append(derived if derived is not None else _composed(loader, config, overrides, common))
    return configs


def _composed(loader: Any, config: DictConfig, overrides: Sequence[str], common: "set[str]") -> DictConfig:
    """Hydra's config of the job with these overrides; a mistake in it is one message that names
    the job by its overrides not ``common`` to all (loss=dist has no loss.alpha, in a sweep over
    loss=kd,dist)."""
    try:
        return loader.load_sweep_config(config, list(overrides))
    except Exception as error:
        from kdrun.config import config_error_message
        from kdrun.errors import ConfigError

        message = config_error_message(error)
        if message is None:
            raise
        own = [o for o in filter_overrides(overrides) if o not in common] or filter_overrides(overrides)
        raise ConfigError(f"the sweep's job {' '.join(own)}: {message}") from None


def _derived(first: DictConfig, parsed_first: List[Any], parsed: List[Any], groups: "set[str]") -> Optional[DictConfig]:
    """``first`` (a composed job config) with the values where ``parsed`` (another job's overrides,
    in the same order of keys) differs, or None when that job needs composing."""
    if [o.key_or_group for o in parsed] != [o.key_or_group for o in parsed_first]:
        return None
    changed = [o for o, base in zip(parsed, parsed_first) if o.input_line != base.input_line]
    keys = [o.key_or_group for o in parsed]
    for o in changed:
        key = o.key_or_group
        if o.type != OverrideType.CHANGE or o.package is not None or o.is_hydra_override() or "/" in key or key in groups:
            return None
        if any(other != key and (other.startswith(key + ".") or key.startswith(other + ".")) for other in keys):
            return None  # another override sets a part of it, or it a part of another: order matters
    config = copy.deepcopy(first)
    try:
        for o in changed:
            OmegaConf.update(config, o.key_or_group, o.value(), merge=True)
    except Exception:
        return None
    OmegaConf.copy_cache(from_config=first, to_config=config)
    task = [o for o in parsed if not o.is_hydra_override()]
    naming = config.hydra.job.config.override_dirname
    with read_write(config.hydra):
        config.hydra.overrides.task = [o.input_line for o in task]
        # As Hydra names it: the task overrides but the excluded keys, sorted, "=" replaced by kv_sep.
        lines = sorted(o.input_line for o in task if o.key_or_group not in naming.exclude_keys)
        config.hydra.job.override_dirname = naming.item_sep.join(lines).replace("=", naming.kv_sep)
    return config


def _checked(config: DictConfig) -> DictConfig:
    """The job's task config, checked by kdrun before any job runs: a value out of range anywhere
    in the grid stops the sweep with one message, and no job folder is left behind."""
    from kdrun.config import validate, without_hydra

    task = without_hydra(config)
    validate(task)
    return task


def _make_job_dir(config: DictConfig) -> Path:
    """Create the job's folder before Hydra does, so that one that cannot be created (a name too
    long for the file system, say) is one message naming it (exit 2), not a traceback."""
    from hydra.core.hydra_config import HydraConfig

    from kdrun.errors import ConfigError

    HydraConfig.instance().set_config(config)  # the subdir's ${hydra:...} interpolations
    job_dir = (Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)).absolute()
    try:
        job_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"hydra.sweep.subdir: the job folder {job_dir} cannot be created: {error.strerror or error}. "
            "Choose a shorter hydra.sweep.subdir (e.g. hydra.sweep.subdir=${hydra.job.num})"
        ) from None
    return job_dir


class KdrunSweeper(Sweeper):
    """The cartesian product of the sweep's values (``a=1,2 b=x,y``: 4 jobs), in batches of at
    most ``max_batch_size`` jobs."""

    def __init__(self, max_batch_size: Optional[int] = None, params: Optional[Dict[str, str]] = None) -> None:
        self.max_batch_size, self.params = max_batch_size, params or {}

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*(f"{k}={v}" for k, v in self.params.items()), *arguments])
        choices: Dict[str, List[str]] = {}
        for override in overrides:
            key = override.get_key_element()
            if not override.is_sweep_override():
                choices[key] = [f"{key}={override.get_value_element_as_str()}"]
            elif override.is_discrete_sweep():
                choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
            else:
                raise HydraException(f"kdrun's sweeper takes lists of values (a=1,2,3); {key} sweeps a {override.value_type.name}")
        jobs = [list(job) for job in itertools.product(*choices.values())]
        size = self.max_batch_size if self.max_batch_size not in (None, -1) else max(1, len(jobs))
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        returns = []
        for start in range(0, len(jobs), size):
            batch = jobs[start : start + size]
            if not getattr(self.launcher, "composes_configs", False):  # kdrun's launchers check the configs up front
                self.validate_batch_is_legal(batch)
            results = self.launcher.launch(batch, initial_job_idx=start)
            for number, result in enumerate(results, start=start):
                try:
                    _ = result.return_value  # raises what the job raised
                except Exception as error:  # an error in code (the user's, or kdrun's): the job says failed, the others go on
                    if type(error).__module__.startswith("submitit."):  # its scheduler gave up on it: no code to show
                        print(f"kdrun: job #{number} was stopped by submitit ({type(error).__name__}: {error}); the sweep goes on", file=sys.stderr)
                        continue
                    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                    print(f"kdrun: job #{number} failed with an error in code, not in its settings; the sweep goes on:\n{trace}", file=sys.stderr, end="")
            returns.append(results)
        return returns
