"""Hydra discovers sweepers only under ``hydra_plugins``: this thin class delegates to ``covers.sweep.sweeper``.

Hydra imports this module at every start-up, so it imports nothing heavy (Optuna, MLflow) at module level."""

from __future__ import annotations

from typing import Any

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class CoversOptunaSweeper(Sweeper):
    """Optuna sweeper with the official plugin's ``params:`` syntax; see ``conf/hydra/sweeper/covers_optuna.yaml``."""

    def __init__(self, **settings: Any) -> None:
        from covers.sweep.sweeper import OptunaSweeperImpl

        self.sweeper = OptunaSweeperImpl(**settings)

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> None:
        return self.sweeper.sweep(arguments)
