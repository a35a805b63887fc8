"""Classification losses: cross-entropy (torch), label smoothing (torch) and focal loss."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Multi-class focal loss (Lin et al. 2017): ``-alpha_y (1 - p_y)^gamma log p_y``.

    ``gamma=0`` and no ``alpha`` is exactly cross-entropy. ``alpha`` is an optional per-class weight. Targets are
    class indices or, from Mixup/CutMix, class probabilities ``t``: then ``-sum_c t_c alpha_c (1 - p_c)^gamma log
    p_c``, which is the same for one-hot ``t``."""

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | None = None, reduction: str = "mean") -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = float(gamma)
        self.reduction = reduction
        self.register_buffer("alpha", _weight_tensor(alpha, "alpha"))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=-1)
        soft = target.is_floating_point()
        if not soft:
            log_p = log_p.gather(1, target[:, None])
        loss = -((1.0 - log_p.exp()).clamp(min=0) ** self.gamma) * log_p if self.gamma else -log_p
        if self.alpha is not None:
            alpha = self.alpha.to(loss.device)
            loss = loss * (alpha if soft else alpha[target][:, None])
        loss = (loss * target.float()).sum(1) if soft else loss.squeeze(1)
        if self.reduction == "mean":
            return loss.mean()
        return loss.sum() if self.reduction == "sum" else loss


def create_cross_entropy(label_smoothing: float = 0.0, weight: Sequence[float] | None = None) -> nn.Module:
    """Cross-entropy with optional label smoothing and per-class weights."""
    return nn.CrossEntropyLoss(weight=_weight_tensor(weight, "weight"), label_smoothing=label_smoothing)


def _weight_tensor(weight: Sequence[float] | str | None, name: str) -> torch.Tensor | None:
    if isinstance(weight, str):
        raise ValueError(f"loss.{name}={weight!r} needs the train labels: pass resolve_class_weights(...) first")
    return torch.tensor(list(weight), dtype=torch.float32) if weight else None


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> list[float]:
    """scikit-learn's ``balanced`` weights from train labels: ``N / (C * count_c)`` (absent classes get 0)."""
    counts = np.bincount(labels, minlength=num_classes).astype(float)
    weights = np.divide(len(labels), num_classes * counts, out=np.zeros_like(counts), where=counts > 0)
    return [float(w) for w in weights]


def resolve_class_weights(loss_cfg: Mapping[str, Any], labels: np.ndarray, num_classes: int) -> dict[str, list]:
    """Arguments replacing ``weight: balanced`` (cross-entropy) or ``alpha: balanced`` (focal) by per-class
    weights from the train labels; empty when neither is set to ``balanced``."""
    return {
        key: balanced_class_weights(labels, num_classes)
        for key in ("weight", "alpha")
        if loss_cfg.get(key) == "balanced"
    }
