"""Optimiser (timm's factory, no weight decay on norms/biases, frozen params skipped) and lr schedules."""

from __future__ import annotations

from timm.optim import create_optimizer_v2
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
    SequentialLR,
)

SCHEDULES = ("onecycle", "cosine", "constant")


def create_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0, **kwargs) -> Optimizer:
    """timm's ``create_optimizer_v2`` over the trainable parameters only."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters (is every layer group frozen?)")
    return create_optimizer_v2(model, opt=name, lr=lr, weight_decay=weight_decay, **kwargs)


def create_scheduler(
    optimizer: Optimizer, schedule: str, total_steps: int, lr: float, warmup_pct: float = 0.1
) -> LRScheduler:
    """Per-step schedule: ``onecycle``, ``cosine`` (linear warm-up then cosine) or ``constant``."""
    total_steps = max(1, total_steps)
    warmup = round(warmup_pct * total_steps)
    if schedule == "onecycle":
        return OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=max(warmup_pct, 1e-3))
    if schedule == "cosine":
        cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup))
        if not warmup:
            return cosine
        ramp = LinearLR(optimizer, start_factor=0.01, total_iters=warmup)
        return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])
    if schedule == "constant":
        return ConstantLR(optimizer, factor=1.0, total_iters=0)
    raise ValueError(f"optim.schedule={schedule!r}; choose one of {SCHEDULES}")
