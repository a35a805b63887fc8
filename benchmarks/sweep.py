"""Sweeps: per-trial start-up vs one epoch, pruning vs none, one worker vs two.

    python -m benchmarks.sweep --source ../shared/data/cifar10-covers    # full (a few minutes per sweep)
    python -m benchmarks.sweep --smoke                                    # tiny demo sweeps, correctness only

Every sweep is a real `python experiments/run.py -m` in a subprocess, read back from its Optuna storage and
MLflow store. Start-up per trial = trial duration (Optuna) - the epochs' own time (MLflow `epoch_time_s`)."""

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


def sweep(root: Path, name: str, data: list[str], *overrides: str) -> dict:
    """Run one sweep; return wall time, trial-epochs, best value and per-trial start-up figures."""
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
    startups, epochs = [], []
    for t in study.trials:
        run_id = t.user_attrs.get("mlflow_run_id")
        if not run_id or t.datetime_complete is None:
            continue
        epoch_s = [m.value for m in client.get_metric_history(run_id, "epoch_time_s")]
        epochs += epoch_s
        startups.append((t.datetime_complete - t.datetime_start).total_seconds() - sum(epoch_s))
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    return {
        "sweep": name,
        "wall_s": wall,
        "trials": len(study.trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in study.trials),
        "trial_epochs": sum(len(t.intermediate_values) for t in done),
        "best_val_acc": study.best_value,
        "first_trial_startup_s": startups[0] if startups else float("nan"),
        "warm_trial_startup_s": sum(startups[1:]) / max(1, len(startups) - 1),
        "mean_epoch_s": sum(epochs) / max(1, len(epochs)),
    }


def run(source: Path | None = None, per_class: int = 100, n_trials: int = 8, epochs: int = 4, smoke: bool = False):
    """Three sweeps with the same budget: no pruning, median pruning, and two workers without pruning."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if smoke or source is None:
            data = ["data.image_size=32", "data.demo.per_class=20"]
            n_trials, epochs = (2, 1) if smoke else (n_trials, epochs)
        else:
            data = ["data=archives", f"data.source={subset(source, per_class, tmp / 'data')}", "data.image_size=32"]
        common = [
            f"hydra.sweeper.n_trials={n_trials}",
            f"trainer.epochs={epochs}",
            "hydra/sweeper/sampler=random",
            "optim.lr=tag(log, interval(1e-5, 3e-2))",
        ]
        rows = [
            sweep(tmp / "a", "no_pruning", data, *common, "hydra/sweeper/pruner=none"),
            sweep(
                tmp / "b",
                "median_pruning",
                data,
                *common,
                "hydra/sweeper/pruner=median",
                "hydra.sweeper.pruner.n_startup_trials=2",
                "hydra.sweeper.pruner.n_warmup_steps=0",
            ),
        ]
        if not smoke:
            rows.append(
                sweep(
                    tmp / "c",
                    "two_workers",
                    data,
                    *common,
                    "hydra/sweeper/pruner=none",
                    "hydra/launcher=joblib",
                    "hydra.sweeper.n_jobs=2",
                )
            )
    for row in rows:
        row["startup_per_epoch"] = row["warm_trial_startup_s"] / row["mean_epoch_s"]
    ratios = {"trial_epochs_pruned_over_full": rows[1]["trial_epochs"] / rows[0]["trial_epochs"]}
    if len(rows) > 2:
        ratios["wall_two_workers_over_one"] = rows[2]["wall_s"] / rows[0]["wall_s"]
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
