"""MLflow store set-up and nested runs: the experiment and the parent run are looked up once per process."""

from __future__ import annotations

import mlflow
import pytest

from covers.tracking.runs import setup_tracking, start_run


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One MLflow store for this module's tests (creating one takes seconds); each test its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('track')}/mlflow.db"


def test_experiment_is_looked_up_again_only_when_no_longer_active(uri, tmp_path, monkeypatch):
    first = setup_tracking(uri, "cached")
    looked_up = []
    real = mlflow.get_experiment_by_name
    monkeypatch.setattr(mlflow, "get_experiment_by_name", lambda name: looked_up.append(name) or real(name))
    assert setup_tracking(uri, "cached") == first and not looked_up  # a sweep's next trial: no store query
    with mlflow.start_run() as run:
        assert run.info.experiment_id == first
    other = setup_tracking(uri, "other")
    assert looked_up == ["other"] and other != first
    assert setup_tracking(uri, "cached") == first and looked_up == ["other", "cached"]  # active again
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/elsewhere.db")
    assert setup_tracking(uri, "cached") == first and looked_up[-1] == "cached"
    assert mlflow.get_tracking_uri() == uri and mlflow.get_experiment(first).name == "cached"


def test_a_deleted_experiment_still_fails_clearly(uri):
    exp_id = setup_tracking(uri, "doomed")
    mlflow.delete_experiment(exp_id)  # by a user, between two trials
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"deleted|active"):
        setup_tracking(uri, "doomed")
        mlflow.start_run()


def test_parent_run_is_checked_once_and_every_trial_is_nested_under_it(uri, monkeypatch):
    setup_tracking(uri, "nested")
    with mlflow.start_run(run_name="sweep") as parent:
        pass
    read = []
    real = mlflow.MlflowClient.get_run
    monkeypatch.setattr(mlflow.MlflowClient, "get_run", lambda self, run_id: read.append(run_id) or real(self, run_id))
    children = []
    for number in range(3):
        with start_run(f"trial-{number}", parent.info.run_id, {"trial_number": number}) as run:
            children.append(run.info.run_id)
    assert read.count(parent.info.run_id) == 1  # MLflow's check that the parent exists, on the first trial only
    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list")
    assert sorted(r.info.run_id for r in runs) == sorted(children)
    assert {r.data.tags["trial_number"] for r in runs} == {"0", "1", "2"}
    with mlflow.start_run(run_name="deleted sweep") as gone:
        pass
    mlflow.delete_run(gone.info.run_id)
    with pytest.raises(mlflow.exceptions.MlflowException, match="deleted"), start_run("orphan", gone.info.run_id):
        pass
