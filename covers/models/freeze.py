"""Freeze the N lowest layer groups of a timm model, resolved through its own ``group_matcher``."""

from __future__ import annotations

import logging

from timm.models import group_modules
from timm.utils.model import freeze as timm_freeze
from torch import nn

log = logging.getLogger(__name__)


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Module names per coarse layer group, lowest first, without the classifier head.

    For ResNets: group 0 = stem (conv1, bn1), groups 1..4 = layer1..layer4."""
    if not hasattr(model, "group_matcher"):
        raise TypeError(f"{type(model).__name__} has no group_matcher(); cannot freeze by layer group")
    groups = group_modules(model, model.group_matcher(coarse=True))
    head = model.get_classifier()
    head_names = {n for n, m in model.named_modules() if m is head or any(m is c for c in head.modules())}
    ordered = [groups[k] for k in sorted(groups)]
    return [names for names in ordered if not set(names) & head_names]


def freeze_groups(model: nn.Module, n_frozen: int) -> list[str]:
    """Freeze the ``n_frozen`` lowest groups: ``requires_grad=False`` and BatchNorm frozen (eval statistics).

    Returns the frozen module names. The classifier head is never frozen."""
    if n_frozen <= 0:
        return []
    groups = layer_groups(model)
    if n_frozen > len(groups):
        raise ValueError(f"freeze.n_frozen={n_frozen} but {type(model).__name__} has {len(groups)} layer groups")
    names = [name for group in groups[:n_frozen] for name in group]
    timm_freeze(model, names, include_bn_running_stats=True)
    n_params = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    log.info("froze %d of %d layer groups (%d parameters)", n_frozen, len(groups), n_params)
    return names
