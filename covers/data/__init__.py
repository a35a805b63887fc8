"""Data: genre archives → scan → split manifest → decode-once store → loaders."""

from covers.data.archives import Cover, Rejection, ScanResult, decode_rgb, scan_source
from covers.data.prepare import DataBundle, prepare_data
from covers.data.split import build_manifest, read_manifest, write_manifest

__all__ = [
    "Cover",
    "DataBundle",
    "Rejection",
    "ScanResult",
    "build_manifest",
    "decode_rgb",
    "prepare_data",
    "read_manifest",
    "scan_source",
    "write_manifest",
]
