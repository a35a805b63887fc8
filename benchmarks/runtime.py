"""Runtime settings for training and embedding, measured so the defaults are the ones that win.

    python -m benchmarks.runtime                                   # tf_efficientnet_lite0, 64 px, batch 32
    python -m benchmarks.runtime --models resnet18:64 resnet50:224 # + default vs contiguous for other models
    python -m benchmarks.runtime --smoke                           # a few steps, for correctness only
    python -m benchmarks.runtime --device cuda --size 128 --batch 64   # the GPU: bf16 (default) vs fp32/fp16

Each row is covers' ``train_one_epoch`` over the same pre-materialised batches with one setting changed from the
device's default (CPU: fp32, channels_last, torch threads = cores; CUDA: bf16 autocast, channels_last, cudnn
benchmark, batches already on the GPU): contiguous (NCHW) tensors, another precision, one thread (what each of
two parallel trials gets on the CPU), ``torch.compile`` (its first epoch, compilation included, reported apart).
The default and contiguous rows also time ``embed_batch`` (inference). Best of ``repeats`` epochs after a warm-up
epoch."""

from __future__ import annotations

import copy
import time

import torch

from benchmarks._timing import best_of, machine, model_parser, report
from benchmarks.trainer import _batches, _sync, covers_train
from covers.models.create import create_model
from covers.models.embed import embed_batch
from covers.training.runtime import create_runtime, to_device

VARIANTS = ("default", "contiguous", "fp32", "bf16", "fp16", "one_thread", "compile")
DEFAULT_VARIANTS = {
    "cpu": ("default", "contiguous", "bf16", "one_thread", "compile"),
    "cuda": ("default", "contiguous", "fp32", "fp16", "compile"),
}


def _embed_img_s(base: torch.nn.Module, batches, device: str, channels_last: bool, repeats: int) -> float:
    rt = create_runtime(device, "auto", channels_last)
    model = rt.place(copy.deepcopy(base).eval())

    @torch.no_grad()
    def once() -> None:  # timed by best_of, up to the device finishing
        for x, _ in batches:
            with rt.autocast():
                embed_batch(model, to_device(x, rt))
        _sync(rt)

    once()
    return sum(len(y) for _, y in batches) / best_of(once, repeats)


def measure(name: str, base: torch.nn.Module, batches, repeats: int, device: str = "cpu") -> dict:
    """One variant: training images/s (best epoch after a warm-up), the warm-up epoch's time, embedding img/s."""
    threads = torch.get_num_threads()
    rt = create_runtime(device, name if name in ("fp32", "bf16", "fp16") else "auto", name != "contiguous")
    batches = [(x.to(rt.device), y.to(rt.device)) for x, y in batches]
    model = copy.deepcopy(base)
    if name == "compile":
        model.compile()
    if name == "one_thread":
        torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        covers_train(model, batches, rt=rt)  # warm-up (and compilation)
        first = time.perf_counter() - start
        best = best_of(lambda: covers_train(model, batches, rt=rt), repeats)
    finally:
        torch.set_num_threads(threads)
    n = sum(len(y) for _, y in batches)
    embed = None
    if name in ("default", "contiguous"):
        embed = _embed_img_s(base, batches, device, name == "default", repeats)
    return {"variant": name, "train_img_s": n / best, "first_epoch_s": first, "embed_img_s": embed}


def run(
    smoke: bool = False,
    model_name: str = "tf_efficientnet_lite0",
    size: int = 64,
    batch: int = 32,
    variants: tuple[str, ...] | None = None,
    models: tuple[str, ...] = (),
    device: str = "cpu",
) -> dict:
    """Rows for every variant on the main model, then default vs contiguous for each ``name:size`` in ``models``;
    each with its training speed relative to the default of its model."""
    variants = variants or DEFAULT_VARIANTS["cuda" if device.startswith("cuda") else "cpu"]
    if smoke:
        variants, models = ("default", "contiguous", "one_thread"), ()
    rows = []
    plans = [(model_name, size, variants)]
    for spec in models:
        name, px = spec.split(":")
        plans.append((name, int(px), ("default", "contiguous")))
    for name, px, which in plans:
        slow = px >= 160 and not device.startswith("cuda")  # big inputs on the CPU: fewer, smaller batches
        n_batches, n, repeats = (2, 4, 1) if smoke else ((2, 16, 2) if slow else (20, batch, 3))
        base = create_model(name, 8, weights="package" if "lite" in name else "none")
        batches = _batches(n_batches, n, px, 8)
        group = [{"model": name, "size": px, **measure(v, base, batches, repeats, device)} for v in which]
        for row in group:
            row["train_vs_default"] = row["train_img_s"] / group[0]["train_img_s"]
        rows += group
    return {"machine": machine(), "device": device, "batch": batch, "rows": rows}


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, help="default: the device's list")
    parser.add_argument("--models", nargs="*", default=[], help="more models as name:size (default vs contiguous)")
    args = parser.parse_args()
    variants = ("default", *[v for v in args.variants if v != "default"]) if args.variants else None
    report(run(args.smoke, args.model, args.size, args.batch, variants, tuple(args.models), args.device), args.json)


if __name__ == "__main__":
    main()
