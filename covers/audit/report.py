"""The audit report: a JSON document for machines and a Markdown page (with the plots) for people."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

SHOWN_ROWS = 50  # rows per Markdown table; report.json holds them all


def _table(rows: list[dict[str, Any]] | pd.DataFrame, columns: list[str] | None = None) -> str:
    df = pd.DataFrame(rows)
    if df.empty:
        return "_none_\n"
    df = df[columns] if columns else df
    more = f"\n_… and {len(df) - SHOWN_ROWS} more (see report.json)_\n" if len(df) > SHOWN_ROWS else ""
    return df.head(SHOWN_ROWS).to_markdown(index=False) + "\n" + more


def _feature_table(eda: dict[str, Any], features: list[str]) -> str:
    rows = [
        {
            "class": label,
            **{
                f: f"{d['features'][f]['median']:.3g} [{d['features'][f]['q25']:.3g}, {d['features'][f]['q75']:.3g}]"
                for f in features
            },
        }
        for label, d in eda.items()
    ]
    return _table(rows)


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in counter.most_common()) or "none"


def render_markdown(report: dict[str, Any], plots: dict[str, str]) -> str:
    """The report as Markdown; ``plots`` maps a title to a PNG file name beside the report."""
    reasons = Counter(r["reason"] for r in report["rejected"])
    kinds = Counter(a["kind"] for a in report["anomalies"])
    dup = report["settings"]["duplicates"]
    lines = [
        f"# Data audit: `{report['source']}`",
        "",
        f"- members read: **{report['members_total']}**, kept: **{report['kept']}**, "
        f"rejected: **{len(report['rejected'])}** ({_counts(reasons)})",
        f"- classes: {len(report['classes'])}; duplicate groups: {len(report['duplicate_groups'])} "
        f"({len(report['cross_class_duplicates'])} across classes, policy `{dup['cross_class']}`)",
        f"- flagged but kept: {len(report['anomalies'])} ({_counts(kinds)})",
        f"- split: {report['split_totals']}; **leakage: {report['leakage']}** duplicate groups across splits",
        "",
        "## Classes and split",
        "",
        _table([{"class": c, **s} for c, s in report["split"].items()]),
        "## Rejected",
        "",
        _table(report["rejected"], ["reason", "archive", "member", "detail"]),
        "## Duplicates",
        "",
        f"Near duplicates: hash distance <= {dup['hash_distance']} and thumbnail similarity >= {dup['similarity']}; "
        f"look-alikes kept in one split: <= {dup['group_hash_distance']} and >= {dup['group_similarity']}.",
        "",
        _table(
            [
                {**g, "members": ", ".join(f"{m['archive']}:{m['member']}" for m in g["members"])}
                for g in report["duplicate_groups"]
            ]
        ),
        "### Closest pairs (to tune the thresholds)",
        "",
        _table(report["closest_pairs"]),
        "## Anomalies (kept)",
        "",
        _table(report["anomalies"], ["kind", "archive", "member", "detail"]),
        "## Distributions (kept covers): median [q25, q75]",
        "",
        _feature_table(report["eda"], ["width", "height", "aspect", "kbytes"]),
        _feature_table(report["eda"], ["brightness", "contrast", "saturation", "colourfulness"]),
        _table([{"class": c, "mean RGB": s["mean_rgb"]} for c, s in report["colour"].items()]),
    ]
    for title, name in plots.items():
        lines += [f"### {title}", "", f"![{title}]({name})", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], plots: dict[str, str], out: Path) -> None:
    """``out/report.json`` and ``out/report.md``."""
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(render_markdown(report, plots))
