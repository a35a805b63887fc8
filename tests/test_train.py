"""Real training on real data, tracked in a real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import timm
import torch

from covers.run.finetune import run_name, train
from covers.training.loop import NonFiniteLossError, fit, train_one_epoch
from covers.training.runtime import create_runtime, to_device


@pytest.mark.slow
def test_two_epochs_on_cifar_beat_chance(make_cfg, cifar_covers, tmp_path):
    cfg = make_cfg(
        "data=archives",
        f"data.source={cifar_covers}",
        "data.image_size=32",
        "data.batch_size=64",
        "trainer.epochs=2",
        "optim.lr=3e-3",
        "loss.gamma=1.0",
        "freeze.n_frozen=1",
    )
    out = train(cfg)
    assert out["summary/best_val_acc"] > 0.3, out  # chance is 0.1
    assert len(out["history"]) == 2

    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri.replace("./", ""))
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == run_name(cfg)
    assert run.data.metrics["summary/best_val_acc"] == out["summary/best_val_acc"]
    for metric in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, f"epoch/{metric}")] == [1, 2], metric
    # the default split is cleaned like the audit's: 5 near-duplicate CIFAR copies are dropped (4995 kept, 8:1:1)
    assert run.data.params["optim.lr"] == "0.003" and run.data.params["data.n_train"] == "3996"
    assert "trial.number" not in run.data.params
    artifacts = {a.path for p in ("", "config", "plots", "model") for a in client.list_artifacts(run.info.run_id, p)}
    assert {"config/config.yaml", "plots/learning_curves.png", "plots/val_confusion_matrix.png"} <= artifacts
    assert {"model/state_dict.pt", "model/meta.json"} <= artifacts

    # the logged model is loadable without unpickling code and reproduces the best val accuracy's weights
    local = client.download_artifacts(run.info.run_id, "model", str(tmp_path / "dl"))
    meta = json.loads(Path(local, "meta.json").read_text())
    state = torch.load(f"{local}/state_dict.pt", weights_only=True)
    assert meta["num_classes"] == 10 and meta["image_size"] == 32 and meta["classes"][0] == "airplane"
    assert any(k.startswith("classifier") for k in state)


def test_channels_last_is_the_default_runtime_and_places_the_model():
    rt = create_runtime("cpu", "fp32")
    assert rt.channels_last and not create_runtime("cpu", "fp32", False).channels_last
    model = rt.place(timm.create_model("resnet18", num_classes=3))
    conv = next(p for p in model.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert to_device(torch.zeros(2, 3, 8, 8), rt).is_contiguous(memory_format=torch.channels_last)


def test_failed_run_is_marked_failed_with_traceback(make_cfg, tmp_path):
    cfg = make_cfg("optim.lr=1e30", "loss.gamma=0.0")
    try:
        train(cfg)
    except FloatingPointError:
        pass
    else:  # a huge lr must blow up the loss
        raise AssertionError("expected a non-finite loss")
    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("covers").experiment_id])
    assert run.info.status == "FAILED" and "NonFiniteLossError" in run.data.tags["error"]
    assert "error/traceback.txt" in {a.path for a in client.list_artifacts(run.info.run_id, "error")}


def test_nan_loss_stops_the_epoch_before_its_update_and_names_the_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(5)]
    calls = []

    def loss_fn(logits, y):  # NaN on the third batch
        calls.append(1)
        loss = torch.nn.functional.cross_entropy(logits, y)
        return loss * float("nan") if len(calls) == 3 else loss

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(NonFiniteLossError, match=r"in images 8-12 "):
        train_one_epoch(model, batches, loss_fn, opt, None, create_runtime("cpu", "fp32"))
    assert len(calls) == 3 and all(torch.isfinite(p).all() for p in model.parameters())  # no NaN update applied


def _fit_tiny(ema_decay):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=3)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(4)]
    initial = {k: v.clone() for k, v in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.CrossEntropyLoss()
    result = fit(model, batches, batches[:1], loss, opt, None, 1, create_runtime("cpu", "fp32"), ema_decay=ema_decay)
    return model, initial, result


def test_ema_weights_are_what_is_validated_and_kept():
    model, initial, result = _fit_tiny(None)
    raw = dict(model.named_parameters())
    assert all(torch.equal(result.best_state[k], raw[k].detach()) for k in raw)  # no EMA: the trained weights
    model, initial, result = _fit_tiny(1.0)  # an average that never moves: the kept weights are the initial ones
    trained = dict(model.named_parameters())
    assert all(torch.equal(result.best_state[k], initial[k]) for k in initial)
    assert any(not torch.equal(trained[k].detach(), initial[k]) for k in initial)  # the raw weights did train
    _, _, halfway = _fit_tiny(0.5)  # between the two, and different from both
    k = "fc.weight"
    assert not torch.equal(halfway.best_state[k], initial[k]) and not torch.equal(halfway.best_state[k], trained[k])


@pytest.mark.slow
def test_ema_decay_in_the_config_reaches_the_logged_model(make_cfg, tmp_path):
    def logged(decay: str) -> dict[str, torch.Tensor]:
        cfg = make_cfg(f"trainer.ema_decay={decay}", "model.weights=none", "model.name=resnet18")
        out = train(cfg)
        client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
        assert client.get_run(out["run_id"]).data.params["trainer.ema_decay"] == {"null": "None"}.get(decay, decay)
        local = client.download_artifacts(out["run_id"], "model", str(tmp_path / decay))
        return torch.load(f"{local}/state_dict.pt", weights_only=True)

    raw, copy, frozen = logged("null"), logged("0.0"), logged("1.0")  # the same seed: the same training
    weights = [k for k in raw if k.endswith(".weight")]
    assert all(torch.allclose(copy[k], raw[k], atol=1e-6) for k in weights)  # decay 0: the average is the model
    assert not torch.allclose(frozen["fc.weight"], raw["fc.weight"])  # decay 1: the average never moved


def test_mixup_mixes_images_and_labels_and_cutmix_pastes_patches():
    from covers.training.mixing import create_mixup

    assert create_mixup(3) is None  # both alphas 0: off
    with pytest.raises(ValueError, match="even"):
        create_mixup(3, mixup_alpha=0.2, batch_size=5)
    x, y = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    torch.manual_seed(0)
    np.random.seed(0)  # timm draws lambda from numpy
    mixed, soft = create_mixup(3, mixup_alpha=1.0)(x.clone(), y)
    lam = soft[0, 0].item()  # image 0 (class 0) is mixed with image 3 (class 0): all of its mass on class 0
    assert soft.shape == (4, 3) and torch.allclose(soft.sum(1), torch.ones(4))
    assert 0 < soft[1, 1] < 1 and torch.isclose(soft[1, 1] + soft[1, 2], torch.tensor(1.0))  # classes 1 and 2
    assert lam == 1.0 and torch.allclose(mixed[1], soft[1, 1] * x[1] + soft[1, 2] * x[2], atol=1e-5)
    cut, soft = create_mixup(3, cutmix_alpha=1.0)(x.clone(), y)
    from_self, from_pair = cut[1] == x[1], cut[1] == x[2]  # every pixel is one image's or its pair's
    assert torch.all(from_self | from_pair) and 0 < soft[1, 1] < 1


def test_training_with_mixup_counts_accuracy_on_the_larger_label():
    from covers.training.mixing import create_mixup

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    batches = [(torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1]))] * 2
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = torch.nn.CrossEntropyLoss()
    out = train_one_epoch(
        model, batches, loss, opt, None, create_runtime("cpu", "fp32"), mix=create_mixup(3, mixup_alpha=0.4)
    )
    assert 0 <= out["acc"] <= 1 and out["loss"] > 0
