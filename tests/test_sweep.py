"""A real `python experiments/run.py -m` sweep in a subprocess: Optuna storage and MLflow agree."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml

from covers.reporting.results_doc import write_results
from covers.sweep.search_space import SearchSpaceError, parse_params
from covers.training.intervals import wilson_interval
from tests.conftest import ROOT, run_sweep


def test_default_sweep_three_trials(tmp_path, cache_dir):
    proc = run_sweep(
        tmp_path,
        cache_dir,
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.study_name=t3",
        "trainer.epochs=range(1,2)",
    )
    storage = f"sqlite:///{tmp_path}/mlruns/optuna.db"
    for db in ("optuna.db", "mlflow.db"):  # both stores in WAL mode (covers.tracking.sqlite)
        assert sqlite3.connect(tmp_path / "mlruns" / db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    study = optuna.load_study(study_name="t3", storage=storage)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3
    assert set(trials[0].params) == {"optim.lr", "trainer.epochs", "loss.gamma", "freeze.n_frozen"}
    assert study.metric_names == ["summary/best_val_acc"], "optuna-dashboard names the objective"
    # the terminal: one line per trial (4 significant digits), a closing summary naming the best trial and the UI
    lines = [line.split("] ", 1)[-1] for line in proc.stdout.splitlines()]
    best = study.best_trial
    assert f"trial {best.number} complete: summary/best_val_acc={best.value:.4f}" in lines
    assert f"optim.lr={best.params['optim.lr']:.4g}" in lines[-4] and "Launching" not in proc.stdout
    assert lines[-5] == "sweep t3 done: 3 trials (3 complete, 0 pruned, 0 failed)"
    assert lines[-4].startswith(f"best: trial {best.number}, summary/best_val_acc={best.value:.4f}: ")
    # the best trial's Wilson interval on the validation covers, and the trials that reach into it
    low, high = best.user_attrs["objective_ci"]
    within = sum(t.value >= low for t in trials)
    tail = ": the validation split cannot tell them apart" if within > 1 else ""
    assert lines[-3] == (
        f"its 95 % interval: {low:.4f}-{high:.4f}; {within} of 3 complete trials (the best included) reach into it"
        + tail
    )
    assert lines[-2].endswith(f"mlflow ui --backend-store-uri sqlite:///{tmp_path}/mlruns/mlflow.db")
    results = yaml.safe_load((tmp_path / "multirun" / "optimization_results.yaml").read_text())
    assert results == {"name": "t3", "best_params": best.params, "best_value": best.value}

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("covers")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("covers.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("covers.kind") == "trial"]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert parent.info.run_name.startswith("sweep t3") and parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.metrics["best_value_ci_low"] == pytest.approx(low) and low <= best.value <= high
    assert parent.data.metrics["trials_within_best_ci"] == within
    assert parent.data.params["search.optim.lr"] == "log-uniform [0.0001, 0.03]"
    assert parent.data.params["search.freeze.n_frozen"] == "int [0, 4]"
    by_number = {int(r.data.tags["trial_number"]): r for r in children}
    assert sorted(by_number) == [0, 1, 2]
    for t in trials:
        child = by_number[t.number]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.metrics["summary/best_val_acc"] == pytest.approx(t.value)
        n_val = int(child.data.params["data.n_val"])  # the interval is Wilson's for the best epoch's val covers
        ci = wilson_interval(round(t.value * n_val), n_val)
        assert t.user_attrs["objective_ci"] == pytest.approx(list(ci))
        assert child.data.metrics["summary/best_val_acc_ci_low"] == pytest.approx(ci[0])
        assert child.data.metrics["summary/best_val_acc_ci_high"] == pytest.approx(ci[1])
        history = client.get_metric_history(child.info.run_id, "epoch/val_acc")
        assert [m.step for m in history] == list(range(1, t.params["trainer.epochs"] + 1)), "epochs from 1"
        assert sorted(t.intermediate_values) == [m.step for m in history]
        assert child.data.metrics["summary/best_epoch"] in [m.step for m in history if m.value == t.value]
        assert child.data.tags["trial_state"] == "COMPLETE"
        assert child.info.run_name.startswith(f"trial-{t.number} lr=")
        assert child.data.params["optim.lr"] == str(t.params["optim.lr"])
    sweep_files = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/trials.csv", "sweep/optimization_history.png", "sweep/parallel_coordinate.png"} <= sweep_files
    best = by_number[study.best_trial.number]
    assert best.data.tags["best_trial"] == "true" and parent.data.tags["best_trial_number"] == str(
        study.best_trial.number
    )
    assert any(k.startswith("importance.") for k in parent.data.metrics)

    # a search (not a grid) in the results document: trials with their params, importances, Optuna's plots
    doc = write_results(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "covers", ["t3"], tmp_path / "docs" / "results.md")
    text = doc.read_text()
    assert "TPESampler" in text and "Parameter importances" in text and "3 complete" in text
    assert all(f"`{r.info.run_id}`" in text for r in children) and "| t3 | demo | " in text
    assert f"| {study.best_value:.3f} ({low:.3f}–{high:.3f}) | – |" in text, "the best value with its interval"
    assert (tmp_path / "docs" / "results" / "t3_optimization_history.png").stat().st_size > 1000


def test_bad_search_space_fails_before_any_trial(tmp_path, cache_dir):
    cmd = [sys.executable, "experiments/run.py", "-m", f"paths.root_dir={tmp_path}", "optim.nope=interval(0,1)"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "'optim.nope' is not a key of the config. Did you mean 'optim.lr'" in proc.stderr
    assert "'+optim.nope=...'" in proc.stderr and len(proc.stderr.strip().splitlines()) <= 4
    assert not (tmp_path / "mlruns" / "mlflow.db").exists()


# the official hydra-optuna-sweeper's documented `params:` examples
OFFICIAL_EXAMPLES = [
    ("x", "range(-5.5, 5.5, step=0.5)", optuna.distributions.FloatDistribution(-5.5, 5.5, step=0.5)),
    ("y", "choice(-5, 0, 5)", optuna.distributions.CategoricalDistribution([-5, 0, 5])),
    ("z", "interval(-5.0, 5.0)", optuna.distributions.FloatDistribution(-5.0, 5.0)),
    ("z", "int(interval(-5, 5))", optuna.distributions.IntDistribution(-5, 5)),
    ("lr", "tag(log, interval(1e-5, 1e-1))", optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)),
    ("n", "range(1, 5)", optuna.distributions.IntDistribution(1, 5)),
    ("n", "tag(log, int(interval(1, 64)))", optuna.distributions.IntDistribution(1, 64, log=True)),
    ("c", "a,b,c", optuna.distributions.CategoricalDistribution(["a", "b", "c"])),
]


@pytest.mark.parametrize(("key", "text", "expected"), OFFICIAL_EXAMPLES)
def test_params_syntax(key, text, expected):
    distributions, fixed = parse_params({key: text})
    assert distributions == {key: expected} and not fixed


def test_fixed_params_and_errors():
    distributions, fixed = parse_params({"a": "3", "b": "interval(0, 1)"})
    assert fixed == {"a": "3"} and set(distributions) == {"b"}
    # a key given twice (a preset's params:, then the command line): the last entry counts, whatever its kind
    distributions, fixed = parse_params(["epochs=choice(1, 2)", "epochs=12", "lr=3", "lr=choice(1, 2)"])
    assert fixed == {"epochs": "12"} and list(distributions) == ["lr"]
    with pytest.raises(SearchSpaceError, match="'lr'"):
        parse_params({"lr": "tag(log, interval(0, 1))"})


def test_trials_table_with_an_unfinished_trial():
    # the final summary also runs when a sweep stops with its only trial still RUNNING (no duration yet)
    from covers.sweep.summary import trials_table

    study = optuna.create_study()
    study.ask()
    table = trials_table(study)
    assert list(table["state"]) == ["RUNNING"] and table["duration_s"].isna().all()


def test_the_parent_run_names_only_the_best_trials_own_parameters(tmp_path):
    """The parent's ``best.*`` tags are the current best trial's parameters: a conditional one of an earlier best (γ,
    drawn with the focal loss) goes when a trial without it becomes the best (a discogs sweep's best CE trial was
    tagged with the γ of the focal trial that led before it)."""
    from omegaconf import OmegaConf
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.trial import create_trial

    from covers.sweep.summary import log_sweep_summary, open_parent_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking = OmegaConf.create({"uri": uri, "experiment": "covers", "artifact_root": str(tmp_path / "artifacts")})
    study = optuna.create_study(direction="maximize")
    loss = {"loss": CategoricalDistribution(["ce", "focal"])}
    parent = open_parent_run(study, tracking, loss, {})
    focal = {"loss": "focal", "loss.gamma": 0.66}
    study.add_trial(
        create_trial(params=focal, distributions={**loss, "loss.gamma": FloatDistribution(0, 5)}, value=0.4)
    )
    log_sweep_summary(study, parent)
    study.add_trial(create_trial(params={"loss": "ce"}, distributions=loss, value=0.5))
    log_sweep_summary(study, parent, final=True)
    tags = mlflow.MlflowClient(tracking_uri=uri).get_run(parent).data.tags
    assert {k: v for k, v in tags.items() if k.startswith("best.")} == {"best.loss": "ce"}
    assert tags["best_trial_number"] == "1"


# values a user may pass to a single run; each must reach a trial exactly as Hydra parses it for that run
HOSTILE_VALUES = {
    "url": "sqlite:///x/mlflow.db",
    "space": "'my runs/root'",
    "quote": '"it\'s"',
    "equals": "'a=b'",
    "comma": "'a,b'",
    "unicode": "'ünïcødé ☃'",
    "backslash": "'C:\\dir\\\\'",  # a trailing backslash is escaped, as Hydra requires
}


@pytest.mark.parametrize("text", ["a b", "it's", "x:y", "ünï", "C:\\dir\\", "a\\'b", "a=b", "'q'", "", "1", "null"])
def test_sampled_strings_round_trip(text):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from covers.sweep.search_space import format_override

    (override,) = OverridesParser.create().parse_overrides([format_override("k", text)])
    assert override.value() == text and isinstance(override.value(), str)


def test_the_values_handed_to_each_job_round_trip():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from covers.sweep.search_space import format_override

    pruner = {"_target_": "optuna.pruners.HyperbandPruner", "min_resource": 1, "max_resource": "auto", "x": None}
    for value in (pruner, {"nested": {"a": [1, 2.5, "b c"], "on": True}}, "sqlite:////tmp/my store/optuna.db", None):
        (override,) = OverridesParser.create().parse_overrides([format_override("trial.v", value)])
        assert override.value() == value


def test_choices_are_values_not_override_text():
    distributions, _ = parse_params({"a": "choice('x y', 'p:q', 1, '2')"})
    assert distributions["a"].choices == ("x y", "p:q", 1, "2")
    with pytest.raises(SearchSpaceError, match="config group"):
        parse_params({"a": "choice([1,2],[3])"})


@pytest.mark.slow
def test_fixed_values_reach_every_trial_unchanged(tmp_path, cache_dir):
    """Fixed overrides pass through a real sweep as the user wrote them (URLs, spaces, quotes, =, commas, unicode)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    store = tmp_path / "my store" / "mlflow.db"
    probes = [f"+probe.{k}={v}" for k, v in HOSTILE_VALUES.items()]
    run_sweep(
        tmp_path,
        cache_dir,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.study_name=hostile",
        "trainer.epochs=1",
        f"tracking.uri=sqlite:///{store}",
        "+probe.choice=choice('1', 'a b')",  # a sampled string stays a string
        *probes,
    )
    parser = OverridesParser.create()
    expected = {f"probe.{k}": str(parser.parse_overrides([f"k={v}"])[0].value()) for k, v in HOSTILE_VALUES.items()}
    assert not list(tmp_path.glob("*'*")), "no folder named with literal quotes"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("covers").experiment_id])
    trials = [r for r in runs if r.data.tags.get("covers.kind") == "trial"]
    assert len(trials) == 2 and all(r.info.status == "FINISHED" for r in trials)
    for run in trials:
        assert {k: run.data.params[k] for k in expected} == expected
        assert run.data.params["probe.choice"] in ("1", "a b")
        config = Path(client.download_artifacts(run.info.run_id, "config/config.yaml", str(tmp_path)))
        assert yaml.safe_load(config.read_text())["probe"]["choice"] in ("1", "a b")
    study = optuna.load_study(study_name="hostile", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2
