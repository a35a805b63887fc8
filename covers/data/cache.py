"""Decode-once store: every manifest row decoded, resized and kept as one uint8 array on disk."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from covers.data.archives import decode_rgb, fit_square, iter_member_bytes
from covers.data.split import content_hash

log = logging.getLogger(__name__)

_MEMORY: dict[Path, np.ndarray] = {}


def decode_rows(source: Path, rows: pd.DataFrame, size: int, progress: bool = True) -> np.ndarray:
    """Decode ``rows`` (manifest order) to an ``(N, size, size, 3)`` uint8 array, reading each archive once."""
    out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    by_archive: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for i, (archive, member) in enumerate(zip(rows["archive"], rows["member"], strict=True)):
        by_archive[archive].append((i, member))
    bar = tqdm(total=len(rows), desc=f"decode {size}px", disable=None if progress else True, leave=False)
    for archive, items in by_archive.items():
        members = [m for _, m in items]
        for (i, _), (_, data) in zip(items, iter_member_bytes(source, archive, members), strict=True):
            im, _ = decode_rgb(data)
            out[i] = fit_square(im, size)
            bar.update()
    bar.close()
    return out


def load_image_store(source: str | Path, manifest: pd.DataFrame, size: int, cache_dir: str | Path) -> np.ndarray:
    """The decoded images for ``manifest`` at ``size`` px, from memory, the disk cache, or decoded now.

    Keyed by (manifest content, size), so every trial and epoch of a sweep reuses one decode."""
    path = Path(cache_dir) / "decoded" / f"{content_hash(manifest)}-{size}px.npy"
    if path in _MEMORY:
        return _MEMORY[path]
    if path.exists():
        images = np.load(path)
        if images.shape != (len(manifest), size, size, 3):
            log.warning("cache %s has shape %s, rebuilding", path, images.shape)
        else:
            _MEMORY[path] = images
            return images
    log.info("decoding %d images at %dpx into %s", len(manifest), size, path)
    images = decode_rows(Path(source), manifest, size, progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, images)
    os.replace(tmp, path)
    _MEMORY[path] = images
    return images
