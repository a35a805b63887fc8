"""The sweep's budget and warm start: ``hydra.sweeper.timeout`` stops launching, ``hydra.sweeper.enqueue`` runs
given configurations first with exactly their values."""

from __future__ import annotations

import subprocess
import sys

import mlflow
import optuna
import pytest

from covers.sweep.search_space import SearchSpaceError, check_enqueued, parse_params
from tests.conftest import ROOT, run_sweep

# a grid of four learning rates, one epoch each, on the small demo set
LR_SWEEP = ("hparams_search=lr_curve", "optim.lr=choice(0.0001,0.001,0.003,0.01)", "trainer.epochs=1")


ENQUEUE = "hydra.sweeper.enqueue=[{optim.lr:0.01},{optim.lr:0.0001}]"


def _study(root, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root}/mlruns/optuna.db")


def _runs(root, study: str) -> tuple[mlflow.entities.Run, list[mlflow.entities.Run]]:
    """The sweep's parent run and its trials' runs, by trial number."""
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("covers")
    (parent,) = client.search_runs([exp.experiment_id], f"tags.`covers.kind` = 'sweep' and tags.study_name = '{study}'")
    trials = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return parent, sorted(trials, key=lambda r: int(r.data.tags["trial_number"]))


@pytest.fixture(scope="module")
def first_sweep(tmp_path_factory, cache_dir) -> tuple:
    """A random-search sweep of 2 trials, both enqueued: the history of the warm-started sweep below."""
    root = tmp_path_factory.mktemp("budget")
    run_sweep(
        root,
        cache_dir,
        *LR_SWEEP,
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.n_trials=2",
        ENQUEUE,
        "hydra.sweeper.study_name=first",
    )
    return root, cache_dir


@pytest.mark.slow
def test_enqueued_configurations_run_first_with_exactly_their_values(first_sweep):
    root, _ = first_sweep
    trials = _study(root, "first").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2  # counted in n_trials
    assert [t.params["optim.lr"] for t in trials] == [0.01, 0.0001]
    _, runs = _runs(root, "first")
    assert [float(r.data.params["optim.lr"]) for r in runs] == [0.01, 0.0001]  # what the jobs trained with
    assert [r.info.status for r in runs] == ["FINISHED"] * 2


@pytest.mark.slow
def test_warm_start_is_history_for_the_sampler_and_timeout_stops_launching(first_sweep):
    root, cache_dir = first_sweep
    # the first own trial starts at once and takes longer than the 1 s budget: it finishes, no other one starts
    proc = run_sweep(
        root,
        cache_dir,
        *LR_SWEEP,
        "hydra/sweeper/sampler=random",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.warm_start_from=first",
        "hydra.sweeper.timeout=1",
        "hydra.sweeper.study_name=second",
    )
    said = proc.stdout + proc.stderr
    assert "warm start: 2 complete trials of study first added as history (0 left out)" in said
    assert "timeout of 1s reached: no new trial starts" in said
    earlier, trials = _study(root, "first").get_trials(), _study(root, "second").get_trials()
    history = [t for t in trials if t.user_attrs.get("warm_start_from") == "first"]
    own = [t for t in trials if "warm_start_from" not in t.user_attrs]
    # the sampler's study holds the earlier trials as they were (values, curves), and one new trial of 3
    assert [(t.params, t.value, t.intermediate_values) for t in history] == [
        (t.params, t.value, t.intermediate_values) for t in earlier
    ]
    assert [t.user_attrs["source_trial"] for t in history] == [0, 1]
    assert [t.state for t in own] == [optuna.trial.TrialState.COMPLETE]
    parent, runs = _runs(root, "second")
    assert [int(r.data.tags["trial_number"]) for r in runs] == [own[0].number]  # history is not run again
    assert [r.info.status for r in runs] == ["FINISHED"] and parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial_number"] == str(own[0].number)  # the best is a trial it ran
    assert parent.data.metrics["trials_complete"] == 1 and parent.data.params["sweeper.timeout_s"] == "1.0"


@pytest.mark.slow
def test_a_define_by_run_hook_searches_gamma_only_for_the_focal_loss(tmp_path, cache_dir):
    hook = "hydra.sweeper.custom_search_space=covers.sweep.search_hooks.focal_gamma"
    space = ("hydra/sweeper/sampler=random", "loss=choice(ce,focal)", "hydra.sweeper.n_trials=3")
    run_sweep(tmp_path, cache_dir, *LR_SWEEP, *space, hook, "hydra.sweeper.study_name=hook")
    trials = _study(tmp_path, "hook").get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert {t.params["loss"] for t in trials} == {"ce", "focal"}  # both kinds drawn (seeded sampler)
    assert all(("loss.gamma" in t.params) == (t.params["loss"] == "focal") for t in trials)
    _, runs = _runs(tmp_path, "hook")
    for trial, run in zip(trials, runs, strict=True):  # each job trained with what the hook drew
        assert run.data.params["choice.loss"] == trial.params["loss"]
        if trial.params["loss"] == "focal":
            assert float(run.data.params["loss.gamma"]) == pytest.approx(trial.params["loss.gamma"])
        else:
            assert "loss.gamma" not in run.data.params


def test_an_enqueued_key_that_is_not_searched_stops_the_sweep_before_any_trial(tmp_path):
    cmd = [sys.executable, "experiments/run.py", "-m", f"paths.root_dir={tmp_path}", *LR_SWEEP]
    cmd.append("hydra.sweeper.enqueue=[{optim.lrr:0.01}]")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "hydra.sweeper.enqueue[0]: optim.lrr is not searched (searched: optim.lr)" in proc.stderr
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


def test_enqueued_values_are_checked_against_their_distributions():
    distributions, _ = parse_params({"lr": "tag(log, interval(1e-4, 1e-1))", "loss": "choice(ce, focal)"})
    assert check_enqueued([{"lr": 0.01}, {"loss": "ce", "lr": 1e-4}], distributions) == [
        {"lr": 0.01},
        {"loss": "ce", "lr": 1e-4},
    ]
    for bad, message in [
        ({"lr": 1.0}, r"lr=1.0 is outside log-uniform"),
        ({"loss": "mse"}, r"loss='mse' is outside choice\('ce', 'focal'\)"),
        ({"lr": "0.01"}, "is outside"),
        ({}, "expected a mapping"),
    ]:
        with pytest.raises(SearchSpaceError, match=message):
            check_enqueued([bad], distributions)


def test_warm_start_keeps_the_define_by_run_parameters_of_earlier_trials():
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from covers.sweep.warm_start import add_history

    space = {"loss": CategoricalDistribution(("ce", "focal"))}
    gamma = FloatDistribution(0.0, 5.0)
    earlier = optuna.create_study(study_name="earlier", direction="maximize")
    focal = {"loss": "focal", "loss.gamma": 2.0}
    earlier.add_trial(optuna.trial.create_trial(params=focal, distributions={**space, "loss.gamma": gamma}, value=0.5))
    earlier.add_trial(optuna.trial.create_trial(params={"loss": "ce"}, distributions=space, value=0.4))
    plain, hooked = (optuna.create_study(direction="maximize") for _ in range(2))
    assert (
        add_history(plain, earlier, space) == 1
    )  # without a hook, γ is outside the space: the focal trial is left out
    assert add_history(hooked, earlier, space, define_by_run=True) == 2  # with one, γ is the hook's parameter
    assert [t.params for t in hooked.trials] == [focal, {"loss": "ce"}]


def test_two_workers_asking_for_the_last_trial_at_once_start_one(tmp_path, monkeypatch):
    """Two workers of one study ask for its last trial at the same moment: one starts it, the other is told that the
    budget is spent. The study lock makes the budget check and the ask one step: no second trial is started and
    failed as over budget (it used to be, when both had seen one trial left)."""
    import contextlib
    import threading

    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from covers.sweep import budget
    from covers.sweep.sweeper import OptunaSweeperImpl

    url = f"sqlite:///{tmp_path}/study.db"
    optuna.create_study(study_name="last", storage=url, direction="maximize")
    checked = threading.Barrier(2, timeout=3)
    real_budget_left = budget.budget_left

    def budget_left(study: optuna.Study, n_trials: int) -> int:
        left = real_budget_left(study, n_trials)
        # without the lock both workers have seen one trial left before either asks; with it the first waits alone
        with contextlib.suppress(threading.BrokenBarrierError):
            checked.wait()
        return left

    monkeypatch.setattr(budget, "budget_left", budget_left)
    space = {"optim.lr": FloatDistribution(1e-4, 1e-2, log=True)}
    asked: list = []

    def worker() -> None:
        storage = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}})
        study = optuna.load_study(study_name="last", storage=storage)
        asked.append(OptunaSweeperImpl(storage=url, study_name="last", n_trials=1)._ask(study, space, n_trials=1))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(asked) == 2 and sum(a is not None for a in asked) == 1
    trials = optuna.load_study(study_name="last", storage=url).trials
    assert [(t.state, t.user_attrs) for t in trials] == [(TrialState.RUNNING, {})]
