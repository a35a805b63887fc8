"""Shared timing helpers: interleaved repeats, best-of, machine description."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable

import torch

from covers.tracking.versions import installed_versions


def model_parser(doc: str | None) -> argparse.ArgumentParser:
    """Command line shared by the model benchmarks: ``--smoke``, ``--model``, ``--size``, ``--batch``, ``--device``,
    ``--json``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few steps, for correctness only")
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="cpu", help="cpu | cuda (covers' runtime for it: AMP on CUDA)")
    parser.add_argument("--json", help="also write the result here")
    return parser


def best_of(fn: Callable[[], float | None], repeats: int) -> float:
    """Run ``fn`` ``repeats`` times; return the fastest wall time (``fn`` may return its own measured seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        measured = fn()
        times.append(measured if measured is not None else time.perf_counter() - start)
    return min(times)


# the packages whose versions decide what a training or a figure is: nothing pins them (no lock file), so a result
# that moves between days with the same commit can be traced to a changed version
PACKAGES = ("timm", "albumentations", "opencv-python-headless", "numpy", "pillow", "scikit-learn", "optuna", "mlflow")


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """The installed version of each package (``absent`` for one not installed)."""
    return {name: v or "absent" for name, v in installed_versions(names).items()}


def machine() -> dict[str, str | dict[str, str]]:
    """What the numbers were measured on, and with which package versions."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "date": time.strftime("%Y-%m-%d"),
        "packages": package_versions(),
    }


def print_table(rows: list[dict]) -> None:
    """A Markdown table of ``rows`` (same keys) on stdout."""
    if not rows:
        return
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in keys) + " |")


def report(result: dict, json_path: str | None = None) -> None:
    """Print the settings as JSON and the rows as a table; optionally save everything as JSON."""
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    print_table(result["rows"])
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
