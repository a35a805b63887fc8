"""Covers named on a command line: image files, folders (recursively) and genre zips, as named bytes.

Zip members are read by ingest's reader (:mod:`covers.data.members`) within its limits: a member with an unsafe
path, a zip bomb, an archive over its declared-size limit… comes out with ingest's reason and is never read."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from covers.data.archives import IMAGE_SUFFIXES
from covers.data.members import IngestLimits, Read, is_junk, read_zip


@dataclass(frozen=True)
class InputItem:
    """One cover to read: its display name, its bytes, or why they could not be read."""

    name: str
    data: bytes | None
    error: str | None = None


def _wanted(name: str) -> bool:
    """An image by its extension, and not hidden OS metadata (``.DS_Store``, ``._x``, ``__MACOSX/``)."""
    path = PurePosixPath(name)
    hidden = any(part.startswith(".") and part != ".." for part in path.parts)
    return path.suffix.lower() in IMAGE_SUFFIXES and not hidden and not is_junk(name)


def _not_a_file(path: Path) -> str:
    """Why ``path`` is not a regular file to read."""
    if not path.exists():
        return f"a dangling link (to {path.readlink()})" if path.is_symlink() else "no such file or directory"
    if path.is_dir():
        return "a folder"
    kinds = [
        (path.is_char_device, "a character device"),
        (path.is_block_device, "a block device"),
        (path.is_fifo, "a pipe"),
    ]
    kind = next((name for test, name in kinds if test()), "a socket")
    return f"not a regular file ({kind}); not read"


def read_file(path: Path) -> InputItem:
    """A regular file's bytes, or the reason it cannot be read (a device such as ``/dev/zero`` is never read)."""
    if not path.is_file():
        return InputItem(str(path), None, _not_a_file(path))
    try:
        return InputItem(str(path), path.read_bytes())
    except OSError as e:
        return InputItem(str(path), None, f"cannot read file: {e}")


def _item(name: str, read: Read) -> InputItem:
    return InputItem(name, read.data, f"{read.reason}: {read.detail}" if read.reason else None)


def iter_zip(path: Path, limits: IngestLimits | None = None) -> Iterator[InputItem]:
    """The image members of a zip archive (named ``archive.zip:member``), each read on its own within ``limits``."""
    found = False
    for read in read_zip(path, limits or IngestLimits(), only=_wanted):
        found = True
        yield _item(f"{path}:{read.member}" if read.member else str(path), read)
    if not found:
        yield InputItem(str(path), None, "no image members in this archive")


def iter_inputs(paths: Iterable[str | Path], limits: IngestLimits | None = None) -> Iterator[InputItem]:
    """Every cover under ``paths``: files as given, image files of folders (sorted), image members of zips.

    A folder without any image file or zip archive is reported, as is anything that cannot be read."""
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            found = False
            for f in sorted(p for p in path.rglob("*") if not p.is_dir()):
                rel = f.relative_to(path).as_posix()
                if _wanted(rel):
                    found = True
                    yield read_file(f)
                elif f.suffix.lower() == ".zip":
                    found = True
                    yield from iter_zip(f, limits) if f.is_file() else [read_file(f)]
            if not found:
                yield InputItem(str(path), None, "no image files or zip archives in this folder")
        elif path.is_file() and path.suffix.lower() == ".zip":
            yield from iter_zip(path, limits)
        else:
            yield read_file(path)


def read_cover(spec: str, limits: IngestLimits | None = None) -> InputItem:
    """One cover: an image file, or ``archive.zip:member`` (the names ``predict`` prints)."""
    path = Path(spec)
    if path.is_dir():
        return InputItem(spec, None, "a folder, not one cover (give an image file or ARCHIVE.zip:MEMBER)")
    if path.exists() or path.is_symlink():
        return read_file(path)
    archive, sep, member = spec.rpartition(".zip:")
    if not (sep and Path(archive + ".zip").is_file()):
        return read_file(path)
    (read,) = read_zip(Path(archive + ".zip"), limits or IngestLimits(), members=[member])
    return _item(spec, read)
