"""One GPU per parallel trial: the device each of the sweep's ``n_jobs`` slots hands to its trials."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def cuda_device_count() -> int:
    """GPUs visible to this process (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def slot_devices(devices: Any, n_slots: int, trainer_device: str, device_count: int | None = None) -> list[str | None]:
    """``trainer.device`` for each of ``n_slots`` parallel slots, or ``None`` (the trial's own setting).

    ``devices`` is ``hydra.sweeper.devices``: ``auto`` (with several slots and several GPUs, slot k gets
    ``cuda:k mod GPUs``), a list of GPU indices or device strings handed out round-robin, or null (off). A trial
    whose ``trainer.device`` names a device (``cpu``, ``cuda:1``) keeps it: only ``auto`` and ``cuda`` are spread."""
    if not devices or str(trainer_device) not in ("auto", "cuda"):
        return [None] * n_slots
    if devices == "auto":
        count = cuda_device_count() if device_count is None else device_count
        if n_slots < 2 or count < 2:
            return [None] * n_slots
        devices = list(range(count))
    if isinstance(devices, str) or not isinstance(devices, Sequence):
        raise ValueError(f"hydra.sweeper.devices must be auto, null or a list of GPUs, got {devices!r}")
    names = [f"cuda:{d}" if isinstance(d, int) else str(d) for d in devices]
    return [names[k % len(names)] for k in range(n_slots)]
