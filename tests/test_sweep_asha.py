"""Multi-fidelity with promotion (``hydra/sweeper/scheduler=asha``): the promotion rule, checkpoints that continue
a fit, and a real 2-rung sweep whose best configuration resumes from its first rung in the same MLflow run."""

from __future__ import annotations

import hashlib

import mlflow
import optuna
import pytest
import timm
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from covers.sweep.asha import PromotionASHA
from covers.sweep.budget import CONTINUES, RUNG, counted
from covers.sweep.search_space import SearchSpaceError
from covers.training.checkpoint import load_checkpoint, save_checkpoint
from covers.training.loop import fit
from covers.training.runtime import create_runtime
from tests.conftest import run_sweep

RUNGS = [{"epochs": 1, "image_size": 32}, {"epochs": 2, "image_size": 48}, {"epochs": 4, "image_size": 64}]


def _trial(number: int, value: float | None, rung: int = 0, continues: int | None = None, state=TrialState.COMPLETE):
    attrs = {"mlflow_run_id": f"run-{number if continues is None else continues}", RUNG: rung}
    if continues is not None:
        attrs[CONTINUES] = continues
    t = create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params={"x": float(number)},
        distributions={"x": FloatDistribution(0, 100)},
        user_attrs=attrs,
    )
    t.number = number
    return t


def test_promotion_takes_the_top_third_of_a_rung_and_the_highest_rung_first():
    asha = PromotionASHA(RUNGS, reduction_factor=3)
    two = [_trial(0, 0.5), _trial(1, 0.9)]
    assert asha.promotion(two) is None  # floor(2 / 3) = 0: nobody yet
    six = [_trial(i, v) for i, v in enumerate([0.5, 0.9, 0.2, 0.7, 0.9, 0.1])]
    source, rung = asha.promotion(six)
    assert (source.number, rung) == (1, 1)  # the best (tie with trial 4: the earlier)
    with_first = [*six, _trial(6, 0.95, rung=1, continues=1)]
    assert asha.promotion(with_first)[0].number == 4  # the second of the top two
    pruned = [*six[:3], _trial(3, None, state=TrialState.PRUNED), *six[4:], _trial(6, 0.95, rung=1, continues=1)]
    assert asha.promotion(pruned) is None  # a pruned one did not complete the rung: 5 did, floor(5 / 3) = 1
    full = [*with_first, _trial(7, 0.8, rung=1, continues=4)]
    assert asha.promotion(full) is None  # the top two are promoted; rung 1 has 2 (< 3)
    third_rung = [*full, *[_trial(8 + i, 0.1, rung=1, continues=i) for i in (0, 2)]]  # 4 at rung 1
    source, rung = asha.promotion(third_rung)
    assert (source.number, rung) == (6, 2)  # the higher rung goes first
    assert [t.number for t in counted(third_rung)] == list(range(6))  # later rungs are not new configurations


def test_asha_settings_are_checked():
    with pytest.raises(SearchSpaceError, match="increasing"):
        PromotionASHA([{"epochs": 2}, {"epochs": 2}])
    with pytest.raises(SearchSpaceError, match="reduction_factor"):
        PromotionASHA(RUNGS, reduction_factor=1)
    with pytest.raises(SearchSpaceError, match=r"trainer\.epochs"):
        PromotionASHA(RUNGS).check_space({"trainer.epochs": object(), "optim.lr": object()})
    asha = PromotionASHA(RUNGS)
    assert asha.overrides({}) == ["trainer.epochs=1", "trial.rung=1", "trial.checkpoint=True", "data.image_size=32"]
    last = asha.overrides({RUNG: 2, CONTINUES: 5, "asha_resume_run_id": "abc"})
    assert last[:3] == ["trainer.epochs=4", "trial.rung=3", "trial.checkpoint=False"]
    assert last[3:] == ["data.image_size=64", "trial.resume_run_id=abc"]


def _tiny():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def test_a_checkpoint_continues_the_fit_where_it_stopped(tmp_path):
    batches = [(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1]))] * 2
    rt, loss = create_runtime("cpu", "fp32"), torch.nn.CrossEntropyLoss()
    model, opt = _tiny()
    first = fit(model, batches, batches, loss, opt, None, 1, rt)
    save_checkpoint(tmp_path / "last.pt", model, opt, first, lr=1e-3)
    fresh, fresh_opt = _tiny()
    fresh_opt.param_groups[0]["lr"] = 0.5  # a schedule's leftover: set back to the base lr
    result, lr = load_checkpoint(tmp_path / "last.pt", fresh, fresh_opt)
    assert lr == 1e-3 and fresh_opt.param_groups[0]["lr"] == 1e-3
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True))
    moments = fresh_opt.state_dict()["state"][0]["exp_avg"]
    assert torch.equal(moments, opt.state_dict()["state"][0]["exp_avg"])  # AdamW's moments are kept
    assert result.history == first.history and result.best_epoch == 0
    epochs = []
    fit(fresh, batches, batches, loss, fresh_opt, None, 3, rt, lambda e, m: epochs.append(e), result, start_epoch=1)
    assert epochs == [2, 3] and len(result.history) == 3  # the epoch count continues


@pytest.mark.slow
def test_a_two_rung_sweep_promotes_the_best_which_resumes_from_its_checkpoint(tmp_path, cache_dir):
    proc = run_sweep(
        tmp_path,
        cache_dir,
        "hydra/sweeper/scheduler=asha",
        "hydra.sweeper.scheduler.rungs=[{epochs:1,image_size:32},{epochs:2,image_size:48}]",
        "hydra/sweeper/sampler=random",
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.study_name=asha",
        "hparams_search=lr_curve",
        "optim.lr=choice(0.0001,0.001,0.003,0.01)",
    )
    study = optuna.load_study(study_name="asha", storage=f"sqlite:///{tmp_path}/mlruns/optuna.db")
    trials = study.get_trials()
    first = [t for t in trials if CONTINUES not in t.user_attrs]
    later = [t for t in trials if CONTINUES in t.user_attrs]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # 3 configurations, 1 promotion
    assert len(first) == 3
    best_first = max(first, key=lambda t: (t.value, -t.number))
    (promoted,) = later
    assert promoted.user_attrs[CONTINUES] == best_first.number and promoted.user_attrs[RUNG] == 1
    assert promoted.params == best_first.params
    assert sorted(promoted.intermediate_values) == [2] and sorted(best_first.intermediate_values) == [1]
    assert promoted.value >= best_first.value  # the best over both rungs
    assert f"trial {best_first.number} promoted to rung 2 of 2" in proc.stdout + proc.stderr

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("covers")
    runs = client.search_runs([exp.experiment_id], "tags.`covers.kind` = 'trial'")
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}  # one run per configuration
    run_id = promoted.user_attrs["mlflow_run_id"]
    assert run_id == best_first.user_attrs["mlflow_run_id"]  # the same run continues
    steps = [(m.step, m.value) for m in client.get_metric_history(run_id, "epoch/image_size")]
    assert steps == [(1, 32.0), (2, 48.0)]  # its curve goes on at the next rung's size
    assert [m.step for m in client.get_metric_history(run_id, "epoch/val_acc")] == [1, 2]
    run = client.get_run(run_id)
    assert run.data.metrics["summary/epochs_completed"] == 2 and run.data.tags["asha_rung"] == "2"
    ckpt = client.download_artifacts(run_id, "checkpoint/last.pt", str(tmp_path / "ckpt"))
    with open(ckpt, "rb") as f:  # the first rung's checkpoint (the last rung keeps none) was the starting point
        assert run.data.tags["resumed_from"] == f"epoch 1, checkpoint sha256 {hashlib.sha256(f.read()).hexdigest()}"
    others = [r for r in runs if r.info.run_id != run_id]
    assert [r.data.metrics["summary/epochs_completed"] for r in others] == [1, 1]  # the others stopped at rung 1
    assert all("resumed_from" not in r.data.tags for r in others)
