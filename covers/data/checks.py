"""A given manifest is input too: its rows pass the ingest checks against the source before anything trains on them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from covers.data.archives import Rejection, check_member, iter_entries
from covers.data.members import IngestLimits, is_unsafe, read_members


def check_manifest(source: Path, manifest: pd.DataFrame, limits: IngestLimits) -> tuple[pd.DataFrame, list[Rejection]]:
    """The rows of ``manifest`` that pass ingest's checks against ``source`` (in order), and why the others fail.

    A row's archive must be a class archive or folder directly in ``source``; its member is read like any other
    (path, size and ratio limits), decoded within the pixel limit, and its bytes must have the row's sha256. A row
    repeating an earlier row's archive and member is a ``duplicate``."""
    entries = {archive: path for archive, label, path in iter_entries(source) if label}
    manifest = manifest.reset_index(drop=True)
    keep = ~manifest.duplicated(["archive", "member"]).to_numpy()
    rejected = [
        Rejection(r.archive, r.member, "duplicate", "the manifest lists this member more than once")
        for r in manifest[~keep].itertuples()
    ]
    for archive, index in manifest[keep].groupby("archive", sort=False).groups.items():
        rows = manifest.loc[index]
        if archive not in entries:
            reason, detail = _missing_archive(source, archive)
            rejected += [Rejection(archive, m, reason, detail) for m in rows["member"]]
            keep[index] = False
            continue
        reads = read_members(entries[archive], limits, list(rows["member"]))
        for i, row, read in zip(index, rows.itertuples(), reads, strict=True):
            problem = _row_problem(row, read.data, limits) if not read.reason else (read.reason, read.detail)
            if problem:
                rejected.append(Rejection(archive, row.member, *problem))
                keep[i] = False
    return manifest[keep].reset_index(drop=True), rejected


def _missing_archive(source: Path, archive: str) -> tuple[str, str]:
    if is_unsafe(archive):
        return "unsafe_path", f"absolute path or '..' leading outside data.source={source}; not read"
    return "missing", f"no class archive or folder {archive!r} in data.source={source}"


def _row_problem(row: Any, data: bytes, limits: IngestLimits) -> tuple[str, str] | None:
    item, _ = check_member(row.archive, row.label, row.member, data, limits)
    if isinstance(item, Rejection):
        return item.reason, item.detail
    if item.sha256 != row.sha256:
        return "sha256_mismatch", f"the member's sha256 is {item.sha256[:12]}…, the manifest says {row.sha256[:12]}…"
    return None
