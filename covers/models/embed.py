"""Image embeddings: a timm network's pooled pre-logits features, L2-normalised, computed in batches."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from covers.models.create import create_model
from covers.training.runtime import Runtime, create_runtime


def create_backbone(name: str, weights: str = "package", checkpoint: str | None = None) -> nn.Module:
    """A pretrained timm network without classifier (``num_classes=0``): its output is the pooled features."""
    return create_model(name, 0, weights=weights, checkpoint=checkpoint).eval()


def embed_batch(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """L2-normalised pre-logits features of a batch (what the classifier head sees)."""
    features = model.forward_head(model.forward_features(x), pre_logits=True)
    return F.normalize(features.float().flatten(1), dim=1)


def normalized_batches(
    images: np.ndarray, mean: Sequence[float], std: Sequence[float], batch_size: int, rt: Runtime
) -> Iterator[torch.Tensor]:
    """Batches of ``(N, S, S, 3)`` uint8 images (square, as the decoded store holds them), normalised as
    albumentations' ``Normalize`` does (``(x - 255 mean) / (255 std)``), as ``(B, 3, S, S)`` float tensors on the
    runtime's device. The uint8 batch is copied (a quarter of the bytes of float) and normalised there in one batched
    operation: on a GPU, normalising image by image on the host held embeddings to a fifth of the model's speed
    (docs/benchmarks.md)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != images.shape[2] or images.shape[3] != 3:
        raise ValueError(f"expected (N, S, S, 3) uint8 images (the decoded store), got {images.dtype} {images.shape}")
    scale = torch.tensor(std, dtype=torch.float32, device=rt.device).view(1, 3, 1, 1) * 255
    shift = torch.tensor(mean, dtype=torch.float32, device=rt.device).view(1, 3, 1, 1) * 255
    fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))
        if rt.device.type == "cuda":
            x = x.pin_memory()
        x = x.to(rt.device, non_blocking=True).permute(0, 3, 1, 2).float()  # NHWC memory: channels_last already
        yield ((x - shift) / scale).contiguous(memory_format=fmt)


@torch.no_grad()
def map_batches(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 64,
    rt: Runtime | None = None,
    desc: str = "batches",
) -> np.ndarray:
    """``fn`` applied to normalised batches of ``(N, S, S, 3)`` uint8 images (progress bar); outputs concatenated."""
    rt = rt or create_runtime("auto", "fp32")
    out, pending = [], []  # outputs go back to the host 32 batches at a time: one wait per copy, bounded GPU memory
    batches = normalized_batches(images, mean, std, batch_size, rt)
    for x in tqdm(batches, desc=desc, total=-(-len(images) // batch_size), leave=False, disable=None):
        with rt.autocast():
            pending.append(fn(x).float())
        if len(pending) == 32:
            out.append(torch.cat(pending).cpu())
            pending = []
    if pending:
        out.append(torch.cat(pending).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def embed_images(
    model: nn.Module,
    images: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 64,
    rt: Runtime | None = None,
) -> np.ndarray:
    """Embeddings ``(N, D)`` float32 of ``(N, S, S, 3)`` uint8 images, in batches with a progress bar."""
    rt = rt or create_runtime("auto", "fp32")
    rt.place(model.eval())
    return map_batches(lambda x: embed_batch(model, x), images, mean, std, batch_size, rt, "embed")
