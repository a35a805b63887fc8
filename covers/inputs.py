"""Covers named on a command line: image files, folders (recursively) and genre zips, as named bytes."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from covers.data.archives import IMAGE_SUFFIXES


@dataclass(frozen=True)
class InputItem:
    """One cover to read: its display name, its bytes, or why they could not be read."""

    name: str
    data: bytes | None
    error: str | None = None


def _wanted(name: str) -> bool:
    """An image by its extension, and not hidden OS metadata (``.DS_Store``, ``._x``, ``__MACOSX/``)."""
    path = PurePosixPath(name)
    hidden = any(part.startswith(".") or part == "__MACOSX" for part in path.parts)
    return path.suffix.lower() in IMAGE_SUFFIXES and not hidden


def read_file(path: Path) -> InputItem:
    """A file's bytes, or the reason it cannot be read."""
    try:
        return InputItem(str(path), path.read_bytes())
    except OSError as e:
        return InputItem(str(path), None, f"cannot read file: {e}")


def iter_zip(path: Path) -> Iterator[InputItem]:
    """The image members of a zip archive (named ``archive.zip:member``), each read on its own."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        yield InputItem(str(path), None, f"cannot read archive: {e}")
        return
    with zf:
        for info in zf.infolist():
            if info.is_dir() or not _wanted(info.filename):
                continue
            try:
                yield InputItem(f"{path}:{info.filename}", zf.read(info))
            except (zipfile.BadZipFile, OSError, RuntimeError) as e:  # CRC error, encrypted member …
                yield InputItem(f"{path}:{info.filename}", None, f"cannot read archive member: {e}")


def iter_inputs(paths: Iterable[str | Path]) -> Iterator[InputItem]:
    """Every cover under ``paths``: files as given, image files of folders (sorted), image members of zips."""
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            for f in sorted(p for p in path.rglob("*") if p.is_file()):
                rel = f.relative_to(path).as_posix()
                if _wanted(rel):
                    yield read_file(f)
                elif f.suffix.lower() == ".zip":
                    yield from iter_zip(f)
        elif path.is_file() and path.suffix.lower() == ".zip":
            yield from iter_zip(path)
        elif path.is_file():
            yield read_file(path)
        else:
            yield InputItem(str(arg), None, "no such file or directory")


def read_cover(spec: str) -> InputItem:
    """One cover: an image file, or ``archive.zip:member`` (the names ``predict`` prints)."""
    path = Path(spec)
    if path.is_file():
        return read_file(path)
    archive, sep, member = spec.rpartition(".zip:")
    if not (sep and Path(archive + ".zip").is_file()):
        return InputItem(spec, None, "no such file")
    try:
        with zipfile.ZipFile(archive + ".zip") as zf:
            return InputItem(spec, zf.read(member))
    except KeyError:
        return InputItem(spec, None, f"no member {member!r} in {archive}.zip")
    except (zipfile.BadZipFile, OSError, RuntimeError) as e:
        return InputItem(spec, None, f"cannot read archive member: {e}")
