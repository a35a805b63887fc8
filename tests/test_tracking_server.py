"""The team set-up: a sweep logging to a real ``mlflow server`` with a PostgreSQL backend and a proxied artifact
root, its Optuna study in PostgreSQL (``tracking=server hydra/sweeper=covers_optuna_postgres``)."""

from __future__ import annotations

from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import postgres_execute, run_sweep
from tests.servers import mlflow_server

pytestmark = pytest.mark.slow

STUDY, TRIALS = "team", 2


def test_sweep_logs_to_tracking_server_and_postgres_study(tmp_path, cache_dir, create_postgres_db):
    backend, storage = create_postgres_db("mlflow"), create_postgres_db("optuna")
    artifacts = tmp_path / "shared-artifacts"
    with mlflow_server(backend, artifacts, tmp_path / "mlflow-server.log") as url:
        run_sweep(
            tmp_path,
            cache_dir,
            "tracking=server",
            "hydra/sweeper=covers_optuna_postgres",
            f"hydra.sweeper.study_name={STUDY}",
            f"hydra.sweeper.n_trials={TRIALS}",
            "trainer.epochs=1",
            env={"MLFLOW_TRACKING_URI": url, "COVERS_OPTUNA_STORAGE": storage},
        )
        client = mlflow.MlflowClient(tracking_uri=url)
        runs = client.search_runs([client.get_experiment_by_name("covers").experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("covers.kind") == "sweep"]
        trials = [r for r in runs if r.data.tags.get("covers.kind") == "trial"]
        assert parent.info.status == "FINISHED" and parent.info.run_name.startswith(f"sweep {STUDY} (")
        assert parent.data.params["sweeper.storage"].startswith("postgresql://covers:***@")
        assert len(trials) == TRIALS
        for run in trials:
            assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
            assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # uploaded through the server
            assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_acc")] == [1]
            plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
            assert "plots/learning_curves.png" in plots
            # the storage URL (with its password) stays in the environment, out of the logged Hydra config
            logged = {
                name: Path(client.download_artifacts(run.info.run_id, f"config/{name}", str(tmp_path))).read_text()
                for name in ("hydra.yaml", "overrides.yaml", "config.yaml")
            }
            assert "storage: ${oc.env:COVERS_OPTUNA_STORAGE}" in logged["hydra.yaml"]
            assert "trial.storage='${oc.env:COVERS_OPTUNA_STORAGE}'" in logged["overrides.yaml"]  # handed to the job
            assert not [name for name, text in logged.items() if "covers:covers@" in text]

    # the runs live in the server's PostgreSQL database, the files in its artifact root, nothing in local stores
    stored = {row[0] for row in postgres_execute(backend, "SELECT run_uuid FROM runs")}
    assert stored == {r.info.run_id for r in [parent, *trials]}
    assert len(list(artifacts.rglob("learning_curves.png"))) == TRIALS
    assert not list(tmp_path.glob("mlruns/*.db"))

    study = optuna.load_study(study_name=STUDY, storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * TRIALS
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {r.info.run_id for r in trials}
    assert study.user_attrs["mlflow_parent_run_id"] == parent.info.run_id
