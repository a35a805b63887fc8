"""The Hydra task: one training run (a sweep trial or a single run) from a composed config to MLflow."""

from __future__ import annotations

import functools
import gc
import json
import logging
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import numpy as np
import optuna
import timm
import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from covers import model_spares
from covers.data import DataBundle, prepare_data
from covers.data.loaders import create_loader
from covers.data.subsample import reshape_train
from covers.data.transforms import create_eval_transform
from covers.reporting.figures import plot_confusion_matrix, plot_learning_curves
from covers.sweep.trial_reporter import TrialReporter, reporter_for
from covers.tracking import runs
from covers.training.loop import FitResult, Runtime, fit, runtime_from_config, seed_everything, set_threads
from covers.training.losses import resolve_class_weights
from covers.training.metrics import classification_metrics
from covers.training.optim import create_scheduler

log = logging.getLogger(__name__)

# keys left out of MLflow params: tags or set by the sweeper per trial (trial, hydra), the promote command's settings,
# or machine-specific folders that differ per trial and would lead the UI's compare view (paths, audit; the audit's
# cleaning rules show in data.manifest_hash). The whole resolved config is the artifact config/config.yaml.
_NOT_PARAMS = ("trial.", "hydra.", "promote.", "paths.", "audit.")
# libyaml's dumper when PyYAML has it: the same text as ``yaml.safe_dump``, 5x faster (~3 ms less per trial)
_YAML_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def resolve_input(model_name: str, image_size: int | None, mean=None, std=None) -> dict[str, Any]:
    """Input size and normalisation: the model's pretrained config unless overridden in ``data``."""
    cfg = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(model_name).to_dict())
    return {
        "image_size": int(image_size or cfg["input_size"][-1]),
        "mean": [float(x) for x in (mean or cfg["mean"])],
        "std": [float(x) for x in (std or cfg["std"])],
    }


def intra_op_threads(threads: int | None) -> int:
    """``trainer.threads``, or the cores shared out among the sweep's parallel trials (``n_jobs``)."""
    if threads:
        return int(threads)
    n_jobs = 1
    if HydraConfig.initialized():
        n_jobs = max(1, int(HydraConfig.get().sweeper.get("n_jobs") or 1))
    return max(1, (os.cpu_count() or 1) // n_jobs)


def loader_workers(num_workers: int | None, rt: Runtime) -> int:
    """``data.num_workers``, or by default: none on the CPU, where augmenting in the main process measured fastest
    (the model trains on the same cores); on CUDA the cores this trial gets (:func:`intra_op_threads`) less one
    for the training loop, at most 8, so that augmentation keeps up with the GPU (docs/benchmarks.md)."""
    if num_workers is not None:
        return int(num_workers)
    if rt.device.type == "cpu":
        return 0
    return max(0, min(8, intra_op_threads(None) - 1))


def run_name(cfg: DictConfig) -> str:
    """People-readable run name: ``trial-7 lr=3.2e-03 ep=4 γ=2.0 frozen=3``."""
    parts = [f"trial-{cfg.trial.number}" if cfg.trial.number is not None else cfg.model.name]
    parts.append(f"lr={cfg.optim.lr:.1e}" if cfg.optim.lr != "auto" else "lr=auto")
    parts.append(f"ep={cfg.trainer.epochs}")
    if "gamma" in cfg.loss:
        parts.append(f"γ={cfg.loss.gamma:.2g}")
    parts.append(f"frozen={cfg.freeze.n_frozen}")
    return " ".join(parts)


def load_data(cfg: DictConfig) -> tuple[DataBundle, dict[str, Any]]:
    """Manifest and decoded images at the model's input size."""
    d = cfg.data
    inp = resolve_input(cfg.model.name, d.image_size, d.get("mean"), d.get("std"))
    bundle = prepare_data(
        name=d.name,
        image_size=inp["image_size"],
        cache_dir=cfg.paths.cache_dir,
        source=d.source,
        manifest=d.manifest,
        split_seed=d.split_seed,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        demo=OmegaConf.to_container(d.demo) if d.get("demo") else None,
        # the default split is cleaned like the audit's (same ingest limits and duplicate rules)
        limits=instantiate(cfg.audit.limits) if "audit" in cfg else None,
        rules=instantiate(cfg.audit.duplicates) if "audit" in cfg else None,
    )
    fraction, imbalance = d.get("train_fraction", 1.0), d.get("imbalance")
    if fraction < 1 or (imbalance or 1) > 1:  # study experiments: a smaller or long-tailed train split
        keep = reshape_train(bundle.manifest, fraction, imbalance, d.split_seed)
        bundle = bundle.subset(keep, Path(cfg.paths.cache_dir) / "manifests")
    return bundle, inp


def log_run_record(cfg: DictConfig, bundle: DataBundle, inp: dict[str, Any]) -> None:
    """Params (flattened resolved config + data facts) and the resolved config/overrides as artifacts."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    params = {k: v for k, v in runs.flatten(resolved).items() if not k.startswith(_NOT_PARAMS)}
    counts = bundle.counts()
    params.update(
        {
            "data.manifest_hash": bundle.manifest_hash,
            "data.num_classes": len(bundle.classes),
            "data.classes": bundle.classes,
            "data.resolved_image_size": inp["image_size"],
            **{f"data.n_{k}": v for k, v in counts.items()},
        }
    )
    if HydraConfig.initialized():  # the chosen option of every config group (``loss=focal``), for reports
        params.update({f"choice.{k}": v for k, v in HydraConfig.get().runtime.choices.items() if "/" not in k})
    runs.log_params(params)
    text = yaml.dump(resolved, Dumper=_YAML_DUMPER, sort_keys=False, allow_unicode=True)
    files: dict[str, str | Path] = {"config/config.yaml": text}
    output_dir = Path(cfg.paths.output_dir)
    for name in ("overrides.yaml", "hydra.yaml"):
        if (output_dir / ".hydra" / name).exists():
            files[f"config/{name}"] = output_dir / ".hydra" / name
    files[f"data/{bundle.manifest_path.name}"] = bundle.manifest_path
    runs.log_files(files)  # one upload


def log_results(cfg: DictConfig, result: FitResult, bundle: DataBundle, inp: dict, with_model: bool = True) -> None:
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
        keep = ("summary/best_val_balanced_acc", "summary/best_val_macro_f1", "summary/best_val_recall.")
        mlflow.log_metrics({k: v for k, v in metrics.items() if k.startswith(keep)})
        title = f"validation, best epoch {result.best_epoch + 1}"
        fig = plot_confusion_matrix(result.val_target, result.best_val_pred, bundle.classes, title)
        runs.log_figure(fig, "plots/val_confusion_matrix.png")
    if with_model and cfg.tracking.log_model and result.best_state is not None:
        meta = {
            "model_name": cfg.model.name,
            "classes": bundle.classes,
            "num_classes": len(bundle.classes),
            **inp,
            "best_epoch": result.best_epoch + 1,
            "best_val_acc": result.best_val_acc,
            "manifest_hash": bundle.manifest_hash,
            "manifest_file": f"data/{bundle.manifest_path.name}",
        }
        with runs.artifact_dir("model") as tmp:
            torch.save(result.best_state, tmp / "state_dict.pt")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))


@contextmanager
def tracked_run(cfg: DictConfig, name: str, reporter: TrialReporter | None = None, **tags: Any) -> Iterator[Any]:
    """The MLflow run of one training/evaluation: tagged as trial or single run, linked to the Optuna trial."""
    t = cfg.tracking
    runs.setup_tracking(t.uri, t.experiment, t.artifact_root, t.get("sqlite_wal", True))
    tags = {"covers.kind": "single", "model": cfg.model.name, "data": cfg.data.name, **tags}
    if cfg.trial.number is not None:
        tags.update({"covers.kind": "trial", "study_name": cfg.trial.study_name, "trial_number": cfg.trial.number})
    with runs.start_run(name, cfg.trial.parent_run_id, tags, ended_early=(optuna.TrialPruned,)) as run:
        if reporter is not None:
            reporter.trial.set_user_attr("mlflow_run_id", run.info.run_id)
        yield run


@functools.cache
def freeze_long_lived() -> None:
    """Once per process (after its first trial): collect the garbage, then move the surviving objects (imported
    modules, caches: ~870 000 in a sweep process) to the collector's permanent generation. Without this every full
    collection rescans all of them, 0.3-0.9 s here every few trials, inside some trial's start-up or epoch."""
    gc.collect()
    gc.freeze()


def train(cfg: DictConfig, on_epoch_end=None) -> dict[str, Any]:
    """Train one configuration; returns a dict with ``summary/best_val_acc`` (the sweep objective,
    ``optimized_metric``).

    The MLflow run opens first, so any failure (data, model, training) ends it FAILED with its traceback."""
    if cfg.model.get("kind") == "knn":  # the kNN baseline: nothing to train, tracked the same way
        from covers.knn.baseline import train_knn

        return train_knn(cfg, on_epoch_end)
    seed_everything(cfg.seed)
    set_threads(intra_op_threads(cfg.trainer.threads))
    reporter = reporter_for(cfg)
    try:
        with tracked_run(cfg, run_name(cfg), reporter) as run:
            result = _train_tracked(cfg, [reporter, on_epoch_end])
    finally:
        if cfg.trial.number is not None:  # a sweep's process: later trials skip rescanning what stays alive
            freeze_long_lived()
    best = result.best_val_acc if math.isfinite(result.best_val_acc) else float("nan")
    return {
        "summary/best_val_acc": best,
        "summary/best_epoch": result.best_epoch + 1,
        "run_id": run.info.run_id,
        "history": result.history,
        "val_loss_at_best": result.history[result.best_epoch]["val_loss"] if result.history else np.nan,
    }


class Training(NamedTuple):
    """What one training run is built from (shared by training and the lr finder)."""

    model: torch.nn.Module
    loss_fn: torch.nn.Module
    train_loader: Any
    val_loader: Any


def build_training(cfg: DictConfig, bundle: DataBundle, inp: dict[str, Any], rt: Runtime) -> Training:
    """Model (with frozen groups), loss (``balanced`` class weights from the train split) and the loaders."""
    model = instantiate(cfg.model, num_classes=len(bundle.classes))
    instantiate(cfg.freeze)(model)
    if cfg.trainer.get("compile"):
        model.compile()  # in place: state-dict keys stay those of the plain model
    train_images, train_labels = bundle.split("train")
    loss_fn = instantiate(cfg.loss, **resolve_class_weights(cfg.loss, train_labels, len(bundle.classes)))
    train_tf = instantiate(cfg.aug)(inp["image_size"], seed=cfg.seed)
    eval_tf = create_eval_transform(inp["image_size"])
    d = cfg.data
    sampler = d.get("sampler") or "shuffle"
    workers = loader_workers(d.get("num_workers"), rt)
    common = {"mean": inp["mean"], "std": inp["std"], "device": rt.device, "num_workers": workers}
    train_loader = create_loader(
        train_images, train_labels, train_tf, d.batch_size, True, seed=cfg.seed, sampler=sampler, **common
    )
    val_loader = create_loader(*bundle.split("val"), eval_tf, d.eval_batch_size, False, **common)
    return Training(model, loss_fn, train_loader, val_loader)


def resolve_lr(cfg: DictConfig, parts: Training, rt: Runtime) -> float:
    """``optim.lr``, or with ``optim.lr=auto`` the lr finder's suggestion (logged as param ``optim.lr_found``)."""
    if cfg.optim.lr != "auto":
        return float(cfg.optim.lr)
    from covers.training.lr_finder import find_lr, log_lr_find

    make_optimizer = instantiate(cfg.optim.optimizer)
    result = find_lr(parts.model, parts.train_loader, parts.loss_fn, make_optimizer, rt, cfg.lr_find)
    return log_lr_find(result, cfg.lr_find.suggestion)


def _train_tracked(cfg: DictConfig, callbacks: list) -> FitResult:
    rt = runtime_from_config(cfg.trainer)
    bundle, inp = load_data(cfg)
    log.info("data: %d classes, %s, manifest %s", len(bundle.classes), bundle.counts(), bundle.manifest_path)
    log_run_record(cfg, bundle, inp)

    parts = build_training(cfg, bundle, inp, rt)
    model, loss_fn, train_loader, val_loader = parts
    lr = resolve_lr(cfg, parts, rt)
    optimizer = instantiate(cfg.optim.optimizer)(model, lr=lr)
    steps = cfg.trainer.epochs * len(train_loader)
    scheduler = create_scheduler(optimizer, cfg.optim.schedule, steps, lr, cfg.optim.warmup_pct)

    result = FitResult()
    try:
        fit(
            model,
            train_loader,
            val_loader,
            loss_fn,
            optimizer,
            scheduler,
            cfg.trainer.epochs,
            rt,
            on_epoch_end=runs.epoch_logger(*callbacks),
            result=result,
        )
    except optuna.TrialPruned:  # FINISHED in MLflow, marked in its name and tags (the sweeper adds trial_state)
        name = f"{run_name(cfg)} (pruned at epoch {len(result.history)})"
        mlflow.set_tags({"pruned": "true", "pruned_at_epoch": len(result.history), "mlflow.runName": name})
        log_results(cfg, result, bundle, inp, with_model=False)
        raise
    finally:  # the results hold copies of the weights: the next trial in this process may reuse the model
        model_spares.release(model)
    log_results(cfg, result, bundle, inp)
    return result
