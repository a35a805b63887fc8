"""Learning-rate range test (Smith 2015, fastai's ``lr_find``): an exponential lr ramp over a few hundred steps,
the smoothed loss, and the suggestions ``valley``, ``minimum`` (the loss minimum's lr / 10) and ``steepest``."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from torch import nn
from torch.optim import Optimizer

from covers.tracking import runs
from covers.training.loop import Batches
from covers.training.runtime import Runtime, to_device

log = logging.getLogger(__name__)

SUGGESTIONS = ("valley", "minimum", "steepest")


@dataclass
class LRFindResult:
    """The lrs tried, the raw and smoothed (bias-corrected EMA) losses, and the suggested lrs."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    suggestions: dict[str, float] = field(default_factory=dict)


def ramp(start_lr: float, end_lr: float, num_steps: int) -> np.ndarray:
    """``num_steps`` learning rates spaced exponentially from ``start_lr`` to ``end_lr``."""
    return start_lr * (end_lr / start_lr) ** (np.arange(num_steps) / max(1, num_steps - 1))


def suggest_valley(lrs: np.ndarray, losses: np.ndarray) -> float:
    """fastai's ``valley``: along the longest decreasing subsequence of the loss, the lr at index
    ``start + int(length / 3) + int(length / 6)`` (about half-way down the valley, as fastai computes it)."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end, max_start = i, i - lds[i]
    sections = (max_end - max_start) / 3
    return float(lrs[min(n - 1, max_start + int(sections) + int(sections / 2))])


def suggest_lrs(lrs: list[float], smoothed: list[float]) -> dict[str, float]:
    """``valley``, ``minimum`` (lr at the smoothed-loss minimum / 10) and ``steepest`` (most negative slope of the
    smoothed loss against log lr)."""
    x, y = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    if len(x) < 3:
        raise ValueError(f"the lr range test recorded {len(x)} steps; at least 3 are needed")
    slope = np.gradient(y, np.log(x))
    return {
        "valley": suggest_valley(x, y),
        "minimum": float(x[int(np.argmin(y))] / 10),
        "steepest": float(x[int(np.argmin(slope))]),
    }


def _batches(loader: Batches):
    while True:
        yield from loader


def lr_range_test(
    model: nn.Module,
    loader: Batches,
    loss_fn: nn.Module,
    optimizer: Optimizer,
    rt: Runtime,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 200,
    beta: float = 0.98,
    diverge: float = 4.0,
) -> LRFindResult:
    """Train ``num_steps`` batches with the lr ramped exponentially; stop once the smoothed loss exceeds
    ``diverge`` × its minimum. The model's and optimiser's state are restored afterwards."""
    model_state = copy.deepcopy(model.state_dict())
    optim_state = copy.deepcopy(optimizer.state_dict())
    rt.place(model).train()
    loss_fn.to(rt.device)
    result, avg, best = LRFindResult(), 0.0, math.inf
    try:
        for step, (lr, (x, y)) in enumerate(zip(ramp(start_lr, end_lr, num_steps), _batches(loader), strict=False)):
            for group in optimizer.param_groups:
                group["lr"] = float(lr)
            with rt.autocast():
                loss = loss_fn(model(to_device(x, rt)), y.to(rt.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            value = float(loss.item())
            if not math.isfinite(value):
                break
            avg = beta * avg + (1 - beta) * value
            smooth = avg / (1 - beta ** (step + 1))
            result.lrs.append(float(lr))
            result.losses.append(value)
            result.smoothed.append(smooth)
            best = min(best, smooth)
            if step > 0 and smooth > diverge * best:
                break
    finally:
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
    result.suggestions = suggest_lrs(result.lrs, result.smoothed)
    log.info("lr finder: %d steps, suggestions %s", len(result.lrs), result.suggestions)
    return result


def plot_lr_find(result: LRFindResult, title: str = "lr finder") -> plt.Figure:
    """Raw and smoothed loss against lr (log scale) with the suggestions marked."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(result.lrs, result.losses, color="0.75", lw=1, label="loss")
    ax.plot(result.lrs, result.smoothed, lw=2, label="smoothed loss")
    for (name, lr), marker in zip(result.suggestions.items(), "ovs", strict=False):
        i = int(np.argmin(np.abs(np.log(result.lrs) - np.log(max(lr, result.lrs[0])))))
        ax.plot(lr, result.smoothed[i], marker, ms=9, label=f"{name} {lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    return fig


def find_lr(
    model: nn.Module,
    loader: Batches,
    loss_fn: nn.Module,
    make_optimizer: Callable[..., Optimizer],
    rt: Runtime,
    settings: dict,
) -> LRFindResult:
    """:func:`lr_range_test` with a fresh optimiser from ``make_optimizer(model, lr=...)`` and ``settings`` (the
    ``lr_find`` config: ``start_lr``, ``end_lr``, ``num_steps``, ``beta``, ``diverge``)."""
    keys = ("start_lr", "end_lr", "num_steps", "beta", "diverge")
    args = {k: settings[k] for k in keys if k in settings}
    optimizer = make_optimizer(model, lr=float(args.get("start_lr", 1e-7)))
    return lr_range_test(model, loader, loss_fn, optimizer, rt, **args)


def log_lr_find(result: LRFindResult, suggestion: str = "valley") -> float:
    """Log the curve (``lr_find/curve.csv``), plot, suggestions and the chosen lr to the active MLflow run."""
    import mlflow
    import pandas as pd

    if suggestion not in SUGGESTIONS:
        raise ValueError(f"lr_find.suggestion={suggestion!r}; choose one of {SUGGESTIONS}")
    lr = result.suggestions[suggestion]
    mlflow.log_metrics({f"lr_find.{k}": v for k, v in result.suggestions.items()})
    mlflow.log_params({"optim.lr_found": lr, "lr_find.chosen": suggestion})
    mlflow.set_tag("lr_found", f"{lr:.3g} ({suggestion})")
    curve = pd.DataFrame({"lr": result.lrs, "loss": result.losses, "smoothed": result.smoothed})
    mlflow.log_text(curve.to_csv(index=False), "lr_find/curve.csv")
    runs.log_figure(plot_lr_find(result, f"lr finder: {suggestion} {lr:.2e}"), "plots/lr_find.png")
    log.info("lr finder chose %s lr %.3g", suggestion, lr)
    return lr
