"""Trainer and data path against a bare PyTorch loop.

    python -m benchmarks.trainer            # full measurement (tf_efficientnet_lite0, 64 px, batch 32)
    python -m benchmarks.trainer --smoke    # a few steps, for correctness only

Rows: (1) covers' ``train_one_epoch`` vs a bare loop, both over pre-materialised tensors (the trainer's own
overhead); (2) an epoch through the real data path (decode-once store, default albumentations augmentation,
DataLoader) vs the same number of images as pre-materialised tensors; (3) embedding extraction
(``covers.embed.embed_images``) vs a bare ``forward_features``/``forward_head`` pass."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from benchmarks._timing import best_of, machine, model_parser, report
from covers.augment import create_eval_transform, create_train_transform
from covers.data.loaders import create_loader
from covers.embed import embed_batch, embed_images
from covers.models import create_model
from covers.train import Runtime, create_runtime, train_one_epoch


def _batches(n_batches: int, batch: int, size: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, size, size, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(n_batches)
    ]


def bare_train(model: nn.Module, batches, lr: float = 1e-3, channels_last: bool = True) -> float:
    """The reference: forward, loss, backward, step over tensors in memory, in the same memory format as covers'
    runtime; returns seconds."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    t0 = time.perf_counter()
    for x, y in batches:
        loss = loss_fn(model(x.contiguous(memory_format=fmt)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def covers_train(model: nn.Module, loader, lr: float = 1e-3, rt: Runtime | None = None) -> float:
    """covers' ``train_one_epoch`` over ``loader`` (default: the CPU runtime ``fit`` uses); returns seconds."""
    rt = rt or create_runtime("cpu", "fp32")
    rt.place(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    train_one_epoch(model, loader, nn.CrossEntropyLoss(), opt, None, rt)
    return time.perf_counter() - t0


def run(smoke: bool = False, model_name: str = "tf_efficientnet_lite0", size: int = 64, batch: int = 32) -> dict:
    """All rows; images/s and ratios."""
    n_batches, repeats = (2, 1) if smoke else (20, 3)
    classes = 8
    base = create_model(model_name, classes, weights="package" if "lite0" in model_name else "none")
    batches = _batches(n_batches, batch, size, classes)
    n_images = n_batches * batch
    rows = []

    # (1) trainer overhead: same tensors, same model copies, interleaved
    bare_t, cov_t = [], []
    for _ in range(repeats):
        bare_t.append(bare_train(copy.deepcopy(base), batches))
        cov_t.append(covers_train(copy.deepcopy(base), batches))
    rows.append(
        {
            "row": "trainer vs bare loop",
            "bare_img_s": n_images / min(bare_t),
            "covers_img_s": n_images / min(cov_t),
            "ratio": min(bare_t) / min(cov_t),
        }
    )

    # (2) real data path: uint8 store -> augmentation -> DataLoader, vs pre-materialised tensors
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(n_images, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, classes, size=n_images)
    aug = create_train_transform(size, (0.5,) * 3, (0.5,) * 3, hflip=0.5, scale=(0.7, 1.0), rotate=10, color_jitter=0.2)
    for workers in (0, 1):
        loader = create_loader(images, labels, aug, batch, True, num_workers=workers)
        data_t = best_of(lambda loader=loader: covers_train(copy.deepcopy(base), loader), repeats)
        tensors_t = best_of(lambda: covers_train(copy.deepcopy(base), batches), repeats)
        rows.append(
            {
                "row": f"data path (num_workers={workers}) vs tensors",
                "bare_img_s": n_images / tensors_t,
                "covers_img_s": n_images / data_t,
                "ratio": tensors_t / data_t,
            }
        )

    # (3) embedding extraction vs a bare forward pass
    backbone = create_model(model_name, 0, weights="none").eval().to(memory_format=torch.channels_last)
    x_eval = create_eval_transform(size, (0.5,) * 3, (0.5,) * 3)
    pre = torch.stack([x_eval(image=im)["image"] for im in images])

    def bare_embed() -> None:
        with torch.no_grad():
            for i in range(0, n_images, 64):
                embed_batch(backbone, pre[i : i + 64].contiguous(memory_format=torch.channels_last))

    def covers_embed() -> None:
        embed_images(backbone, images, (0.5,) * 3, (0.5,) * 3, batch_size=64)

    bare_e = best_of(bare_embed, repeats)
    cov_e = best_of(covers_embed, repeats)
    rows.append(
        {
            "row": "embedding vs bare forward",
            "bare_img_s": n_images / bare_e,
            "covers_img_s": n_images / cov_e,
            "ratio": bare_e / cov_e,
        }
    )
    return {
        "machine": machine(),
        "model": model_name,
        "image_size": size,
        "batch": batch,
        "images": n_images,
        "rows": rows,
    }


def main() -> None:
    args = model_parser(__doc__).parse_args()
    result = run(args.smoke, args.model, args.size, args.batch)
    report(result, args.json)


if __name__ == "__main__":
    main()
