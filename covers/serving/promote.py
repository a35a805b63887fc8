"""Promote a sweep's best trial: evaluate it once on the test split of its own manifest, register it (pyfunc with
preprocessing, class names and a similar-cover gallery) and move the champion alias if it is not worse."""

from __future__ import annotations

import ast
import io
import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from PIL import Image

import covers
from covers.data import DataBundle, prepare_data
from covers.knn.baseline import create_knn_model, split_rows
from covers.reporting.figures import plot_confusion_matrix
from covers.serving.cover_model import CoverModel, quiet_any_hint
from covers.serving.ensemble import Composition, compose, log_composition, variant_lines
from covers.serving.gate import GateResult, chance_level, gate
from covers.tracking import registry, runs
from covers.tracking.versions import installed_versions
from covers.training.metrics import classification_metrics

log = logging.getLogger(__name__)

SERVING_PACKAGES = ("mlflow", "torch", "timm", "albumentations", "faiss-cpu", "pillow", "numpy", "pandas")


def requirements() -> list[str]:
    """Pinned pip requirements of the pyfunc (the ``covers`` code itself travels with the model)."""
    return [f"{pkg}=={v}" if v else pkg for pkg, v in installed_versions(SERVING_PACKAGES).items()]


def load_run_data(client: MlflowClient, run: Run, config: dict, meta: dict, cache_dir: str, dest: Path) -> DataBundle:
    """The run's own split manifest (its logged artifact) with decoded images, checked against the model."""
    manifest = client.download_artifacts(run.info.run_id, meta["manifest_file"], str(dest))
    d = config["data"]
    bundle = prepare_data(
        name=d["name"],
        image_size=meta["image_size"],
        cache_dir=cache_dir,
        source=d.get("source"),
        manifest=manifest,
        demo=d.get("demo"),
    )
    if bundle.manifest_hash != meta["manifest_hash"] or bundle.classes != meta["classes"]:
        raise ValueError(f"run {run.info.run_id}: its manifest artifact does not match the model's meta.json")
    return bundle


def evaluate_on_test(client: MlflowClient, run_id: str, model: CoverModel, bundle: DataBundle) -> float:
    """The one look at the test split: metrics, report, predictions and confusion matrix logged to the run."""
    images, table = split_rows(bundle, "test")
    target = table["genre"].map({c: i for i, c in enumerate(model.classes)}).to_numpy()
    probs = model.predict_proba(images)
    pred = probs.argmax(1)
    metrics, per_class, report = classification_metrics(target, pred, model.classes)
    metrics["test_n_images"] = len(table)
    client.log_batch(run_id, metrics=[Metric(k, float(v), int(time.time() * 1000), 0) for k, v in metrics.items()])
    table["predicted"] = [model.classes[i] for i in pred]
    table["probability"] = probs.max(1)
    client.log_text(run_id, report, "test/classification_report.txt")
    client.log_text(run_id, per_class.to_csv(index=False), "test/per_class.csv")
    client.log_text(run_id, table.to_csv(index=False), "test/predictions.csv")
    fig = plot_confusion_matrix(target, pred, model.classes, f"test split ({len(table)} covers)")
    runs.log_figure(fig, "plots/test_confusion_matrix.png", run_id, client)
    client.set_tag(run_id, "test.manifest_hash", bundle.manifest_hash)
    log.info("test split of manifest %s (%d covers):\n%s", bundle.manifest_hash, len(table), report)
    return metrics["test_acc"]


def describe(run: Run, meta: dict, config: dict, test_acc: float) -> str:
    """Model-version description: origin, data manifest, test accuracy, preprocessing and the resolved config."""
    tags = run.data.tags
    origin = f"run {run.info.run_id} ({run.info.run_name}"
    if "study_name" in tags:
        origin += f", study {tags['study_name']}, trial {tags.get('trial_number')}"
    kind = "kNN on pretrained embeddings" if meta.get("kind") == "knn" else "fine-tuned classifier"
    return (
        f"{meta['model_name']} {kind} from {origin}).\n\n"
        f"Data manifest {meta['manifest_hash']} ({meta['manifest_file']}); test_acc {test_acc:.4f}; "
        f"classes: {', '.join(meta['classes'])}.\n"
        f"Input: list of image paths, encoded bytes, base64 text or HxWx3 uint8 arrays; decoded to RGB, resized to "
        f"{meta['image_size']}px (bicubic), normalised with mean {meta['mean']} std {meta['std']}.\n\n"
        f"Config:\n```yaml\n{yaml.safe_dump(config, sort_keys=False)}```\n"
    )


def example_png(images: np.ndarray) -> bytes:
    """One cover as PNG bytes: the model's input example."""
    buf = io.BytesIO()
    Image.fromarray(images[0]).save(buf, format="PNG")
    return buf.getvalue()


def register(model: CoverModel, run: Run, name: str, description: str, example: bytes, tags: dict) -> ModelVersion:
    """Log the pyfunc (models from code, with the ``covers`` code) to the run and register it as a new version."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save(Path(tmp) / "model")
        code = shutil.copytree(Path(covers.__file__).parent, Path(tmp) / "code" / "covers", ignore=_no_cache)
        mlflow.start_run(run_id=run.info.run_id)
        try:  # a failed promotion must not mark the (finished) trial FAILED
            with quiet_any_hint():
                info = mlflow.pyfunc.log_model(
                    name=name,
                    python_model=str(Path(covers.__file__).parent / "serving" / "pyfunc_model.py"),
                    artifacts={"model": str(folder)},
                    code_paths=[str(code)],
                    input_example=[example],
                    pip_requirements=requirements(),
                    metadata={k: model.meta[k] for k in ("kind", "classes", "image_size", "mean", "std")},
                )
        finally:
            mlflow.end_run(run.info.status)
    mv = mlflow.register_model(info.model_uri, name, tags=tags)
    MlflowClient().update_model_version(name, mv.version, description=description)
    return mv


def _no_cache(_dir: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__"]


def champion_accuracy(champion: ModelVersion, bundle: DataBundle) -> tuple[float, str]:
    """The champion's test accuracy on ``bundle``'s test split: its recorded one if it was measured on the same
    manifest, else measured now (by genre name: the caller checks the label sets are equal first)."""
    if champion.tags.get("manifest_hash") == bundle.manifest_hash and "test_acc" in champion.tags:
        return float(champion.tags["test_acc"]), "recorded on the same test split"
    log.warning("champion v%s was tested on another manifest: evaluating it on this test split", champion.version)
    model = mlflow.pyfunc.load_model(f"models:/{champion.name}/{champion.version}").unwrap_python_model().model
    images, table = split_rows(bundle, "test")
    pred = np.asarray(model.classes)[model.predict_proba(images).argmax(1)]
    return float((pred == table["genre"].to_numpy()).mean()), "measured now on this test split"


def version_classes(client: MlflowClient, mv: ModelVersion) -> list[str]:
    """The genres a registered version predicts: its ``classes`` tag, or (versions registered before the tag) its
    run's ``data.classes`` param (a Python list literal, read with ``ast.literal_eval``)."""
    if "classes" in mv.tags:
        return list(json.loads(mv.tags["classes"]))
    return list(ast.literal_eval(client.get_run(mv.run_id).data.params["data.classes"]))


def default_model_name(config: dict) -> str:
    """``covers-<data set>``: the source folder's name (``covers-discogs-covers``), else ``data.name``
    (``covers-demo``); characters other than letters, digits, ``-``, ``_`` and ``.`` become ``-``."""
    data = config["data"]
    name = Path(str(data["source"])).name if data.get("source") else str(data["name"])
    return "covers-" + re.sub(r"[^\w.-]", "-", name)


def baseline_predictions(
    meta: dict, config: dict, bundle: DataBundle, gallery_splits: tuple[str, ...], batch_size: int, device: str
) -> np.ndarray:
    """The kNN baseline's test predictions (class indices in ``meta['classes']`` order): the candidate's backbone
    with its pretrained weights, the gallery splits indexed, the same test covers and input size."""
    weights = config["model"].get("weights", "package")
    try:
        model = create_knn_model(
            meta["classes"],
            meta["image_size"],
            meta["mean"],
            meta["std"],
            meta["model_name"],
            weights,
            config["model"].get("checkpoint"),
            device=device,
            batch_size=batch_size,
        )
    except Exception as e:
        raise RuntimeError(
            f"the kNN baseline ({meta['model_name']}, weights={weights}) could not be built: {e}; "
            "promote.baseline=none promotes without it"
        ) from e
    images, table = split_rows(bundle, *gallery_splits)
    model.set_gallery(images, table, "flat")
    test_images, _ = split_rows(bundle, "test")
    return model.predict_proba(test_images).argmax(1)


def test_predictions(client: MlflowClient, run_id: str, classes: list[str], bundle: DataBundle, dest: Path):
    """Targets and the candidate's predictions on the test split (class indices), from its logged
    ``test/predictions.csv`` (the one test evaluation), in manifest order."""
    rows = pd.read_csv(client.download_artifacts(run_id, "test/predictions.csv", str(dest)), dtype=str)
    _, table = split_rows(bundle, "test")
    merged = table.merge(rows[["archive", "member", "predicted"]], on=["archive", "member"], how="left")
    if len(merged) != len(table) or merged["predicted"].isna().any():
        raise ValueError(f"run {run_id}: test/predictions.csv does not cover the test split of its manifest")
    index = {c: i for i, c in enumerate(classes)}
    return merged["genre"].map(index).to_numpy(), merged["predicted"].map(index).to_numpy()


def run_gate(
    client: MlflowClient,
    run_id: str,
    meta: dict,
    config: dict,
    bundle: DataBundle,
    baseline: str | None,
    gallery_splits: tuple[str, ...],
    batch_size: int,
    device: str,
    dest: Path,
) -> GateResult:
    """The promotion gate (:mod:`covers.serving.gate`) for the candidate: chance from the training split, the
    kNN baseline (``baseline='knn'``; none for a kNN candidate, which is the baseline) on the same test covers."""
    target, pred = test_predictions(client, run_id, meta["classes"], bundle, dest)
    _, train_labels = bundle.split("train")
    base = None
    if baseline == "knn" and meta.get("kind") != "knn":
        base = baseline_predictions(meta, config, bundle, gallery_splits, batch_size, device)
    result = gate(target, pred, chance_level(target, train_labels), base)
    client.log_dict(run_id, asdict(result), "promotion/gate.json")
    return result


def select_run(
    client: MlflowClient, experiment_id: str, run_id: str | None, study_name: str | None, parent_run_id: str | None
) -> Run:
    """The given run, or the best trial of the sweep named by parent run id or study name (default: latest)."""
    if run_id:
        return client.get_run(run_id)
    return registry.best_trial(client, registry.find_sweep(client, experiment_id, study_name, parent_run_id))


def test_and_register(
    client: MlflowClient,
    run: Run,
    model_dir: Path,
    config: dict,
    bundle: DataBundle,
    model_name: str,
    gallery_splits: tuple[str, ...],
    index: str,
    batch_size: int,
    device: str,
) -> tuple[ModelVersion, float]:
    """Test once and register once per run: an earlier promotion's test result and version are reused."""
    run_id = run.info.run_id
    mv = registry.run_version(client, model_name, run_id)
    test_acc = run.data.metrics.get("test_acc")
    if test_acc is not None:
        log.info("run %s was evaluated on the test split before (test_acc=%.4f): not again", run_id, test_acc)
    if mv is not None and test_acc is not None:
        return mv, test_acc
    model = CoverModel.from_dir(model_dir, device, batch_size)
    images, table = split_rows(bundle, *gallery_splits)
    model.set_gallery(images, table, index)
    if test_acc is None:
        test_acc = evaluate_on_test(client, run_id, model, bundle)
    if mv is None:
        tags = {
            "test_acc": f"{test_acc:.6f}",
            "manifest_hash": bundle.manifest_hash,
            "run_id": run_id,
            "classes": json.dumps(model.classes),
        }
        description = describe(run, model.meta, config, test_acc)
        mv = register(model, run, model_name, description, example_png(images), tags)
    return mv, test_acc


def decide_alias(
    client: MlflowClient,
    mv: ModelVersion,
    test_acc: float,
    bundle: DataBundle,
    alias: str,
    force: bool,
    checked: GateResult | None = None,
):
    """The gate (``checked``) first, then the alias holder: a champion that predicts other genres is not comparable,
    else compare test accuracies on this split; move the alias if the rules (or ``force``) say so."""
    champion = registry.alias_version(client, mv.name, alias)
    champion_acc, basis = None, "no champion yet"
    classes = version_classes(client, mv)
    objections = []
    if champion is not None and champion.version == mv.version:
        champion_acc, basis = test_acc, "same version"
        decision = registry.Decision(True, f"v{mv.version} already holds @{alias}")
    else:
        if checked is not None and not checked.passed:
            objections.append(f"the gate refused it: {checked.reason}")
        if champion is None:
            decision = registry.decide(test_acc, None)
        elif set(theirs := version_classes(client, champion)) != set(classes):
            basis = "label sets differ"
            decision = registry.Decision(
                False,
                f"the label sets differ: v{champion.version} predicts {theirs}, the candidate {classes}; they are "
                "not comparable (give it its own promote.model_name; the default is covers-<data set>)",
            )
        else:
            champion_acc, basis = champion_accuracy(champion, bundle)
            decision = registry.decide(test_acc, champion_acc)
        if not decision.promote:
            objections.append(decision.reason)
        if objections:
            reason = "; ".join(objections)
            decision = registry.Decision(force, f"forced although {reason}" if force else reason)
        elif checked is not None:
            decision = registry.Decision(True, f"{decision.reason}; the gate passed it: {checked.reason}")
    if decision.promote:
        client.set_registered_model_alias(mv.name, alias, mv.version)
    return {
        "model_name": mv.name,
        "alias": alias,
        "candidate_version": mv.version,
        "candidate_run_id": mv.run_id,
        "candidate_test_acc": test_acc,
        "champion_version": champion.version if champion else None,
        "champion_test_acc": champion_acc,
        "champion_basis": basis,
        "promoted": decision.promote,
        "forced": bool(force and objections),
        "reason": decision.reason,
        "gate": asdict(checked) if checked is not None else None,
        "alias_holder": client.get_model_version_by_alias(mv.name, alias).version
        if decision.promote
        else (champion.version if champion else None),
        "test_manifest_hash": bundle.manifest_hash,
    }


def report_decision(client: MlflowClient, run_id: str, record: dict[str, Any]) -> str:
    """Log the decision (a Hydra app shows it on the console and keeps it in its log file) and record it: run tags,
    a JSON record, model-version tags; returns the text."""
    name, alias, v = record["model_name"], record["alias"], record["candidate_version"]
    champ = record["champion_version"]
    before = f"v{champ} ({record['champion_basis']})" if champ else "none"
    if champ and record["champion_test_acc"] is not None:
        before = f"v{champ} test_acc {record['champion_test_acc']:.4f} ({record['champion_basis']})"
    if record["promoted"]:
        outcome = f"v{v} holds @{alias}"
    else:
        outcome = f"v{champ} keeps @{alias}" if champ else f"no version holds @{alias}"
        outcome += " (promote.force=true overrides)"
    lines = [f"promote {name}: candidate v{v} (run {run_id}) test_acc {record['candidate_test_acc']:.4f}"]
    if record.get("composition"):
        lines += variant_lines(**record["composition"])
    if record["gate"] is not None:
        lines += GateResult(**record["gate"]).lines()
    lines += [f"champion before: {before}", f"decision: {outcome}: {record['reason']}"]
    text = "\n  ".join(lines)
    log.info(text)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    client.log_dict(run_id, record, f"promotion/{stamp}.json")
    client.set_tag(run_id, "promotion.decision", "promoted" if record["promoted"] else "not promoted")
    client.set_tag(run_id, "promotion.reason", record["reason"])
    for key in ("promoted", "forced", "reason", "champion_version", "champion_test_acc"):
        client.set_model_version_tag(name, v, f"promotion.{key}", str(record[key]))
    if record["gate"] is not None:
        for key, value in GateResult(**record["gate"]).tags().items():
            client.set_model_version_tag(name, v, key, value)
    return text


@contextmanager
def no_download_bars() -> Iterator[None]:
    """MLflow's artifact progress bars off (it draws one per download, terminal or not), unless the user set
    ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` themselves."""
    if MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.defined:
        yield
        return
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.set(False)
    try:
        yield
    finally:
        MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.unset()


def try_compositions(
    client: MlflowClient,
    run: Run,
    model_dir: Path,
    config: dict,
    bundle: DataBundle,
    top_k: int,
    tta: bool,
    device: str,
    batch_size: int,
    dest: Path,
) -> tuple[Run, Path, Composition | None]:
    """The ensemble of the sweep's ``top_k`` best trials and TTA (:mod:`covers.serving.ensemble`): the run and
    model folder to promote (an adopted composition's own run, else ``run``'s) and what was tried."""
    if config["data"].get("cv_folds"):
        log.warning("promote.ensemble and promote.tta are skipped: a cross-validated run's model saw validation covers")
        return run, model_dir, None
    ranked: list[Run] = []
    if top_k > 1:
        parent = run.data.tags.get("mlflow.parentRunId")
        if not parent:
            raise ValueError(f"promote.ensemble.top_k={top_k} needs a sweep's trial; run {run.info.run_id} is not one")
        ranked = [r for r in registry.ranked_trials(client, client.get_run(parent)) if r.info.run_id != run.info.run_id]

    def fetch(other: Run) -> Path:
        return Path(client.download_artifacts(other.info.run_id, "model", str(dest / other.info.run_id)))

    single = CoverModel.from_dir(model_dir, device, batch_size)
    comp = compose(single, run, ranked, fetch, bundle, top_k, tta, device, batch_size)
    if not comp.adopted:
        return run, model_dir, comp
    best_files = dest / "best-files"
    for sub in ("config", "data"):
        client.download_artifacts(run.info.run_id, sub, str(best_files))
    composed = log_composition(client, comp, best_files, dest)
    return composed, Path(client.download_artifacts(composed.info.run_id, "model", str(dest / "composed-run"))), comp


@no_download_bars()
def promote(
    tracking_uri: str,
    experiment: str,
    cache_dir: str,
    study_name: str | None = None,
    parent_run_id: str | None = None,
    run_id: str | None = None,
    model_name: str | None = None,
    alias: str = "champion",
    force: bool = False,
    baseline: str | None = "knn",
    ensemble: dict | None = None,
    tta: bool = False,
    gallery_splits: tuple[str, ...] = ("train",),
    index: str = "flat",
    batch_size: int = 64,
    device: str = "auto",
) -> dict[str, Any]:
    """Select a run (``run_id``, else a sweep's best trial), test once, register (as ``model_name``, default
    ``covers-<data set>``), gate it against chance and the ``baseline`` (``knn`` | ``none``), decide the alias;
    the record. ``ensemble={"top_k": K}`` and ``tta`` try an ensemble of the sweep's K best trials and test-time
    augmentation first, each adopted only when it beats the single best model on validation (an ensemble: on
    held-out halves of it, :func:`covers.serving.ensemble.held_out_accuracy`)."""
    if baseline not in (None, "none", "knn"):
        raise ValueError(f"promote.baseline must be knn or none, got {baseline!r}")
    mlflow.set_tracking_uri(runs.resolve_sqlite_uri(tracking_uri))
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise LookupError(f"no MLflow experiment {experiment!r} at {tracking_uri}")
    run = select_run(client, exp.experiment_id, run_id, study_name, parent_run_id)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(client.download_artifacts(run.info.run_id, "model", tmp))
        config = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config/config.yaml", tmp)).read_text())
        meta = json.loads((model_dir / "meta.json").read_text())
        bundle = load_run_data(client, run, config, meta, cache_dir, Path(tmp))
        name = model_name or default_model_name(config)
        top_k, comp = int((ensemble or {}).get("top_k") or 1), None
        if top_k > 1 or tta:
            run, model_dir, comp = try_compositions(
                client, run, model_dir, config, bundle, top_k, tta, device, batch_size, Path(tmp)
            )
            meta = json.loads((model_dir / "meta.json").read_text())
        splits = tuple(gallery_splits)
        mv, test_acc = test_and_register(
            client, run, model_dir, config, bundle, name, splits, index, batch_size, device
        )
        checked = run_gate(
            client, run.info.run_id, meta, config, bundle, baseline, splits, batch_size, device, Path(tmp)
        )
        record = decide_alias(client, mv, test_acc, bundle, alias, force, checked)
        record["composition"] = (
            {"adopted": comp.adopted, "val_acc": comp.val_acc, "latency_ms": comp.latency_ms, "held_out": comp.held_out}
            if comp
            else None
        )
    report_decision(client, run.info.run_id, record)
    return record
