"""Promote the best trial of a sweep to the MLflow Model Registry: `python experiments/promote.py`.

`promote.study_name=NAME` or `promote.parent_run_id=ID` picks the sweep (default: the latest); `promote.force=true`
moves the champion alias even to a model that tests worse."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="promote_app")
def main(cfg: DictConfig) -> None:
    from hydra.utils import instantiate

    instantiate(cfg.promote, _convert_="all")


if __name__ == "__main__":
    main()
