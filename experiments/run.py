"""Train one configuration, or sweep with `-m` (Optuna sweeper): `python experiments/run.py -m`."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from covers.task import train

    return train(cfg)[cfg.optimized_metric]


if __name__ == "__main__":
    main()
