"""The training loop: ``train_one_epoch`` and ``evaluate`` return metric dicts; ``fit`` keeps the best epoch."""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score
from timm.utils import ModelEmaV3
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm

from covers.training.runtime import Runtime, to_device

log = logging.getLogger(__name__)

# What the loops iterate: ``(images, targets)`` batches, e.g. ``covers.data.loaders.create_loader``'s (already on the
# device, normalised) or tensors in memory
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run cannot continue meaningfully."""


# How often a GPU loop reads its NaN/inf flag back (each read waits for every step queued so far); the CPU reads it
# every step, for free, before the step's update
GPU_CHECK_EVERY = 32


def train_one_epoch(
    model: nn.Module,
    loader: Batches,
    loss_fn: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    rt: Runtime,
    scaler: torch.amp.GradScaler | None = None,
    desc: str = "train",
    ema: ModelEmaV3 | None = None,
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> dict[str, float]:
    """One pass over ``loader``; returns ``{"loss", "acc", "lr"}`` (loss and accuracy averaged per image). An
    ``ema`` of the weights is updated after every step. ``mix`` (timm's ``Mixup``) turns each batch into mixed
    images and class-probability targets; accuracy then counts the larger of each image's two labels.

    The sums and a NaN/inf flag stay on the device. Reading a CUDA value back waits for all the work queued so far,
    so a GPU loop reads the flag every ``GPU_CHECK_EVERY`` steps and at the end (a non-finite loss stops the run
    within that many steps); the CPU checks every step before its update. Raises :class:`NonFiniteLossError`."""
    model.train()
    total_loss = torch.zeros((), device=rt.device)
    correct = torch.zeros((), dtype=torch.long, device=rt.device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=rt.device)
    check_every = 1 if rt.device.type == "cpu" else GPU_CHECK_EVERY
    seen, checked = 0, 0  # images so far; images covered by the last clean check
    lr = optimizer.param_groups[0]["lr"]

    def check(upto: int) -> None:  # one read of the flag, which covers the batches of images [checked, upto)
        nonlocal checked
        if nonfinite:
            raise NonFiniteLossError(f"training loss became NaN or infinite in images {checked}-{upto} (lr={lr:.3g})")
        checked = upto

    for step, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, disable=None)):
        x, y = to_device(x, rt), y.to(rt.device, non_blocking=True)
        if mix is not None:
            x, y = mix(x, y)
        with rt.autocast():
            logits = model(x)
            loss = loss_fn(logits, y)
        n = y.shape[0]
        nonfinite |= ~torch.isfinite(loss.detach())
        if (step + 1) % check_every == 0:
            check(seen + n)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if ema is not None:
            ema.update(model)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.detach().float() * n
        correct += (logits.argmax(1) == (y.argmax(1) if y.ndim > 1 else y)).sum()
        seen += n
    check(seen)
    n = max(seen, 1)
    return {"loss": total_loss.item() / n, "acc": correct.item() / n, "lr": lr}


@torch.no_grad()
def predict(model: nn.Module, loader: Batches, rt: Runtime) -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets for every batch of ``loader``, in order."""
    model.eval()
    logits, targets = [], []
    for x, y in loader:
        with rt.autocast():
            logits.append(model(to_device(x, rt)).float())
        targets.append(y)
    return torch.cat(logits).cpu().numpy(), torch.cat(targets).cpu().numpy()  # one copy back, not one per batch


def evaluate(model: nn.Module, loader: Batches, loss_fn: nn.Module, rt: Runtime) -> dict:
    """``{"loss", "acc", "balanced_acc", "pred", "target"}`` on ``loader`` with the model in eval mode."""
    logits, target = predict(model, loader, rt)
    loss = loss_fn.to("cpu")(torch.from_numpy(logits), torch.from_numpy(target)).item()
    loss_fn.to(rt.device)
    pred = logits.argmax(1)
    balanced = float(balanced_accuracy_score(target, pred)) if len(target) else float("nan")
    acc = float((pred == target).mean())
    return {"loss": loss, "acc": acc, "balanced_acc": balanced, "pred": pred, "target": target}


@dataclass
class FitResult:
    """Per-epoch history and the best epoch (highest val accuracy, earliest on ties)."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_acc: float = -math.inf
    best_state: dict | None = None
    best_val_pred: np.ndarray | None = None
    val_target: np.ndarray | None = None


def fit(
    model: nn.Module,
    train_loader: Batches,
    val_loader: Batches,
    loss_fn: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    epochs: int,
    rt: Runtime,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    result: FitResult | None = None,
    ema_decay: float | None = None,
    mix: Callable | None = None,
    start_epoch: int = 0,
) -> FitResult:
    """Train for ``epochs``; after each, evaluate on validation and call ``on_epoch_end(epoch, metrics)``
    with ``epoch`` counted from 1 (as in the log line, MLflow's steps, Optuna's and ``summary/best_epoch``).

    ``metrics`` holds ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``val_balanced_acc``, ``lr`` and
    ``epoch_time_s``. A callback may raise to stop early (pruning): pass your own ``result`` to keep what was
    reached. Best-epoch weights stay on the CPU. With ``ema_decay``, an exponential moving average of the weights
    (timm's ``ModelEmaV3``) is updated after every step, and validation and the best-epoch weights are the
    average's. ``mix`` mixes training batches (:func:`train_one_epoch`). ``start_epoch`` continues a fit (a
    checkpoint's ``result``, :mod:`covers.training.checkpoint`): epochs ``start_epoch + 1`` to ``epochs`` run."""
    rt.place(model)
    loss_fn.to(rt.device)
    scaler = rt.grad_scaler()
    result = FitResult() if result is None else result
    ema = ModelEmaV3(model, decay=float(ema_decay)) if ema_decay is not None else None
    evaluated = ema.module if ema is not None else model
    for epoch in range(start_epoch, epochs):
        start = time.perf_counter()
        tr = train_one_epoch(
            model, train_loader, loss_fn, optimizer, scheduler, rt, scaler, f"epoch {epoch + 1}/{epochs}", ema, mix
        )
        va = evaluate(evaluated, val_loader, loss_fn, rt)
        metrics = {  # val_acc first: MLflow's compare view colours its parallel-coordinates plot by the first metric
            "val_acc": va["acc"],
            "val_loss": va["loss"],
            "val_balanced_acc": va["balanced_acc"],
            "train_loss": tr["loss"],
            "train_acc": tr["acc"],
            "lr": tr["lr"],
            "epoch_time_s": time.perf_counter() - start,
        }
        result.history.append(metrics)
        log.info("epoch %d/%d %s", epoch + 1, epochs, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if va["acc"] > result.best_val_acc:
            result.best_epoch, result.best_val_acc = epoch, va["acc"]
            result.best_state = {k: v.detach().to("cpu", copy=True) for k, v in evaluated.state_dict().items()}
            result.best_val_pred, result.val_target = va["pred"], va["target"]
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)
    return result


def restore_best(model: nn.Module, result: FitResult) -> nn.Module:
    """Load the best epoch's weights back into ``model``."""
    if result.best_state is not None:
        model.load_state_dict(copy.deepcopy(result.best_state))
    return model
