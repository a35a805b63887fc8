"""Sweeper operations on real sweeps: pruning, failing trials, several workers on one study, process launchers
(interrupts, kills and resumes: tests/test_faults.py)."""

from __future__ import annotations

import os
import subprocess
import zipfile
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from covers.sweep.budget import CONTINUES, counted
from covers.sweep.storage import create_storage
from tests.conftest import ROOT, run_sweep, sweep_cmd


def load(tmp_path: Path, name: str, storage: str | None = None):
    study = optuna.load_study(study_name=name, storage=storage or f"sqlite:///{tmp_path}/mlruns/optuna.db")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("covers").experiment_id])
    parents = [r for r in runs if r.data.tags.get("covers.kind") == "sweep"]
    children = [r for r in runs if r.data.tags.get("covers.kind") == "trial"]
    return study, client, parents, children


@pytest.fixture(scope="module")
def cifar_subset(cifar_covers, tmp_path_factory) -> Path:
    """60 CIFAR-10 images per class, same zip-per-class layout (a CPU-sized slice of the real data)."""
    out = tmp_path_factory.mktemp("cifar60")
    for src in sorted(cifar_covers.glob("*.zip")):
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out / src.name, "w") as zout:
            for name in sorted(n for n in zin.namelist() if n.endswith(".png"))[:60]:
                zout.writestr(name, zin.read(name))
    return out


@pytest.mark.slow
def test_median_pruning_on_cifar(tmp_path, cache_dir, cifar_subset):
    run_sweep(
        tmp_path,
        cache_dir,
        "data=archives",
        f"data.source={cifar_subset}",
        "hydra.sweeper.study_name=prune",
        "hydra.sweeper.n_trials=6",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.pruner.n_startup_trials=2",
        "hydra.sweeper.pruner.n_warmup_steps=0",
        "trainer.epochs=3",
        "freeze.n_frozen=0",
        "loss.gamma=0",
        # three rates that learn and three that cannot (the grid's seeded order mixes them): the hopeless ones fall
        # below the median of the finished trials and are pruned
        "optim.lr=choice(1e-2, 3e-3, 1e-3, 1e-8, 2e-8, 3e-8)",
    )
    study, client, parents, children = load(tmp_path, "prune")
    states = [t.state for t in study.trials]
    assert len(states) == 6 and TrialState.PRUNED in states and TrialState.COMPLETE in states, states
    assert len(parents) == 1 and len(children) == 6
    runs = {int(r.data.tags["trial_number"]): r for r in children}
    for t in study.trials:
        run = runs[t.number]
        assert run.info.run_id == t.user_attrs["mlflow_run_id"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_acc")]
        assert steps == sorted(t.intermediate_values), (t.number, steps)
        assert run.info.status == "FINISHED" and run.data.tags["trial_state"] == t.state.name, "pruned is no crash"
        if t.state == TrialState.PRUNED:
            assert run.data.tags["pruned"] == "true" and run.info.run_name.endswith(f"(pruned at epoch {len(steps)})")
            assert len(steps) < 3 and run.data.tags["pruned_at_epoch"] == str(len(steps))
        else:
            assert len(steps) == 3 and steps == [1, 2, 3]
    assert parents[0].data.metrics["trials_pruned"] == states.count(TrialState.PRUNED)


@pytest.mark.slow
def test_failing_trials_fail_and_the_sweep_goes_on(tmp_path, cache_dir):
    run_sweep(
        tmp_path,
        cache_dir,
        "hydra.sweeper.study_name=fails",
        "hydra/sweeper/sampler=grid",
        "hydra.sweeper.max_failure_rate=0.6",
        "hydra/sweeper/pruner=none",
        "trainer.epochs=1",
        "optim.lr=0.003",
        "freeze.n_frozen=choice(0,99)",
        "loss.gamma=choice(0,1)",
    )
    study, client, parents, _ = load(tmp_path, "fails")
    by_frozen = {}
    for t in study.trials:
        by_frozen.setdefault(t.params["freeze.n_frozen"], set()).add(t.state)
    assert by_frozen == {0: {TrialState.COMPLETE}, 99: {TrialState.FAIL}}
    for t in study.trials:
        if t.state == TrialState.FAIL:
            assert "layer groups" in t.user_attrs["error"]
            run = client.get_run(t.user_attrs["mlflow_run_id"])
            assert run.info.status == "FAILED"
            assert "error/traceback.txt" in {a.path for a in client.list_artifacts(run.info.run_id, "error")}
    assert parents[0].info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.parametrize(("storage", "workers"), [("sqlite", 3), ("journal", 2), ("postgresql", 2)])
def test_workers_share_one_study_and_its_promotions(tmp_path, cache_dir, warm_cache, storage, workers, request):
    """Several sweep processes with the same seeded sampler config on one study, with multi-fidelity promotion
    (ASHA, 2 rungs): 6 distinct configurations, each run once, and exactly floor(6 / 3) = 2 promotions, each of a
    different configuration (the study lock), nothing left RUNNING."""
    urls = {"sqlite": f"sqlite:///{tmp_path}/shared.db", "journal": f"journal:///{tmp_path}/shared.log"}
    url = urls[storage] if storage in urls else request.getfixturevalue("postgres_url")
    cmd = sweep_cmd(
        tmp_path,
        cache_dir,
        "hydra.sweeper.study_name=shared",
        f"hydra.sweeper.storage={url}",
        "hydra.sweeper.n_trials=6",
        "hydra/sweeper/pruner=none",
        "hydra/sweeper/scheduler=asha",
        "hydra.sweeper.scheduler.rungs=[{epochs:1,image_size:32},{epochs:2,image_size:40}]",
        "hparams_search=lr_curve",
        "hydra/sweeper/sampler=tpe",
        "optim.lr=tag(log, interval(1e-4, 1e-2))",
    )
    env = {**os.environ}
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(workers)
    ]
    for p in procs:
        _, err = p.communicate(timeout=500)
        assert p.returncode == 0, err[-4000:]
    storage_obj = create_storage(url)
    study, _, parents, children = load(tmp_path, "shared", storage_obj)
    trials = counted(study.trials)
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    # every worker runs the same seeded sampler config: every configuration is still new
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 6
    later = [t for t in study.trials if CONTINUES in t.user_attrs]
    assert [t.state for t in later] == [TrialState.COMPLETE] * 2 and len(study.trials) == 8
    sources = [t.user_attrs[CONTINUES] for t in later]
    assert len(set(sources)) == 2 and set(sources) <= {t.number for t in trials}  # never promoted twice
    # one MLflow run per configuration, each run once: a promoted one is continued under its latest trial number
    latest = {t.number for t in trials} - set(sources) | {t.number for t in later}
    assert sorted(int(r.data.tags["trial_number"]) for r in children) == sorted(latest)
    assert {r.info.status for r in children} == {"FINISHED"} and len(parents) == 1


@pytest.mark.slow
def test_parallel_trials_with_a_process_launcher(tmp_path, cache_dir):
    run_sweep(
        tmp_path,
        cache_dir,
        "hydra/launcher=joblib",
        "hydra.sweeper.n_jobs=2",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.study_name=par",
        "hydra/sweeper/pruner=none",
        "trainer.epochs=1",
    )
    study, _, parents, children = load(tmp_path, "par")
    trials = study.trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 and len(children) == 3 and len(parents) == 1
    first, second = trials[0], trials[1]
    assert second.datetime_start < first.datetime_complete, "two trials were in flight at once"
