"""Run kind ``lr_find``: the lr range test on the configured data, model, freezing and loss, as an MLflow run
(tag ``covers.kind=lr_find``) with its curve, plot and suggestions; nothing is trained."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from covers.run.context import build_context, tracked_run
from covers.run.finetune import build_training, range_test
from covers.run.record import log_run_record
from covers.training.lr_finder import log_lr_find


def run_lr_find(cfg: DictConfig, on_epoch_end=None) -> dict[str, Any]:
    """The range test; returns its suggestions (``valley``, ``minimum``, ``steepest``) and the run id."""
    with tracked_run(cfg, f"lr-find {cfg.model.name}", **{"covers.kind": "lr_find"}) as run:
        ctx = build_context(cfg)
        log_run_record(cfg, ctx.bundle, ctx.spec)
        result = range_test(cfg, build_training(cfg, ctx), ctx)
        log_lr_find(result, cfg.lr_find.suggestion)
    return {"suggestions": result.suggestions, "run_id": run.info.run_id}
