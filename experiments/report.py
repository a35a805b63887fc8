"""Validation or learning curve of a sweep, from MLflow: `python experiments/report.py sweep=<study or run id>`;
the results document from several sweeps: `python experiments/report.py "sweeps=[a,b]" out=docs/results.md`."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    from covers.reporting.curves import report

    t = cfg.tracking
    if cfg.sweeps:
        from covers.reporting.results_doc import write_results

        print(write_results(t.uri, t.experiment, list(cfg.sweeps), cfg.out))
        return
    out = report(t.uri, t.experiment, cfg.sweep, cfg.param, t.get("artifact_root"))
    print(out["points"].drop(columns=["run_ids"]).to_string(index=False))


if __name__ == "__main__":
    main()
