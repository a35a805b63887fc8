"""Albumentations pipelines: training augmentation presets and the plain evaluation transform."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2


def create_eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Resize (a no-op for the decoded store) and normalise: what validation, test and inference get."""
    return A.Compose([A.Resize(image_size, image_size), A.Normalize(mean=mean, std=std), ToTensorV2()])


def create_train_transform(
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    hflip: float = 0.0,
    scale: Sequence[float] | None = None,
    rotate: float = 0.0,
    color_jitter: float = 0.0,
    seed: int | None = None,
) -> A.Compose:
    """Training transform; with every knob at zero it equals :func:`create_eval_transform` (preset ``none``).

    Albumentations draws from its own generators, not torch's or numpy's global ones: ``seed`` makes the draws
    repeatable (DataLoader workers re-seed their copy, :func:`covers.data.loaders.seed_worker`)."""
    ops: list = []
    if scale is not None:
        ops.append(A.RandomResizedCrop(size=(image_size, image_size), scale=tuple(scale), ratio=(0.85, 1.18)))
    else:
        ops.append(A.Resize(image_size, image_size))
    if hflip > 0:
        ops.append(A.HorizontalFlip(p=hflip))
    if rotate > 0:
        ops.append(A.Rotate(limit=rotate, border_mode=0, p=0.5))
    if color_jitter > 0:
        j = color_jitter
        ops.append(A.ColorJitter(brightness=j, contrast=j, saturation=j, hue=min(0.5, j / 4), p=0.8))
    ops += [A.Normalize(mean=mean, std=std), ToTensorV2()]
    return A.Compose(ops, seed=seed)
