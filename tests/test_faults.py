"""Fault injection on real sweep subprocesses: killed (SIGKILL/SIGTERM/SIGINT) at several points and resumed, a
failure budget, several workers on one study, a corrupt store, the submitit launcher. After each: Optuna states,
MLflow statuses and trial counts agree, nothing is left RUNNING, no trial is lost or run twice, no parameter set
repeats."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from covers.sweep.budget import RETRY_OF, counted
from covers.sweep.storage import create_storage
from covers.tracking.runs import sqlite_init_lock
from tests.conftest import ROOT, sweep_cmd

pytestmark = pytest.mark.slow

# Optuna state -> the MLflow status of the trial's run
RUN_STATUS = {TrialState.COMPLETE: {"FINISHED"}, TrialState.PRUNED: {"FINISHED"}, TrialState.FAIL: {"FAILED", "KILLED"}}


def _stores(tmp_path: Path, storage: str | None):
    url = storage or f"sqlite:///{tmp_path}/mlruns/optuna.db"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    return url, client


def check_consistent(tmp_path: Path, name: str, n_trials: int, storage: str | None = None, finished: bool = True):
    """The invariants every way a sweep ends must keep; returns the study and the trials' runs by trial number."""
    url, client = _stores(tmp_path, storage)
    study = optuna.load_study(study_name=name, storage=create_storage(url))
    trials = study.get_trials()
    assert not [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)] or not finished
    runs = client.search_runs([client.get_experiment_by_name("covers").experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], "an MLflow run left RUNNING"
    parents = [r for r in runs if r.data.tags.get("covers.kind") == "sweep"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("covers.kind") == "trial"]
    by_number: dict[int, mlflow.entities.Run] = {}
    for run in children:
        number = int(run.data.tags["trial_number"])
        assert number not in by_number, f"trial {number} ran twice"
        by_number[number] = run
    for t in trials:
        if t.number in by_number:
            assert by_number[t.number].info.status in RUN_STATUS[t.state], (t.number, t.state)
            assert by_number[t.number].data.tags["mlflow.parentRunId"] == parents[0].info.run_id
    spent = counted(trials)
    # a retry repeats its original's parameters on purpose; every other pair of trials differs
    params = [tuple(sorted(t.params.items())) for t in spent]
    assert len(set(params)) == len(params), "a parameter set was drawn twice"
    if finished:
        assert len(spent) == n_trials and all(t.state == TrialState.COMPLETE for t in spent), [
            (t.number, t.state) for t in trials
        ]
        assert sorted(by_number) == sorted(t.number for t in trials if t.number in by_number)
        assert parents[0].info.status == "FINISHED"
        assert parents[0].data.metrics["trials_complete"] == n_trials
    return study, by_number, parents[0]


class Sweep:
    """A sweep subprocess whose merged output is read line by line (to signal it at a chosen moment)."""

    def __init__(self, cmd: list[str]) -> None:
        # a shell that runs jobs in the background (CI) starts them with SIGINT ignored: give Ctrl-C back its default
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait_for_line(self, pattern: str, timeout: float = 300) -> None:
        """Until a line of its output matches the regular expression ``pattern``."""
        end = time.time() + timeout
        while time.time() < end:
            if any(re.search(pattern, line) for line in self.lines):
                return
            assert self.proc.poll() is None, f"sweep ended before {pattern!r}:\n{''.join(self.lines[-40:])}"
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {pattern!r}")

    def finish(self, timeout: float = 300) -> int:
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "".join(self.lines)


def _wait_mid_training(url: str, name: str, timeout: float = 300) -> None:
    """Until a trial after the first is RUNNING with at least one epoch reported."""
    end, storage = time.time() + timeout, None
    while time.time() < end:
        try:
            if storage is None:  # one storage (one connection pool) for every poll: PostgreSQL has few slots
                with sqlite_init_lock(url):  # as the sweeper does: never race it while it creates the schema
                    storage = create_storage(url)
            study = optuna.load_study(study_name=name, storage=storage)
            if any(t.state == TrialState.RUNNING and t.number >= 1 and t.intermediate_values for t in study.trials):
                return
        except (KeyError, Exception):  # not created yet
            pass
        time.sleep(0.2)
    raise AssertionError("timed out waiting for a trial mid-training")


def _cmd(tmp_path, cache_dir, name, *extra, storage=None, n_trials=4, epochs=4):
    url = storage or f"sqlite:///{tmp_path}/mlruns/optuna.db"
    return sweep_cmd(
        tmp_path,
        cache_dir,
        f"hydra.sweeper.study_name={name}",
        f"hydra.sweeper.storage={url}",
        f"hydra.sweeper.n_trials={n_trials}",
        "hydra/sweeper/pruner=none",
        f"trainer.epochs={epochs}",
        *extra,
    )


@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_killed_worker_is_recovered_by_a_rerun(tmp_path, cache_dir, warm_cache, storage, request):
    """kill -9 mid-trial, then the same command again: the dead trial is failed, its MLflow run ends FAILED with the
    reason, its parameters are retried once, and the sweep completes its budget."""
    url = f"sqlite:///{tmp_path}/mlruns/optuna.db" if storage == "sqlite" else request.getfixturevalue("postgres_url")
    # sqlite: the rerun outlives the dead trial's grace period while it runs its own trials, then waits for it;
    # postgresql: the grace period has passed when the rerun starts
    grace = 12 if storage == "sqlite" else 2
    beats = ["hydra.sweeper.heartbeat_interval=1", f"hydra.sweeper.grace_period={grace}"]
    cmd = _cmd(tmp_path, cache_dir, "dead", *beats, storage=url, n_trials=3)
    sweep = Sweep(cmd)
    _wait_mid_training(url, "dead")
    sweep.proc.send_signal(signal.SIGKILL)
    assert sweep.finish() == -signal.SIGKILL
    (dead,) = [t for t in optuna.load_study(study_name="dead", storage=url).trials if t.state == TrialState.RUNNING]

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    study, runs, _ = check_consistent(tmp_path, "dead", 3, url)
    trials = {t.number: t for t in study.trials}
    assert trials[dead.number].state == TrialState.FAIL
    dead_run = runs[dead.number]
    assert dead_run.info.status == "FAILED" and "worker died" in dead_run.data.tags["error"]
    (retry,) = [t for t in trials.values() if t.user_attrs.get(RETRY_OF) == dead.number]
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert runs[retry.number].info.status == "FINISHED"


def test_stopped_sweep_ends_its_runs_and_resumes(tmp_path, cache_dir, warm_cache):
    """One sweep stopped three times, then rerun: SIGINT during an epoch, SIGTERM between two trials, SIGTERM during
    the final summary (SIGINT and SIGTERM share one handler). After each stop the sweep has exited non-zero, the
    parent run ended KILLED (FINISHED when only the summary was left; never RUNNING) and an interrupted trial is
    failed; each rerun resumes the same study and parent run, each failed trial is retried once with its
    parameters, and the last rerun completes the budget consistently."""
    url = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    cmd = _cmd(tmp_path, cache_dir, "stop", n_trials=3, epochs=3)

    def stop(sig: signal.Signals, moment: str) -> list[optuna.trial.FrozenTrial]:
        """Start the sweep, signal it at ``moment``; the trials failed so far."""
        sweep = Sweep(cmd)
        if moment == "epoch":
            _wait_mid_training(url, "stop")
        elif moment == "between":  # the first trial of this run has completed
            sweep.wait_for_line(r"trial \d+ complete: ")
        else:
            sweep.wait_for_line("writing the final summary")
        sweep.proc.send_signal(sig)
        assert sweep.finish() != 0, sweep.output[-3000:]
        study, runs, parent = check_consistent(tmp_path, "stop", 3, finished=False)
        # a signal during the final summary is held until the parent's status is written: the trials were all done
        assert parent.info.status == ("FINISHED" if moment == "summary" else "KILLED"), (moment, sweep.output[-3000:])
        failed = [t for t in study.trials if t.state == TrialState.FAIL]
        # a trial stopped before its run was created has none
        assert all(runs[t.number].info.status == "KILLED" for t in failed if t.number in runs), moment
        return failed

    assert len(stop(signal.SIGINT, "epoch")) == 1  # the trial in flight
    stop(signal.SIGTERM, "between")
    stopped = stop(signal.SIGTERM, "summary")

    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    study, _, _ = check_consistent(tmp_path, "stop", 3)
    for t in stopped:  # each interrupted trial is run again once, with its parameters
        (retry,) = [r for r in study.trials if r.user_attrs.get(RETRY_OF) == t.number]
        assert retry.params == t.params and retry.state == TrialState.COMPLETE


def test_failure_budget_stops_the_sweep(tmp_path, cache_dir):
    """Every trial fails: the sweep stops once more than max_failure_rate x n_trials failed, exits non-zero with one
    line naming the first trial's error, and ends the parent run FAILED."""
    proc = subprocess.run(
        _cmd(tmp_path, cache_dir, "budget", "data=archives", "data.source=no-such-dir", n_trials=6, epochs=1),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    last = [line for line in proc.stderr.splitlines() if line.strip() and "HYDRA_FULL_ERROR" not in line][-1]
    assert last.startswith("sweep stopped: 2 of 2 trials failed") and "first trial 0: " in last, proc.stderr[-2000:]
    assert "no-such-dir" in last and "Traceback" not in proc.stderr
    study, runs, parent = check_consistent(tmp_path, "budget", 6, finished=False)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2, "no trial starts after the budget is spent"
    assert parent.info.status == "FAILED" and all(r.info.status == "FAILED" for r in runs.values())


def test_sweep_without_a_completed_trial_never_exits_zero(tmp_path, cache_dir):
    proc = subprocess.run(
        _cmd(
            tmp_path,
            cache_dir,
            "none",
            "data=archives",
            "data.source=no-such-dir",
            "hydra.sweeper.max_failure_rate=1.0",
            n_trials=2,
            epochs=1,
        ),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1 and "sweep failed: no trial completed (2 ran)" in proc.stderr, proc.stderr[-2000:]
    study, _, parent = check_consistent(tmp_path, "none", 2, finished=False)
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2 and parent.info.status == "FAILED"


def test_corrupt_study_store_fails_fast_with_one_line(tmp_path, cache_dir):
    db = tmp_path / "mlruns" / "optuna.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(os.urandom(4096))
    start = time.time()
    proc = subprocess.run(
        _cmd(tmp_path, cache_dir, "corrupt", n_trials=1, epochs=1),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and time.time() - start < 40
    assert "Traceback" not in proc.stderr and str(db) in proc.stderr and "not a database" in proc.stderr, proc.stderr


def test_submitit_local_launcher_runs_trials_in_parallel(tmp_path, cache_dir, warm_cache):
    """A real submitit executor on this machine: two trials in flight at once, Optuna and MLflow consistent."""
    cmd = _cmd(
        tmp_path,
        cache_dir,
        "submitit",
        "hydra/launcher=submitit_local",
        "hydra.sweeper.n_jobs=2",
        "hydra.launcher.timeout_min=10",
        "trainer.threads=1",
        n_trials=2,
        epochs=2,
    )
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    study, runs, _ = check_consistent(tmp_path, "submitit", 2)
    first, second = study.trials
    assert second.datetime_start < first.datetime_complete, "two trials were in flight at once"
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
