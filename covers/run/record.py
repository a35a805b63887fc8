"""A run's record in MLflow: its params (the resolved config, flattened, plus data facts) and the config,
overrides and manifest as artifacts, so every run can be compared in the UI and reproduced."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from covers.data import DataBundle
from covers.tracking import runs

# keys left out of MLflow params: tags or set by the sweeper per trial (trial, hydra), other commands' settings
# (promote, audit), machine-specific folders that differ per trial and would lead the UI's compare view (paths), and
# the cleaning rules (clean: they show in data.manifest_hash). The whole resolved config is the artifact
# config/config.yaml.
NOT_PARAMS = ("trial.", "hydra.", "promote.", "paths.", "audit.", "clean.")
# Hydra's instantiation keys: how a value is built, not what it is (the config artifact keeps them)
INSTANTIATE_KEYS = ("_target_", "_partial_", "_convert_", "_recursive_", "_args_")


def run_params(resolved: dict, bundle: DataBundle, spec: dict[str, Any], groups: list[str] | None = None) -> dict:
    """The params of a run: the ``resolved`` config's values (of ``groups`` only, when given) without
    :data:`NOT_PARAMS` and Hydra's instantiation keys, plus facts of the data it trained on."""
    if groups is not None:
        resolved = {k: v for k, v in resolved.items() if k in groups}
    params = {
        k: v
        for k, v in runs.flatten(resolved).items()
        if not k.startswith(NOT_PARAMS) and k.rsplit(".", 1)[-1] not in INSTANTIATE_KEYS
    }
    params.update(
        {
            "data.manifest_hash": bundle.manifest_hash,
            "data.num_classes": len(bundle.classes),
            "data.classes": bundle.classes,
            "data.resolved_image_size": spec["image_size"],
            "trial.repeats": resolved.get("trial", {}).get("repeats", 1),
            **{f"data.n_{k}": v for k, v in bundle.counts().items()},
        }
    )
    if HydraConfig.initialized():  # the chosen option of every config group (``loss=focal``), for reports
        params.update({f"choice.{k}": v for k, v in HydraConfig.get().runtime.choices.items() if "/" not in k})
    return params


def log_run_record(cfg: DictConfig, bundle: DataBundle, spec: dict[str, Any], groups: list[str] | None = None) -> None:
    """Params (:func:`run_params`) and the resolved config, Hydra's overrides and the manifest as artifacts."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    runs.log_params(run_params(resolved, bundle, spec, groups))
    # the trial's values as the sweeper handed them: a storage password read from the environment stays a reference
    resolved["trial"] = OmegaConf.to_container(cfg.trial, resolve=False)
    text = yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True)
    files: dict[str, str | Path] = {"config/config.yaml": text}
    output_dir = Path(cfg.paths.output_dir)
    for name in ("overrides.yaml", "hydra.yaml"):
        if (output_dir / ".hydra" / name).exists():
            files[f"config/{name}"] = output_dir / ".hydra" / name
    files[f"data/{bundle.manifest_path.name}"] = bundle.manifest_path
    runs.log_files(files)  # one upload


def model_meta(model_name: str, bundle: DataBundle, spec: dict[str, Any], best_epoch: int, best_val_acc: float):
    """``model/meta.json`` of a run's model, what ``promote`` reads: architecture, classes, input, data."""
    return {
        "model_name": model_name,
        "classes": bundle.classes,
        "num_classes": len(bundle.classes),
        **spec,
        "best_epoch": best_epoch,
        "best_val_acc": best_val_acc,
        "manifest_hash": bundle.manifest_hash,
        "manifest_file": f"data/{bundle.manifest_path.name}",
    }
