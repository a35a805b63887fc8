"""Where and how tensors are computed: CPU or CUDA, AMP precision, channels_last memory format."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors are computed."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False

    def place(self, module: nn.Module) -> nn.Module:
        """``module`` (in place) on the runtime's device, in channels_last memory format when the runtime uses it,
        else contiguous (a reused model may come in either)."""
        return module.to(
            self.device, memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A loss scaler for fp16 autocast (bf16 and fp32 need none)."""
        return torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)


def create_runtime(
    device: str = "auto",
    precision: str = "auto",
    channels_last: bool | None = None,
    cudnn_benchmark: bool | None = None,
) -> Runtime:
    """CUDA with AMP (bf16, else fp16) when available; fp32 on CPU by default. ``channels_last`` by default on
    both: it trained the default models faster on this project's CPU too (``python -m benchmarks.runtime``, figures
    in docs/benchmarks.md). ``cudnn_benchmark`` (CUDA only) lets cuDNN time its algorithms for every new input
    shape; default on."""
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if dev.type == "cuda" else "fp32"
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True if cudnn_benchmark is None else bool(cudnn_benchmark)
    return Runtime(dev, amp, True if channels_last is None else bool(channels_last))


def to_device(x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """A batch on the runtime's device (channels_last for images when the runtime asks for it)."""
    x = x.to(rt.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if rt.channels_last and x.ndim == 4 else x
