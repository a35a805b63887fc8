"""The training data path alone: how fast the loader delivers normalised batches, and what it costs the main process.

    python -m benchmarks.loader                         # 64 and 128 px, 0 and 2 workers, batch 64, 1 024 images
    python -m benchmarks.loader --smoke                 # a few batches, for correctness only
    python -m benchmarks.loader --device cuda --sizes 128 224 --workers 0 4 8     # on a GPU machine

Two designs over the same uint8 store and the default augmentation (random resized crop, flip, rotation, colour
jitter), each row the best of 3 epochs after a warm-up epoch:

- ``uint8``: covers' ``create_loader``. Workers send uint8 images; each batch is copied to the device (pinned, on
  CUDA on a side stream) and normalised there in one operation.
- ``float32``: the reference, the earlier design. Albumentations normalises image by image in the workers, and
  float32 batches (4x the bytes) are copied over.

The consumer takes each batch as the training loop does (on the device, channels_last) and does nothing else, so
``img_s`` is the most the data path can feed a model. ``main_cpu_us_per_img`` is the main process's CPU time per
image: receiving batches from the workers, pinning, the copies (and on the CPU the normalisation itself).
``receive_cpu_us_per_img`` is the part spent receiving (and on CUDA pinning) the workers' batches, timed on the
DataLoader alone: with workers, the main process's share that does not depend on where normalisation runs. On a
GPU machine that process also launches every kernel of the training step, so this is the budget that matters."""

from __future__ import annotations

import argparse
import time

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch.utils.data import DataLoader

from benchmarks._timing import machine, report
from covers.data.loaders import create_loader
from covers.data.transforms import create_train_transform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
AUG = {"hflip": 0.5, "scale": (0.7, 1.0), "rotate": 10, "color_jitter": 0.2}


class _FloatImages(torch.utils.data.Dataset):
    """The reference design's dataset: the augmented image normalised by albumentations, image by image."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int) -> None:
        ops = create_train_transform(size, **AUG).transforms[:-1]  # the same augmentation, then float
        self.transform = A.Compose([*ops, A.Normalize(mean=MEAN, std=STD), ToTensorV2()], seed=0)
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(image=self.images[i])["image"], int(self.labels[i])


def _loader(design: str, images, labels, size: int, batch: int, workers: int, device: torch.device):
    if design == "uint8":
        tf = create_train_transform(size, **AUG, seed=0)
        return create_loader(images, labels, tf, batch, True, mean=MEAN, std=STD, device=device, num_workers=workers)
    return DataLoader(
        _FloatImages(images, labels, size),
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(0),
    )


def _epoch(loader, device: torch.device | None) -> tuple[float, float, int]:
    """Wall seconds, main-process CPU seconds and images of one pass: batches taken as the training loop takes them
    (on ``device``, channels_last), or with ``device=None`` as they arrive."""
    wall, cpu, n = time.perf_counter(), time.process_time(), 0
    for x, y in loader:
        if device is not None:
            x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
        n += len(y)
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu, n


def run(
    smoke: bool = False,
    sizes: tuple[int, ...] = (64, 128),
    workers: tuple[int, ...] = (0, 2),
    batch: int = 64,
    n_images: int = 1024,
    device: str = "cpu",
) -> dict:
    """One row per size, worker count and design: images/s delivered and main-process CPU µs per image."""
    n_images, repeats = (2 * batch, 1) if smoke else (n_images, 3)
    dev = torch.device(device)
    rng = np.random.default_rng(0)
    rows = []
    for size in sizes:
        images = rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8)
        labels = rng.integers(0, 8, size=n_images)
        for n_workers in workers:
            for design in ("uint8", "float32"):
                loader = _loader(design, images, labels, size, batch, n_workers, dev)
                _epoch(loader, dev)  # warm-up: starts the persistent workers
                wall, cpu, n = min(_epoch(loader, dev) for _ in range(repeats))
                # the DataLoader alone: what receiving (and on CUDA pinning) the workers' batches costs
                received = getattr(loader, "loader", loader)
                recv_cpu = min(_epoch(received, None)[1] for _ in range(repeats))
                row = {"size": size, "workers": n_workers, "design": design, "img_s": n / wall}
                rows.append(row | {"main_cpu_us_per_img": cpu / n * 1e6, "receive_cpu_us_per_img": recv_cpu / n * 1e6})
    return {"machine": machine(), "device": str(dev), "batch": batch, "images": n_images, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few batches, for correctness only")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="image sizes (px)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--images", type=int, default=1024, help="images per epoch")
    parser.add_argument("--device", default="cpu", help="cpu | cuda")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    result = run(args.smoke, tuple(args.sizes), tuple(args.workers), args.batch, args.images, args.device)
    report(result, args.json)


if __name__ == "__main__":
    main()
