"""Read the members of one zip archive or class folder in memory, within limits; nothing is ever extracted.

Every member comes out as a :class:`Read`: its bytes, or the reason it was not read (hostile path, OS junk, zip
bomb, encryption, a damaged stream, a name that cannot be decoded). Archive-wide problems come out as one
:class:`Read` with an empty member, or, when members are asked for by name, as one per name."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
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


def read_zip(
    path: Path, limits: IngestLimits, members: Sequence[str] | None = None, only: Callable[[str], bool] | None = None
) -> Iterator[Read]:
    """Members of one zip archive in archive order (those whose name passes ``only``), or one :class:`Read` per
    name in ``members``, in that order; a damaged member never stops the others."""
    with ExitStack() as stack:
        try:
            zf, misnamed = _open_zip(path, stack)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            yield from _for_each(Read("", None, "broken_archive", f"cannot open the archive: {e}"), members)
            return
        infos = [i for i in zf.infolist() if not i.is_dir()]
        problem = _archive_problem(len(infos), sum(i.file_size for i in infos), limits)
        if problem:
            yield from _for_each(problem, members)
            return
        last = {i.filename: i for i in infos}  # zipfile resolves a repeated name to its last entry
        if members is None:
            named = [(i.filename, i) for i in infos if only is None or only(i.filename)]
        else:
            named = [(name, last.get(name)) for name in members]
        for name, info in named:
            yield _read_zip_member(zf, name, info, last, misnamed, limits)


def _for_each(problem: Read, members: Sequence[str] | None) -> Iterator[Read]:
    """An archive-wide problem: once, or once for each member asked for."""
    yield from [problem] if members is None else (problem._replace(member=name) for name in members)


def _read_zip_member(
    zf: zipfile.ZipFile,
    name: str,
    info: zipfile.ZipInfo | None,
    last: dict[str, zipfile.ZipInfo],
    misnamed: set[str],
    limits: IngestLimits,
) -> Read:
    if info is not None and info.orig_filename in misnamed:
        return Read(name, None, "bad_name", "the name is flagged UTF-8 but is not (shown as cp437); not read")
    if problem := _name_problem(name):
        return problem
    if info is None:
        return Read(name, None, "missing", f"no member {name!r} in the archive")
    if last[name] is not info:
        return Read(name, None, "duplicate", "the archive repeats this member name; its last entry is read")
    if info.flag_bits & 0x1:
        return Read(name, None, "corrupt", "encrypted (password-protected) member")
    ratio = info.file_size / max(info.compress_size, 1)
    if ratio > limits.max_ratio:
        detail = f"compression ratio {ratio:,.0f}:1 > max_ratio={limits.max_ratio:g} (zip bomb?); not read"
        return Read(name, None, "too_large", detail)
    try:
        return Read(name, zf.read(info))  # zipfile stops at the declared size: the ratio check holds
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as e:
        return Read(name, None, "corrupt", f"cannot decompress: {e}")


def _open_zip(path: Path, stack: ExitStack) -> tuple[zipfile.ZipFile, set[str]]:
    """The open archive and the names of members that zipfile could not decode (see :class:`_Cp437Names`)."""
    try:
        return stack.enter_context(zipfile.ZipFile(path)), set()
    except UnicodeDecodeError:
        pass
    fp = stack.enter_context(_Cp437Names(path))
    zf = stack.enter_context(zipfile.ZipFile(fp))
    fp.rewriting = False
    return zf, fp.misnamed


# a central-directory record (APPNOTE.TXT 4.3.12) as zipfile.structCentralDir unpacks it: field indexes, and the
# byte offset of its general-purpose flags
_FLAGS, _NAME_LEN, _EXTRA_LEN, _COMMENT_LEN = 5, 12, 13, 14
_FLAGS_AT = 8
_UTF8_NAME = 0x800


class _Cp437Names(io.BufferedReader):
    """An archive file as zipfile reads its central directory, with the UTF-8 flag cleared on member names that
    are not UTF-8: zipfile refuses a whole archive over one such name; read so, the name decodes as cp437 (zip's
    default) and ``misnamed`` holds it, so that only its member is rejected."""

    def __init__(self, path: Path) -> None:
        super().__init__(io.FileIO(path, "rb"))
        self.rewriting = True  # while zipfile reads the directory; never for member data
        self.misnamed: set[str] = set()

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if self.rewriting and data[:4] == zipfile.stringCentralDir:
            data = self._clear_false_utf8_flags(bytearray(data))
        return data

    def _clear_false_utf8_flags(self, records: bytearray) -> bytes:
        at = 0
        while records[at : at + 4] == zipfile.stringCentralDir and at + zipfile.sizeCentralDir <= len(records):
            fields = struct.unpack_from(zipfile.structCentralDir, records, at)
            name_at = at + zipfile.sizeCentralDir
            name = bytes(records[name_at : name_at + fields[_NAME_LEN]])
            if fields[_FLAGS] & _UTF8_NAME and not _is_utf8(name):
                struct.pack_into("<H", records, at + _FLAGS_AT, fields[_FLAGS] & ~_UTF8_NAME)
                self.misnamed.add(name.decode("cp437"))
            at = name_at + fields[_NAME_LEN] + fields[_EXTRA_LEN] + fields[_COMMENT_LEN]
        return bytes(records)


def _is_utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def read_folder(path: Path, limits: IngestLimits, members: Sequence[str] | None = None) -> Iterator[Read]:
    """Files of one class folder (recursively, sorted), or one :class:`Read` per name in ``members``, in that
    order; links leading outside the folder are not followed."""
    root = path.resolve()
    files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file() or p.is_symlink()}
    inside = {p: p.resolve().is_relative_to(root) for p in files.values()}
    total = sum(p.stat().st_size for p in files.values() if inside[p] and p.is_file())
    problem = _archive_problem(len(files), total, limits)
    if problem:
        yield from _for_each(problem, members)
        return
    for name in files if members is None else members:
        yield _read_folder_file(name, files.get(name), inside)


def _read_folder_file(name: str, p: Path | None, inside: dict[Path, bool]) -> Read:
    if problem := _name_problem(name):
        return problem
    if p is None:
        return Read(name, None, "missing", f"no file {name!r} in the class folder")
    if not inside[p]:
        return Read(name, None, "unsafe_path", "a link leading outside the class folder; not read")
    if not p.is_file():
        return Read(name, None, "corrupt", "a dangling link")
    try:
        return Read(name, p.read_bytes())
    except OSError as e:
        return Read(name, None, "corrupt", f"cannot read: {e}")


def read_members(path: Path, limits: IngestLimits, members: Sequence[str] | None = None) -> Iterator[Read]:
    """The members of one class archive or class folder, all or those named in ``members`` (one :class:`Read`
    each, in that order), within ``limits``."""
    reader = read_folder if path.is_dir() else read_zip
    return reader(path, limits, members)
