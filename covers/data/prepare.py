"""From a data source to decoded arrays: demo generation, scan, manifest (split) and the decode-once store."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from covers.data.archives import iter_entries, scan_source
from covers.data.cache import load_image_store
from covers.data.demo import ensure_demo
from covers.data.split import SPLITS, build_manifest, content_hash, read_manifest, write_manifest

log = logging.getLogger(__name__)


@dataclass
class DataBundle:
    """A split manifest with its decoded images, ready for loaders."""

    source: Path
    manifest_path: Path
    manifest: pd.DataFrame
    classes: list[str]
    images: np.ndarray
    labels: np.ndarray

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Images and integer labels of one split (``train``, ``val`` or ``test``)."""
        mask = (self.manifest["split"] == name).to_numpy()
        return self.images[mask], self.labels[mask]

    @property
    def manifest_hash(self) -> str:
        return content_hash(self.manifest)

    def counts(self) -> dict[str, int]:
        return {s: int((self.manifest["split"] == s).sum()) for s in SPLITS}


def source_fingerprint(source: Path) -> str:
    """Cheap identity of a source directory: names, sizes and mtimes of its archives and files."""
    h = hashlib.sha256()
    for archive, _, path in iter_entries(source):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            st = f.stat()
            h.update(f"{archive}/{f.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:12]


def resolve_source(name: str, source: str | None, cache_dir: Path, demo: dict | None = None) -> Path:
    """The directory to read: the generated demo set for ``name == 'demo'`` without a source, else ``source``."""
    if source:
        path = Path(source).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"data.source={source!r} is not a directory (expected <Genre>.zip archives)")
        return path.resolve()
    if name == "demo":
        return ensure_demo(cache_dir, **(demo or {}))
    raise ValueError("data.source is required (a directory of <Genre>.zip archives or class folders)")


def resolve_manifest(
    source: Path,
    cache_dir: Path,
    manifest: str | None = None,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
) -> tuple[pd.DataFrame, Path]:
    """Load the given manifest, or the cached one for this source and split, or scan and split now."""
    if manifest:
        path = Path(manifest)
        return read_manifest(path), path
    key = f"{source.name}-{source_fingerprint(source)}-seed{split_seed}-v{val_fraction}-t{test_fraction}"
    path = cache_dir / "manifests" / f"{key}.csv"
    if path.exists():
        return read_manifest(path), path
    scan = scan_source(source)
    df = build_manifest(scan.covers, val_fraction, test_fraction, split_seed)
    write_manifest(df, path)
    log.info("wrote manifest %s (%s)", path, df["split"].value_counts().to_dict())
    return df, path


def prepare_data(
    name: str,
    image_size: int,
    cache_dir: str | Path,
    source: str | None = None,
    manifest: str | None = None,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    demo: dict | None = None,
) -> DataBundle:
    """Resolve the source, its split manifest and the decoded images at ``image_size``."""
    cache_dir = Path(cache_dir)
    src = resolve_source(name, source, cache_dir, demo)
    df, path = resolve_manifest(src, cache_dir, manifest, split_seed, val_fraction, test_fraction)
    classes = sorted(df["label"].unique())
    labels = df["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    images = load_image_store(src, df, image_size, cache_dir)
    return DataBundle(src, path, df, classes, images, labels)
