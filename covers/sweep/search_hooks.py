"""Define-by-run search spaces for ``hydra.sweeper.custom_search_space``: functions ``(cfg, trial) -> None`` that
suggest parameters depending on the ones already drawn (as hydra-optuna-sweeper's ``custom_search_space``).

Use one with ``hydra.sweeper.custom_search_space=covers.sweep.search_hooks.focal_gamma``, or name your own
function the same way (any importable ``module.function``)."""

from __future__ import annotations

import optuna
from omegaconf import DictConfig, OmegaConf


def focal_gamma(cfg: DictConfig, trial: optuna.Trial) -> None:
    """The focal loss's γ only when the loss is focal: searched with ``loss=choice(...)`` in ``params:``, γ in
    [0, 5] for the trials that draw ``focal`` (the other losses have no γ)."""
    loss = trial.params.get("loss", OmegaConf.select(cfg, "hydra.runtime.choices.loss"))
    if loss == "focal":
        trial.suggest_float("loss.gamma", 0.0, 5.0)
