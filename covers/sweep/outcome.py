"""What a sweep tells its user in the terminal and in its folder: trial lines, the closing summary and
``optimization_results.yaml`` (as hydra-optuna-sweeper writes it)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import optuna
import yaml
from optuna.trial import TrialState

from covers.sweep.budget import best_trial, counted, own
from covers.sweep.trial_reporter import INTERVAL_ATTR

RESULTS_FILE = "optimization_results.yaml"


def format_params(params: dict[str, Any]) -> str:
    """``optim.lr=0.005312 freeze.n_frozen=1`` (floats to 4 significant digits; the job gets exact values)."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


class BestInterval(NamedTuple):
    """The best trial's 95 % interval and how many complete trials reach into it (the best included): trials the
    validation split cannot tell from the best."""

    low: float
    high: float
    within: int
    complete: int


def best_interval(study: optuna.Study) -> BestInterval | None:
    """:class:`BestInterval` of the study's best trial, None when it has no recorded interval (the job records it:
    :data:`~covers.sweep.trial_reporter.INTERVAL_ATTR`)."""
    best = best_trial(study)
    if best is None or INTERVAL_ATTR not in best.user_attrs:
        return None
    low, high = best.user_attrs[INTERVAL_ATTR]
    values = [t.value for t in own(study.get_trials(deepcopy=False)) if t.state == TrialState.COMPLETE]
    sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
    edge = low if sign == 1 else high
    return BestInterval(low, high, sum(sign * (v - edge) >= 0 for v in values), len(values))


def write_results(folder: str | Path, study: optuna.Study) -> Path | None:
    """``optimization_results.yaml`` (``name``, ``best_params``, ``best_value``) in the sweep folder; None without a
    completed trial."""
    best = best_trial(study)
    if best is None:
        return None
    path = Path(folder) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"name": study.study_name, "best_params": best.params, "best_value": float(best.value)}
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def summary_lines(
    study: optuna.Study, metric: str, parent: str | None, tracking_uri: str | None, results: Path | None
) -> list[str]:
    """The sweep's closing lines: counts, the best trial, where to look."""
    trials = counted(study.get_trials(deepcopy=False))
    states = Counter(t.state for t in trials)
    words = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}
    counts = ", ".join(f"{states[state]} {word}" for state, word in words.items())
    lines = [f"sweep {study.study_name} done: {len(trials)} trials ({counts})"]
    later = len(own(study.get_trials(deepcopy=False))) - len(trials)
    if later:  # multi-fidelity: promoted configurations' later rungs
        lines[0] += f", and {later} later rung{'s' if later > 1 else ''} of promoted trials"
    best = best_trial(study)
    if best is not None:
        lines.append(f"best: trial {best.number}, {metric}={best.value:.4f}: {format_params(best.params)}")
        ci = best_interval(study)
        if ci is not None:
            line = f"its 95 % interval: {ci.low:.4f}-{ci.high:.4f}; {ci.within} of {ci.complete} complete trials"
            line += " (the best included) reach into it"
            if ci.within > 1:
                line += ": the validation split cannot tell them apart"
            lines.append(line)
    if parent:
        lines.append(f"MLflow parent run {parent}; open it with: mlflow ui --backend-store-uri {tracking_uri}")
    if results:
        lines.append(f"best parameters: {results}")
    return lines
