"""Robust selection: cross-validation folds (stratified, look-alike groups intact, test untouched) and repeats,
real runs on the demo covers whose objective is the members' mean."""

from __future__ import annotations

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from covers.data.folds import assign_folds, fold_splits
from covers.run.finetune import train
from covers.run.members import Member, combine, running_mean
from covers.training.intervals import wilson_interval
from covers.training.loop import FitResult
from tests.conftest import run_sweep


def _manifest() -> pd.DataFrame:
    """60 covers of 3 genres, look-alike groups of 1–3 covers, 6 of each genre in the test split."""
    rng = np.random.default_rng(0)
    rows = []
    for label in ("Jazz", "Rock", "Pop"):
        for i in range(20):
            split = "test" if i < 6 else ("val" if i < 8 else "train")
            rows.append({"label": label, "split": split, "group": f"{label}-{i // rng.integers(1, 4)}"})
    return pd.DataFrame(rows)


def test_folds_partition_train_and_val_with_groups_intact():
    manifest = _manifest()
    folds = assign_folds(manifest, 3, seed=0)
    pool = manifest["split"] != "test"
    assert (folds[~pool] == -1).all() and set(folds[pool]) == {0, 1, 2}
    assert (manifest[pool].assign(fold=folds[pool]).groupby("group")["fold"].nunique() == 1).all()
    for fold in range(3):
        split = fold_splits(folds, fold)
        assert (split[~pool] == "test").all()
        counts = manifest[split == "val"]["label"].value_counts()
        assert set(counts.index) == {"Jazz", "Rock", "Pop"}, "stratified: every genre in every fold"
    vals = [set(np.flatnonzero(fold_splits(folds, f) == "val")) for f in range(3)]
    assert set.union(*vals) == set(np.flatnonzero(pool)) and sum(map(len, vals)) == pool.sum(), "disjoint, covering"
    assert np.array_equal(assign_folds(manifest, 3, seed=0), folds), "seeded"
    with pytest.raises(ValueError, match="at least 2 folds"):
        assign_folds(manifest, 1)


class _Reporter:
    metric = "val_acc"

    def __init__(self):
        self.reports = []

    def __call__(self, step, metrics):
        self.reports.append((step, metrics["val_acc"]))


def test_pruner_sees_the_running_mean_of_the_members_best():
    done = [FitResult(best_val_acc=0.6)]
    reporter = _Reporter()
    second = running_mean(reporter, done, 1, epochs=3)
    for epoch, acc in enumerate([0.2, 0.4, 0.3], start=1):
        second(epoch, {"val_acc": acc})
    assert [step for step, _ in reporter.reports] == [4, 5, 6], "the steps after the first member's 3 epochs"
    assert [value for _, value in reporter.reports] == pytest.approx([0.4, 0.5, 0.5])
    assert running_mean(None, done, 1, 3) is None


def test_combine_averages_curves_and_pools_distinct_members():
    def result(accs, pred):
        history = [{"val_acc": a, "val_loss": 1 - a, "image_size": 96} for a in accs]
        best = int(np.argmax(accs))
        return FitResult(history, best, accs[best], {"w": best}, np.array(pred), np.array([0, 1]))

    members = [Member("fold_1_repeat_1", None, 0, True), Member("fold_1_repeat_2", None, 1, False)]
    out = combine([result([0.5, 1.0], [0, 1]), result([0.5, 0.0], [1, 1])], members)
    assert [h["val_acc"] for h in out.history] == [0.5, 0.5] and out.best_val_acc == pytest.approx(0.75)
    assert out.best_epoch == 0 and out.best_state == {"w": 1} and list(out.best_val_pred) == [0, 1]
    # the size an epoch ran at is a setting, kept as it is (promote decodes at the model's size: an int)
    assert [type(h["image_size"]) for h in out.history] == [int, int] and out.history[0]["image_size"] == 96


@pytest.mark.slow
def test_repeats_train_with_distinct_seeds_and_average(make_cfg):
    cfg = make_cfg("trial.repeats=2", "trainer.epochs=2")
    out = train(cfg)
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(out["run_id"])
    m = run.data.metrics
    accs = [m[f"repeat_{r}/summary/best_val_acc"] for r in (1, 2)]
    assert m["summary/best_val_acc"] == pytest.approx(np.mean(accs)) and run.data.params["trial.repeats"] == "2"
    curves = [
        [x.value for x in client.get_metric_history(run.info.run_id, f"repeat_{r}/epoch/train_loss")] for r in (1, 2)
    ]
    assert len(curves[0]) == len(curves[1]) == 2 and curves[0] != curves[1], "another seed, another training"
    mean_curve = [x.value for x in client.get_metric_history(run.info.run_id, "epoch/train_loss")]
    assert mean_curve == pytest.approx(np.mean(curves, axis=0)), "the mean curve, as a plain run's epoch/ metrics"


@pytest.mark.slow
def test_a_cross_validated_sweep_reports_the_running_mean_and_its_interval(tmp_path, cache_dir):
    """Two trials of 3 folds: each fold's curve and validation covers, the folds artifact (groups intact, test in
    no fold), the objective and the pruner's steps."""
    run_sweep(
        tmp_path,
        cache_dir,
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.study_name=cv",
        "trainer.epochs=range(1,2)",
        "data.cv_folds=3",
    )
    study = optuna.load_study(study_name="cv", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FINISHED"
        m, p = run.data.metrics, run.data.params
        folds = [m[f"fold_{k}/summary/best_val_acc"] for k in (1, 2, 3)]
        assert t.value == pytest.approx(np.mean(folds)) == pytest.approx(m["summary/best_val_acc"])
        assert p["data.cv_folds"] == "3" and p["trial.repeats"] == "1"
        epochs = t.params["trainer.epochs"]
        assert sorted(t.intermediate_values) == list(range(1, 3 * epochs + 1)), "one step per epoch of each fold"
        assert t.intermediate_values[epochs] == pytest.approx(folds[0]), "after fold 1: its best"
        assert t.intermediate_values[3 * epochs] == pytest.approx(t.value), "after fold 3: the mean"
        for k in (1, 2, 3):
            steps = [x.step for x in client.get_metric_history(run.info.run_id, f"fold_{k}/epoch/val_acc")]
            assert steps == list(range(1, epochs + 1))
        n = int(p["data.n_train"]) + int(p["data.n_val"])
        assert sum(m[f"fold_{k}/summary/val_covers"] for k in (1, 2, 3)) == n, "the folds' validation covers"
        fold_of = pd.read_csv(client.download_artifacts(run.info.run_id, "data/folds.csv"))
        (path,) = [a.path for a in client.list_artifacts(run.info.run_id, "data") if a.path != "data/folds.csv"]
        merged = pd.read_csv(client.download_artifacts(run.info.run_id, path), dtype=str).merge(fold_of)
        assert (merged.loc[merged["split"] == "test", "fold"] == 0).all(), "the test split is in no fold"
        pool = merged[merged["split"] != "test"]
        sizes = pool["fold"].value_counts().sort_index()
        assert sizes.index.tolist() == [1, 2, 3] and sizes.tolist() == [
            m[f"fold_{k}/summary/val_covers"] for k in (1, 2, 3)
        ]
        assert (pool.groupby("group")["fold"].nunique() == 1).all(), "look-alike groups intact"
        low, high = t.user_attrs["objective_ci"]
        assert (low, high) == pytest.approx(wilson_interval(round(t.value * n), n)), "out of fold: all train+val"
