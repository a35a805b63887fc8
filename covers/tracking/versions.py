"""The installed versions of packages: pins for a registered model, provenance for a measured figure."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version


def installed_versions(packages: Iterable[str]) -> dict[str, str | None]:
    """Each package's installed version (``importlib.metadata``), ``None`` for one that is not installed."""
    versions: dict[str, str | None] = {}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions
