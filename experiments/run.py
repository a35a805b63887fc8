"""Train one configuration, or sweep with `-m` (Optuna sweeper): `python experiments/run.py -m`."""

import logging

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from covers.run.finetune import train
    from covers.tracking.runs import resolve_sqlite_uri

    out = train(cfg)
    if cfg.trial.number is None:  # a single run ends saying what it reached and where to look
        log.info(
            "run %s finished: %s=%.4f at epoch %d of %d; open it with: mlflow ui --backend-store-uri %s",
            out["run_id"],
            cfg.optimized_metric,
            out[cfg.optimized_metric],
            out["summary/best_epoch"],
            len(out["history"]),
            resolve_sqlite_uri(cfg.tracking.uri),
        )
    return out[cfg.optimized_metric]


if __name__ == "__main__":
    main()
