"""From a data source to decoded arrays: demo generation, scan, manifest (split) and the decode-once store."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from covers.data.archives import SOURCE_FIX, DataSourceError, check_source_dir, iter_entries, log_rejections
from covers.data.checks import check_manifest
from covers.data.clean import clean_source
from covers.data.dedup import DuplicateRules
from covers.data.demo import ensure_demo
from covers.data.members import IngestLimits
from covers.data.split import SPLITS, content_hash, read_manifest, write_manifest
from covers.data.store import load_image_store

log = logging.getLogger(__name__)

CLEAN_VERSION = 2  # bump when cleaning changes what a manifest holds, so cached manifests are rebuilt


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

    @functools.cached_property
    def manifest_hash(self) -> str:  # bundles are not modified after creation (``subset`` makes a new one)
        return content_hash(self.manifest)

    def counts(self) -> dict[str, int]:
        return {s: int((self.manifest["split"] == s).sum()) for s in SPLITS}

    def with_splits(self, split: np.ndarray) -> DataBundle:
        """The same covers and images under another ``split`` column (a cross-validation fold); the manifest file,
        what the run logs and ``promote`` reloads, stays this bundle's."""
        manifest = self.manifest.assign(split=split)
        return DataBundle(self.source, self.manifest_path, manifest, self.classes, self.images, self.labels)

    def subset(self, keep: np.ndarray, manifest_dir: str | Path) -> DataBundle:
        """The bundle restricted to the rows where ``keep`` is true (classes unchanged), its manifest written to
        ``manifest_dir`` (named by content hash) so the run logs, and ``promote`` reloads, exactly these rows."""
        manifest = self.manifest[keep].reset_index(drop=True)
        path = Path(manifest_dir) / f"{self.manifest_path.stem}-subset-{content_hash(manifest)}.csv"
        if not path.exists():
            write_manifest(manifest, path)
        return DataBundle(self.source, path, manifest, self.classes, self.images[keep], self.labels[keep])


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
    """The directory to read: the generated demo set for ``name == 'demo'`` without a source, else ``source``.

    A source that is not set or not a folder raises :class:`DataSourceError` (message: the cause and the fix)."""
    if source:
        return check_source_dir(source).resolve()
    if name == "demo":
        return ensure_demo(cache_dir, **(demo or {}))
    raise DataSourceError(f"data.source is not set: data={name} reads your own covers.\n{SOURCE_FIX}")


def cleaning_key(limits: IngestLimits, rules: DuplicateRules) -> str:
    """A short hash of the cleaning settings: a manifest made under other settings is not reused."""
    settings = json.dumps({"v": CLEAN_VERSION, "limits": asdict(limits), "rules": asdict(rules)}, sort_keys=True)
    return hashlib.sha256(settings.encode()).hexdigest()[:8]


def resolve_manifest(
    source: Path,
    cache_dir: Path,
    manifest: str | None = None,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    limits: IngestLimits | None = None,
    rules: DuplicateRules | None = None,
) -> tuple[pd.DataFrame, Path]:
    """Load the given manifest, or the cached one for this source, cleaning and split, or clean and split now.

    A new manifest goes through the same cleaning as the audit (rejections, duplicates, look-alike groups); a given
    one through the ingest checks (:func:`given_manifest`)."""
    limits, rules = limits or IngestLimits(), rules or DuplicateRules()
    if manifest:
        return given_manifest(source, Path(manifest), cache_dir, limits)
    key = (
        f"{source.name}-{source_fingerprint(source)}-clean{cleaning_key(limits, rules)}"
        f"-seed{split_seed}-v{val_fraction}-t{test_fraction}"
    )
    path = cache_dir / "manifests" / f"{key}.csv"
    if path.exists():
        return read_manifest(path), path
    clean = clean_source(source, limits, rules, val_fraction, test_fraction, split_seed)
    if clean.leakage:
        raise RuntimeError(f"{clean.leakage} duplicate groups straddle splits in the manifest of {source}")
    write_manifest(clean.manifest, path)
    log.info("wrote manifest %s (%s)", path, clean.manifest["split"].value_counts().to_dict())
    return clean.manifest, path


def given_manifest(source: Path, path: Path, cache_dir: Path, limits: IngestLimits) -> tuple[pd.DataFrame, Path]:
    """The rows of the manifest at ``path`` that pass the ingest checks against ``source``; rejected rows are
    logged with their reasons and the rest written under ``cache_dir`` (the file the run logs and trains on)."""
    df = read_manifest(path)
    kept, rejected = check_manifest(source, df, limits)
    if not rejected:
        return df, path
    log_rejections(rejected, len(df), "rejected", "manifest rows")
    if kept.empty:
        reasons = dict(Counter(r.reason for r in rejected))
        raise ValueError(f"no row of manifest {path} passes the ingest checks against {source} ({reasons})")
    checked = cache_dir / "manifests" / f"{path.stem}-checked-{content_hash(kept)}.csv"
    if not checked.exists():
        write_manifest(kept, checked)
    return kept, checked


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
    limits: IngestLimits | None = None,
    rules: DuplicateRules | None = None,
    keep_decoded: bool = True,
) -> DataBundle:
    """Resolve the source, its (cleaned) split manifest and the decoded images at ``image_size`` (kept in memory
    for the next run of this process unless ``keep_decoded`` is false: :func:`covers.data.store.load_image_store`)."""
    cache_dir = Path(cache_dir)
    src = resolve_source(name, source, cache_dir, demo)
    df, path = resolve_manifest(src, cache_dir, manifest, split_seed, val_fraction, test_fraction, limits, rules)
    classes = sorted(df["label"].unique())
    if len(classes) < 2:
        found = f"{len(classes)} class{'' if len(classes) == 1 else 'es'} ({', '.join(map(repr, classes))})"
        raise ValueError(
            f"the data hold {found}: a classifier needs at least 2 classes, one <Genre>.zip or <Genre>/ folder "
            f"each in data.source={src} (manifest {path})"
        )
    labels = df["label"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    images = load_image_store(src, df, image_size, cache_dir, limits, keep_decoded)
    return DataBundle(src, path, df, classes, images, labels)
