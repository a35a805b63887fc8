"""Albumentations pipelines: training augmentation presets and the plain evaluation transform.

Both return ``(3, S, S)`` uint8 tensors: normalisation runs later, a batch at a time on the training device
(:func:`covers.data.loaders.create_loader`). A quarter of the bytes of float32 travel from the loader workers
through the pinned copy to the device, and the workers skip a per-image float pass (docs/benchmarks.md)."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2


def create_eval_transform(image_size: int) -> A.Compose:
    """Resize (a no-op for the decoded store): what validation and test batches get before normalisation."""
    return A.Compose([A.Resize(image_size, image_size), ToTensorV2()])


def create_train_transform(
    image_size: int,
    hflip: float = 0.0,
    scale: Sequence[float] | None = None,
    rotate: float = 0.0,
    color_jitter: float = 0.0,
    erase: float = 0.0,
    seed: int | None = None,
) -> A.Compose:
    """Training transform; with every knob at zero it equals :func:`create_eval_transform` (preset ``none``).

    ``scale``: RandomResizedCrop's area range (None: plain resize); ``rotate``: max degrees (half the images);
    ``color_jitter``: brightness/contrast/saturation strength (hue a quarter of it); ``erase``: the probability of
    blanking 1-3 random rectangles (CoarseDropout, random erasing).

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
    if erase > 0:
        ops.append(
            A.CoarseDropout(
                num_holes_range=(1, 3), hole_height_range=(0.1, 0.25), hole_width_range=(0.1, 0.25), p=erase
            )
        )
    ops.append(ToTensorV2())
    return A.Compose(ops, seed=seed)
