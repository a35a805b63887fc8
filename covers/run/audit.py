"""The data audit of a composed config (``python experiments/audit.py``): ``data`` names the source, ``clean`` the
cleaning rules training uses too, ``audit`` the anomaly rules, the report and the output folder."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from covers.audit.audit import audit_source, log_audit
from covers.data.prepare import resolve_source
from covers.tracking import runs

log = logging.getLogger(__name__)


class LeakageError(CompactHydraException, ValueError):
    """Duplicate groups straddle splits: the audit wrote its report but no manifest (Hydra prints the message)."""


def run_audit(cfg: DictConfig) -> dict[str, Any]:
    """Audit the configured source into ``audit.out`` and log it to MLflow; the report (a dict)."""
    d, a = cfg.data, cfg.audit
    demo = OmegaConf.to_container(d.demo) if d.get("demo") else None
    source = resolve_source(d.name, d.source, Path(cfg.paths.cache_dir), demo)
    split = {"val_fraction": d.val_fraction, "test_fraction": d.test_fraction, "seed": d.split_seed}
    out = Path(a.out)
    report = audit_source(
        source,
        out,
        instantiate(cfg.clean.limits),
        instantiate(cfg.clean.duplicates),
        instantiate(a.anomalies),
        split,
        a.report.closest_pairs,
        a.report.samples_per_class,
    )
    where = [f"audit report: {(out / 'report.md').absolute()}"]
    if a.log_mlflow:
        log.info("logging the audit to the MLflow experiment %s", a.experiment)
        t = cfg.tracking
        report["mlflow_run_id"] = log_audit(report, out, t.uri, a.experiment, t.artifact_root)
        uri = shlex.quote(runs.resolve_sqlite_uri(t.uri))
        where.append(f"MLflow run {report['mlflow_run_id']} (experiment {a.experiment})")
        where.append(f"open it with: mlflow ui --backend-store-uri {uri}")
    if report["leakage"]:
        raise LeakageError(
            f"{report['leakage']} duplicate groups straddle splits; no manifest written (see {out / 'report.md'})"
        )
    log.info("; ".join(where))
    return report
