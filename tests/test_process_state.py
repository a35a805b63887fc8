"""Every trial in a process runs the same code path as the first: nothing a trial leaves behind in the process
(models, configs, data bundles, connections) changes what the next one computes."""

from __future__ import annotations

import subprocess

import mlflow
import pytest

from tests.conftest import ROOT, run_sweep, sweep_cmd

LRS = (1e-3, 3e-3)
SETTINGS = ("trainer.epochs=2", "data.demo.per_class=20", "data.image_size=32", "data.num_workers=0")


def _curves(store: str) -> dict[float, tuple[int | None, list[float], list[float]]]:
    """Per finished run of the store: its lr -> (trial number, val_acc per epoch, val_loss per epoch)."""
    client = mlflow.MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("covers")
    found = {}
    for run in client.search_runs([exp.experiment_id], "attributes.status = 'FINISHED'"):
        if run.data.tags.get("covers.kind") == "sweep":
            continue
        history = {k: client.get_metric_history(run.info.run_id, f"epoch/{k}") for k in ("val_acc", "val_loss")}
        number = run.data.tags.get("trial_number")
        found[float(run.data.params["optim.lr"])] = (
            int(number) if number is not None else None,
            *([m.value for m in sorted(history[k], key=lambda m: m.step)] for k in ("val_acc", "val_loss")),
        )
    return found


@pytest.mark.slow
def test_trials_in_one_process_compute_what_fresh_processes_compute(tmp_path, cache_dir):
    # one sweep process runs both configurations, one after the other (basic launcher: in-process)
    lrs = ",".join(str(lr) for lr in LRS)
    run_sweep(tmp_path / "sweep", cache_dir, "hparams_search=lr_curve", f"optim.lr=choice({lrs})", *SETTINGS)
    in_sweep = _curves(f"sqlite:///{tmp_path}/sweep/mlruns/mlflow.db")
    assert sorted(in_sweep) == sorted(LRS) and sorted(v[0] for v in in_sweep.values()) == [0, 1]
    # the configuration the process ran second, in a fresh process of its own
    (second,) = [lr for lr, (number, _, _) in in_sweep.items() if number == 1]
    cmd = [c for c in sweep_cmd(tmp_path / "fresh", cache_dir, *SETTINGS, f"optim.lr={second}") if c != "-m"]
    cmd.append(f"hydra.run.dir={tmp_path}/fresh/run")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = _curves(f"sqlite:///{tmp_path}/fresh/mlruns/mlflow.db")
    assert list(fresh) == [second]
    (_, acc_sweep, loss_sweep), (_, acc_fresh, loss_fresh) = in_sweep[second], fresh[second]
    assert len(acc_sweep) == 2 and acc_sweep == acc_fresh
    assert loss_sweep == pytest.approx(loss_fresh, rel=1e-6)
