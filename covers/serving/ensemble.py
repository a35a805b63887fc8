"""Ensembles and test-time augmentation at promotion (``promote.ensemble.top_k``, ``promote.tta``): each is adopted
only when it beats the single best trial's model on the validation split; the test split never chooses.

The single best trial was picked on those same validation covers, so its score there is the luckiest of its
sweep's: an ensemble is also judged against picking one of its members on covers that pick did not see
(:func:`held_out_accuracy`), not only against that maximum. TTA changes no choice among models and is judged on all of
them.

An adopted composition becomes its own MLflow run under the sweep (tag ``covers.kind=ensemble``): its ``model/``
folder holds every member's weights, so promote tests and registers it like any trial."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities import Run as MlflowRun
from sklearn.model_selection import RepeatedKFold, RepeatedStratifiedKFold

from covers.data import DataBundle
from covers.serving.cover_model import CoverModel
from covers.serving.tta import TTA_VIEWS

log = logging.getLogger(__name__)

# what members must share with the best trial's model to be averaged with it
SHARED = ("kind", "model_name", "classes", "image_size", "mean", "std", "manifest_hash")


@dataclass
class Composition:
    """The model to register (the single best, an ensemble, either with TTA), its runs (best first), the
    validation accuracy and per-image latency of every variant tried (``single``, ``ensemble``, ``tta``), and the
    held-out comparison the ensemble was judged by (:func:`held_out_accuracy`; empty when none was tried)."""

    model: CoverModel
    runs: list[MlflowRun]
    adopted: list[str] = field(default_factory=list)
    val_acc: dict[str, float] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    held_out: dict[str, float] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """What promote prints (:func:`variant_lines`)."""
        return variant_lines(self.adopted, self.val_acc, self.latency_ms, self.held_out)


def variant_lines(
    adopted: list[str], val_acc: dict[str, float], latency_ms: dict[str, float], held_out: dict[str, float]
) -> list[str]:
    """Every variant's validation accuracy and latency, the ensemble's held-out comparison, and what was adopted."""
    tried = ", ".join(f"{k} val_acc {val_acc[k]:.4f} ({latency_ms[k]:.1f} ms/cover)" for k in val_acc)
    chosen = " + ".join(adopted) if adopted else "the single best model (nothing beat it on validation)"
    lines = [f"compositions tried: {tried}"]
    if held_out:
        lines.append(
            f"ensemble judged on held-out validation halves: picking one of its members {held_out['single']:.4f}, "
            f"the ensemble {held_out['ensemble']:.4f}"
        )
    return [*lines, f"adopted: {chosen}"]


def _predict(model: CoverModel, images: np.ndarray) -> tuple[np.ndarray, float]:
    """``model``'s class probabilities and its milliseconds per cover."""
    start = time.perf_counter()
    probs = model.predict_proba(images)
    return probs, 1000 * (time.perf_counter() - start) / max(1, len(images))


def _accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def held_out_accuracy(
    member_probs: list[np.ndarray], ensemble_probs: np.ndarray, labels: np.ndarray, repeats: int = 5
) -> dict[str, float]:
    """Picking one of the members by validation (``single``) against averaging them (``ensemble``), each scored on
    covers the pick did not see: the validation covers in two stratified halves (scikit-learn's
    ``RepeatedStratifiedKFold``; plain ``RepeatedKFold`` when a class has a single cover), the member with the best
    accuracy on one half picked (the first, the sweep's best, on a tie) and scored on the other, and the other way
    round; ``repeats`` times over, the mean accuracy over every cover judged. Scoring the pick on the covers it was
    picked on would credit it with the luck the pick selected for."""
    _, counts = np.unique(labels, return_counts=True)
    halves = (RepeatedStratifiedKFold if counts.min() >= 2 else RepeatedKFold)(
        n_splits=2, n_repeats=repeats, random_state=0
    )
    hits = {"single": 0, "ensemble": 0}
    judged = 0
    for pick, judge in halves.split(np.zeros(len(labels)), labels):
        chosen = int(np.argmax([_accuracy(p[pick], labels[pick]) for p in member_probs]))
        hits["single"] += int((member_probs[chosen][judge].argmax(1) == labels[judge]).sum())
        hits["ensemble"] += int((ensemble_probs[judge].argmax(1) == labels[judge]).sum())
        judged += len(judge)
    return {k: v / judged for k, v in hits.items()}


def compose(
    single: CoverModel,
    best: MlflowRun,
    ranked: list[MlflowRun],
    fetch: Callable[[MlflowRun], Path],
    bundle: DataBundle,
    top_k: int,
    tta: bool,
    device: str = "auto",
    batch_size: int = 64,
) -> Composition:
    """Try the ensemble of the ``top_k`` best trials (``ranked``: the other trials' runs, best first, whose model
    folders ``fetch`` downloads; those whose model does not share :data:`SHARED` with ``single`` are skipped, with
    the reason), adopted if it beats the single model on validation or picking one of its members on held-out
    validation covers (:func:`held_out_accuracy`); then TTA on the model so far, adopted if its validation accuracy
    is higher."""
    images, labels = bundle.split("val")
    probs, ms = _predict(single, images)
    acc = _accuracy(probs, labels)
    out = Composition(single, [best], val_acc={"single": acc}, latency_ms={"single": ms})
    if top_k > 1:
        members = []
        for run in ranked:
            if len(members) == top_k - 1:
                break
            model = CoverModel.from_dir(fetch(run), device, batch_size)
            differ = [k for k in SHARED if model.meta.get(k) != single.meta.get(k)]
            if differ:
                log.info("ensemble: run %s left out, its %s differ from the best trial's", run.info.run_id, differ)
                continue
            members.append((run, model))
        if members:
            described = [
                {
                    "run_id": r.info.run_id,
                    "trial_number": r.data.tags.get("trial_number"),
                    "best_val_acc": m.meta.get("best_val_acc"),
                }
                for r, m in members
            ]
            ensemble = replace(single, meta={**single.meta, "ensemble": described}, members=[m.net for _, m in members])
            ensemble_probs, out.latency_ms["ensemble"] = _predict(ensemble, images)
            out.val_acc["ensemble"] = _accuracy(ensemble_probs, labels)
            member_probs = [probs, *(m.predict_proba(images) for _, m in members)]
            out.held_out = held_out_accuracy(member_probs, ensemble_probs, labels)
            # ahead of the registered model on its own validation covers, or of the pick that chose it on covers it
            # did not see (when the best trial is also the members' best on validation, the first implies the second)
            if out.val_acc["ensemble"] > acc or out.held_out["ensemble"] > out.held_out["single"]:
                out.model, out.runs, acc = ensemble, [best, *(r for r, _ in members)], out.val_acc["ensemble"]
                out.adopted.append("ensemble")
    if tta:
        augmented = replace(out.model, meta={**out.model.meta, "tta": list(TTA_VIEWS)})
        tta_probs, out.latency_ms["tta"] = _predict(augmented, images)
        out.val_acc["tta"] = _accuracy(tta_probs, labels)
        if out.val_acc["tta"] > acc:
            out.model = augmented
            out.adopted.append("tta")
    return out


def composition_key(comp: Composition) -> str:
    """Identity of a composition: its members' run ids and TTA views (a second promotion reuses its run)."""
    ident = json.dumps([[r.info.run_id for r in comp.runs], comp.model.meta.get("tta")])
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def log_composition(client: MlflowClient, comp: Composition, best_files: Path, tmp: Path) -> MlflowRun:
    """The run of an adopted composition under the best trial's sweep: the members and views as params, every
    variant's validation accuracy and latency as metrics, the model folder, and the best trial's config and
    manifest (``best_files``: those artifacts, downloaded). Reused when the same composition was logged before."""
    best = comp.runs[0]
    key = composition_key(comp)
    query = f"tags.`ensemble.key` = '{key}' and attributes.status = 'FINISHED'"
    found = client.search_runs([best.info.experiment_id], query, max_results=1)
    if found:
        log.info("composition %s was logged before: run %s", key, found[0].info.run_id)
        return found[0]
    numbers = [r.data.tags.get("trial_number", r.info.run_id[:8]) for r in comp.runs]
    name = f"ensemble of trials {', '.join(map(str, numbers))}" if "ensemble" in comp.adopted else f"trial {numbers[0]}"
    name += " + TTA" if "tta" in comp.adopted else ""
    tags = {
        "covers.kind": "ensemble",
        "ensemble.key": key,
        "ensemble.adopted": ",".join(comp.adopted),
        **{k: best.data.tags[k] for k in ("mlflow.parentRunId", "study_name") if k in best.data.tags},
    }
    run = client.create_run(best.info.experiment_id, run_name=name, tags=tags)
    run_id = run.info.run_id
    params = {
        "ensemble.members": ",".join(r.info.run_id for r in comp.runs),
        "ensemble.tta": ",".join(comp.model.meta.get("tta") or []) or "none",
        **{k: v for k, v in best.data.params.items() if k.startswith("data.")},
    }
    now = int(time.time() * 1000)
    metrics = {
        **{f"val_acc_{k}": v for k, v in comp.val_acc.items()},
        **{f"latency_ms_{k}": v for k, v in comp.latency_ms.items()},
        **{f"held_out_acc_{k}": v for k, v in comp.held_out.items()},
        "summary/best_val_acc": comp.val_acc[(["single", *comp.adopted])[-1]],  # the registered model's own
    }
    client.log_batch(
        run_id,
        metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
        params=[Param(k, str(v)[:6000]) for k, v in params.items()],
        tags=[RunTag("mlflow.note.content", "\n".join(comp.lines()))],
    )
    client.log_artifacts(run_id, str(comp.model.save(tmp / "composed")), "model")
    for sub in ("config", "data"):
        client.log_artifacts(run_id, str(best_files / sub), sub)
    client.set_terminated(run_id, "FINISHED")
    return client.get_run(run_id)
