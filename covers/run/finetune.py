"""Run kind ``finetune`` (the default): fine-tune one configuration, a sweep trial or a single run, into MLflow."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import Any, NamedTuple

import mlflow
import optuna
import timm.utils
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from covers.data import DataBundle
from covers.data.loaders import create_loader
from covers.data.transforms import create_eval_transform
from covers.reporting.figures import plot_confusion_matrix, plot_learning_curves
from covers.run.context import RunContext, build_context, loader_workers, trial_and_run
from covers.run.members import Member, combine, n_members, plan_members, running_mean
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


def build_training(
    cfg: DictConfig, ctx: RunContext, bundle: DataBundle | None = None, seed: int | None = None
) -> Training:
    """Model (with frozen groups), loss (``balanced`` class weights from the train split) and the loaders, on
    ``bundle`` (default: the run's) with ``seed`` (default ``cfg.seed``; every RNG is seeded with it first)."""
    bundle, spec = bundle or ctx.bundle, ctx.spec
    seed = int(cfg.seed if seed is None else seed)
    timm.utils.random_seed(seed)
    model = instantiate(cfg.model, num_classes=len(bundle.classes))
    instantiate(cfg.freeze)(model)
    if cfg.trainer.get("compile"):
        model.compile()  # in place: state-dict keys stay those of the plain model
    train_images, train_labels = bundle.split("train")
    loss_fn = instantiate(cfg.loss, **resolve_class_weights(cfg.loss, train_labels, len(bundle.classes)))
    train_tf = instantiate(cfg.aug)(spec["image_size"], seed=seed)
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
        train_images, train_labels, train_tf, d.batch_size, True, seed=seed, sampler=sampler, **common
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
    if result.val_target is not None:
        low, high = objective_interval(result)
        mlflow.log_metrics({"summary/best_val_acc_ci_low": low, "summary/best_val_acc_ci_high": high})
    if result.history:
        mlflow.log_metric("summary/train_acc_at_best", result.history[result.best_epoch]["train_acc"])
    runs.log_figure(plot_learning_curves(result.history, run_name(cfg)), "plots/learning_curves.png")
    if result.best_val_pred is not None:  # balanced accuracy, macro F1 and per-class recall at the best epoch
        metrics, _, _ = classification_metrics(
            result.val_target, result.best_val_pred, bundle.classes, "summary/best_val_"
        )
        keep = ("summary/best_val_balanced_acc", "summary/best_val_macro_f1", "summary/best_val_recall.")
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


def objective_interval(result: FitResult) -> tuple[float, float]:
    """The 95 % Wilson interval of ``best_val_acc`` on the distinct validation covers behind it (for members:
    their mean accuracy over the pooled covers; out-of-fold with ``data.cv_folds``, so every train+val cover)."""
    n = len(result.val_target)
    return wilson_interval(round(result.best_val_acc * n), n)


def train(cfg: DictConfig, on_epoch_end=None) -> dict[str, Any]:
    """Train one configuration; returns a dict with ``summary/best_val_acc`` (the sweep objective,
    ``optimized_metric``). With ``data.cv_folds`` or ``trial.repeats`` (:mod:`covers.run.members`) it trains
    every member in turn, each member's curves under ``<member>/epoch/``, and the objective is their mean.

    The MLflow run opens first, so any failure (data, model, training) ends it FAILED with its traceback."""
    epochs = int(cfg.trainer.epochs)
    with trial_and_run(cfg, run_name(cfg), epochs * n_members(cfg)) as (reporter, run):
        ctx = build_context(cfg)
        if not cfg.trial.get("resume_run_id"):  # a continued run has its params (those of its first rung)
            log_run_record(cfg, ctx.bundle, ctx.spec)
        members, folds = plan_members(cfg, ctx.bundle)
        if folds is not None:
            mlflow.log_text(
                ctx.bundle.manifest[["archive", "member"]].assign(fold=folds + 1).to_csv(index=False), "data/folds.csv"
            )
        results: list[FitResult] = []
        try:
            for i, member in enumerate(members):
                report = reporter if member.name is None else running_mean(reporter, results, i, epochs)
                _fit(cfg, ctx, member, [report, on_epoch_end], results)
                if member.name is not None:
                    _log_member(member.name, results[-1])
        except optuna.TrialPruned:  # FINISHED in MLflow, marked in its name and tags (the sweeper adds trial_state)
            name = f"{run_name(cfg)} (pruned at epoch {len(results[-1].history)})"
            mlflow.set_tags({"pruned": "true", "pruned_at_epoch": len(results[-1].history), "mlflow.runName": name})
            log_results(cfg, combine(results, members), ctx.bundle, ctx.spec, with_model=False)
            raise
        result = combine(results, members)
        if len(members) > 1:  # the members' mean curves, as a plain run's epoch/ metrics (the UI's charts)
            log_mean = runs.epoch_logger()
            for epoch, metrics in enumerate(result.history, start=1):
                log_mean(epoch, metrics)
        log_results(cfg, result, ctx.bundle, ctx.spec)
        if reporter is not None and result.val_target is not None:
            reporter.record_interval(*objective_interval(result))
    best = result.best_val_acc if math.isfinite(result.best_val_acc) else float("nan")
    return {
        "summary/best_val_acc": best,
        "summary/best_epoch": result.best_epoch + 1,
        "run_id": run.info.run_id,
        "history": result.history,
        "val_loss_at_best": result.history[result.best_epoch]["val_loss"] if result.history else math.nan,
    }


def _log_member(name: str, result: FitResult) -> None:
    """A member's own summary: ``<member>/summary/best_val_acc``, ``best_epoch`` and ``val_covers``."""
    summary = {"best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch + 1}
    if result.val_target is not None:
        summary["val_covers"] = len(result.val_target)
    mlflow.log_metrics({f"{name}/summary/{k}": v for k, v in summary.items()})


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


def _fit(cfg: DictConfig, ctx: RunContext, member: Member, callbacks: list, results: list[FitResult]) -> None:
    """Train one member; its result is appended to ``results`` first and filled as epochs end, so a pruned
    member keeps what it reached."""
    parts = build_training(cfg, ctx, member.bundle, member.seed)
    optimizer, result, lr = _start(cfg, parts, ctx)
    results.append(result)
    start = len(result.history)
    steps = (cfg.trainer.epochs - start) * len(parts.train_loader)
    scheduler = create_scheduler(optimizer, cfg.optim.schedule, steps, lr, cfg.optim.warmup_pct)
    prefix = runs.EPOCH_PREFIX if member.name is None else f"{member.name}/{runs.EPOCH_PREFIX}"
    log_epoch = runs.epoch_logger(*callbacks, prefix=prefix)

    def on_epoch_end(epoch: int, metrics: dict) -> None:  # each epoch's image size (it changes across rungs)
        metrics["image_size"] = ctx.spec["image_size"]
        log_epoch(epoch, metrics)

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
    if cfg.trial.get("checkpoint"):  # a rung that may be promoted: the next one continues from here
        with runs.artifact_dir("checkpoint") as tmp:
            save_checkpoint(tmp / "last.pt", parts.model, optimizer, result, lr)
