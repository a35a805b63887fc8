"""Torch datasets over the decoded uint8 store, and their DataLoaders (batches normalised on the device)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from timm.data.loader import PrefetchLoader
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

SAMPLERS = ("shuffle", "balanced")


class ArrayDataset(Dataset):
    """Images from an ``(N, H, W, 3)`` uint8 array with integer labels, through an albumentations transform that
    returns uint8 tensors (:mod:`covers.data.transforms`; the loader normalises whole batches on the device)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.transform(image=self.images[i])["image"]
        if not (isinstance(image, torch.Tensor) and image.dtype == torch.uint8):  # else: normalised twice, silently
            got = f"{type(image).__name__} of {getattr(image, 'dtype', '?')}"
            raise TypeError(
                f"the image transform returned a {got}; the loader takes (3, H, W) uint8 tensors and normalises "
                "whole batches on the device: end custom augmentation with ToTensorV2 and leave Normalize out "
                "(covers.data.transforms)"
            )
        return image, int(self.labels[i])


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: each worker re-seeds its copy of the dataset's albumentations transform from
    the worker's torch seed (the loader's seeded base seed + worker id). Without it every forked worker starts
    from the same transform state and draws the same augmentation parameters as the others."""
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(info.seed % 2**32)


def create_balanced_sampler(labels: np.ndarray, seed: int = 0) -> WeightedRandomSampler:
    """Draws each class equally often: sample weight ``1 / count(class)``, with replacement, one epoch = N draws."""
    counts = np.bincount(labels)
    weights = 1.0 / counts[labels]
    generator = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(labels), True, generator)


def create_loader(
    images: np.ndarray,
    labels: np.ndarray,
    transform: Callable,
    batch_size: int,
    train: bool,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str = "cpu",
    num_workers: int = 0,
    seed: int = 0,
    sampler: str = "shuffle",
) -> PrefetchLoader:
    """Batches ``(x, y)`` on ``device``, ``x`` float32 normalised with ``mean``/``std`` (fractions of 255).

    Training batches are shuffled (seeded) or class-balanced (``sampler="balanced"``), others come in order. The
    DataLoader's workers send uint8 images; timm's ``PrefetchLoader`` copies each batch (pinned memory, on CUDA a
    side stream that overlaps the previous step) and normalises it there in one batched operation."""
    if sampler not in SAMPLERS:
        raise ValueError(f"data.sampler={sampler!r}; choose one of {SAMPLERS}")
    balanced = train and sampler == "balanced"
    device = torch.device(device)
    generator = torch.Generator().manual_seed(seed)  # the shuffle order and the workers' seeds
    loader = DataLoader(
        ArrayDataset(images, labels, transform),
        batch_size=batch_size,
        shuffle=train and not balanced,
        sampler=create_balanced_sampler(labels, seed) if balanced else None,
        drop_last=train and len(labels) > batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
        worker_init_fn=seed_worker if num_workers > 0 else None,
        generator=generator,
    )
    return PrefetchLoader(loader, tuple(mean), tuple(std), device=device)
