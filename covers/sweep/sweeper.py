"""The Optuna sweeper's implementation: study, ask/launch/tell loop, pruning, resume, parallel slots, failures."""

from __future__ import annotations

import difflib
import logging
import math
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import optuna
from hydra.core.plugins import Plugins
from hydra.core.utils import JobStatus
from hydra.errors import CompactHydraException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from covers.sweep import budget
from covers.sweep.asha import PromotionASHA
from covers.sweep.devices import slot_devices
from covers.sweep.outcome import format_params, summary_lines, write_results
from covers.sweep.recovery import stale_trial_callback
from covers.sweep.sampler import create_sampler, sampler_name
from covers.sweep.search_space import (
    SearchSpaceError,
    check_enqueued,
    describe_space,
    format_override,
    parse_params,
)
from covers.sweep.signals import StopRequest, signals_deferred, stop_on_signals
from covers.sweep.storage import StudyLock, normalise_storage_url, open_storage, optuna_experimental_quiet
from covers.sweep.warm_start import add_history, check_source
from covers.tracking.runs import flatten, resolve_sqlite_uri

log = logging.getLogger(__name__)

_MISSING = object()  # OmegaConf.select's answer for a key the config does not have


class SweepFailed(CompactHydraException):
    """The sweep ended without a usable result (failure budget spent, or no trial completed): Hydra prints this
    message alone and exits 1."""


def tell(study: optuna.Study, trial: optuna.Trial, value: float | None = None, state: TrialState | None = None) -> None:
    """``study.tell``, tolerating GridSampler's ``study.stop()`` outside ``optimize`` (the result is stored first)."""
    try:
        study.tell(trial, value, state=state)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's check for trials whose worker died (heartbeat older than ``grace_period``): failed, their MLflow
    runs ended and their parameters retried (:mod:`covers.sweep.recovery`). Optuna's "experimental" warning is
    noise on every pass."""
    with optuna_experimental_quiet():
        optuna.storages.fail_stale_trials(study)


def unknown_key_message(key: str, config: DictConfig) -> str:
    """What to do about a search-space key the config does not have: the closest keys, and how to add one."""
    keys = [k for k in flatten(OmegaConf.to_container(config, resolve=False)) if not k.startswith("hydra.")]
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(k) for k in close)}?" if close else ""
    return (
        f"search-space parameter {key!r} is not a key of the config.{hint} Check its spelling (python "
        f"experiments/run.py --cfg job lists every key), or write '+{key}=...' to add a new key."
    )


def first_failure(trials: list[optuna.trial.FrozenTrial]) -> str:
    """``trial N: <error>`` for the lowest-numbered failed trial that recorded its error (first line only)."""
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.FAIL and t.user_attrs.get("error"):
            return f"trial {t.number}: {t.user_attrs['error'].splitlines()[0]}"
    return "no error recorded"


class OptunaSweeperImpl(Sweeper):
    """Hydra sweeper on current Optuna: each trial is one Hydra job launched through the configured launcher.

    Trials run one at a time with an in-process launcher, or ``n_jobs`` at once with a process launcher (a slot
    is refilled as soon as its trial ends). Several sweep processes may share one study through its storage: each
    one fails the trials of a worker that died (no heartbeat for ``grace_period`` s) and runs their retries."""

    def __init__(
        self,
        sampler: Any = None,
        pruner: Any = None,
        direction: str = "maximize",
        storage: str | None = None,
        study_name: str | None = None,
        n_trials: int = 10,
        n_jobs: int = 1,
        max_failure_rate: float = 0.25,
        heartbeat_interval: int | None = 30,
        grace_period: int | None = 120,
        metric: str = "val_acc",
        devices: Any = "auto",
        timeout: float | None = None,
        enqueue: Any = None,
        warm_start_from: str | None = None,
        custom_search_space: str | None = None,
        scheduler: PromotionASHA | None = None,
        params: DictConfig | None = None,
        mlflow: DictConfig | None = None,
        sqlite_wal: bool = True,
    ) -> None:
        self.sampler, self.pruner, self.direction = sampler, pruner, direction
        self.storage_url = normalise_storage_url(storage)
        self.lock = StudyLock(self.storage_url, study_name or "covers")  # shared by every worker of the study
        self.study_name, self.n_trials, self.n_jobs = study_name, int(n_trials), max(1, int(n_jobs))
        self.max_failure_rate = float(max_failure_rate)
        self.heartbeat_interval, self.grace_period, self.metric = heartbeat_interval, grace_period, metric
        self.devices = OmegaConf.to_container(devices) if OmegaConf.is_config(devices) else devices
        self.params = OmegaConf.to_container(params, resolve=True) if params else {}
        self.timeout = float(timeout) if timeout else None
        self.warm_start_from = str(warm_start_from) if warm_start_from else None
        # define-by-run parameters (e.g. gamma only for the focal loss): a function (cfg, trial) -> None, as in
        # hydra-optuna-sweeper; it runs after the sampler has drawn the params: values
        self.custom_search_space = get_method(custom_search_space) if custom_search_space else None
        if scheduler is not None and not isinstance(scheduler, PromotionASHA):  # e.g. rungs left without _target_
            raise SearchSpaceError(
                "hydra.sweeper.scheduler is not a scheduler: choose hydra/sweeper/scheduler=asha, or turn it off "
                "with hydra.sweeper.scheduler=null (over a search that sets its rungs, such as hparams_search=real)"
            )
        self.scheduler = scheduler  # multi-fidelity with promotion (hydra/sweeper/scheduler=asha), or None
        self.enqueue = OmegaConf.to_container(enqueue, resolve=True) if OmegaConf.is_config(enqueue) else enqueue or []
        self.mlflow_cfg = mlflow
        self.sqlite_wal = bool(sqlite_wal)
        self.storage_cfg: str | None = None
        self.pruner_cfg: dict | None = None
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.objective = str(OmegaConf.select(config, "optimized_metric", default="objective"))
        # handed to every job (trial.storage, trial.pruner) as configured, unresolved: a password read from the
        # environment (${oc.env:...}) is resolved in the job and never written into its config or overrides
        raw = OmegaConf.to_container(config.hydra.sweeper, resolve=False)
        self.storage_cfg, self.pruner_cfg = raw.get("storage"), raw.get("pruner")
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    def search_space(self, arguments: Sequence[str]) -> tuple[dict, dict]:
        """Distributions and fixed overrides from ``params:`` plus command-line sweep arguments; keys checked."""
        distributions, fixed = parse_params([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        for key in distributions:
            self._check_key(key)
        if self.scheduler is not None:
            self.scheduler.check_space(distributions)
        self.enqueue = check_enqueued(self.enqueue, distributions)  # before any trial: a typo stops the sweep
        return distributions, fixed

    def _check_key(self, key: str, where: str = "") -> None:
        """A searched key must be a key of the config (``+key`` adds one, ``~key`` removes one)."""
        if key[0] not in "+~" and OmegaConf.select(self.config, key, default=_MISSING) is _MISSING:
            raise SearchSpaceError(where + unknown_key_message(key, self.config))

    # -- set-up --------------------------------------------------------------------------------------------------
    def _study(self, distributions: dict) -> tuple[optuna.Study, int]:
        sampler, grid_size = create_sampler(self.sampler, distributions)
        on_stale = stale_trial_callback(self.mlflow_cfg, self.grace_period)
        with self.lock():  # workers starting together: one creates the schema, enqueues and warm-starts
            storage = open_storage(
                self.storage_url, self.heartbeat_interval, self.grace_period, on_stale, sqlite_wal=self.sqlite_wal
            )
            earlier = check_source(storage, self.warm_start_from, self.direction) if self.warm_start_from else None
            study = optuna.create_study(
                study_name=self.study_name,
                storage=storage,
                sampler=sampler,
                pruner=self.pruner,
                direction=self.direction,
                load_if_exists=True,
            )
            if earlier is not None:
                add_history(study, earlier, distributions, define_by_run=self.custom_search_space is not None)
            for params in self.enqueue:  # warm start: run first, in order; one already in the study is not repeated
                study.enqueue_trial(params, skip_if_exists=True)
        if study.metric_names is None:  # optuna-dashboard and Optuna's plots name the objective, not "Objective 0"
            with optuna_experimental_quiet():
                study.set_metric_names([self.objective])
        n_trials = min(self.n_trials, grid_size) if grid_size else self.n_trials
        done = len(budget.counted(study.get_trials(deepcopy=False)))
        log.info(
            "study %s (storage %s, sampler %s, pruner %s): %d of %d trials exist; search space: %s",
            study.study_name,
            _safe_url(self.storage_url),
            sampler_name(study.sampler),
            type(study.pruner).__name__,
            done,
            n_trials,
            describe_space(distributions),
        )
        return study, n_trials

    def _parent_run(self, study: optuna.Study, distributions: dict, n_trials: int) -> str | None:
        if not self.mlflow_cfg:
            return None
        from covers.sweep.summary import open_parent_run

        settings = {
            "sampler": sampler_name(study.sampler),
            "pruner": type(study.pruner).__name__,
            "n_trials": n_trials,
            "timeout_s": self.timeout,
            "enqueued": len(self.enqueue),
            "warm_start_from": self.warm_start_from,
            "scheduler": self.scheduler.describe() if self.scheduler is not None else None,
            "n_jobs": self.n_jobs,
            "direction": self.direction,
            "study_name": study.study_name,
            "storage": _safe_url(self.storage_url),
        }
        return open_parent_run(study, self.mlflow_cfg, distributions, settings)

    # -- the sweep -----------------------------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> None:
        """Run the study to its budget. Every way this ends (done, failure budget, Ctrl-C, SIGTERM at any moment,
        an exception) leaves the MLflow parent run in a final state: FINISHED, FAILED or KILLED."""
        assert self.config is not None and self.launcher is not None
        distributions, fixed = self.search_space(arguments)
        # fixed values are override text already (quoted and escaped as the user wrote them): passed on unchanged
        fixed_overrides = [f"{k}={v}" for k, v in fixed.items()]
        with stop_on_signals() as stop_request:
            study, n_trials = self._study(distributions)
            parent, status = None, "FINISHED"
            try:
                with signals_deferred():  # a parent run that exists is always known here, so it is always closed
                    parent = self._parent_run(study, distributions, n_trials)
                self._run(study, distributions, fixed_overrides, n_trials, parent, stop_request)
                stop_request.check()  # a signal that a finalizer swallowed during the last trial
                self._check_result(study)
                results = write_results(self.config.hydra.sweep.dir, study)
            except KeyboardInterrupt:
                status = "KILLED"
                log.warning("sweep interrupted; rerun with hydra.sweeper.study_name=%s to resume", study.study_name)
                raise
            except BaseException:
                status = "FAILED"
                raise
            finally:
                self.lock.close()
                with signals_deferred():
                    if parent:
                        self._close_parent(study, parent, status)
            uri = self.mlflow_cfg.uri if self.mlflow_cfg else None
            for line in summary_lines(study, self.objective, parent, resolve_sqlite_uri(uri), results):
                log.info(line)

    def _close_parent(self, study: optuna.Study, parent: str, status: str) -> None:
        """The final summary, then the parent's end status. The caller holds Ctrl-C/SIGTERM back meanwhile (a second
        or so): a signal in this short stretch is raised once the status is written, never leaving it RUNNING."""
        from mlflow import MlflowClient

        from covers.sweep.summary import log_sweep_summary

        try:
            log.info("sweep %s: writing the final summary to MLflow parent run %s", status.lower(), parent)
            log_sweep_summary(study, parent, final=True)
        except Exception:  # never hide why the sweep stopped behind a failing summary
            log.exception("could not write the sweep summary to the parent run %s", parent)
            if status == "FINISHED":
                status = "FAILED"
                raise
        finally:
            MlflowClient().set_terminated(parent, status=status)

    def _check_result(self, study: optuna.Study) -> None:
        """A sweep in which no trial completed is a failure, whatever ``max_failure_rate`` allows."""
        trials = budget.counted(study.get_trials(deepcopy=False))
        if not any(t.state == TrialState.COMPLETE for t in trials):
            raise SweepFailed(f"sweep failed: no trial completed ({len(trials)} ran); first {first_failure(trials)}")

    def _run(
        self,
        study: optuna.Study,
        distributions: dict,
        fixed: list[str],
        n_trials: int,
        parent: str | None,
        stop_request: StopRequest,
    ) -> None:
        parallel = self.n_jobs > 1 and type(self.launcher).__name__ != "BasicLauncher"
        if self.n_jobs > 1 and not parallel:
            log.warning(
                "n_jobs=%d needs a process launcher (e.g. hydra/launcher=joblib); running one at a time", self.n_jobs
            )
        slots = self.n_jobs if parallel else 1
        devices = slot_devices(self.devices, slots, OmegaConf.select(self.config, "trainer.device", default="auto"))
        poll_s = min(5.0, float(self.heartbeat_interval or 5))
        in_flight: dict[Future, tuple[optuna.Trial, int]] = {}  # a parallel trial and its slot
        running: dict[int, optuna.Trial] = {}  # every trial asked for and not yet told, by number
        waiting_logged = False
        deadline = time.monotonic() + self.timeout if self.timeout else None  # as Optuna's optimize(timeout=)
        timed_out = False
        pool = ThreadPoolExecutor(slots)
        with budget.Heartbeat(study._storage, self.heartbeat_interval) as beat:  # public API has no accessor
            try:
                while True:
                    stop_request.check()  # raised here if a finalizer swallowed the signal's KeyboardInterrupt
                    fail_stale_trials(study)
                    stop = self._failures_exceeded(study, n_trials)
                    while not stop and len(in_flight) < slots:
                        stop_request.check()
                        if deadline is not None and time.monotonic() >= deadline:
                            if not timed_out:
                                log.info("timeout of %gs reached: no new trial starts", self.timeout)
                            timed_out = True
                            break
                        trial = self._ask(study, distributions, n_trials)
                        if trial is None:
                            break
                        running[trial.number] = trial
                        beat.add(trial._trial_id)
                        later = self.scheduler.label(trial.user_attrs) if self.scheduler is not None else ""
                        log.info("trial %d: %s%s", trial.number, format_params(trial.params), later)
                        slot = min(set(range(slots)) - {s for _, s in in_flight.values()})
                        overrides = self._overrides(study, trial, fixed, parent, devices[slot])
                        if parallel:
                            in_flight[pool.submit(self._launch, overrides, trial.number)] = (trial, slot)
                        else:
                            ret = self._launch(overrides, trial.number)
                            self._finish(study, running.pop(trial.number), beat, parent, ret)
                            stop = self._failures_exceeded(study, n_trials)
                    if in_flight:
                        done, _ = wait(in_flight, timeout=poll_s, return_when=FIRST_COMPLETED)
                        for fut in done:
                            trial, _ = in_flight.pop(fut)
                            self._finish(study, running.pop(trial.number), beat, parent, fut.result())
                        continue
                    if stop:
                        raise SweepFailed(stop)
                    if timed_out:
                        break
                    if budget.has_waiting(study):  # a retry queued meanwhile (e.g. by another worker)
                        continue
                    others = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
                    if not others or not beat.enabled:
                        break
                    if not waiting_logged:  # their worker may still die: its trials are then failed and retried here
                        log.info("waiting for trials %s of other workers (stale after %ss)", others, self.grace_period)
                        waiting_logged = True
                    time.sleep(poll_s)
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                for trial in running.values():
                    self._interrupt(study, trial)
                raise
            finally:
                pool.shutdown(wait=False)

    def _ask(self, study: optuna.Study, distributions: dict, n_trials: int) -> optuna.Trial | None:
        """The next trial to run (a waiting retry or promotion first), or None when the study's budget is spent."""
        # one decision at a time among the study's workers: promote a configuration once, hand out the last trial once
        with self.lock():
            if self.scheduler is not None:
                self.scheduler.promote(study)
            if not budget.has_waiting(study) and budget.budget_left(study, n_trials) <= 0:
                return None
            with warnings.catch_warnings():  # heartbeats are recorded by this sweeper, not by Study.optimize
                warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
                trial = study.ask(fixed_distributions=distributions)
        ranks = sorted(t.number for t in budget.counted(study.get_trials(deepcopy=False)))
        late = budget.CONTINUES not in trial.user_attrs and trial.number not in ranks[:n_trials]
        if late:  # a storage without a study lock (e.g. MySQL): another worker took the last trial at the same moment
            trial.set_user_attr(budget.OVER_BUDGET, True)
            tell(study, trial, state=TrialState.FAIL)
            return None
        if self.custom_search_space is not None:
            try:
                self.custom_search_space(self.config, trial)
                for key in set(trial.params) - set(distributions):  # a key the hook made up fails here, not in Hydra
                    self._check_key(key, "custom_search_space: ")
            except BaseException:
                tell(study, trial, state=TrialState.FAIL)
                raise
        return trial

    def _launch(self, overrides: list[str], number: int) -> Any:
        return self.launcher.launch([overrides], initial_job_idx=number)[0]

    def _finish(self, study: optuna.Study, trial: optuna.Trial, beat: budget.Heartbeat, parent, ret: Any) -> None:
        beat.remove(trial._trial_id)
        self._tell(study, trial, ret)
        if parent:
            from covers.sweep.summary import log_sweep_summary, tag_trial_state

            tag_trial_state(study, trial.number)
            log_sweep_summary(study, parent)

    def _interrupt(self, study: optuna.Study, trial: optuna.Trial) -> None:
        frozen = study.get_trials(deepcopy=False)[trial.number]
        if frozen.state == TrialState.RUNNING:
            tell(study, trial, state=TrialState.FAIL)
            budget.retry(study, study.get_trials(deepcopy=False)[trial.number])

    def _failures_exceeded(self, study: optuna.Study, n_trials: int) -> str | None:
        """The reason to stop when more than ``max_failure_rate`` of ``n_trials`` failed, else None."""
        trials = budget.counted(study.get_trials(deepcopy=False))
        failed = sum(t.state == TrialState.FAIL for t in trials)
        if failed <= self.max_failure_rate * n_trials:
            return None
        allowed = math.floor(self.max_failure_rate * n_trials)
        return (
            f"sweep stopped: {failed} of {len(trials)} trials failed (max_failure_rate={self.max_failure_rate} of "
            f"n_trials={n_trials} allows {allowed}); first {first_failure(trials)}"
        )

    def _overrides(
        self, study: optuna.Study, trial: optuna.Trial, fixed: list[str], parent: str | None, device: str | None
    ) -> list[str]:
        ov = [format_override(k, v) for k, v in trial.params.items()] + fixed
        # what the job needs to report to its trial, in its own config (no global Hydra state)
        ov += [
            f"trial.number={trial.number}",
            format_override("trial.study_name", study.study_name),
            format_override("trial.storage", self.storage_cfg),
            format_override("trial.metric", self.metric),
            format_override("trial.pruner", self.pruner_cfg),
            f"trial.n_jobs={self.n_jobs}",
        ]
        if parent:
            ov.append(f"trial.parent_run_id={parent}")
        if self.scheduler is not None:  # the rung's epochs and image size (they replace fixed ones), its checkpoint
            rung = self.scheduler.overrides(trial.user_attrs)
            owned = {o.split("=", 1)[0] for o in rung}
            ov = [o for o in ov if o.split("=", 1)[0] not in owned] + rung
        if device:  # this slot's GPU (covers.sweep.devices)
            ov.append(f"trainer.device={device}")
        return ov

    def _tell(self, study: optuna.Study, trial: optuna.Trial, ret: Any) -> None:
        if ret.status == JobStatus.FAILED and isinstance(ret._return_value, optuna.TrialPruned):
            # read directly: Hydra's return_value getter reports every non-completed job as an error
            log.info("trial %d pruned: %s", trial.number, ret._return_value)  # the message names the epoch
            tell(study, trial, state=TrialState.PRUNED)
            return
        try:
            value = float(ret.return_value)
        except Exception as e:  # the job raised, or returned something that is not a number
            error = f"{type(e).__name__}: {e}"
            log.warning("trial %d failed: %s", trial.number, error.splitlines()[0])
            trial.set_user_attr("error", error[:1000])
            tell(study, trial, state=TrialState.FAIL)
            return
        if not math.isfinite(value):
            log.warning("trial %d returned %s; marked failed", trial.number, value)
            tell(study, trial, state=TrialState.FAIL)
            return
        tell(study, trial, value)
        log.info("trial %d complete: %s=%.4f", trial.number, self.objective, value)


def _safe_url(url: str | None) -> str:
    """A storage URL without its password, for logs and tags."""
    if not url or "@" not in url:
        return str(url)
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
