"""Audit a data source: `python experiments/audit.py data=archives data.source=DIR audit.out=OUT`."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="audit_app")
def main(cfg: DictConfig) -> None:
    from covers.run.audit import run_audit

    run_audit(cfg)


if __name__ == "__main__":
    main()
