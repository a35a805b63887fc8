"""Stop signals in the sweep loop: a Ctrl-C or SIGTERM is never lost, even when Python drops its exception."""

from __future__ import annotations

import signal

import optuna
import pytest
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from covers.sweep.signals import stop_on_signals
from covers.sweep.sweeper import OptunaSweeperImpl


class _SignalledInFinalizer:
    """Receives SIGTERM while its finalizer runs: Python prints the KeyboardInterrupt as ``Exception ignored in``
    and goes on, as it did in CI when the signal landed in SQLAlchemy's weakref cleanup between two trials."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGTERM)


class _Launcher:
    """Runs a trial by returning a value; SIGTERM reaches the process during the first one, inside a finalizer."""

    def __init__(self) -> None:
        self.launched: list[int] = []

    def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
        self.launched.append(initial_job_idx)
        if len(self.launched) == 1:
            _SignalledInFinalizer()  # dropped at once: its finalizer runs here
        return [JobReturn(overrides=job_overrides[0], status=JobStatus.COMPLETED, _return_value=0.5)]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed one, on purpose
def test_a_signal_swallowed_by_a_finalizer_still_stops_the_sweep(tmp_path):
    """SIGTERM during a trial whose KeyboardInterrupt a finalizer swallowed: that trial completes, no further trial
    starts, and the sweep stops with KeyboardInterrupt (it used to run the rest of its budget and exit 0)."""
    url = f"sqlite:///{tmp_path}/study.db"
    study = optuna.create_study(study_name="stop", storage=url, direction="maximize")
    sweeper = OptunaSweeperImpl(storage=url, study_name="stop", n_trials=3, heartbeat_interval=None)
    sweeper.config, sweeper.launcher, sweeper.objective = OmegaConf.create({}), _Launcher(), "val_acc"  # as setup()
    space = {"optim.lr": FloatDistribution(1e-4, 1e-2, log=True)}
    with stop_on_signals() as stop_request, pytest.raises(KeyboardInterrupt, match="signal 15"):
        sweeper._run(study, space, [], 3, None, stop_request)
    assert sweeper.launcher.launched == [0]
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
