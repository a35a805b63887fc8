"""Training checkpoints: model, optimiser and the fit so far, so that a run continues where it stopped (a
promoted multi-fidelity configuration, :mod:`covers.sweep.asha`). Plain tensors and numbers only: loaded with
``weights_only=True``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.optim import Optimizer

from covers.training.loop import FitResult


def save_checkpoint(path: str | Path, model: nn.Module, optimizer: Optimizer, result: FitResult, lr: float) -> None:
    """The last epoch's weights and optimiser state, the base learning rate, and ``result`` (history and best
    epoch, with its weights and validation predictions)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr": float(lr),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_val_acc": result.best_val_acc,
        "best_state": result.best_state,
        "best_val_pred": None if result.best_val_pred is None else torch.from_numpy(result.best_val_pred),
        "val_target": None if result.val_target is None else torch.from_numpy(result.val_target),
    }
    torch.save(state, path)


def load_checkpoint(path: str | Path, model: nn.Module, optimizer: Optimizer) -> tuple[FitResult, float]:
    """Load a :func:`save_checkpoint` file into ``model`` and ``optimizer``; returns the fit so far and the base
    learning rate. Pass the returned result to ``fit`` with ``start_epoch=len(result.history)``.

    The optimiser keeps its moments; its learning rate is set back to the base one, for a new schedule (a fresh
    warm-up and decay over the epochs still to run, as progressive resizing fine-tunes each stage)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:  # the old schedule's last lr and its bookkeeping go
        group["lr"] = float(state["lr"])
        group.pop("initial_lr", None)
    pred, target = state["best_val_pred"], state["val_target"]
    result = FitResult(
        history=list(state["history"]),
        best_epoch=int(state["best_epoch"]),
        best_val_acc=float(state["best_val_acc"]),
        best_state=state["best_state"],
        best_val_pred=None if pred is None else pred.numpy(),
        val_target=None if target is None else target.numpy(),
    )
    return result, float(state["lr"])
