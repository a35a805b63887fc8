"""faiss indexes (exact and approximate, 100 000 vectors), kNN votes, and the kNN baseline on real data."""

from __future__ import annotations

import time

import albumentations as A
import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from albumentations.pytorch import ToTensorV2

from covers.knn import faiss_index
from covers.models.embed import create_backbone, normalized_batches
from covers.run.kinds import run as run_kind
from covers.serving.cover_model import PIXELS_COLUMN, CoverModel
from covers.training.runtime import create_runtime


def _vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_flat_index_is_exact_cosine():
    x = _vectors(500, 16)
    index = faiss_index.build_index(x, "flat")
    sims, ids = faiss_index.search(index, x[:50] * 3.0, k=3)  # scale does not matter: cosine
    assert (ids[:, 0] == np.arange(50)).all() and np.allclose(sims[:, 0], 1.0, atol=1e-5)
    normed = x / np.linalg.norm(x, axis=1, keepdims=True)
    expected = np.sort(normed[:50] @ normed.T, axis=1)[:, ::-1][:, :3]
    assert np.allclose(sims, expected, atol=1e-5)


@pytest.mark.parametrize("kind", faiss_index.INDEX_KINDS)
def test_index_builds_for_100k_vectors(kind):
    x = _vectors(100_000, 32, seed=1)
    start = time.perf_counter()
    index = faiss_index.build_index(x, kind)
    built = time.perf_counter() - start
    assert index.ntotal == 100_000 and built < 120, built
    queries = np.arange(0, 100_000, 997)
    _, ids = faiss_index.search(index, x[queries], k=1)
    recall = float((ids[:, 0] == queries).mean())
    assert recall >= (1.0 if kind == "flat" else 0.9), (kind, recall)


def test_build_index_rejects_unknown_kind_and_empty_input():
    with pytest.raises(ValueError, match="index kind"):
        faiss_index.build_index(_vectors(10, 4), "annoy")
    with pytest.raises(ValueError, match="zero vectors"):
        faiss_index.build_index(np.zeros((0, 4), np.float32))


# neighbours (similarity, label) of one query; label -1 = no neighbour
VOTES = [
    ("uniform", [0.9, 0.5, 0.4], [1, 0, 0], [2 / 3, 1 / 3]),
    ("similarity", [0.9, 0.5, 0.4], [1, 0, 0], [0.5, 0.5]),
    ("similarity", [0.9, -0.5, 0.4], [1, 0, 0], [0.4 / 1.3, 0.9 / 1.3]),
    ("uniform", [0.9, 0.5, 0.0], [1, 0, -1], [0.5, 0.5]),
    ("uniform", [0.0, 0.0, 0.0], [-1, -1, -1], [0.5, 0.5]),
]


@pytest.mark.parametrize(("weighting", "sims", "labels", "expected"), VOTES)
def test_vote(weighting, sims, labels, expected):
    probs = faiss_index.vote(np.array([sims]), np.array([labels]), 2, weighting)
    assert np.allclose(probs[0], expected, atol=1e-9)


def test_softmax_vote_lets_the_closest_neighbour_win():
    sims, labels = np.array([[0.95, 0.6, 0.6]]), np.array([[1, 0, 0]])
    assert faiss_index.vote(sims, labels, 2, "uniform").argmax() == 0
    assert faiss_index.vote(sims, labels, 2, "softmax", temperature=0.1).argmax() == 1
    with pytest.raises(ValueError, match="weighting"):
        faiss_index.vote(sims, labels, 2, "majority")


def test_classify_with_k_above_gallery_size():
    x = _vectors(4, 8)
    probs = faiss_index.classify(
        faiss_index.build_index(x), np.array([0, 1, 1, 1]), x[:1], 2, k=50, weighting="uniform"
    )
    assert np.allclose(probs, [[0.25, 0.75]])


@pytest.mark.slow
def test_knn_baseline_on_cifar_beats_chance(make_cfg, cifar_covers):
    cfg = make_cfg(
        "experiment=knn",
        "data=archives",
        f"data.source={cifar_covers}",
        "data.image_size=32",
        "data.eval_batch_size=256",
        "model.k=10",
    )
    out = run_kind(cfg)
    assert out["summary/best_val_acc"] > 0.25, out  # ten classes: chance is 0.1; measured 0.37 at 32 px

    client = mlflow.MlflowClient(tracking_uri=cfg.tracking.uri)
    run = client.get_run(out["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tf_efficientnet_lite0 knn k=10 similarity"
    assert run.data.tags["model.kind"] == "knn" and run.data.tags["covers.kind"] == "single"
    assert run.data.metrics["summary/best_val_acc"] == pytest.approx(out["summary/best_val_acc"])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch/val_acc")] == [1]
    assert run.data.params["model.k"] == "10" and int(run.data.params["data.n_val"]) >= 490  # 10 % of 5 000
    assert not any(p.startswith(("optim.", "loss.", "freeze.", "promote.")) for p in run.data.params)
    folders = ("model", "plots", "data", "config")
    artifacts = {a.path for p in folders for a in client.list_artifacts(run.info.run_id, p)}
    assert {"model/meta.json", "plots/val_confusion_matrix.png", "config/config.yaml"} <= artifacts
    assert any(a.startswith("data/") and a.endswith(".csv") for a in artifacts)


@pytest.mark.parametrize("channels_last", [True, False])
def test_batched_normalisation_equals_albumentations(channels_last):
    images = np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    tf = A.Compose([A.Normalize(mean=mean, std=std), ToTensorV2()])  # the reference: albumentations, per image
    expected = torch.stack([tf(image=im)["image"] for im in images])
    rt = create_runtime("cpu", "fp32", channels_last)
    batches = list(normalized_batches(images, mean, std, 4, rt))
    assert [len(b) for b in batches] == [4, 4, 2]
    got = torch.cat(batches)
    assert torch.allclose(got, expected, atol=1e-6)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert all(b.is_contiguous(memory_format=fmt) for b in batches)
    with pytest.raises(ValueError, match="uint8 images"):
        next(normalized_batches(images[:, :8], mean, std, 4, rt))


def _gallery_model() -> tuple[CoverModel, np.ndarray]:
    """A kNN model (untrained resnet18, 32 px) over 12 random covers, the last one a copy of the first."""
    images = np.random.default_rng(0).integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    images[11] = images[0]
    genres = ["Rock"] * 6 + ["Jazz"] * 6
    table = pd.DataFrame({"archive": [f"{g}.zip" for g in genres], "member": [f"{i}.png" for i in range(12)]})
    table["genre"] = genres
    meta = {"kind": "knn", "model_name": "resnet18", "classes": ["Jazz", "Rock"], "image_size": 32}
    meta |= {"mean": [0.5] * 3, "std": [0.25] * 3, "knn": {"k": 3}}
    model = CoverModel(create_backbone("resnet18", weights="none"), meta, rt=create_runtime("cpu", "fp32"))
    model.set_gallery(images, table)
    return model, images


def test_similar_leaves_a_gallery_cover_itself_out_unless_asked(tmp_path, caplog):
    """Covers 0 and 11 have the same pixels, hence tie: compare similarities, not the order of tied names."""
    model, images = _gallery_model()
    (first, second) = model.similar(images[[0, 3]], k=3)
    assert len(first) == len(second) == 3
    assert not {"0.png", "11.png"} & set(first["member"]), "the cover and its exact copy are left out"
    assert "3.png" not in set(second["member"]) and list(first["rank"]) == [1, 2, 3]
    (kept,) = model.similar(images[[3]], k=3, keep_self=True)
    assert kept.at[0, "member"] == "3.png" and kept.at[0, "similarity"] == pytest.approx(1.0, abs=1e-5)
    assert kept["similarity"][1:].tolist() == pytest.approx(second["similarity"][:2].tolist(), abs=1e-5)
    new = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    pd.testing.assert_frame_equal(model.similar(new, k=4)[0], model.similar(new, k=4, keep_self=True)[0])

    reloaded = CoverModel.from_dir(model.save(tmp_path / "model"), device="cpu")
    (again,) = reloaded.similar(images[[3]], k=3)  # the pixel hashes travel with the saved gallery
    assert "3.png" not in set(again["member"])
    assert again["similarity"].tolist() == pytest.approx(second["similarity"].tolist(), abs=1e-5)
    reloaded.gallery_table = reloaded.gallery_table.drop(columns=PIXELS_COLUMN)  # a gallery saved before them
    assert reloaded.similar(images[[3]], k=3)[0].at[0, "member"] == "3.png" and "no pixel hashes" in caplog.text
