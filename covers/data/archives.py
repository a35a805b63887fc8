"""Read covers from a directory of genre archives (``Rock.zip`` → ``Rock/*.png``) or class folders."""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


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

    @property
    def classes(self) -> list[str]:
        return sorted({c.label for c in self.covers})

    def reasons(self) -> Counter:
        return Counter(r.reason for r in self.rejected)


def is_junk(member: str) -> bool:
    """macOS/Windows metadata that archives carry along (``__MACOSX/``, ``._x``, ``.DS_Store``)."""
    parts = PurePosixPath(member).parts
    return "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] in JUNK_NAMES


def is_unsafe(member: str) -> bool:
    """A member path that is absolute or climbs out of the archive."""
    p = PurePosixPath(member.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(member) > 1 and member[1] == ":")


def decode_rgb(data: bytes) -> tuple[Image.Image, str]:
    """Decode image bytes fully and return an RGB image plus the original colour mode.

    Transparent images are composited on white; grayscale, palette, CMYK and 16-bit images are converted.
    Raises ``ValueError`` subclasses / Pillow errors for undecodable data.
    """
    with Image.open(io.BytesIO(data)) as im:
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
    if not source.is_dir():
        raise FileNotFoundError(f"data source {source} is not a directory of genre archives or class folders")
    for path in sorted(source.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            yield path.name, path.name, path
        elif path.suffix.lower() == ".zip":
            yield path.name, path.stem, path
        else:
            yield path.name, "", path


def iter_member_bytes(source: Path, archive: str, members: list[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member, bytes)`` from one archive or class folder, in memory (nothing is extracted).

    With ``members`` given, only those are read (in that order)."""
    path = source / archive
    if path.is_dir():
        names = (
            members
            if members is not None
            else sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        )
        for name in names:
            if is_unsafe(name):
                raise ValueError(f"unsafe member path {name!r}")
            yield name, (path / name).read_bytes()
        return
    with zipfile.ZipFile(path) as zf:
        names = members if members is not None else [i.filename for i in zf.infolist() if not i.is_dir()]
        for name in names:
            yield name, zf.read(name)


def _check_member(archive: str, label: str, member: str, data: bytes) -> Cover | Rejection:
    if PurePosixPath(member).suffix.lower() not in IMAGE_SUFFIXES:
        return Rejection(archive, member, "not_image", f"extension {PurePosixPath(member).suffix!r} is not an image")
    if not data:
        return Rejection(archive, member, "empty", "zero bytes")
    try:
        im, mode = decode_rgb(data)
    except Image.DecompressionBombError as e:
        return Rejection(archive, member, "too_large", f"decompression-bomb guard: {e}")
    except UnidentifiedImageError:
        return Rejection(archive, member, "not_image", "Pillow cannot identify the bytes as an image")
    except (OSError, ValueError, SyntaxError) as e:
        return Rejection(archive, member, "corrupt", f"decoding failed: {e}")
    return Cover(archive, member, label, hashlib.sha256(data).hexdigest(), im.width, im.height, mode)


def scan_source(source: str | Path) -> ScanResult:
    """Scan every archive/folder in ``source``; undecodable members are skipped with a counted reason."""
    source = Path(source)
    result = ScanResult()
    for archive, label, _ in iter_entries(source):
        if not label:
            result.rejected.append(Rejection(archive, "", "not_archive", "not a .zip archive or class folder"))
            continue
        try:
            for member, data in iter_member_bytes(source, archive):
                if is_junk(member):
                    result.rejected.append(Rejection(archive, member, "junk", "OS metadata file"))
                elif is_unsafe(member):
                    result.rejected.append(Rejection(archive, member, "unsafe_path", "absolute or '..' path"))
                else:
                    item = _check_member(archive, label, member, data)
                    (result.covers if isinstance(item, Cover) else result.rejected).append(item)
        except (zipfile.BadZipFile, OSError) as e:
            result.rejected.append(Rejection(archive, "", "broken_archive", f"cannot read archive: {e}"))
    if result.rejected:
        log.warning(
            "skipped %d of %d members: %s",
            len(result.rejected),
            len(result.rejected) + len(result.covers),
            dict(result.reasons()),
        )
        for r in result.rejected[:20]:
            log.warning("  skipped %s:%s (%s: %s)", r.archive, r.member, r.reason, r.detail)
    if not result.covers:
        raise ValueError(f"no usable images found in {source}")
    return result
