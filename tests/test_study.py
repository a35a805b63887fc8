"""Study experiments: train-split reshaping, the balanced sampler, the lr finder, validation-curve reports."""

from __future__ import annotations

import io
import math
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from covers.data.loaders import create_loader
from covers.data.split import content_hash, read_manifest
from covers.data.subsample import fraction_mask, imbalance_mask, long_tail_counts, train_counts
from covers.reporting.curves import curve_name, curve_points, plot_curve
from covers.reporting.results_doc import write_results
from covers.run.context import build_context, load_data
from covers.run.finetune import build_training, train
from covers.sweep.search_space import grid_choices, parse_params
from covers.training.losses import balanced_class_weights
from covers.training.lr_finder import find_lr, plot_lr_find, ramp, suggest_lrs, suggest_valley
from tests.conftest import CONF, ROOT, run_sweep


def manifest(per_class: dict[str, int], val: int = 3, test: int = 3) -> pd.DataFrame:
    """A split manifest with ``per_class`` train rows and ``val``/``test`` rows per class."""
    rows = [
        {"label": c, "split": split, "member": f"{c}/{split}{i}.png"}
        for c, n in per_class.items()
        for split, k in (("train", n), ("val", val), ("test", test))
        for i in range(k)
    ]
    return pd.DataFrame(rows)


def test_train_fraction_halves_train_and_keeps_proportions(make_cfg):
    full, _ = load_data(make_cfg())
    half, _ = load_data(make_cfg("data.train_fraction=0.5"))
    assert half.counts()["train"] == full.counts()["train"] / 2
    assert half.counts()["val"] == full.counts()["val"] and half.counts()["test"] == full.counts()["test"]
    assert train_counts(half.manifest) == {c: n // 2 for c, n in train_counts(full.manifest).items()}
    for split in ("val", "test"):
        assert np.array_equal(half.split(split)[1], full.split(split)[1])
    assert half.manifest_path != full.manifest_path  # the run logs (and promote reloads) exactly these rows
    assert content_hash(read_manifest(half.manifest_path)) == half.manifest_hash
    members = set(half.manifest.loc[half.manifest["split"] == "train", "member"])
    assert members <= set(full.manifest["member"])
    # uneven classes keep their proportions; seeded
    df = manifest({"a": 40, "b": 20, "c": 10})
    keep = fraction_mask(df, 0.5, seed=3)
    assert train_counts(df[keep]) == {"a": 20, "b": 10, "c": 5}
    assert (df[keep]["split"] != "train").sum() == 18
    assert np.array_equal(keep, fraction_mask(df, 0.5, seed=3)) and not np.array_equal(keep, fraction_mask(df, 0.5))


@pytest.mark.parametrize("ratio", [10, 4, 1])
def test_imbalance_gives_requested_ratio(ratio):
    df = manifest({c: 100 for c in "abcde"})
    kept = df[imbalance_mask(df, ratio, seed=0)]
    counts = train_counts(kept)
    assert max(counts.values()) / min(counts.values()) == ratio
    assert list(counts.values()) == sorted(counts.values(), reverse=True)  # long tail in class-name order
    assert (kept["split"] == "val").sum() == 15 and (kept["split"] == "test").sum() == 15
    assert long_tail_counts({"a": 100, "b": 100, "c": 100}, 4) == {"a": 100, "b": 50, "c": 25}


def test_imbalance_through_config(make_cfg):
    bundle, _ = load_data(make_cfg("data.imbalance=4"))
    counts = train_counts(bundle.manifest)
    assert max(counts.values()) / min(counts.values()) == pytest.approx(4, rel=0.15)
    assert bundle.counts()["val"] == 16 and len(bundle.images) == len(bundle.manifest)


def identity(image: np.ndarray) -> dict:
    """An albumentations-shaped transform that only makes a (3, H, W) uint8 tensor (as ``ToTensorV2`` does)."""
    return {"image": torch.from_numpy(image).permute(2, 0, 1)}


def test_balanced_sampler_draws_classes_uniformly():
    labels = np.array([0] * 900 + [1] * 90 + [2] * 10)
    images = np.zeros((len(labels), 2, 2, 3), dtype=np.uint8)
    norm = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    loader = create_loader(images, labels, identity, 100, True, seed=0, sampler="balanced", **norm)
    drawn = np.concatenate([y.numpy() for _ in range(3) for _, y in loader])
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    assert len(drawn) == 3000 and np.allclose(shares, 1 / 3, atol=0.04), shares
    plain = create_loader(images, labels, identity, 100, True, **norm)
    assert np.bincount(np.concatenate([y.numpy() for _, y in plain]))[2] == 10
    with pytest.raises(ValueError, match=r"data\.sampler"):
        create_loader(images, labels, identity, 100, True, sampler="nope", **norm)


def test_balanced_class_weights():
    assert balanced_class_weights(np.array([0, 0, 0, 1]), 3) == [pytest.approx(4 / 9), pytest.approx(4 / 3), 0.0]


def test_valley_and_suggestions_on_a_known_curve():
    lrs = ramp(1e-5, 1.0, 11)
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1.0)
    losses = np.array([3.0, 2.9, 2.7, 2.2, 1.6, 1.2, 1.0, 0.95, 1.5, 3.0, 6.0])
    # longest decreasing run: steps 0..7 (length 8); fastai: start = 7 - 8 = -1, -1 + int(8/3) + int(8/6) = 2
    assert suggest_valley(lrs, losses) == pytest.approx(lrs[2])
    s = suggest_lrs(list(lrs), list(losses))
    assert s["minimum"] == pytest.approx(lrs[7] / 10)
    assert s["steepest"] == pytest.approx(lrs[3])  # central difference (1.6 - 2.7) / 2 is the steepest


def test_lr_finder_on_real_model_restores_weights(make_cfg):
    cfg = make_cfg()
    ctx = build_context(cfg)
    rt = ctx.rt
    parts = build_training(cfg, ctx)
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    settings = {"start_lr": 1e-6, "end_lr": 0.1, "num_steps": 10, "beta": 0.9, "diverge": 10.0}
    make_optimizer = lambda model, lr: torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)  # noqa: E731
    result = find_lr(parts.model, parts.train_loader, parts.loss_fn, make_optimizer, rt, settings)
    assert 3 <= len(result.lrs) <= 10 and all(math.isfinite(x) for x in result.smoothed)
    for name, lr in result.suggestions.items():
        low = 1e-7 if name == "minimum" else 1e-6
        assert math.isfinite(lr) and low <= lr <= 0.1, (name, lr)
    after = parts.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the finder left trained weights behind"
    fig = plot_lr_find(result)
    assert len(fig.axes[0].lines) == 2 + len(result.suggestions)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    assert buf.tell() > 1000


def test_lr_find_enabled_in_training_logs_found_lr_and_balanced_metrics(make_cfg, tmp_path):
    auto = ("lr_find.enabled=true", "lr_find.num_steps=6", "lr_find.end_lr=0.1")
    cfg = make_cfg(*auto, "data.imbalance=3", "loss=weighted_ce")
    out = train(cfg)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = client.get_run(out["run_id"])
    lr = float(run.data.params["optim.lr_found"])
    assert 1e-7 <= lr <= 0.1 and run.data.params["lr_find.chosen"] == "valley"
    # what a value is, not how Hydra builds it: no _target_/_partial_ params (the config artifact keeps them)
    assert not [k for k in run.data.params if k.rsplit(".", 1)[-1] in ("_target_", "_partial_")]
    assert run.data.params["optim.optimizer.name"] == "adamw" and run.data.params["loss.weight"] == "balanced"
    assert run.data.metrics["lr_find.valley"] == pytest.approx(lr)
    history = client.get_metric_history(run.info.run_id, "epoch/lr")
    assert max(m.value for m in history) <= lr * 1.0001
    assert "summary/best_val_balanced_acc" in run.data.metrics and "epoch/val_balanced_acc" in run.data.metrics
    recalls = {k for k in run.data.metrics if k.startswith("summary/best_val_recall.")}
    assert len(recalls) == int(run.data.params["data.num_classes"])
    paths = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert "plots/lr_find.png" in paths


@pytest.mark.slow
def test_validation_curve_sweep_and_report(tmp_path, cache_dir):
    run_sweep(
        tmp_path,
        cache_dir,
        "hparams_search=lr_curve",
        "optim.lr=choice(1e-3,3e-3,1e-2)",
        "trainer.epochs=1",
        "hydra.sweeper.study_name=vc3",
    )
    cmd = [sys.executable, "experiments/report.py", "sweep=vc3", f"paths.root_dir={tmp_path}"]
    cmd.append(f"hydra.run.dir={tmp_path}/report")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("covers")
    (parent,) = client.search_runs([exp.experiment_id], "tags.`covers.kind` = 'sweep'")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 3
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {"report/validation_curve_optim.lr.png", "report/validation_curve_optim.lr.csv"} <= files
    csv = client.download_artifacts(parent.info.run_id, "report/validation_curve_optim.lr.csv", str(tmp_path))
    points = pd.read_csv(csv)
    assert len(points) == 3 and list(points["optim.lr"]) == pytest.approx([1e-3, 3e-3, 1e-2])
    assert (points["n_runs"] == 1).all() and (points["val_acc_std"] == 0).all()
    by_lr = {float(r.data.params["optim.lr"]): r.data.metrics for r in children}
    for row in points.itertuples():
        assert row.val_acc_mean == pytest.approx(by_lr[row._1]["summary/best_val_acc"])
        assert row.train_acc_mean == pytest.approx(by_lr[row._1]["summary/train_acc_at_best"])

    doc = write_results(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "covers", ["vc3"], tmp_path / "docs" / "results.md")
    text = doc.read_text()
    assert parent.info.run_id in text and all(r.info.run_id in text for r in children)
    assert (tmp_path / "docs" / "results" / "vc3_validation_curve_optim.lr.png").stat().st_size > 1000
    assert "No kNN baseline run yet" in text and "not measured here" in text and "No model holds" in text


PRESETS = [
    ("lr_curve", "optim.lr", 6),
    ("epochs_curve", "trainer.epochs", 6),
    ("gamma_curve", "loss.gamma", 6),
    ("frozen_curve", "freeze.n_frozen", 5),
    ("loss_curve", "loss", 4),
    ("learning_curve", "data.train_fraction", 6),
    ("imbalance", "data.sampler", 6),
]


@pytest.mark.parametrize(("preset", "key", "grid"), PRESETS)
@pytest.mark.parametrize("seeds", [None, "choice(1,2,3)"])
def test_curve_presets_are_grids_with_a_seed_option(preset, key, grid, seeds):
    overrides = [f"hparams_search={preset}"] + ([f"curve.seeds='{seeds}'"] if seeds else [])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    sweeper = cfg.hydra.sweeper
    assert sweeper.sampler._target_ == "optuna.samplers.GridSampler" and sweeper.pruner._target_.endswith("NopPruner")
    distributions, fixed = parse_params(OmegaConf.to_container(sweeper.params, resolve=True))
    assert key in distributions
    sizes = [len(grid_choices(d, k)) for k, d in distributions.items()]
    assert math.prod(sizes) == grid * (3 if seeds else 1)
    assert ("seed" in distributions) == bool(seeds) and ("seed" in fixed) != bool(seeds)


def test_curve_points_average_repeats_and_name_the_learning_curve():
    frame = pd.DataFrame(
        {
            "run_id": list("abcd"),
            "data.train_fraction": [0.5, 0.5, 1.0, 1.0],
            "n_train": [50, 50, 100, 100],
            "val_acc": [0.4, 0.6, 0.7, 0.7],
            "train_acc": [0.9, 1.0, 0.8, 0.8],
            "val_balanced_acc": [0.3, 0.5, 0.7, 0.7],
        }
    )
    points = curve_points(frame, ["data.train_fraction"])
    assert list(points["n_train_mean"]) == [50, 100] and list(points["n_runs"]) == [2, 2]
    assert points["val_acc_mean"].tolist() == pytest.approx([0.5, 0.7])
    assert points["val_acc_std"].tolist() == pytest.approx([math.sqrt(0.02), 0.0])
    assert points["run_ids"].tolist() == ["a b", "c d"]
    assert curve_name(["data.train_fraction"]) == "learning_curve"
    assert curve_name(["loss", "data.sampler"]) == "validation_curve_loss+data.sampler"
    fig = plot_curve(points, "n_train_mean", ["data.train_fraction"])
    assert fig.axes[0].get_xlabel() == "training images"
    assert list(fig.axes[0].lines[0].get_xdata()) == [50, 100]
