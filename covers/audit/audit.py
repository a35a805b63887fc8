"""The data audit: clean a source exactly as training does, describe it, flag anomalies, write and log a report."""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
from PIL import Image

from covers.audit import plots
from covers.audit.anomalies import AnomalyRules, flag_anomalies
from covers.audit.eda import FEATURES, colour_summary, describe, feature_table, image_stats
from covers.audit.report import write_report
from covers.data import CleanResult, DuplicateRules, IngestLimits, clean_source, write_manifest
from covers.data.dedup import closest_pairs
from covers.data.split import SPLITS
from covers.data.store import decode_rows
from covers.tracking import runs

log = logging.getLogger(__name__)

THUMB_PX = 96


def _name(df: pd.DataFrame, i: int) -> str:
    return f"{df.at[i, 'archive']}:{df.at[i, 'member']}"


def pair_verdicts(pairs: pd.DataFrame, table: pd.DataFrame, measures: list[dict], rules: DuplicateRules) -> list[dict]:
    """Closest pairs as report rows: both covers, their classes, distance, similarity and the rules' verdict."""
    rows = []
    for p in pairs.itertuples():
        if measures[p.i]["pixel_sha256"] == measures[p.j]["pixel_sha256"]:
            verdict = "exact duplicate"
        elif p.distance <= rules.hash_distance and p.similarity >= rules.similarity:
            verdict = "near duplicate"
        elif p.distance <= rules.group_hash_distance and p.similarity >= rules.group_similarity:
            verdict = "look-alike (same split)"
        else:
            verdict = "distinct"
        rows.append(
            {
                "a": _name(table, p.i),
                "b": _name(table, p.j),
                "classes": f"{table.at[p.i, 'label']} / {table.at[p.j, 'label']}",
                "distance": int(p.distance),
                "similarity": round(float(p.similarity), 3),
                "verdict": verdict,
            }
        )
    return rows


def build_report(
    source: Path, clean: CleanResult, table: pd.DataFrame, anomalies: list[dict], pairs: list[dict]
) -> dict[str, Any]:
    """Everything the audit found, as plain JSON-able data."""
    kept = table[clean.duplicates.keep]
    split = (
        clean.manifest.groupby(["label", "split"]).size().unstack(fill_value=0).reindex(columns=SPLITS, fill_value=0)
    )
    return {
        "source": str(source),
        "classes": {str(k): int(v) for k, v in kept["label"].value_counts().sort_index().items()},
        "members_total": len(clean.scan.covers) + len(clean.scan.rejected),
        "kept": len(kept),
        "rejected": [asdict(r) for r in clean.rejected],
        "duplicate_groups": clean.duplicates.groups,
        "cross_class_duplicates": clean.duplicates.cross_class,
        "closest_pairs": pairs,
        "anomalies": anomalies,
        "split": {str(k): {s: int(v) for s, v in row.items()} for k, row in split.iterrows()},
        "split_totals": {s: int(split[s].sum()) for s in SPLITS},
        "leakage": clean.leakage,
        "eda": describe(kept),
        "colour": colour_summary(kept, clean.scan.measures),
        "pillow_max_image_pixels": Image.MAX_IMAGE_PIXELS,
    }


def _thumbs(source: Path, table: pd.DataFrame, index: list[int]) -> list[np.ndarray]:
    return list(decode_rows(source, table.loc[index, ["archive", "member"]], THUMB_PX, progress=False))


def save_plots(
    source: Path, out: Path, clean: CleanResult, table: pd.DataFrame, report: dict, rules: DuplicateRules, samples: int
) -> dict[str, str]:
    """Draw every figure into ``out`` as PNG; returns {title: file name}."""
    kept = table[clean.duplicates.keep]
    label_of = dict(zip(table["archive"], table["label"], strict=False))
    rejected = pd.DataFrame(report["rejected"], columns=["archive", "member", "reason", "detail"])
    rejected["label"] = [label_of.get(a, Path(a).stem) for a in rejected["archive"]]
    balance = pd.crosstab(rejected["label"], rejected["reason"]).reindex(
        sorted(set(table["label"]) | set(rejected["label"])), fill_value=0
    )
    balance.insert(0, "kept", kept["label"].value_counts().reindex(balance.index, fill_value=0))
    rng = np.random.default_rng(0)
    grid = {
        label: _thumbs(source, table, sorted(rng.choice(part.index, min(samples, len(part)), replace=False).tolist()))
        for label, part in kept.groupby("label")
    }
    nearest = closest_pairs(clean.scan.measures, n=len(table), k=1)
    figures = {
        "Class balance": (
            "class_balance.png",
            plots.plot_stacked_bars(balance, "members", "class balance: kept and rejected"),
        ),
        "Size and file size by genre": (
            "geometry.png",
            plots.plot_by_class(kept, FEATURES[:4], "geometry and file size (kept covers)"),
        ),
        "Colour statistics by genre": (
            "colour_stats.png",
            plots.plot_by_class(kept, FEATURES[4:], "brightness, contrast, saturation, colourfulness"),
        ),
        "Colour modes by genre": (
            "modes.png",
            plots.plot_stacked_bars(pd.crosstab(kept["label"], kept["mode"]), "covers", "colour mode (as stored)"),
        ),
        "Colour histograms by genre": ("colour_histograms.png", plots.plot_colour_histograms(report["colour"])),
        "Sample covers per genre": ("samples.png", plots.plot_image_grid(grid)),
        "Nearest neighbours": (
            "nearest.png",
            plots.plot_nearest_distances(
                nearest["distance"].to_numpy(), nearest["similarity"].to_numpy(), rules.hash_distance, rules.similarity
            ),
        ),
    }
    top = nearest.head(6)
    if len(top):
        pair_rows = {
            f"d={p.distance} s={p.similarity:.2f}": _thumbs(source, table, [p.i, p.j]) for p in top.itertuples()
        }
        names = {
            f"d={p.distance} s={p.similarity:.2f}": [table.at[p.i, "member"][-28:], table.at[p.j, "member"][-28:]]
            for p in top.itertuples()
        }
        figures["Closest pairs"] = ("closest_pairs.png", plots.plot_image_grid(pair_rows, names))
    for name, fig in figures.values():
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
    return {title: name for title, (name, _) in figures.items()}


def audit_source(
    source: Path,
    out: Path,
    limits: IngestLimits,
    rules: DuplicateRules,
    anomaly_rules: AnomalyRules,
    split: dict[str, Any],
    closest_n: int = 20,
    samples_per_class: int = 8,
) -> dict[str, Any]:
    """Audit ``source`` into ``out``: report.json, report.md, PNG plots and (if leakage-free) manifest.csv."""
    out.mkdir(parents=True, exist_ok=True)
    clean = clean_source(
        source, limits, rules, split["val_fraction"], split["test_fraction"], split["seed"], image_stats
    )
    table = feature_table(clean.scan.covers, clean.scan.measures)
    anomalies = flag_anomalies(table[clean.duplicates.keep], anomaly_rules)
    pairs = pair_verdicts(closest_pairs(clean.scan.measures, closest_n), table, clean.scan.measures, rules)
    report = build_report(source, clean, table, anomalies, pairs)
    report["settings"] = {
        "limits": asdict(limits),
        "duplicates": asdict(rules),
        "anomalies": asdict(anomaly_rules),
        "split": split,
    }
    log.info("%d covers kept of %d; drawing the plots into %s", report["kept"], report["members_total"], out)
    names = save_plots(source, out, clean, table, report, rules, samples_per_class)
    report["plots"] = sorted(names.values())
    if clean.leakage == 0:
        write_manifest(clean.manifest, out / "manifest.csv")
    write_report(report, names, out)
    log.info(
        "audit of %s: %d kept, %d rejected, leakage %d -> %s",
        source,
        report["kept"],
        len(report["rejected"]),
        clean.leakage,
        out,
    )
    return report


def log_audit(
    report: dict[str, Any], out: Path, tracking_uri: str, experiment: str, artifact_root: str | None = None
) -> str:
    """Log the audit as an MLflow run in ``experiment``: settings as params, counts as metrics, ``out`` as artifacts."""
    runs.setup_tracking(tracking_uri, experiment, artifact_root)
    reasons = pd.Series([r["reason"] for r in report["rejected"]], dtype=str).value_counts()
    metrics = {
        "members_total": report["members_total"],
        "kept": report["kept"],
        "rejected": len(report["rejected"]),
        "duplicate_groups": len(report["duplicate_groups"]),
        "cross_class_duplicates": len(report["cross_class_duplicates"]),
        "anomalies": len(report["anomalies"]),
        "leakage": report["leakage"],
        **{f"rejected_{k}": int(v) for k, v in reasons.items()},
    }
    with runs.start_run(f"audit {Path(report['source']).name}", tags={"covers.kind": "audit"}) as run:
        runs.log_params({"source": report["source"], **runs.flatten(report["settings"])})
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(out))
        return run.info.run_id
