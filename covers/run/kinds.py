"""The run kinds, chosen by the config's ``kind`` key: ``finetune`` (default), ``knn`` (the baseline) and
``lr_find`` (the range test). Each takes the composed config and returns its results as a dict."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from covers.run.finetune import train
from covers.run.knn import run_knn
from covers.run.lr_find import run_lr_find

KINDS: dict[str, Callable[..., dict[str, Any]]] = {"finetune": train, "knn": run_knn, "lr_find": run_lr_find}


class RunKindError(CompactHydraException, ValueError):
    """``kind`` names no run kind, or not the one the model needs (Hydra prints the message alone)."""


def run(cfg: DictConfig, on_epoch_end=None) -> dict[str, Any]:
    """Run the configured kind (a sweep trial or a single run)."""
    if cfg.kind not in KINDS:
        raise RunKindError(f"kind={cfg.kind!r}; choose one of {', '.join(KINDS)}")
    if cfg.kind != "knn" and str(cfg.model.get("_target_", "")).endswith("create_knn_model"):
        raise RunKindError(f"model=knn is the kNN baseline, not kind={cfg.kind}: use kind=knn or experiment=knn")
    return KINDS[cfg.kind](cfg, on_epoch_end)
