"""Hydra launcher plugin of fair-lightning: local parallel jobs that survive a worker's death.

``hydra/launcher=parallel`` (fair-lightning's config) selects it. The logic lives in
:mod:`fair_lightning._launcher`; this module only declares the plugin where Hydra looks for
plugins (the ``hydra_plugins`` namespace package).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class ResilientLauncher(Launcher):
    """Runs a sweep's jobs on ``n_jobs`` local worker processes; a killed worker kills only its job.

    Args:
        n_jobs: worker processes (``-1``: one per core).
        threads_per_job: torch/OpenMP threads of each worker; ``None``: cores // n_jobs.
    """

    def __init__(self, n_jobs: int = 2, threads_per_job: int | None = None) -> None:
        self.n_jobs = n_jobs
        self.threads_per_job = threads_per_job
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.task_function = task_function
        self.hydra_context = hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra.core.utils import configure_log, setup_globals

        from fair_lightning import _launcher

        setup_globals()
        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        returns: Any = _launcher.launch(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=self.config,
            job_overrides=job_overrides,
            initial_job_idx=initial_job_idx,
            n_jobs=self.n_jobs,
            threads_per_job=self.threads_per_job,
        )
        return returns
