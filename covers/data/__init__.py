"""Data: genre archives → scan → cleaning (duplicates) → split manifest → decode-once store → loaders."""

from covers.data.archives import (
    Cover,
    DataSourceError,
    DataSourceNotFound,
    Rejection,
    ScanResult,
    decode_rgb,
    scan_source,
)
from covers.data.clean import CleanResult, clean_scan, clean_source
from covers.data.dedup import DuplicateRules, find_duplicates, fingerprint
from covers.data.members import IngestLimits
from covers.data.prepare import DataBundle, prepare_data
from covers.data.split import build_manifest, count_leakage, read_manifest, write_manifest

__all__ = [
    "CleanResult",
    "Cover",
    "DataBundle",
    "DataSourceError",
    "DataSourceNotFound",
    "DuplicateRules",
    "IngestLimits",
    "Rejection",
    "ScanResult",
    "build_manifest",
    "clean_scan",
    "clean_source",
    "count_leakage",
    "decode_rgb",
    "find_duplicates",
    "fingerprint",
    "prepare_data",
    "read_manifest",
    "scan_source",
    "write_manifest",
]
