"""Installed package versions: the pins of a registered model and the provenance of a benchmark figure."""

from __future__ import annotations

import timm

from covers.serving.promote import SERVING_PACKAGES, requirements
from covers.tracking.versions import installed_versions


def test_installed_versions_name_each_package_and_none_for_a_missing_one():
    assert installed_versions(["timm", "no-such-package-covers"]) == {
        "timm": timm.__version__,
        "no-such-package-covers": None,
    }


def test_a_registered_model_pins_every_installed_serving_package():
    pins = requirements()
    assert [p.split("==")[0] for p in pins] == list(SERVING_PACKAGES)
    assert f"timm=={timm.__version__}" in pins and all("==" in p for p in pins)
