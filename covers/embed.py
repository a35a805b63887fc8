"""Image embeddings: a timm network's pooled pre-logits features, L2-normalised, computed in batches."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from covers.augment import create_eval_transform
from covers.data.loaders import create_loader
from covers.models import create_model
from covers.train import Runtime, create_runtime, to_device


def create_backbone(name: str, weights: str = "package", checkpoint: str | None = None) -> nn.Module:
    """A pretrained timm network without classifier (``num_classes=0``): its output is the pooled features."""
    return create_model(name, 0, weights=weights, checkpoint=checkpoint).eval()


def embed_batch(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """L2-normalised pre-logits features of a batch (what the classifier head sees)."""
    features = model.forward_head(model.forward_features(x), pre_logits=True)
    return F.normalize(features.float().flatten(1), dim=1)


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
    transform = create_eval_transform(images.shape[1], mean, std)
    loader = create_loader(images, np.zeros(len(images), dtype=np.int64), transform, batch_size, False)
    out = []
    for x, _ in tqdm(loader, desc=desc, leave=False, disable=None):
        with rt.autocast():
            out.append(fn(to_device(x, rt)).float())  # stays on the device: one copy back, not one wait per batch
    return torch.cat(out).cpu().numpy() if out else np.zeros((0, 0), dtype=np.float32)


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
