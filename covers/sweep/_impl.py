"""The Optuna sweeper's implementation: study, ask/launch/tell loop, MLflow parent run, failure budget."""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from covers.sweep.search_space import SearchSpaceError, format_override, grid_choices, parse_params
from covers.track import resolve_sqlite_uri

log = logging.getLogger(__name__)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def create_sampler(sampler: Any, distributions: dict) -> tuple[optuna.samplers.BaseSampler | None, int | None]:
    """The sampler Hydra instantiated from config; a partial ``GridSampler`` (``_partial_: true``) gets its grid
    from the search space. Returns ``(sampler, grid size or None)``."""
    if isinstance(sampler, functools.partial) and sampler.func is optuna.samplers.GridSampler:
        grid = {name: grid_choices(d) for name, d in distributions.items()}
        size = math.prod(len(v) for v in grid.values())
        return sampler(search_space=grid), size
    if isinstance(sampler, functools.partial):
        return sampler(), None
    if isinstance(sampler, optuna.samplers.GridSampler):
        return sampler, None
    if sampler is not None and not isinstance(sampler, optuna.samplers.BaseSampler):
        raise TypeError(f"hydra.sweeper.sampler must be an Optuna sampler config, got {type(sampler).__name__}")
    return sampler, None


class OptunaSweeperImpl(Sweeper):
    """Hydra sweeper on current Optuna: each trial is one Hydra job launched through the configured launcher."""

    def __init__(
        self,
        sampler: Any = None,
        direction: str = "maximize",
        storage: str | None = None,
        study_name: str | None = None,
        n_trials: int = 10,
        n_jobs: int = 1,
        max_failure_rate: float = 0.25,
        params: DictConfig | None = None,
        mlflow: DictConfig | None = None,
    ) -> None:
        self.sampler = sampler
        self.direction = direction
        self.storage = resolve_sqlite_uri(storage)
        self.study_name = study_name
        self.n_trials = int(n_trials)
        self.n_jobs = max(1, int(n_jobs))
        self.max_failure_rate = float(max_failure_rate)
        self.params = OmegaConf.to_container(params, resolve=True) if params else {}
        self.mlflow_cfg = mlflow
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # -- search space --------------------------------------------------------------------------------------------
    def search_space(self, arguments: Sequence[str]) -> tuple[dict, dict]:
        """Distributions and fixed overrides from ``params:`` plus command-line sweep arguments; keys checked."""
        lines = [f"{k}={v}" for k, v in self.params.items()] + list(arguments)
        distributions, fixed = parse_params(lines)
        missing = object()
        for key in distributions:
            if key[0] not in "+~" and OmegaConf.select(self.config, key, default=missing) is missing:
                raise SearchSpaceError(f"search-space parameter {key!r} is not a key of the composed config")
        return distributions, fixed

    # -- MLflow parent run ---------------------------------------------------------------------------------------
    def _parent_run(self, study: optuna.Study, distributions: dict) -> str | None:
        if not self.mlflow_cfg:
            return None
        from mlflow import MlflowClient

        from covers.track import setup_tracking

        exp_id = setup_tracking(self.mlflow_cfg.uri, self.mlflow_cfg.experiment, self.mlflow_cfg.get("artifact_root"))
        client = MlflowClient()
        existing = study.user_attrs.get("mlflow_parent_run_id")
        if existing:
            client.update_run(existing, status="RUNNING")
            log.info("resuming MLflow parent run %s", existing)
            return existing
        name = f"sweep {study.study_name} ({datetime.now():%Y-%m-%d %H:%M})"
        tags = {
            "covers.kind": "sweep",
            "study_name": study.study_name,
            "optuna.storage": _safe_url(self.storage),
        }
        run = client.create_run(exp_id, run_name=name, tags=tags)
        params = {f"search.{k}": str(v) for k, v in distributions.items()}
        params.update(
            {
                "sweeper.sampler": type(study.sampler).__name__,
                "sweeper.n_trials": str(self.n_trials),
                "sweeper.direction": self.direction,
                "sweeper.study_name": study.study_name,
                "sweeper.n_jobs": str(self.n_jobs),
            }
        )
        for k, v in params.items():
            client.log_param(run.info.run_id, k[:250], v[:6000])
        study.set_user_attr("mlflow_parent_run_id", run.info.run_id)
        return run.info.run_id

    def _summarise(self, study: optuna.Study, parent_run_id: str | None, status: str) -> None:
        if parent_run_id is None:
            return
        from covers.sweep.summary import log_sweep_summary

        log_sweep_summary(study, parent_run_id, status)

    # -- the loop ------------------------------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> None:
        assert self.config is not None and self.launcher is not None
        distributions, fixed = self.search_space(arguments)
        sampler, grid_size = create_sampler(self.sampler, distributions)
        n_trials = min(self.n_trials, grid_size) if grid_size else self.n_trials
        study = optuna.create_study(
            study_name=self.study_name,
            storage=self.storage,
            sampler=sampler,
            direction=self.direction,
            load_if_exists=True,
        )
        log.info(
            "study %s (storage %s, sampler %s): %d trials, search space %s",
            study.study_name,
            _safe_url(self.storage),
            type(study.sampler).__name__,
            n_trials,
            distributions,
        )
        parent_run_id = self._parent_run(study, distributions)
        status = "FINISHED"
        try:
            self._loop(study, distributions, fixed, n_trials, parent_run_id)
        except BaseException:
            status = "KILLED"
            raise
        finally:
            self._summarise(study, parent_run_id, status)

    def _loop(self, study: optuna.Study, distributions: dict, fixed: dict, n_trials: int, parent: str | None) -> None:
        fixed_overrides = [format_override(k, v) for k, v in fixed.items()]
        while True:
            trials = study.get_trials(deepcopy=False)
            done = sum(t.state in FINISHED for t in trials)
            failed = sum(t.state == TrialState.FAIL for t in trials)
            if failed > self.max_failure_rate * n_trials:
                raise RuntimeError(f"{failed} of {n_trials} trials failed (max_failure_rate={self.max_failure_rate})")
            if done >= n_trials:
                break
            batch = [study.ask(fixed_distributions=distributions) for _ in range(min(self.n_jobs, n_trials - done))]
            overrides = [self._overrides(study, t, fixed_overrides, parent) for t in batch]
            returns = self.launcher.launch(overrides, initial_job_idx=batch[0].number)
            for trial, ret in zip(batch, returns, strict=True):
                self._tell(study, trial, ret)

    def _overrides(self, study: optuna.Study, trial: optuna.Trial, fixed: list[str], parent: str | None) -> list[str]:
        ov = [format_override(k, v) for k, v in trial.params.items()] + fixed
        ov += [f"trial.number={trial.number}", format_override("trial.study_name", study.study_name)]
        if parent:
            ov.append(f"trial.parent_run_id={parent}")
        return ov

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: Any) -> None:
        try:
            value = float(ret.return_value)
        except Exception as e:  # the job raised, or returned something that is not a number
            log.warning("trial %d failed: %s: %s", trial.number, type(e).__name__, e)
            study.tell(trial, state=TrialState.FAIL)
            return
        if value != value:  # NaN
            log.warning("trial %d returned NaN; marked failed", trial.number)
            study.tell(trial, state=TrialState.FAIL)
            return
        study.tell(trial, value)
        log.info("trial %d: %s=%.4f %s", trial.number, "value", value, trial.params)


def _safe_url(url: str | None) -> str:
    """A storage URL without its password, for logs and tags."""
    if not url or "@" not in url:
        return str(url)
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
