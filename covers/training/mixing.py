"""Mixup and CutMix of training batches (timm's ``Mixup``): mixed images, soft (probability) targets."""

from __future__ import annotations

from timm.data import Mixup


def create_mixup(
    num_classes: int,
    mixup_alpha: float = 0.0,
    cutmix_alpha: float = 0.0,
    prob: float = 1.0,
    switch_prob: float = 0.5,
    batch_size: int | None = None,
) -> Mixup | None:
    """timm's batch ``Mixup`` (``mixup_alpha``/``cutmix_alpha``: the Beta distributions' alpha; both > 0: each batch
    uses one of them, CutMix with ``switch_prob``), applied to a batch with probability ``prob``; None when both
    alphas are 0 (off).

    Targets become class probabilities without smoothing of their own: the loss's ``label_smoothing`` applies on
    top. timm mixes a batch with its reversed self, so the training batch size must be even."""
    if mixup_alpha < 0 or cutmix_alpha < 0 or not 0 <= prob <= 1:
        raise ValueError(f"mixup: alphas must be >= 0 and prob in [0, 1], got {mixup_alpha}, {cutmix_alpha}, {prob}")
    if (mixup_alpha == 0 and cutmix_alpha == 0) or prob == 0:
        return None
    if batch_size is not None and batch_size % 2:
        raise ValueError(f"mixup/cutmix mixes pairs of images: data.batch_size must be even, got {batch_size}")
    return Mixup(
        mixup_alpha=float(mixup_alpha),
        cutmix_alpha=float(cutmix_alpha),
        prob=float(prob),
        switch_prob=float(switch_prob),
        mode="batch",
        label_smoothing=0.0,
        num_classes=num_classes,
    )
