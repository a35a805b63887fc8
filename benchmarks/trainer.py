"""Trainer and data path against a bare PyTorch loop.

    python -m benchmarks.trainer            # full measurement (tf_efficientnet_lite0, 64 px, batch 32)
    python -m benchmarks.trainer --smoke    # a few steps, for correctness only
    python -m benchmarks.trainer --device cuda --size 128 --batch 64 --workers 0 4 8   # the GPU path

Rows: (1) covers' ``train_one_epoch`` vs a bare loop, both over pre-materialised tensors (the trainer's own
overhead); (2) an epoch through the real data path (decode-once store, default albumentations augmentation,
DataLoader) vs the same number of images as pre-materialised tensors; (3) embedding extraction
(``covers.models.embed.embed_images``) vs a bare ``forward_features``/``forward_head`` pass.

With ``--device cuda`` both sides use covers' CUDA runtime (AMP, channels_last, cudnn benchmark), the
pre-materialised tensors already sit on the GPU and the loaders pin memory; ``--workers`` picks the DataLoader
worker counts of row (2)."""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import nn

from benchmarks._timing import best_of, machine, model_parser, report
from covers.data.loaders import create_loader
from covers.data.transforms import create_train_transform
from covers.models.create import create_model
from covers.models.embed import embed_batch, embed_images, normalized_batches
from covers.training.loop import train_one_epoch
from covers.training.runtime import Runtime, create_runtime, to_device


def _batches(n_batches: int, batch: int, size: int, classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, size, size, generator=g), torch.randint(0, classes, (batch,), generator=g))
        for _ in range(n_batches)
    ]


def _sync(rt: Runtime) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)


def bare_train(model: nn.Module, batches, rt: Runtime, lr: float = 1e-3) -> float:
    """The reference: forward, loss, backward, step over tensors in memory, on the same device, in the same
    memory format and precision as covers' runtime; returns seconds."""
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    model.to(rt.device, memory_format=fmt)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    _sync(rt)
    t0 = time.perf_counter()
    for x, y in batches:
        with rt.autocast():
            loss = loss_fn(model(x.contiguous(memory_format=fmt)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(rt)
    return time.perf_counter() - t0


def covers_train(model: nn.Module, loader, lr: float = 1e-3, rt: Runtime | None = None) -> float:
    """covers' ``train_one_epoch`` over ``loader`` (default: the CPU runtime ``fit`` uses); returns seconds."""
    rt = rt or create_runtime("cpu", "fp32")
    rt.place(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    scaler = rt.grad_scaler()  # as ``fit`` does
    _sync(rt)
    t0 = time.perf_counter()
    train_one_epoch(model, loader, nn.CrossEntropyLoss().to(rt.device), opt, None, rt, scaler)
    return time.perf_counter() - t0  # train_one_epoch reads its sums back: the device is done


def run(
    smoke: bool = False,
    model_name: str = "tf_efficientnet_lite0",
    size: int = 64,
    batch: int = 32,
    device: str = "cpu",
    workers: tuple[int, ...] = (0, 1),
    n_batches: int = 20,
) -> dict:
    """All rows; images/s and ratios."""
    n_batches, repeats = (2, 1) if smoke else (n_batches, 3)
    classes = 8
    rt = create_runtime(device, "auto")
    base = create_model(model_name, classes, weights="package" if "lite0" in model_name else "none")
    batches = _batches(n_batches, batch, size, classes)
    on_device = [(x.to(rt.device), y.to(rt.device)) for x, y in batches]
    n_images = n_batches * batch
    rows = []
    if rt.device.type == "cuda":  # warm-up: CUDA context, cudnn autotuning, allocator
        covers_train(copy.deepcopy(base), on_device, rt=rt)

    # (1) trainer overhead: same tensors, same model copies, interleaved
    bare_t, cov_t = [], []
    for _ in range(repeats):
        bare_t.append(bare_train(copy.deepcopy(base), on_device, rt))
        cov_t.append(covers_train(copy.deepcopy(base), on_device, rt=rt))
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
    aug = create_train_transform(size, hflip=0.5, scale=(0.7, 1.0), rotate=10, color_jitter=0.2)
    norm = {"mean": (0.5,) * 3, "std": (0.5,) * 3, "device": rt.device}
    for n_workers in workers:
        loader = create_loader(images, labels, aug, batch, True, num_workers=n_workers, **norm)
        covers_train(copy.deepcopy(base), loader, rt=rt)  # starts the persistent workers
        data_t = best_of(lambda loader=loader: covers_train(copy.deepcopy(base), loader, rt=rt), repeats)
        tensors_t = best_of(lambda: covers_train(copy.deepcopy(base), on_device, rt=rt), repeats)
        rows.append(
            {
                "row": f"data path (num_workers={n_workers}) vs tensors",
                "bare_img_s": n_images / tensors_t,
                "covers_img_s": n_images / data_t,
                "ratio": tensors_t / data_t,
            }
        )

    # (3) embedding extraction vs a bare forward pass
    backbone = rt.place(create_model(model_name, 0, weights="none").eval())
    pre = torch.cat(list(normalized_batches(images, (0.5,) * 3, (0.5,) * 3, 256, rt)))

    def bare_embed() -> None:
        with torch.no_grad(), rt.autocast():
            out = [embed_batch(backbone, to_device(pre[i : i + 64], rt)) for i in range(0, n_images, 64)]
        torch.cat(out).cpu()

    def covers_embed() -> None:
        embed_images(backbone, images, (0.5,) * 3, (0.5,) * 3, batch_size=64, rt=rt)

    bare_embed(), covers_embed()  # warm-up
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
        "device": str(rt.device),
        "precision": str(rt.amp_dtype or "fp32"),
        "model": model_name,
        "image_size": size,
        "batch": batch,
        "images": n_images,
        "rows": rows,
    }


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="DataLoader workers of row (2)")
    parser.add_argument("--batches", type=int, default=20, help="batches per timed epoch")
    args = parser.parse_args()
    result = run(args.smoke, args.model, args.size, args.batch, args.device, tuple(args.workers), args.batches)
    report(result, args.json)


if __name__ == "__main__":
    main()
