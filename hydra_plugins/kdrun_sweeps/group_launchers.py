"""hydra-joblib-launcher's and hydra-submitit-launcher's launchers with one task per group of jobs
that train together (``hydra/launcher=kdrun_joblib``, ``kdrun_submitit_local`` and
``kdrun_submitit_slurm``, which the presets ``kd_joblib``, ``kd_submitit_local`` and
``kd_submitit_slurm`` use).

Hydra's launchers make each job a task of its own: a joblib worker's call, a process, or on SLURM
an array task that waits in the queue, each job training its student alone. Here the jobs that
differ only in the loss's settings and the seed (kdrun.groups.plan) are one task, which runs them
as kdrun's own launcher does (their students trained together, then each job through Hydra's
``run_job``); every other job is a task of its own, and ``stack=false`` makes every job one. Tasks
run in parallel as the launcher runs its jobs. submitit requeues a task that is preempted or
times out with the same jobs, which continue from their checkpoints. Each launcher is registered
only where its plugin is installed (the ``sweep`` extra). (No ``from __future__ import
annotations``: see sweeps.py.)
"""

import contextlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.kdrun_sweeps.sweeps import check_stack_mb, composed_jobs, job_groups, record_jobs_not_started, run_jobs_here

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_joblib_launcher.config import JobLibLauncherConf
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher
except ImportError:  # no hydra-joblib-launcher: nothing to register
    JoblibLauncher = None
try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
except ImportError:  # no hydra-submitit-launcher: nothing to register
    LocalLauncher = SlurmLauncher = None

Task = List[Tuple[List[str], int]]  # a task's jobs: (overrides, job number) each


def run_task(
    hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig, jobs: Task,
    stack_mb: Any, singleton_state: Dict[type, Singleton], job_id: Any = None,
) -> List[JobReturn]:  # fmt: skip
    """One task, in the process that runs it (a joblib worker, a submitit task): its jobs, their
    students trained together unless ``stack_mb`` is None."""
    Singleton.set_state(singleton_state)
    setup_globals()
    overrides, numbers = zip(*jobs)
    return run_jobs_here(hydra_context, task_function, config, overrides, numbers, stack_mb, job_id=job_id)


class _GroupsAsTasks:
    """What kdrun changes in a launcher: a task per group of jobs, planned before any is started."""

    composes_configs = True  # before any job runs: the sweeper need not compose them to check them

    def __init__(self, stack: bool = True, stack_mb: float = 2048.0, **params: Any) -> None:
        super().__init__(**params)
        self.stack, self.stack_mb = stack, stack_mb

    def _tasks(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, workers: int = 1) -> Tuple[List[List[int]], List[Task], tuple]:
        """The jobs of each task (positions in ``job_overrides``), each task's argument, and the
        jobs' configs, task configs and numbers (for ``_record_stop``; kept out of ``self``, which
        submitit sends to every task). Where there are fewer groups than ``workers``, groups are
        cut into consecutive parts (a sweep's seeds apart, where it sweeps them outermost) so that
        every worker has one."""
        check_stack_mb(self.stack_mb)
        setup_globals()
        planned = (*composed_jobs(self.hydra_context, self.config, job_overrides), range(initial_job_idx, initial_job_idx + len(job_overrides)))
        parts = _cut(job_groups(planned[1], self.stack), workers)
        for part in parts:
            jobs = "; ".join(f"#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))}" for i in part)
            log.info(f"\ttask of {len(part)} job{'s' if len(part) > 1 else ''}: {jobs}")
        return parts, [[(list(job_overrides[i]), initial_job_idx + i) for i in part] for part in parts], planned

    @property
    def _stack_mb(self) -> Any:
        return self.stack_mb if self.stack else None

    def _record_stop(self, stop: KeyboardInterrupt, planned: tuple) -> None:
        """After Ctrl-C (or SIGTERM) stopped this machine's workers: the jobs they left running, and
        those no worker started (of ``planned``, from ``_tasks``), say interrupted."""
        from kdrun.app import stop_jobs_left_running

        stop_jobs_left_running(Path(str(self.config.hydra.sweep.dir)), stop)
        record_jobs_not_started(stop, self.config, *planned)


def _cut(parts: List[List[int]], at_least: int) -> List[List[int]]:
    """Each part cut into consecutive pieces of about equal size, as many as make ``at_least``
    pieces in all (a part of n jobs into n at most)."""
    per_part = -(-at_least // len(parts))  # rounded up
    pieces = []
    for part in parts:
        size = -(-len(part) // per_part)
        pieces += [part[start : start + size] for start in range(0, len(part), size)]
    return pieces


@contextlib.contextmanager
def _stderr_of_controllers(folder: Optional[Path]) -> Iterator[None]:
    """While submitit starts its local controller processes: their stderr (which they inherit)
    goes to ``folder``/controllers.err. On Ctrl-C each printed Python's KeyboardInterrupt
    traceback into the terminal, after kdrun's one line; its tasks log to files of their own."""
    if folder is None:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    terminal = os.dup(2)
    with open(folder / "controllers.err", "ab") as log_file:
        os.dup2(log_file.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(terminal, 2)
        os.close(terminal)


def _in_job_order(parts: List[List[int]], results: Sequence[List[JobReturn]]) -> List[JobReturn]:
    returns: Dict[int, JobReturn] = {}
    for part, result in zip(parts, results):
        returns.update(zip(part, result))
    return [returns[i] for i in sorted(returns)]


if JoblibLauncher is not None:

    class KdrunJoblib(_GroupsAsTasks, JoblibLauncher):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            from joblib import Parallel, delayed, effective_n_jobs

            settings = {**self.joblib, "backend": "loky"}  # as Hydra's launcher: its threading backend cannot run Hydra jobs
            n_jobs = settings.get("n_jobs", -1)
            if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0:
                from kdrun.errors import ConfigError

                raise ConfigError(f"hydra.launcher.n_jobs={n_jobs!r} is not allowed: the worker processes, >= 1, or -1 for one per core (-2: all but one)")
            for key in ("pre_dispatch", "batch_size", "max_nbytes"):  # a number given on the command line arrives as text
                if isinstance(settings.get(key), str) and settings[key].isdigit():
                    settings[key] = int(settings[key])
            parts, tasks, planned = self._tasks(job_overrides, initial_job_idx, workers=effective_n_jobs(settings.get("n_jobs", -1)))
            log.info(f"Joblib.Parallel(n_jobs={settings.get('n_jobs')}) is launching {len(tasks)} tasks")
            state = Singleton.get_state()
            try:
                results = Parallel(**settings)(delayed(run_task)(self.hydra_context, self.task_function, self.config, task, self._stack_mb, state) for task in tasks)
            except KeyboardInterrupt as stop:  # joblib has ended its workers, which may not have recorded their jobs
                self._record_stop(stop, planned)
                raise
            return _in_job_order(parts, results)

    @dataclass
    class KdrunJoblibConf(JobLibLauncherConf):
        _target_: str = "hydra_plugins.kdrun_sweeps.group_launchers.KdrunJoblib"
        stack: bool = True  # one task for the jobs that differ only in the loss's settings and the seed
        stack_mb: float = 2048.0  # memory for one stack of students; a larger group trains in several

    ConfigStore.instance().store(group="hydra/launcher", name="kdrun_joblib", node=KdrunJoblibConf, provider="kdrun")


if LocalLauncher is not None:

    class _SubmititGroups(_GroupsAsTasks):
        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
            parts, tasks, planned = self._tasks(job_overrides, initial_job_idx)
            with _stderr_of_controllers(Path(str(self.config.hydra.sweep.dir)) / ".submitit" if self._EXECUTOR == "local" else None):
                submitted = self._executor().map_array(self, tasks, [Singleton.get_state()] * len(tasks))
            try:
                return _in_job_order(parts, [task.results()[0] for task in submitted])
            except KeyboardInterrupt as stop:
                if self._EXECUTOR == "local":  # its tasks are this command's processes: they stop with it (a cluster's stay queued)
                    for task in submitted:
                        task.cancel(check=False)
                    self._record_stop(stop, planned)
                raise

        def __call__(self, jobs: Task, singleton_state: Dict[type, Singleton]) -> List[JobReturn]:
            """A submitit task (``launch`` maps ``self`` over the tasks; submitit requeues it with
            the same arguments through ``checkpoint``)."""
            import submitit

            job_id = submitit.JobEnvironment().job_id
            return run_task(self.hydra_context, self.task_function, self.config, jobs, self._stack_mb, singleton_state, job_id)

        def _executor(self) -> Any:
            """The submitit executor with this launcher's settings, set as hydra-submitit-launcher sets them."""
            import submitit

            params = dict(self.params)
            folder = params.pop("submitit_folder")
            init = {f"{self._EXECUTOR}_max_num_timeout": params.pop("max_num_timeout")} if "max_num_timeout" in params else {}
            executor = submitit.AutoExecutor(cluster=self._EXECUTOR, folder=folder, **init)
            shared = set(OmegaConf.structured(BaseQueueConf).keys())
            executor.update_parameters(**{key if key in shared else f"{self._EXECUTOR}_{key}": value for key, value in params.items()})
            return executor

    class KdrunSubmititLocal(_SubmititGroups, LocalLauncher):
        pass

    class KdrunSubmititSlurm(_SubmititGroups, SlurmLauncher):
        pass

    @dataclass
    class KdrunSubmititLocalConf(LocalQueueConf):
        _target_: str = "hydra_plugins.kdrun_sweeps.group_launchers.KdrunSubmititLocal"
        stack: bool = True  # one task for the jobs that differ only in the loss's settings and the seed
        stack_mb: float = 2048.0  # memory for one stack of students; a larger group trains in several

    @dataclass
    class KdrunSubmititSlurmConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.kdrun_sweeps.group_launchers.KdrunSubmititSlurm"
        stack: bool = True
        stack_mb: float = 2048.0

    ConfigStore.instance().store(group="hydra/launcher", name="kdrun_submitit_local", node=KdrunSubmititLocalConf, provider="kdrun")
    ConfigStore.instance().store(group="hydra/launcher", name="kdrun_submitit_slurm", node=KdrunSubmititSlurmConf, provider="kdrun")
