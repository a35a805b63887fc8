"""Sweeps: per-trial start-up vs one epoch of the default config, pruning vs none, one worker vs two.

    python -m benchmarks.sweep --source ../shared/data/cifar10-covers    # full (a few minutes per sweep)
    python -m benchmarks.sweep --smoke                                    # tiny demo sweeps, correctness only

Every sweep is a real `python experiments/run.py -m` in a subprocess, read back from its Optuna storage and
MLflow store; :func:`phases` splits each trial's time outside its epochs by the stores' timestamps."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import mlflow
import optuna
from optuna.trial import TrialState

from benchmarks._timing import machine, report

ROOT = Path(__file__).resolve().parents[1]


def subset(source: Path, per_class: int, out: Path) -> Path:
    """The first ``per_class`` images of each class zip (a CPU-sized slice of a real data set)."""
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(source.glob("*.zip")):
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out / src.name, "w") as zout:
            for name in sorted(n for n in zin.namelist() if n.lower().endswith(".png"))[:per_class]:
                zout.writestr(name, zin.read(name))
    return out


def phases(study: optuna.Study, client: mlflow.MlflowClient, workers: int = 1) -> dict[str, float]:
    """Where a trial's time goes outside its epochs, from the stores' own clocks (Optuna's trial start/complete,
    MLflow's metric timestamps; an epoch's metrics are logged as it ends, ``epoch_time_s`` gives its start):

    - start-up: trial asked -> first epoch starts (Hydra job: config composition and output folder; data; model
      with weights; MLflow run, params and config artifacts; pruning link to the trial);
    - wrap-up: last epoch ends -> trial told (final metrics, learning-curve and confusion-matrix plots, best-epoch
      weights; Hydra job end);
    - between epochs: metric logging, pruning report, best-weights copy;
    - between trials (one worker only): previous trial told -> next trial asked (sweeper: summary on the
      parent run, failure and budget checks, sampling).

    Each of the ``workers`` processes starts cold (imports, decoded store, pretrained model): warm start-up is the
    mean over the trials after the first ``workers``."""
    trials = sorted(
        (t for t in study.trials if t.user_attrs.get("mlflow_run_id") and t.datetime_complete is not None),
        key=lambda t: t.datetime_start,
    )
    rows, previous_end = [], None
    for t in trials:
        hist = sorted(
            client.get_metric_history(t.user_attrs["mlflow_run_id"], "epoch/epoch_time_s"), key=lambda m: m.step
        )
        if not hist:
            continue
        start, end = t.datetime_start.timestamp(), t.datetime_complete.timestamp()
        ends = [m.timestamp / 1000 for m in hist]
        rows.append(
            {
                "startup": ends[0] - hist[0].value - start,
                "wrapup": end - ends[-1],
                "between_epochs": [ends[i] - hist[i].value - ends[i - 1] for i in range(1, len(hist))],
                "between_trials": start - previous_end if workers == 1 and previous_end is not None else None,
                "epochs": [m.value for m in hist],
            }
        )
        previous_end = end
    warm = rows[workers:] or rows

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    return {
        "first_trial_startup_s": rows[0]["startup"] if rows else float("nan"),
        "warm_trial_startup_s": mean([r["startup"] for r in warm]),
        "wrapup_s": mean([r["wrapup"] for r in rows]),
        "between_epochs_s": mean([g for r in rows for g in r["between_epochs"]]),
        "between_trials_s": mean([r["between_trials"] for r in rows if r["between_trials"] is not None]),
        "mean_epoch_s": mean([e for r in rows for e in r["epochs"]]),
    }


def sweep(root: Path, name: str, data: list[str], *overrides: str, workers: int = 1) -> dict:
    """Run one sweep (``workers`` trials at once through the joblib launcher); return wall time, trial-epochs,
    best value and the per-trial time outside the epochs."""
    if workers > 1:
        overrides = (*overrides, "hydra/launcher=joblib", f"hydra.sweeper.n_jobs={workers}")
    cmd = [
        sys.executable,
        "experiments/run.py",
        "-m",
        f"paths.root_dir={root}",
        f"hydra.sweep.dir={root}/multirun",
        f"hydra.sweeper.study_name={name}",
        "trainer.device=cpu",
        *data,
        *overrides,
    ]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{root}/mlruns/optuna.db")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root}/mlruns/mlflow.db")
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    row = {
        "sweep": name,
        "wall_s": wall,
        "trials": len(study.trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in study.trials),
        "trial_epochs": sum(len(t.intermediate_values) for t in done),
        "summary/best_val_acc": study.best_value,
        **phases(study, client, workers),
    }
    row["startup_per_epoch"] = row["warm_trial_startup_s"] / row["mean_epoch_s"]
    return row


def run(source: Path | None = None, per_class: int = 100, n_trials: int = 8, epochs: int = 4, smoke: bool = False):
    """The default configuration's per-trial overhead (demo data, 64 px, default model), then three sweeps with
    the same budget on ``source`` (or the demo data): no pruning, median pruning, two workers without pruning."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if smoke:
            n_trials, epochs = 2, 2
        search = ["hydra/sweeper/sampler=random", "optim.lr=tag(log, interval(1e-5, 3e-2))"]
        rows = []
        if not smoke:  # the default config: only the epochs and the trial count fixed, the default search space
            default = [f"hydra.sweeper.n_trials={n_trials}", f"trainer.epochs=choice({epochs})"]
            rows.append(sweep(tmp / "d", "default_config", [], *default, *search, "hydra/sweeper/pruner=none"))
        if smoke or source is None:
            data = ["data.image_size=32", "data.demo.per_class=20"]
        else:
            data = ["data=archives", f"data.source={subset(source, per_class, tmp / 'data')}", "data.image_size=32"]
        common = [f"hydra.sweeper.n_trials={n_trials}", f"trainer.epochs={epochs}", *search]
        full = sweep(tmp / "a", "no_pruning", data, *common, "hydra/sweeper/pruner=none")
        rows.append(full)
        ratios = {}
        if not smoke:  # smoke: one sweep shows the phases are measured (two trials would never be pruned)
            pruned = sweep(
                tmp / "b",
                "median_pruning",
                data,
                *common,
                "hydra/sweeper/pruner=median",
                "hydra.sweeper.pruner.n_startup_trials=2",
                "hydra.sweeper.pruner.n_warmup_steps=0",
            )
            two = sweep(tmp / "c", "two_workers", data, *common, "hydra/sweeper/pruner=none", workers=2)
            rows += [pruned, two]
            ratios = {
                "trial_epochs_pruned_over_full": pruned["trial_epochs"] / full["trial_epochs"],
                "wall_two_workers_over_one": two["wall_s"] / full["wall_s"],
                "default_config_startup_per_epoch": rows[0]["startup_per_epoch"],
            }
    return {"machine": machine(), "n_trials": n_trials, "epochs": epochs, "rows": rows, "ratios": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="a directory of class zips (default: the demo data)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--n-trials", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    result = run(args.source, args.per_class, args.n_trials, args.epochs, args.smoke)
    report(result, args.json)


if __name__ == "__main__":
    main()
