"""What every run kind starts from, read from the composed config in one place: seeds and threads, the data
bundle with its model input spec, the runtime, the MLflow run and the link to the run's sweep trial."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import timm.utils
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from covers.data import DataBundle, prepare_data
from covers.data.subsample import reshape_train
from covers.models.create import input_spec
from covers.sweep.trial_reporter import TrialReporter, trial_reporter
from covers.tracking import runs
from covers.training.runtime import Runtime, create_runtime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """A run's data (bundle and the model's input spec: ``image_size``, ``mean``, ``std``), where it computes
    (runtime) and with how many CPU threads."""

    bundle: DataBundle
    spec: dict[str, Any]
    rt: Runtime
    threads: int


def cpu_threads(cfg: DictConfig) -> int:
    """``trainer.threads``, or the cores shared out among a sweep's parallel trials (``trial.n_jobs``)."""
    if cfg.trainer.threads:
        return int(cfg.trainer.threads)
    return max(1, (os.cpu_count() or 1) // max(1, int(cfg.trial.get("n_jobs") or 1)))


def loader_workers(cfg: DictConfig, rt: Runtime, threads: int) -> int:
    """``data.num_workers``, or by default: none on the CPU, where augmenting in the main process measured fastest
    (the model trains on the same cores); on CUDA this run's threads less one for the training loop, at most 8, so
    that augmentation keeps up with the GPU (docs/benchmarks.md)."""
    if cfg.data.get("num_workers") is not None:
        return int(cfg.data.num_workers)
    if rt.device.type == "cpu":
        return 0
    return max(0, min(8, threads - 1))


def runtime(cfg: DictConfig) -> Runtime:
    """The runtime the ``trainer`` group asks for: ``device``, ``precision``, ``channels_last``, ``cudnn_benchmark``."""
    t = cfg.trainer
    return create_runtime(t.device, t.precision, t.channels_last, t.get("cudnn_benchmark"))


def load_data(cfg: DictConfig) -> tuple[DataBundle, dict[str, Any]]:
    """The cleaned, split and decoded data at the model's input size, and that input spec."""
    d = cfg.data
    spec = input_spec(cfg.model.name, d.image_size, d.get("mean"), d.get("std"))
    bundle = prepare_data(
        name=d.name,
        image_size=spec["image_size"],
        cache_dir=cfg.paths.cache_dir,
        source=d.source,
        manifest=d.manifest,
        split_seed=d.split_seed,
        val_fraction=d.val_fraction,
        test_fraction=d.test_fraction,
        demo=OmegaConf.to_container(d.demo) if d.get("demo") else None,
        # the default split is cleaned as the audit cleans (the same `clean` rules)
        limits=instantiate(cfg.clean.limits),
        rules=instantiate(cfg.clean.duplicates),
        keep_decoded=bool(d.get("keep_decoded", True)),
    )
    fraction, imbalance = d.get("train_fraction", 1.0), d.get("imbalance")
    if fraction < 1 or (imbalance or 1) > 1:  # study experiments: a smaller or long-tailed train split
        keep = reshape_train(bundle.manifest, fraction, imbalance, d.split_seed)
        bundle = bundle.subset(keep, Path(cfg.paths.cache_dir) / "manifests")
    log.info("data: %d classes, %s, manifest %s", len(bundle.classes), bundle.counts(), bundle.manifest_path)
    return bundle, spec


def build_context(cfg: DictConfig) -> RunContext:
    """Seed every RNG (timm's ``random_seed``), set torch's threads, load the data and pick the runtime."""
    timm.utils.random_seed(cfg.seed)
    threads = cpu_threads(cfg)
    torch.set_num_threads(threads)
    bundle, spec = load_data(cfg)
    return RunContext(bundle, spec, runtime(cfg), threads)


@contextmanager
def sweep_trial(cfg: DictConfig, epochs: int) -> Iterator[TrialReporter | None]:
    """The reporter to this run's Optuna trial when the sweeper launched it (``trial.*`` set), else ``None``."""
    t = cfg.trial
    if t.number is None or not t.get("storage"):
        if t.number is not None:
            log.warning("trial %s: the sweeper gave no storage; no pruning", t.number)
        yield None
        return
    pruner = instantiate(t.pruner) if t.get("pruner") else None
    with trial_reporter(t.study_name, int(t.number), t.storage, t.metric, pruner, epochs) as reporter:
        yield reporter


@contextmanager
def tracked_run(cfg: DictConfig, name: str, reporter: TrialReporter | None = None, **tags: Any) -> Iterator[Any]:
    """The MLflow run of one run kind: tagged as trial or single run, linked to its Optuna trial. Anything raised
    inside ends it FAILED with its traceback; a pruned trial ends FINISHED. A promoted configuration's later rung
    (``trial.resume_run_id``) continues its earlier rungs' run, tagged with its rung and latest trial number."""
    t = cfg.tracking
    runs.setup_tracking(t.uri, t.experiment, t.artifact_root, t.get("sqlite_wal", True))
    tags = {"covers.kind": "single", "model": cfg.model.name, "data": cfg.data.name, **tags}
    if cfg.trial.number is not None:
        tags.update({"covers.kind": "trial", "study_name": cfg.trial.study_name, "trial_number": cfg.trial.number})
    if cfg.trial.get("rung") is not None:
        tags["asha_rung"] = cfg.trial.rung
    resume = cfg.trial.get("resume_run_id")
    with runs.start_run(name, cfg.trial.parent_run_id, tags, (optuna.TrialPruned,), run_id=resume) as run:
        if reporter is not None:
            reporter.trial.set_user_attr("mlflow_run_id", run.info.run_id)
        yield run


@contextmanager
def trial_and_run(cfg: DictConfig, name: str, epochs: int, **tags: Any) -> Iterator[tuple[TrialReporter | None, Any]]:
    """:func:`sweep_trial` and :func:`tracked_run` together: ``(reporter, run)``."""
    with sweep_trial(cfg, epochs) as reporter, tracked_run(cfg, name, reporter, **tags) as run:
        yield reporter, run
