"""Read the members of one zip archive or class folder in memory, within limits; nothing is ever extracted.

Every member comes out as a :class:`Read`: its bytes, or the reason it was not read (hostile path, OS junk, zip
bomb, encryption, a damaged stream). Archive-wide problems come out as one :class:`Read` with an empty member."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class IngestLimits:
    """Hard limits on what ingest reads (checked from the zip directory before any member is decompressed)."""

    max_members: int = 100_000  # files per archive or class folder; more and the archive is skipped as too_large
    max_total_bytes: int = 4 * 2**30  # declared uncompressed bytes per archive; more and it is skipped
    max_ratio: float = 100.0  # uncompressed / compressed size of one member; more is a zip bomb (too_large)
    max_pixels: int = 40_000_000  # width x height of one image, checked from its header before decoding
    min_side: int = 32  # an image whose shorter side is below this is too_small


class Read(NamedTuple):
    """One member's bytes, or why it was not read (``reason`` non-empty, ``data`` None)."""

    member: str
    data: bytes | None
    reason: str = ""
    detail: str = ""


def is_junk(member: str) -> bool:
    """macOS/Windows metadata that archives carry along (``__MACOSX/``, ``._x``, ``.DS_Store``)."""
    parts = PurePosixPath(member).parts
    return "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] in JUNK_NAMES


def is_unsafe(member: str) -> bool:
    """A member path that is absolute or climbs out of the archive."""
    p = PurePosixPath(member.replace("\\", "/"))
    return p.is_absolute() or ".." in p.parts or (len(member) > 1 and member[1] == ":")


def _name_problem(member: str) -> Read | None:
    if is_unsafe(member):
        return Read(member, None, "unsafe_path", "absolute path or '..' escaping the archive; not read")
    if is_junk(member):
        return Read(member, None, "junk", "OS metadata (__MACOSX/, ._*, .DS_Store, Thumbs.db)")
    return None


def _archive_problem(n_members: int, total_bytes: int, limits: IngestLimits) -> Read | None:
    if n_members > limits.max_members:
        return Read("", None, "too_large", f"{n_members:,} members > max_members={limits.max_members:,}; not read")
    if total_bytes > limits.max_total_bytes:
        detail = f"{total_bytes:,} uncompressed bytes > max_total_bytes={limits.max_total_bytes:,}; not read"
        return Read("", None, "too_large", detail)
    if n_members == 0:
        return Read("", None, "empty", "holds no files")
    return None


def read_zip(path: Path, limits: IngestLimits) -> Iterator[Read]:
    """Members of one zip archive, in archive order; a damaged member never stops the others."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        yield Read("", None, "broken_archive", f"cannot open the archive: {e}")
        return
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        problem = _archive_problem(len(infos), sum(i.file_size for i in infos), limits)
        if problem:
            yield problem
            return
        last = {i.filename: i for i in infos}  # zipfile resolves a repeated name to its last entry
        for info in infos:
            name = info.filename
            ratio = info.file_size / max(info.compress_size, 1)
            if problem := _name_problem(name):
                yield problem
            elif last[name] is not info:
                yield Read(name, None, "duplicate", "the archive repeats this member name; its last entry is read")
            elif info.flag_bits & 0x1:
                yield Read(name, None, "corrupt", "encrypted (password-protected) member")
            elif ratio > limits.max_ratio:
                detail = f"compression ratio {ratio:,.0f}:1 > max_ratio={limits.max_ratio:g} (zip bomb?); not read"
                yield Read(name, None, "too_large", detail)
            else:
                try:
                    yield Read(name, zf.read(info))
                except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as e:
                    yield Read(name, None, "corrupt", f"cannot decompress: {e}")


def read_folder(path: Path, limits: IngestLimits) -> Iterator[Read]:
    """Files of one class folder (recursively, sorted); links leading outside the folder are not followed."""
    root = path.resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink())
    inside = {p: p.resolve().is_relative_to(root) for p in files}
    total = sum(p.stat().st_size for p in files if inside[p] and p.is_file())
    problem = _archive_problem(len(files), total, limits)
    if problem:
        yield problem
        return
    for p in files:
        name = p.relative_to(path).as_posix()
        if problem := _name_problem(name):
            yield problem
        elif not inside[p]:
            yield Read(name, None, "unsafe_path", "a link leading outside the class folder; not read")
        elif not p.is_file():
            yield Read(name, None, "corrupt", "a dangling link")
        else:
            try:
                yield Read(name, p.read_bytes())
            except OSError as e:
                yield Read(name, None, "corrupt", f"cannot read: {e}")
