"""Robust selection: one configuration trained on several members — ``data.cv_folds`` folds of train+val and
``trial.repeats`` seeds — whose objective is the mean of their best validation accuracies."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from omegaconf import DictConfig

from covers.data import DataBundle
from covers.data.folds import assign_folds, fold_splits
from covers.sweep.trial_reporter import TrialReporter
from covers.training.loop import FitResult


class Member(NamedTuple):
    """One training of a configuration: its name (``fold_2``, ``repeat_3``, ``fold_2_repeat_3``; ``None`` for a
    plain run), its data (the fold's splits) and its seed; ``distinct`` marks the first repeat of each fold, whose
    validation covers are pooled once for the confusion matrix and the interval."""

    name: str | None
    bundle: DataBundle
    seed: int
    distinct: bool


def n_members(cfg: DictConfig) -> int:
    """``data.cv_folds`` (1 when unset) times ``trial.repeats`` (1 when unset)."""
    return int(cfg.data.get("cv_folds") or 1) * int(cfg.trial.get("repeats") or 1)


def plan_members(cfg: DictConfig, bundle: DataBundle) -> tuple[list[Member], np.ndarray | None]:
    """The members to train, fold by fold and seed by seed (``seed``, ``seed + 1``, …), and each manifest row's
    fold (-1 for test rows; None without ``data.cv_folds``). Folds are seeded by ``data.split_seed``."""
    k, repeats = int(cfg.data.get("cv_folds") or 1), int(cfg.trial.get("repeats") or 1)
    if k * repeats == 1:
        return [Member(None, bundle, int(cfg.seed), True)], None
    if repeats < 1:
        raise ValueError(f"trial.repeats must be at least 1, got {repeats}")
    if cfg.trial.get("checkpoint") or cfg.trial.get("resume_run_id"):
        raise ValueError("data.cv_folds and trial.repeats do not combine with multi-fidelity rungs (scheduler=asha)")
    folds = assign_folds(bundle.manifest, k, int(cfg.data.split_seed)) if k > 1 else None
    members = []
    for fold in range(k):
        data = bundle if folds is None else bundle.with_splits(fold_splits(folds, fold))
        for rep in range(repeats):
            parts = ([f"fold_{fold + 1}"] if k > 1 else []) + ([f"repeat_{rep + 1}"] if repeats > 1 else [])
            members.append(Member("_".join(parts), data, int(cfg.seed) + rep, rep == 0))
    return members, folds


def running_mean(
    reporter: TrialReporter | None, done: list[FitResult], index: int, epochs: int
) -> Callable[[int, dict], None] | None:
    """An epoch callback for member ``index`` that reports to the trial (and its pruner), at step
    ``index * epochs + epoch``, the running mean of the members' best ``val_acc``: the finished members' and this
    one's best so far."""
    if reporter is None:
        return None
    best = -math.inf

    def on_epoch_end(epoch: int, metrics: dict) -> None:
        nonlocal best
        best = max(best, float(metrics["val_acc"]))
        value = (sum(r.best_val_acc for r in done[:index]) + best) / (index + 1)
        reporter(index * epochs + epoch, {reporter.metric: value})

    return on_epoch_end


# what an epoch ran with (the same for every member: no rungs with members), kept as it is, not averaged
SETTINGS = ("image_size",)


def combine(results: list[FitResult], members: list[Member]) -> FitResult:
    """The plain run's own result; for members, one result for the configuration: each epoch's metrics averaged
    over the members that reached it, the best epoch that of the mean ``val_acc`` curve, ``best_val_acc`` the mean
    of the members' best, the first member's weights, and the best-epoch validation predictions of the distinct
    members pooled (out-of-fold with folds)."""
    if len(members) == 1:
        return results[0]
    reached = [r for r in results if r.history]
    history = []
    for epoch in range(max((len(r.history) for r in reached), default=0)):
        rows = [r.history[epoch] for r in reached if len(r.history) > epoch]
        first = rows[0]
        history.append({k: first[k] if k in SETTINGS else float(np.mean([row[k] for row in rows])) for k in first})
    scored = [(r, m) for r, m in zip(results, members, strict=False) if r.best_val_pred is not None]
    pooled = [r for r, m in scored if m.distinct]
    return FitResult(
        history=history,
        best_epoch=int(np.argmax([h["val_acc"] for h in history])) if history else -1,
        best_val_acc=float(np.mean([r.best_val_acc for r, _ in scored])) if scored else -math.inf,
        best_state=results[0].best_state if results else None,
        best_val_pred=np.concatenate([r.best_val_pred for r in pooled]) if pooled else None,
        val_target=np.concatenate([r.val_target for r in pooled]) if pooled else None,
    )
