"""Decode-once store: every manifest row decoded, resized and kept as one uint8 array on disk.

The one in-memory cache of the data path lives here: the last :data:`KEEP_IN_MEMORY` stores a process loaded, so
that a sweep's later trials skip re-reading the array from disk. Switch: ``data.keep_decoded`` (``keep_decoded``
below); false reads the file for every run."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict, defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from covers.data.archives import decode_rgb, fit_square
from covers.data.members import IngestLimits, read_members
from covers.data.split import content_hash

log = logging.getLogger(__name__)

KEEP_IN_MEMORY = 2  # stores kept; each is N x size x size x 3 bytes (1 500 covers at 128 px: 74 MB)
_memory: OrderedDict[Path, np.ndarray] = OrderedDict()


def decode_rows(
    source: Path, rows: pd.DataFrame, size: int, progress: bool = True, limits: IngestLimits | None = None
) -> np.ndarray:
    """Decode ``rows`` (manifest order) to an ``(N, size, size, 3)`` uint8 array, reading each archive once within
    the ingest ``limits``; a member that cannot be read or decoded stops it with an error naming the member."""
    limits = limits or IngestLimits()
    out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
    by_archive: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for i, (archive, member) in enumerate(zip(rows["archive"], rows["member"], strict=True)):
        by_archive[archive].append((i, member))
    bar = tqdm(total=len(rows), desc=f"decode {size}px", disable=None if progress else True, leave=False)
    for archive, items in by_archive.items():
        members = [m for _, m in items]
        for (i, member), read in zip(items, read_members(source / archive, limits, members), strict=True):
            if read.reason:
                raise ValueError(f"cannot read {archive}:{member} from {source}: {read.reason}: {read.detail}")
            try:
                im, _ = decode_rgb(read.data, limits.max_pixels)
            except (
                Image.DecompressionBombError,
                Image.DecompressionBombWarning,
                OSError,
                ValueError,
                SyntaxError,
            ) as e:
                raise ValueError(f"cannot decode {archive}:{member} from {source}: {e}") from e
            out[i] = fit_square(im, size)
            bar.update()
    bar.close()
    return out


def load_image_store(
    source: str | Path,
    manifest: pd.DataFrame,
    size: int,
    cache_dir: str | Path,
    limits: IngestLimits | None = None,
    keep_decoded: bool = True,
) -> np.ndarray:
    """The decoded images for ``manifest`` at ``size`` px, from the disk store or decoded now (within the ingest
    ``limits``); with ``keep_decoded``, from and into this process's memory (the last :data:`KEEP_IN_MEMORY`).

    Keyed by (manifest content, size), so every trial and epoch of a sweep reuses one decode. Callers only read
    the array."""
    path = Path(cache_dir).resolve() / "decoded" / f"{content_hash(manifest)}-{size}px.npy"
    if keep_decoded and path in _memory and path.exists():
        _memory.move_to_end(path)
        return _memory[path]
    images = _read_store(path, len(manifest), size)
    if images is None:
        log.info("decoding %d images at %dpx into %s", len(manifest), size, path)
        images = decode_rows(Path(source), manifest, size, progress=True, limits=limits)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, images)
        os.replace(tmp, path)
    if keep_decoded:
        _memory[path] = images
        while len(_memory) > KEEP_IN_MEMORY:
            _memory.popitem(last=False)
    return images


def _read_store(path: Path, n: int, size: int) -> np.ndarray | None:
    if not path.exists():
        return None
    images = np.load(path)
    if images.shape != (n, size, size, 3):
        log.warning("cache %s has shape %s, rebuilding", path, images.shape)
        return None
    return images
