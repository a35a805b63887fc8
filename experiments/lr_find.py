"""LR range test on the configured data and model: `python experiments/lr_find.py [lr_find.num_steps=300]`.

The same as `python experiments/run.py kind=lr_find`: prints the suggestions (valley, minimum/10, steepest) and
logs the curve and plot to MLflow. `lr_find.enabled=true` runs the test inside a training run and trains with
`lr_find.suggestion`."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from covers.run.lr_find import run_lr_find

    for name, lr in run_lr_find(cfg)["suggestions"].items():
        print(f"{name:>9}: {lr:.3g}")


if __name__ == "__main__":
    main()
