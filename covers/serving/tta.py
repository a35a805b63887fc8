"""Test-time augmentation: views of a normalised ``(B, 3, S, S)`` batch whose class probabilities are averaged."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

CROP = 0.875  # the centre crop keeps this fraction of each side, resized back to the input size


def _centre_crop(x: torch.Tensor) -> torch.Tensor:
    size = x.shape[-1]
    keep = max(1, round(size * CROP))
    start = (size - keep) // 2
    crop = x[..., start : start + keep, start : start + keep]
    return F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)


VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "crop": _centre_crop,
    "crop_hflip": lambda x: _centre_crop(x).flip(-1),
}
# promote.tta=true: the image, its mirror, and the centre crop of both
TTA_VIEWS = ("identity", "hflip", "crop", "crop_hflip")


def views(names: list[str] | tuple[str, ...] | None) -> list[Callable[[torch.Tensor], torch.Tensor]]:
    """The view functions named in a model's ``meta["tta"]`` (none: the image as it is)."""
    unknown = sorted(set(names or ()) - set(VIEWS))
    if unknown:
        raise ValueError(f"unknown test-time augmentation views {unknown}; known: {sorted(VIEWS)}")
    return [VIEWS[n] for n in (names or ["identity"])]
