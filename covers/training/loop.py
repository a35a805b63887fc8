"""The training loop: ``train_one_epoch`` and ``evaluate`` return metric dicts; ``fit`` keeps the best epoch."""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

# What the loops iterate: ``(images, targets)`` batches, e.g. ``covers.data.loaders.create_loader``'s (already on the
# device, normalised) or tensors in memory
Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; the run cannot continue meaningfully."""


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
    both: on this project's 2-core CPU it trains EfficientNet-Lite0 1.19-1.36x and ResNet-50 1.28-1.30x faster
    (ResNet-18 at 64 px: 0.88x; ``python -m benchmarks.runtime``, docs/benchmarks.md). ``cudnn_benchmark``
    (CUDA only) lets cuDNN time its algorithms for every new input shape; default on."""
    dev = torch.device(
        "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    )
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if dev.type == "cuda" else "fp32"
    amp = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True if cudnn_benchmark is None else bool(cudnn_benchmark)
    return Runtime(dev, amp, True if channels_last is None else bool(channels_last))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's RNGs, the same streams as ``timm.utils.random_seed``. Unlike
    ``torch.manual_seed`` it seeds only the accelerators in use: on a CPU-only machine, torch queues a seed for CUDA,
    XPU and MTIA, each with a stack trace (~5 ms a trial inside a Hydra sweep)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def set_threads(n: int) -> None:
    """``torch.set_num_threads(n)`` unless already ``n`` (setting it again costs 2-4 ms in a warm sweep process)."""
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def runtime_from_config(trainer: Any) -> Runtime:
    """The runtime a ``trainer`` config group asks for (``device``, ``precision``, ``channels_last``,
    ``cudnn_benchmark``)."""
    return create_runtime(trainer.device, trainer.precision, trainer.channels_last, trainer.get("cudnn_benchmark"))


def to_device(x: torch.Tensor, rt: Runtime) -> torch.Tensor:
    """A batch on the runtime's device (channels_last for images when the runtime asks for it)."""
    x = x.to(rt.device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if rt.channels_last and x.ndim == 4 else x


# How often a GPU loop reads its NaN/inf flag back (each read waits for every step queued so far); the CPU reads it
# every step, for free, before the step's update
GPU_CHECK_EVERY = 32


def train_one_epoch(
    model: nn.Module,
    loader: Batches,
    loss_fn: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    rt: Runtime,
    scaler: torch.amp.GradScaler | None = None,
    desc: str = "train",
) -> dict[str, float]:
    """One pass over ``loader``; returns ``{"loss", "acc", "lr"}`` (loss and accuracy averaged per image).

    The sums and a NaN/inf flag stay on the device. Reading a CUDA value back waits for all the work queued so far,
    so a GPU loop reads the flag every ``GPU_CHECK_EVERY`` steps and at the end (a non-finite loss stops the run
    within that many steps); the CPU checks every step before its update. Raises :class:`NonFiniteLossError`."""
    model.train()
    total_loss = torch.zeros((), device=rt.device)
    correct = torch.zeros((), dtype=torch.long, device=rt.device)
    nonfinite = torch.zeros((), dtype=torch.bool, device=rt.device)
    check_every = 1 if rt.device.type == "cpu" else GPU_CHECK_EVERY
    seen, checked = 0, 0  # images so far; images covered by the last clean check
    lr = optimizer.param_groups[0]["lr"]

    def check(upto: int) -> None:  # one read of the flag, which covers the batches of images [checked, upto)
        nonlocal checked
        if nonfinite:
            raise NonFiniteLossError(f"training loss became NaN or infinite in images {checked}-{upto} (lr={lr:.3g})")
        checked = upto

    for step, (x, y) in enumerate(tqdm(loader, desc=desc, leave=False, disable=None)):
        x, y = to_device(x, rt), y.to(rt.device, non_blocking=True)
        with rt.autocast():
            logits = model(x)
            loss = loss_fn(logits, y)
        n = y.shape[0]
        nonfinite |= ~torch.isfinite(loss.detach())
        if (step + 1) % check_every == 0:
            check(seen + n)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.detach().float() * n
        correct += (logits.argmax(1) == y).sum()
        seen += n
    check(seen)
    n = max(seen, 1)
    return {"loss": total_loss.item() / n, "acc": correct.item() / n, "lr": lr}


@torch.no_grad()
def predict(model: nn.Module, loader: Batches, rt: Runtime) -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets for every batch of ``loader``, in order."""
    model.eval()
    logits, targets = [], []
    for x, y in loader:
        with rt.autocast():
            logits.append(model(to_device(x, rt)).float())
        targets.append(y)
    return torch.cat(logits).cpu().numpy(), torch.cat(targets).cpu().numpy()  # one copy back, not one per batch


def evaluate(model: nn.Module, loader: Batches, loss_fn: nn.Module, rt: Runtime) -> dict:
    """``{"loss", "acc", "balanced_acc", "pred", "target"}`` on ``loader`` with the model in eval mode."""
    logits, target = predict(model, loader, rt)
    loss = loss_fn.to("cpu")(torch.from_numpy(logits), torch.from_numpy(target)).item()
    loss_fn.to(rt.device)
    pred = logits.argmax(1)
    balanced = float(balanced_accuracy_score(target, pred)) if len(target) else float("nan")
    acc = float((pred == target).mean())
    return {"loss": loss, "acc": acc, "balanced_acc": balanced, "pred": pred, "target": target}


@dataclass
class FitResult:
    """Per-epoch history and the best epoch (highest val accuracy, earliest on ties)."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val_acc: float = -math.inf
    best_state: dict | None = None
    best_val_pred: np.ndarray | None = None
    val_target: np.ndarray | None = None


def fit(
    model: nn.Module,
    train_loader: Batches,
    val_loader: Batches,
    loss_fn: nn.Module,
    optimizer: Optimizer,
    scheduler: LRScheduler | None,
    epochs: int,
    rt: Runtime,
    on_epoch_end: Callable[[int, dict], None] | None = None,
    result: FitResult | None = None,
) -> FitResult:
    """Train for ``epochs``; after each, evaluate on validation and call ``on_epoch_end(epoch, metrics)``
    with ``epoch`` counted from 1 (as in the log line, MLflow's steps, Optuna's and ``summary/best_epoch``).

    ``metrics`` holds ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``val_balanced_acc``, ``lr`` and
    ``epoch_time_s``. A callback may raise to stop early (pruning): pass your own ``result`` to keep what was
    reached. Best-epoch weights stay on the CPU."""
    rt.place(model)
    loss_fn.to(rt.device)
    scaler = rt.grad_scaler()
    result = FitResult() if result is None else result
    for epoch in range(epochs):
        start = time.perf_counter()
        tr = train_one_epoch(
            model, train_loader, loss_fn, optimizer, scheduler, rt, scaler, f"epoch {epoch + 1}/{epochs}"
        )
        va = evaluate(model, val_loader, loss_fn, rt)
        metrics = {  # val_acc first: MLflow's compare view colours its parallel-coordinates plot by the first metric
            "val_acc": va["acc"],
            "val_loss": va["loss"],
            "val_balanced_acc": va["balanced_acc"],
            "train_loss": tr["loss"],
            "train_acc": tr["acc"],
            "lr": tr["lr"],
            "epoch_time_s": time.perf_counter() - start,
        }
        result.history.append(metrics)
        log.info("epoch %d/%d %s", epoch + 1, epochs, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        if va["acc"] > result.best_val_acc:
            result.best_epoch, result.best_val_acc = epoch, va["acc"]
            result.best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            result.best_val_pred, result.val_target = va["pred"], va["target"]
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)
    return result


def restore_best(model: nn.Module, result: FitResult) -> nn.Module:
    """Load the best epoch's weights back into ``model``."""
    if result.best_state is not None:
        model.load_state_dict(copy.deepcopy(result.best_state))
    return model
