"""Read covers from a directory of genre archives (``Rock.zip`` → ``Rock/*.png``) or class folders."""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from hydra.errors import CompactHydraException
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from covers.data.members import IngestLimits, read_members

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
REASONS = (
    "not_archive",
    "broken_archive",
    "unsafe_path",
    "bad_name",
    "missing",
    "junk",
    "empty",
    "not_image",
    "corrupt",
    "too_large",
    "too_small",
    "duplicate",
    "cross_class_duplicate",
    "sha256_mismatch",
)
Measure = Callable[[Image.Image], dict[str, Any]]
SOURCE_FIX = (
    "Pass data.source=DIR: a folder of <Genre>.zip archives (each holding <Genre>/*.png) or of <Genre>/ image\n"
    "folders, e.g. data=archives data.source=/path/to/covers (data=demo uses the built-in demo covers)."
)


class DataSourceError(CompactHydraException, ValueError):
    """A data source that cannot be read (not set, not a folder): a Hydra app prints its message alone and exits 1
    (the trace with ``HYDRA_FULL_ERROR=1``)."""


class DataSourceNotFound(DataSourceError, FileNotFoundError):
    """``data.source`` names no folder."""


def check_source_dir(source: str | Path) -> Path:
    """``source`` if it is a folder, else :class:`DataSourceNotFound` saying what it is instead and what to pass."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    cause = f"data.source={source} is not a directory"
    where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
    if path.suffix.lower() == ".zip" and path.is_file():
        fix = f"Pass the folder that holds the <Genre>.zip archives: data.source={path.parent}"
        raise DataSourceNotFound(f"{cause}: it is one archive.\n{fix}")
    found = "a file" if path.exists() else "no such path"
    raise DataSourceNotFound(f"{cause}: {found}{where}.\n{SOURCE_FIX}")


@dataclass(frozen=True)
class Cover:
    """One usable image: where it lives, its class and the sha256 of its bytes."""

    archive: str
    member: str
    label: str
    sha256: str
    width: int
    height: int
    mode: str
    nbytes: int = 0


@dataclass(frozen=True)
class Rejection:
    """One member that was skipped, with a machine-readable reason and a human-readable detail."""

    archive: str
    member: str
    reason: str
    detail: str


@dataclass
class ScanResult:
    """What a scan of a source directory found."""

    covers: list[Cover] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    measures: list[dict[str, Any]] = field(default_factory=list)  # one per cover, from ``scan_source(measure=)``

    @property
    def classes(self) -> list[str]:
        return sorted({c.label for c in self.covers})

    def reasons(self) -> Counter:
        return Counter(r.reason for r in self.rejected)


def decode_rgb(data: bytes, max_pixels: int | None = None) -> tuple[Image.Image, str]:
    """Decode image bytes fully and return an RGB image plus the original colour mode.

    Transparent images are composited on white; grayscale, palette, CMYK and 16-bit images are converted.
    An image over ``max_pixels`` (read from its header, before decoding) or over Pillow's own decompression-bomb
    limit raises ``Image.DecompressionBombError``; undecodable data raises Pillow/``OSError``/``ValueError``.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(io.BytesIO(data))
    with im:
        if max_pixels and im.width * im.height > max_pixels:
            n = im.width * im.height
            raise Image.DecompressionBombError(f"{im.width}x{im.height} = {n:,} pixels > max_pixels={max_pixels:,}")
        im.load()
        return to_rgb(im), im.mode


def to_rgb(im: Image.Image) -> Image.Image:
    """An RGB copy of ``im``: transparency composited on white, 16-bit and float images rescaled to 8 bits."""
    mode = im.mode
    if mode in ("RGBA", "LA") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo or 1.0) * 255.0
        return Image.fromarray(arr.astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def fit_square(im: Image.Image, size: int) -> np.ndarray:
    """``im`` resized to ``size``×``size`` (bicubic) as an ``(size, size, 3)`` uint8 array: the model's input."""
    return np.asarray(im.resize((size, size), Image.Resampling.BICUBIC))


def iter_entries(source: Path) -> Iterator[tuple[str, str, Path]]:
    """Yield ``(archive, label, path)`` for every class archive or class folder in ``source``."""
    for path in sorted(check_source_dir(source).iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            yield path.name, path.name, path
        elif path.suffix.lower() == ".zip":
            yield path.name, path.stem, path
        else:
            yield path.name, "", path


def check_member(
    archive: str, label: str, member: str, data: bytes, limits: IngestLimits
) -> tuple[Cover | Rejection, Image.Image | None]:
    """Decode one member: a :class:`Cover` with its RGB image, or a :class:`Rejection` saying why not."""

    def reject(reason: str, detail: str) -> tuple[Rejection, None]:
        return Rejection(archive, member, reason, detail), None

    suffix = PurePosixPath(member).suffix
    if suffix.lower() not in IMAGE_SUFFIXES:
        return reject("not_image", f"extension {suffix!r} is not an image")
    if not data:
        return reject("empty", "zero bytes")
    try:
        im, mode = decode_rgb(data, limits.max_pixels)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return reject("too_large", f"decompression-bomb guard: {e}")
    except UnidentifiedImageError:
        return reject("not_image", "Pillow cannot identify the bytes as an image")
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        return reject("corrupt", f"decoding failed: {e}")
    if min(im.size) < limits.min_side:
        return reject("too_small", f"{im.width}x{im.height} px, shorter side < min_side={limits.min_side}")
    sha = hashlib.sha256(data).hexdigest()
    return Cover(archive, member, label, sha, im.width, im.height, mode, len(data)), im


def iter_archive(
    archive: str, label: str, path: Path, limits: IngestLimits
) -> Iterator[tuple[Cover | Rejection, Image.Image | None]]:
    """Every member of one entry of :func:`iter_entries`: a cover with its decoded image, or a rejection."""
    if not label:
        yield Rejection(archive, "", "not_archive", "not a .zip archive or class folder; skipped"), None
        return
    for read in read_members(path, limits):
        if read.reason:
            yield Rejection(archive, read.member, read.reason, read.detail), None
        else:
            yield check_member(archive, label, read.member, read.data, limits)


def scan_source(
    source: str | Path, limits: IngestLimits | None = None, measure: Measure | None = None, progress: bool = True
) -> ScanResult:
    """Scan every archive/folder in ``source``; unusable members are skipped with a counted reason.

    ``measure(image)`` is called on every decoded cover and its dicts are kept in ``ScanResult.measures``.
    ``progress``: a bar on stderr (when it is a terminal) counting the files read, archive by archive."""
    source = Path(source)
    limits = limits or IngestLimits()
    result = ScanResult()
    entries = list(iter_entries(source))
    with tqdm(desc="scan", unit="file", disable=None if progress else True, leave=False) as bar:
        for n, (archive, label, path) in enumerate(entries, 1):
            bar.set_description_str(f"scan {archive} ({n}/{len(entries)})")
            for item, im in iter_archive(archive, label, path, limits):
                bar.update()
                if isinstance(item, Rejection):
                    result.rejected.append(item)
                    continue
                result.covers.append(item)
                result.measures.append(measure(im) if measure else {})
    log_rejections(result.rejected, len(result.rejected) + len(result.covers), "skipped", "members")
    if not result.covers:
        raise ValueError(f"no usable images found in {source} (rejections: {dict(result.reasons())})")
    return result


def log_rejections(rejected: Sequence[Rejection], total: int, verb: str, what: str) -> None:
    """Warn with the count by reason, then the first 20 rejections by name (e.g. "skipped 2 of 9 members")."""
    if not rejected:
        return
    reasons = dict(Counter(r.reason for r in rejected))
    log.warning("%s %d of %d %s: %s", verb, len(rejected), total, what, reasons)
    for r in rejected[:20]:
        log.warning("  %s %s:%s (%s: %s)", verb, r.archive, r.member, r.reason, r.detail)
