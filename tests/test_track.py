"""MLflow store set-up and nested runs."""

from __future__ import annotations

import mlflow
import pytest

from covers.tracking.runs import setup_tracking, start_run


@pytest.fixture(scope="module")
def uri(tmp_path_factory):
    """One MLflow store for this module's tests (creating one takes seconds); each test its own experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('track')}/mlflow.db"


def test_a_deleted_experiment_still_fails_clearly(uri):
    exp_id = setup_tracking(uri, "doomed")
    mlflow.delete_experiment(exp_id)  # by a user, between two trials
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"deleted|active"):
        setup_tracking(uri, "doomed")
        mlflow.start_run()


def test_every_trial_is_nested_under_its_parent_run(uri):
    setup_tracking(uri, "nested")
    with mlflow.start_run(run_name="sweep") as parent:
        pass
    children = []
    for number in range(3):
        with start_run(f"trial-{number}", parent.info.run_id, {"trial_number": number}) as run:
            children.append(run.info.run_id)
    runs = mlflow.search_runs(filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="list")
    assert sorted(r.info.run_id for r in runs) == sorted(children)
    assert {r.data.tags["trial_number"] for r in runs} == {"0", "1", "2"}
    with mlflow.start_run(run_name="deleted sweep") as gone:
        pass
    mlflow.delete_run(gone.info.run_id)
    with pytest.raises(mlflow.exceptions.MlflowException, match="deleted"), start_run("orphan", gone.info.run_id):
        pass
