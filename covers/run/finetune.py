"""Run kind ``finetune`` (the default): fine-tune one configuration, a sweep trial or a single run, into MLflow."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import Any, NamedTuple

import mlflow
import optuna
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from covers.data import DataBundle
from covers.data.loaders import create_loader
from covers.data.transforms import create_eval_transform
from covers.reporting.figures import plot_confusion_matrix, plot_learning_curves
from covers.run.context import RunContext, build_context, loader_workers, trial_and_run
from covers.run.record import log_run_record, model_meta
from covers.tracking import runs
from covers.training.checkpoint import load_checkpoint, save_checkpoint
from covers.training.intervals import wilson_interval
from covers.training.loop import FitResult, fit
from covers.training.losses import resolve_class_weights
from covers.training.lr_finder import LRFindResult, find_lr, log_lr_find
from covers.training.metrics import classification_metrics
from covers.training.optim import create_scheduler

log = logging.getLogger(__name__)


def run_name(cfg: DictConfig) -> str:
    """People-readable run name: ``trial-7 lr=3.2e-03 ep=4 γ=2.0 frozen=3`` (``lr=find`` with the lr finder)."""
    parts = [f"trial-{cfg.trial.number}" if cfg.trial.number is not None else cfg.model.name]
    parts.append("lr=find" if cfg.lr_find.enabled else f"lr={cfg.optim.lr:.1e}")
    parts.append(f"ep={cfg.trainer.epochs}")
    if "gamma" in cfg.loss:
        parts.append(f"γ={cfg.loss.gamma:.2g}")
    parts.append(f"frozen={cfg.freeze.n_frozen}")
    if cfg.trial.get("rung") is not None:  # multi-fidelity: the configuration's rung (ep is its total)
        parts.append(f"rung={cfg.trial.rung}")
    return " ".join(parts)


class Training(NamedTuple):
    """What one training run is built from (shared by training and the lr finder)."""

    model: torch.nn.Module
    loss_fn: torch.nn.Module
    train_loader: Any
    val_loader: Any


def build_training(cfg: DictConfig, ctx: RunContext) -> Training:
    """Model (with frozen groups), loss (``balanced`` class weights from the train split) and the loaders."""
    bundle, spec = ctx.bundle, ctx.spec
    model = instantiate(cfg.model, num_classes=len(bundle.classes))
    instantiate(cfg.freeze)(model)
    if cfg.trainer.get("compile"):
        model.compile()  # in place: state-dict keys stay those of the plain model
    train_images, train_labels = bundle.split("train")
    loss_fn = instantiate(cfg.loss, **resolve_class_weights(cfg.loss, train_labels, len(bundle.classes)))
    train_tf = instantiate(cfg.aug)(spec["image_size"], seed=cfg.seed)
    eval_tf = create_eval_transform(spec["image_size"])
    d = cfg.data
    common = {
        "mean": spec["mean"],
        "std": spec["std"],
        "device": ctx.rt.device,
        "num_workers": loader_workers(cfg, ctx.rt, ctx.threads),
    }
    sampler = d.get("sampler") or "shuffle"
    train_loader = create_loader(
        train_images, train_labels, train_tf, d.batch_size, True, seed=cfg.seed, sampler=sampler, **common
    )
    val_loader = create_loader(*bundle.split("val"), eval_tf, d.eval_batch_size, False, **common)
    return Training(model, loss_fn, train_loader, val_loader)


def range_test(cfg: DictConfig, parts: Training, ctx: RunContext) -> LRFindResult:
    """The lr range test (``lr_find`` settings) on the run's model, loss and training data, with the configured
    optimiser; the model's weights are restored afterwards."""
    make_optimizer = instantiate(cfg.optim.optimizer)
    return find_lr(parts.model, parts.train_loader, parts.loss_fn, make_optimizer, ctx.rt, cfg.lr_find)


def learning_rate(cfg: DictConfig, parts: Training, ctx: RunContext) -> float:
    """``optim.lr``, or with ``lr_find.enabled`` the lr finder's ``lr_find.suggestion`` (logged as param
    ``optim.lr_found``)."""
    if not cfg.lr_find.enabled:
        return float(cfg.optim.lr)
    return log_lr_find(range_test(cfg, parts, ctx), cfg.lr_find.suggestion)


def log_results(cfg: DictConfig, result: FitResult, bundle: DataBundle, spec: dict, with_model: bool = True) -> None:
    """Final metrics, plots and the best-epoch model (state dict + metadata for ``promote``)."""
    mlflow.log_metrics(
        {
            "summary/best_val_acc": result.best_val_acc,
            "summary/best_epoch": result.best_epoch + 1,
            "summary/epochs_completed": len(result.history),
        }
    )
    if result.history:
        mlflow.log_metric("summary/train_acc_at_best", result.history[result.best_epoch]["train_acc"])
    runs.log_figure(plot_learning_curves(result.history, run_name(cfg)), "plots/learning_curves.png")
    if result.best_val_pred is not None:  # balanced accuracy, macro F1 and per-class recall at the best epoch
        metrics, _, _ = classification_metrics(
            result.val_target, result.best_val_pred, bundle.classes, "summary/best_val_"
        )
        keep = (
            "summary/best_val_balanced_acc",
            "summary/best_val_macro_f1",
            "summary/best_val_recall.",
            "summary/best_val_acc_ci",
        )
        mlflow.log_metrics({k: v for k, v in metrics.items() if k.startswith(keep)})
        title = f"validation, best epoch {result.best_epoch + 1}"
        fig = plot_confusion_matrix(result.val_target, result.best_val_pred, bundle.classes, title)
        runs.log_figure(fig, "plots/val_confusion_matrix.png")
    if with_model and cfg.tracking.log_model and result.best_state is not None:
        size = result.history[result.best_epoch].get("image_size", spec["image_size"])  # rungs change it
        meta = model_meta(
            cfg.model.name, bundle, {**spec, "image_size": size}, result.best_epoch + 1, result.best_val_acc
        )
        with runs.artifact_dir("model") as tmp:
            torch.save(result.best_state, tmp / "state_dict.pt")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))


def train(cfg: DictConfig, on_epoch_end=None) -> dict[str, Any]:
    """Train one configuration; returns a dict with ``summary/best_val_acc`` (the sweep objective,
    ``optimized_metric``).

    The MLflow run opens first, so any failure (data, model, training) ends it FAILED with its traceback."""
    with trial_and_run(cfg, run_name(cfg), int(cfg.trainer.epochs)) as (reporter, run):
        ctx = build_context(cfg)
        if not cfg.trial.get("resume_run_id"):  # a continued run has its params (those of its first rung)
            log_run_record(cfg, ctx.bundle, ctx.spec)
        result = _fit(cfg, ctx, [reporter, on_epoch_end])
        if reporter is not None and result.best_val_pred is not None:
            reporter.record_interval(
                *wilson_interval(int((result.best_val_pred == result.val_target).sum()), len(result.val_target))
            )
    best = result.best_val_acc if math.isfinite(result.best_val_acc) else float("nan")
    return {
        "summary/best_val_acc": best,
        "summary/best_epoch": result.best_epoch + 1,
        "run_id": run.info.run_id,
        "history": result.history,
        "val_loss_at_best": result.history[result.best_epoch]["val_loss"] if result.history else math.nan,
    }


CHECKPOINT = "checkpoint/last.pt"  # the run's checkpoint artifact (multi-fidelity: the next rung starts from it)


def _start(cfg: DictConfig, parts: Training, ctx: RunContext) -> tuple[torch.optim.Optimizer, FitResult, float]:
    """The optimiser, the fit so far and the base lr: fresh, or from the checkpoint of ``trial.resume_run_id``."""
    resume = cfg.trial.get("resume_run_id")
    lr = float(cfg.optim.lr) if resume else learning_rate(cfg, parts, ctx)
    optimizer = instantiate(cfg.optim.optimizer)(parts.model, lr=lr)
    if not resume:
        return optimizer, FitResult(), lr
    path = mlflow.artifacts.download_artifacts(run_id=resume, artifact_path=CHECKPOINT)
    result, lr = load_checkpoint(path, parts.model, optimizer)
    mlflow.set_tag("resumed_from", f"epoch {len(result.history)}, checkpoint sha256 {_sha256(path)}")
    log.info("continuing run %s from epoch %d (%s)", resume, len(result.history), CHECKPOINT)
    return optimizer, result, lr


def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fit(cfg: DictConfig, ctx: RunContext, callbacks: list) -> FitResult:
    parts = build_training(cfg, ctx)
    optimizer, result, lr = _start(cfg, parts, ctx)
    start = len(result.history)
    steps = (cfg.trainer.epochs - start) * len(parts.train_loader)
    scheduler = create_scheduler(optimizer, cfg.optim.schedule, steps, lr, cfg.optim.warmup_pct)
    log_epoch = runs.epoch_logger(*callbacks)

    def on_epoch_end(epoch: int, metrics: dict) -> None:  # each epoch's image size (it changes across rungs)
        metrics["image_size"] = ctx.spec["image_size"]
        log_epoch(epoch, metrics)

    try:
        fit(
            parts.model,
            parts.train_loader,
            parts.val_loader,
            parts.loss_fn,
            optimizer,
            scheduler,
            cfg.trainer.epochs,
            ctx.rt,
            on_epoch_end=on_epoch_end,
            result=result,
            ema_decay=cfg.trainer.get("ema_decay"),
            mix=instantiate(cfg.mixup)(len(ctx.bundle.classes), batch_size=cfg.data.batch_size),
            start_epoch=start,
        )
    except optuna.TrialPruned:  # FINISHED in MLflow, marked in its name and tags (the sweeper adds trial_state)
        name = f"{run_name(cfg)} (pruned at epoch {len(result.history)})"
        mlflow.set_tags({"pruned": "true", "pruned_at_epoch": len(result.history), "mlflow.runName": name})
        log_results(cfg, result, ctx.bundle, ctx.spec, with_model=False)
        raise
    log_results(cfg, result, ctx.bundle, ctx.spec)
    if cfg.trial.get("checkpoint"):  # a rung that may be promoted: the next one continues from here
        with runs.artifact_dir("checkpoint") as tmp:
            save_checkpoint(tmp / "last.pt", parts.model, optimizer, result, lr)
    return result
