"""Train one configuration, or sweep with `-m` (Optuna sweeper): `python experiments/run.py -m`.

`kind=knn` runs the kNN baseline instead (`experiment=knn` sweeps it), `kind=lr_find` the lr range test."""

import logging

import hydra
from omegaconf import DictConfig

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from covers.run.kinds import run
    from covers.tracking.runs import resolve_sqlite_uri

    out = run(cfg)
    where = f"open it with: mlflow ui --backend-store-uri {resolve_sqlite_uri(cfg.tracking.uri)}"
    if cfg.kind == "lr_find":
        suggestions = ", ".join(f"{name} {lr:.3g}" for name, lr in out["suggestions"].items())
        log.info("lr finder run %s suggests: %s; %s", out["run_id"], suggestions, where)
        return None
    if cfg.trial.number is None:  # a single run ends saying what it reached and where to look
        log.info(
            "run %s finished: %s=%.4f at epoch %d of %d; %s",
            out["run_id"],
            cfg.optimized_metric,
            out[cfg.optimized_metric],
            out["summary/best_epoch"],
            len(out["history"]),
            where,
        )
    return out[cfg.optimized_metric]


if __name__ == "__main__":
    main()
