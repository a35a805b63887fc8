"""Run kind ``knn``: the kNN baseline on frozen pretrained embeddings, evaluated on the validation split and
tracked exactly like a fine-tuned run (``epoch/val_acc``, ``summary/best_val_acc``, ``model/meta.json``), so the
MLflow UI compares both and ``promote`` can pick either."""

from __future__ import annotations

import logging
from typing import Any

import mlflow
from hydra.utils import instantiate
from omegaconf import DictConfig

from covers.knn.baseline import cached_embeddings, evaluate_knn, split_rows
from covers.reporting.figures import plot_confusion_matrix
from covers.run.context import build_context, trial_and_run
from covers.run.members import n_members
from covers.run.record import log_run_record, model_meta
from covers.tracking import runs
from covers.training.intervals import wilson_interval

log = logging.getLogger(__name__)

# config groups that mean nothing to a model that is not trained; left out of the run's params
UNUSED_GROUPS = ("optim", "loss", "freeze", "aug", "mixup", "lr_find", "promote")


def run_name(cfg: DictConfig) -> str:
    """``trial-3 knn k=10 similarity``."""
    head = f"trial-{cfg.trial.number}" if cfg.trial.number is not None else cfg.model.name
    return f"{head} knn k={cfg.model.k} {cfg.model.weighting}"


def run_knn(cfg: DictConfig, on_epoch_end=None) -> dict[str, Any]:
    """Index the training covers, vote on the validation covers, and track it as one evaluation step (reported to
    the sweep trial, never pruned)."""
    with trial_and_run(cfg, run_name(cfg), 1, **{"model.kind": "knn"}) as (reporter, run):
        ctx = build_context(cfg)
        bundle = ctx.bundle
        if n_members(cfg) > 1:
            log.warning("the kNN baseline trains nothing: data.cv_folds and trial.repeats are ignored")
        log_run_record(cfg, bundle, ctx.spec, groups=[k for k in cfg if k not in UNUSED_GROUPS])
        model = instantiate(
            cfg.model,
            classes=bundle.classes,
            device=cfg.trainer.device,
            batch_size=cfg.data.eval_batch_size,
            _convert_="all",
            **ctx.spec,
        )
        fitted = bundle.manifest["split"].isin(["train", "val"]).to_numpy()
        key = f"{bundle.manifest_hash}-trainval-{ctx.spec['image_size']}px"
        vectors = cached_embeddings(model, bundle.images[fitted], key, cfg.paths.cache_dir)
        split = bundle.manifest.loc[fitted, "split"].to_numpy()
        train_images, train_table = split_rows(bundle, "train")
        model.set_gallery(train_images, train_table, cfg.model.index, vectors=vectors[split == "train"])
        _, val_labels = bundle.split("val")
        metrics, pred = evaluate_knn(model, vectors[split == "val"], val_labels)
        log.info("kNN %s", " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        runs.epoch_logger(reporter, on_epoch_end)(1, metrics)
        low, high = wilson_interval(int((pred == val_labels).sum()), len(val_labels))
        if reporter is not None:
            reporter.record_interval(low, high)
        mlflow.log_metrics(
            {
                "summary/best_val_acc": metrics["val_acc"],
                "summary/best_val_acc_ci_low": low,
                "summary/best_val_acc_ci_high": high,
                "summary/best_epoch": 1,
                "summary/epochs_completed": 1,
            }
        )
        fig = plot_confusion_matrix(val_labels, pred, bundle.classes, f"validation, {run_name(cfg)}")
        runs.log_figure(fig, "plots/val_confusion_matrix.png")
        if cfg.tracking.log_model:  # the backbone is pretrained: its spec is enough, promotion saves weights
            meta = {**model.meta, **model_meta(cfg.model.name, bundle, ctx.spec, 1, metrics["val_acc"])}
            meta.pop("gallery", None)
            mlflow.log_dict(meta, "model/meta.json")
    return {
        "summary/best_val_acc": metrics["val_acc"],
        "summary/best_epoch": 1,
        "run_id": run.info.run_id,
        "history": [metrics],
        "val_loss_at_best": metrics["val_loss"],
    }
