"""hydra-submitit-launcher's launchers with one task per group of jobs that train together
(``hydra/launcher=kdrun_submitit_local`` and ``kdrun_submitit_slurm``, which the presets
``kd_submitit_local`` and ``kd_submitit_slurm`` use).

Hydra's submitit launchers make each job a task of its own: a process, and on SLURM an array task
that waits in the queue, each importing torch and training its student alone. Here the jobs that
differ only in the loss's settings and the seed (kdrun.groups.plan) are one task, which runs them
as kdrun's own launcher does (their students trained together, then each job through Hydra's
``run_job``); every other job is a task of its own, and ``stack=false`` makes every job one.
submitit requeues a task that is preempted or times out with the same jobs, which continue from
their checkpoints. Registered only where hydra-submitit-launcher is installed (the ``sweep``
extra). (No ``from __future__ import annotations``: see sweeps.py.)
"""

import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, filter_overrides, setup_globals
from omegaconf import OmegaConf

from hydra_plugins.kdrun_sweeps.sweeps import check_stack_mb, job_groups, run_jobs_here

log = logging.getLogger(__name__)

try:
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, LocalQueueConf, SlurmQueueConf
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import LocalLauncher, SlurmLauncher
except ImportError:  # no hydra-submitit-launcher: nothing to register
    LocalLauncher = SlurmLauncher = None


class _GroupsAsTasks:
    """What kdrun changes in a submitit launcher: ``launch`` submits one task per group of jobs,
    and a task (``__call__``) runs its jobs in its process."""

    composes_configs = True  # before any job runs: the sweeper need not compose them to check them

    def __init__(self, stack: bool = True, stack_mb: float = 2048.0, **params: Any) -> None:
        super().__init__(**params)
        self.stack, self.stack_mb = stack, stack_mb

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        check_stack_mb(self.stack_mb)
        setup_globals()
        parts = job_groups(self.hydra_context, self.config, job_overrides, self.stack)
        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
        for part in parts:
            jobs = "; ".join(f"#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))}" for i in part)
            log.info(f"\ttask of {len(part)} job{'s' if len(part) > 1 else ''}: {jobs}")
        tasks = [[(list(job_overrides[i]), initial_job_idx + i) for i in part] for part in parts]
        submitted = self._executor().map_array(self, tasks, [Singleton.get_state()] * len(tasks))
        returns: Dict[int, JobReturn] = {}
        for part, task in zip(parts, submitted):
            returns.update(zip(part, task.results()[0]))
        return [returns[i] for i in range(len(job_overrides))]

    def __call__(self, jobs: List[Tuple[List[str], int]], singleton_state: Dict[type, Singleton]) -> List[JobReturn]:
        import submitit

        Singleton.set_state(singleton_state)
        setup_globals()
        overrides, numbers = zip(*jobs)
        stack_mb = self.stack_mb if self.stack else None
        return run_jobs_here(self.hydra_context, self.task_function, self.config, overrides, numbers, stack_mb, job_id=submitit.JobEnvironment().job_id)

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


if LocalLauncher is not None:

    class KdrunSubmititLocal(_GroupsAsTasks, LocalLauncher):
        pass

    class KdrunSubmititSlurm(_GroupsAsTasks, SlurmLauncher):
        pass

    @dataclass
    class KdrunSubmititLocalConf(LocalQueueConf):
        _target_: str = "hydra_plugins.kdrun_sweeps.grouped_submitit.KdrunSubmititLocal"
        stack: bool = True  # one task for the jobs that differ only in the loss's settings and the seed
        stack_mb: float = 2048.0  # memory for one stack of students; a larger group trains in several

    @dataclass
    class KdrunSubmititSlurmConf(SlurmQueueConf):
        _target_: str = "hydra_plugins.kdrun_sweeps.grouped_submitit.KdrunSubmititSlurm"
        stack: bool = True
        stack_mb: float = 2048.0

    ConfigStore.instance().store(group="hydra/launcher", name="kdrun_submitit_local", node=KdrunSubmititLocalConf, provider="kdrun")
    ConfigStore.instance().store(group="hydra/launcher", name="kdrun_submitit_slurm", node=KdrunSubmititSlurmConf, provider="kdrun")
