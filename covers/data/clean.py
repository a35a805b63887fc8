"""Cleaning a source: ingest rejections, duplicates resolved by policy, and a leakage-safe split, checked.

The audit and every training run's default manifest go through :func:`clean_scan`, so both agree."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from covers.data.archives import Cover, Measure, Rejection, ScanResult, scan_source
from covers.data.dedup import DuplicateRules, Duplicates, find_duplicates, fingerprint
from covers.data.members import IngestLimits
from covers.data.split import build_manifest, count_leakage

log = logging.getLogger(__name__)


@dataclass
class CleanResult:
    """A scan, its duplicates, the split manifest of the kept covers and its leakage count."""

    scan: ScanResult
    duplicates: Duplicates
    manifest: pd.DataFrame
    leakage: int

    @property
    def kept(self) -> list[Cover]:
        return [c for c, k in zip(self.scan.covers, self.duplicates.keep, strict=True) if k]

    @property
    def rejected(self) -> list[Rejection]:
        return self.scan.rejected + self.duplicates.rejected


def clean_scan(
    scan: ScanResult, rules: DuplicateRules, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> CleanResult:
    """Drop duplicates by ``rules`` and split the rest 8:1:1 with look-alike groups kept in one split.

    ``scan`` must have been made with a ``measure`` that includes :func:`covers.data.dedup.fingerprint`."""
    dups = find_duplicates(scan.covers, scan.measures, rules)
    group_of = {(c.archive, c.member): int(g) for c, g in zip(scan.covers, dups.split_group, strict=True)}
    kept = [c for c, k in zip(scan.covers, dups.keep, strict=True) if k]
    manifest = build_manifest(kept, val_fraction, test_fraction, seed, [group_of[(c.archive, c.member)] for c in kept])
    leakage = count_leakage(manifest, group_of)
    if dups.rejected:
        log.warning(
            "dropped %d duplicate copies in %d groups (%d across classes, cross_class=%s)",
            len(dups.rejected),
            len(dups.groups),
            len(dups.cross_class),
            rules.cross_class,
        )
    return CleanResult(scan, dups, manifest, leakage)


def clean_source(
    source: str | Path,
    limits: IngestLimits | None = None,
    rules: DuplicateRules | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    measure: Measure | None = None,
) -> CleanResult:
    """Scan ``source`` (``measure`` adds fields to the fingerprint of every cover) and clean it."""

    def fingerprint_and_measure(im):
        return {**fingerprint(im), **(measure(im) if measure else {})}

    scan = scan_source(source, limits or IngestLimits(), fingerprint_and_measure)
    return clean_scan(scan, rules or DuplicateRules(), val_fraction, test_fraction, seed)
