"""Reuse a finished trial's model for the next trial of the same architecture.

A sweep builds every trial's model as a copy of the process's pretrained model. ``copy.deepcopy`` rebuilds all
Python objects of the network each time (~29 ms for tf_efficientnet_lite0 here); restoring a finished trial's model
in place (weights and buffers copied from the pretrained model, ``requires_grad``, gradients, train/eval flags, and
any module that freezing swapped, such as timm's ``FrozenBatchNorm2d``) takes a few ms and gives an equal model.

A model is reused only when nothing else can hold it: the task releases it after its run has ended
(:func:`release`). A model with hooks or a ``torch.compile`` wrapper is never reused (it is copied afresh)."""

from __future__ import annotations

import copy
import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from itertools import chain

import torch
from torch import nn

MAX_SPARES = 2  # models kept for reuse, one per architecture (the pretrained-model cache holds two)
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")

_lock = threading.Lock()
_spares: OrderedDict[Hashable, nn.Module] = OrderedDict()
_origin: weakref.WeakKeyDictionary[nn.Module, Hashable] = weakref.WeakKeyDictionary()


def copy_of(base: nn.Module, key: Hashable) -> nn.Module:
    """A model equal to ``base`` (identified by ``key``): a released spare restored in place, or a deep copy."""
    with _lock:
        spare = _spares.pop(key, None)
    model = spare if spare is not None and restore(spare, base) else copy.deepcopy(base)
    _origin[model] = key
    return model


def release(model: nn.Module) -> bool:
    """Offer ``model`` for reuse once its run has ended and nothing uses it any more. Returns whether it was
    taken (only models from :func:`copy_of` are)."""
    key = _origin.get(model)
    if key is None:
        return False
    with _lock:
        _spares[key] = model
        _spares.move_to_end(key)
        while len(_spares) > MAX_SPARES:
            _spares.popitem(last=False)
    return True


def clear() -> None:
    """Drop the spares (frees their memory)."""
    with _lock:
        _spares.clear()


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The module's own parameters and buffers (``_parameters``/``_buffers``: the public generators cost ~3x)."""
    return {k: t for k, t in chain(module._parameters.items(), module._buffers.items()) if t is not None}


def _matching_tensors(own: nn.Module, ref: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """``(own tensor, ref tensor)`` pairs when ``own`` has ``ref``'s class, children's names and direct tensors
    (names, shapes, dtypes); ``None`` when it does not."""
    if type(own) is not type(ref) or own._modules.keys() != ref._modules.keys():
        return None
    mine, theirs = _tensors(own), _tensors(ref)
    if mine.keys() != theirs.keys() or any(
        mine[k].shape != t.shape or mine[k].dtype != t.dtype for k, t in theirs.items()
    ):
        return None
    return [(t, theirs[k]) for k, t in mine.items()]


def restore(model: nn.Module, base: nn.Module) -> bool:
    """Make ``model`` equal to ``base`` in place; ``False`` (``model`` then unusable) where it cannot."""
    root = _matching_tensors(model, base)
    if getattr(model, "_compiled_call_impl", None) is not None or root is None:
        return False
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    stack = [(model, base, root)]
    while stack:
        own, ref, tensors = stack.pop()
        if any(len(getattr(own, h)) != len(getattr(ref, h)) for h in _HOOKS):
            return False
        own.training = ref.training
        pairs += tensors
        for name, child in own._modules.items():
            ref_child = ref._modules[name]
            if child is None or ref_child is None:
                if child is not ref_child:
                    return False
            elif (matched := _matching_tensors(child, ref_child)) is not None:
                stack.append((child, ref_child, matched))
            else:  # swapped since, e.g. a frozen BatchNorm: a fresh copy of the base's
                setattr(own, name, copy.deepcopy(ref_child))
    with torch.no_grad():
        for t, src in pairs:
            t.copy_(src)
            if isinstance(t, nn.Parameter):
                t.requires_grad_(src.requires_grad)
                t.grad = None
    return True
