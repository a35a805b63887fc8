"""Ingest of real genre archives, bad members, the split manifest and the decode-once store."""

from __future__ import annotations

import io
import re
import zipfile

import albumentations as A
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from hydra.errors import CompactHydraException
from PIL import Image

from covers.data import DataSourceError, build_manifest, prepare_data, read_manifest, scan_source, write_manifest
from covers.data.demo import GENRES, ensure_demo
from covers.data.loaders import create_loader
from covers.data.transforms import create_eval_transform, create_train_transform
from covers.run.context import cpu_threads, loader_workers
from covers.training.runtime import Runtime


def test_album_covers_ingest(album_covers):
    scan = scan_source(album_covers)
    assert len(scan.covers) == 151 and not scan.rejected
    assert len(scan.classes) == 10 and "Christian_&_Gospel" in scan.classes and "Hip-Hop" in scan.classes
    gray = [c for c in scan.covers if c.mode == "L"]
    assert gray, "the real data has grayscale covers"


def test_grayscale_covers_come_out_rgb(album_covers, cache_dir):
    bundle = prepare_data("archives", 32, cache_dir, source=str(album_covers))
    # the default manifest is cleaned like the audit's: of the exact duplicate pair one copy is kept
    assert bundle.images.shape == (150, 32, 32, 3) and bundle.images.dtype == np.uint8
    scan = scan_source(album_covers)
    gray = {(c.archive, c.member) for c in scan.covers if c.mode == "L"}
    idx = [i for i, r in enumerate(bundle.manifest.itertuples()) if (r.archive, r.member) in gray]
    # a converted grayscale cover has three identical channels
    for i in idx:
        img = bundle.images[i].astype(int)
        assert np.abs(img[..., 0] - img[..., 1]).max() <= 1


def _split_counts(df):
    return df.groupby(["label", "split"]).size().unstack(fill_value=0)


def test_split_is_stratified_811_and_seeded(album_covers):
    covers = scan_source(album_covers).covers
    a, b, c = (build_manifest(covers, seed=s) for s in (0, 0, 1))
    n = len(a)
    counts = a["split"].value_counts()
    assert abs(counts["train"] - 0.8 * n) <= 3
    assert abs(counts["val"] - 0.1 * n) <= 2 and abs(counts["test"] - 0.1 * n) <= 2
    per_class = _split_counts(a)
    assert (per_class["train"] >= 10).all() and (per_class["val"] >= 1).all() and (per_class["test"] >= 1).all()
    assert a.equals(b), "same seed, same split"
    assert not a["split"].equals(c["split"]), "another seed, another split"
    # exact duplicates (same sha256) never straddle splits
    assert (a.groupby("sha256")["split"].nunique() == 1).all()


def test_manifest_roundtrip(album_covers, tmp_path):
    df = build_manifest(scan_source(album_covers).covers)
    path = write_manifest(df, tmp_path / "m" / "manifest.csv")
    back = read_manifest(path)
    assert list(back.columns) == ["archive", "member", "label", "split", "sha256", "group"] and back.equals(df)


def _png(color=(255, 0, 0), mode="RGB", size=(40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_members_are_skipped_with_reasons_and_good_ones_kept(tmp_path):
    good = _png()
    with zipfile.ZipFile(tmp_path / "Rock.zip", "w") as zf:
        for i in range(3):
            zf.writestr(f"Rock/good{i}.png", good)
        zf.writestr("Rock/gray.PNG", _png(128, "L"))
        zf.writestr("Rock/rgba.png", _png((0, 0, 255, 0), "RGBA"))
        zf.writestr("Rock/truncated.png", good[: len(good) // 2])
        zf.writestr("Rock/notes.txt", b"hello")
        zf.writestr("Rock/fake.png", b"not an image at all")
        zf.writestr("Rock/empty.png", b"")
        zf.writestr("__MACOSX/Rock/._good0.png", b"junk")
    (tmp_path / "Jazz.zip").write_bytes(b"this is not a zip")
    (tmp_path / "readme.txt").write_text("hi")
    scan = scan_source(tmp_path)
    kept = sorted(c.member for c in scan.covers)
    assert kept == ["Rock/good0.png", "Rock/good1.png", "Rock/good2.png", "Rock/gray.PNG", "Rock/rgba.png"]
    reasons = {(r.member or r.archive): r.reason for r in scan.rejected}
    assert reasons["Rock/truncated.png"] == "corrupt"
    assert reasons["Rock/notes.txt"] == "not_image" and reasons["Rock/fake.png"] == "not_image"
    assert reasons["Rock/empty.png"] == "empty" and reasons["__MACOSX/Rock/._good0.png"] == "junk"
    assert reasons["Jazz.zip"] == "broken_archive" and reasons["readme.txt"] == "not_archive"


def test_folder_per_class_source(tmp_path):
    for cls in ("A", "B"):
        (tmp_path / cls / "nested").mkdir(parents=True)
        for i in range(3):
            (tmp_path / cls / "nested" / f"{i}.png").write_bytes(_png((i * 40, 0, 0)))
    scan = scan_source(tmp_path)
    assert scan.classes == ["A", "B"] and len(scan.covers) == 6


def test_demo_data_is_generated_deterministically(tmp_path):
    a = ensure_demo(tmp_path / "a", per_class=6, size=48)
    b = ensure_demo(tmp_path / "b", per_class=6, size=48)
    for genre in GENRES:
        assert (a / f"{genre}.zip").read_bytes() == (b / f"{genre}.zip").read_bytes()
    scan = scan_source(a)
    assert len(scan.covers) == 6 * len(GENRES) and scan.classes == sorted(GENRES)
    with zipfile.ZipFile(a / "Rock.zip") as zf:
        assert all(n.startswith("Rock/") and n.endswith(".png") for n in zf.namelist())


def test_decode_store_is_reused(tmp_path, cache_dir):
    src = ensure_demo(tmp_path / "demo", per_class=10, size=48)
    first = prepare_data("demo", 32, tmp_path / "c", source=str(src))
    files = list((tmp_path / "c" / "decoded").glob("*.npy"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    second = prepare_data("demo", 32, tmp_path / "c", source=str(src))
    assert files[0].stat().st_mtime_ns == mtime and np.array_equal(first.images, second.images)
    assert second.manifest_path == first.manifest_path


def test_decoded_store_kept_in_memory_is_bounded_and_can_be_turned_off(tmp_path, monkeypatch):
    from covers.data import store

    monkeypatch.setattr(store, "_memory", type(store._memory)())
    src = ensure_demo(tmp_path / "demo", per_class=10, size=48)
    first = prepare_data("demo", 32, tmp_path / "c", source=str(src))
    again = prepare_data("demo", 32, tmp_path / "c", source=str(src))
    assert again.images is first.images and again is not first  # the array is shared, the bundle rebuilt
    off = prepare_data("demo", 32, tmp_path / "c", source=str(src), keep_decoded=False)
    assert off.images is not first.images and np.array_equal(off.images, first.images)  # read from disk
    for size in (33, 34, 35):
        prepare_data("demo", size, tmp_path / "c", source=str(src))
    assert len(store._memory) == store.KEEP_IN_MEMORY  # the oldest are let go
    assert prepare_data("demo", 32, tmp_path / "c", source=str(src)).images is not first.images


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        prepare_data("archives", 32, tmp_path, source=str(tmp_path / "nope"))
    (tmp_path / "Rock.zip").write_bytes(b"")
    parent = re.escape(str(tmp_path))
    with pytest.raises(DataSourceError, match=rf"one archive\.\nPass the folder .*: data\.source={parent}$"):
        prepare_data("archives", 32, tmp_path, source=str(tmp_path / "Rock.zip"))
    with pytest.raises(ValueError, match=r"data\.source is not set") as unset:
        prepare_data("archives", 32, tmp_path)
    assert isinstance(unset.value, CompactHydraException), "Hydra apps print it without a traceback"


NORM = {"mean": (0.5,) * 3, "std": (0.5,) * 3}


def _epoch(loader) -> torch.Tensor:
    return torch.cat([x for x, _ in loader])


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_sends_uint8_and_normalises_whole_batches(workers):
    images = np.random.default_rng(0).integers(0, 256, size=(10, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(10) % 3
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    assert create_eval_transform(16)(image=images[0])["image"].dtype == torch.uint8
    loader = create_loader(images, labels, create_eval_transform(16), 4, False, mean=mean, std=std, num_workers=workers)
    batches = list(loader)
    assert len(loader) == 3 and [len(y) for _, y in batches] == [4, 4, 2]
    reference = A.Compose([A.Normalize(mean=mean, std=std), ToTensorV2()])  # albumentations, image by image
    expected = torch.stack([reference(image=im)["image"] for im in images])
    assert all(x.dtype == torch.float32 for x, _ in batches)
    assert torch.allclose(_epoch(batches), expected, atol=1e-5)
    assert torch.equal(torch.cat([y for _, y in batches]), torch.as_tensor(labels))


def test_loader_refuses_a_transform_that_normalises():
    images = np.zeros((4, 8, 8, 3), dtype=np.uint8)
    normalising = A.Compose([A.Normalize(), ToTensorV2()])
    loader = create_loader(images, np.zeros(4, dtype=np.int64), normalising, 2, False, **NORM)
    with pytest.raises(TypeError, match=r"Tensor of torch\.float32.*leave Normalize out"):
        next(iter(loader))
    no_tensor = create_loader(images, np.zeros(4, dtype=np.int64), A.Compose([]), 2, False, **NORM)
    with pytest.raises(TypeError, match=r"ndarray of uint8.*end custom augmentation with ToTensorV2"):
        next(iter(no_tensor))


def test_augmentation_is_seeded_and_each_loader_worker_draws_its_own():
    images = np.random.default_rng(0).integers(0, 256, size=(16, 24, 24, 3), dtype=np.uint8)
    labels = np.zeros(16, dtype=np.int64)

    def aug(seed):
        return create_train_transform(24, hflip=0.5, scale=(0.5, 1.0), rotate=10, seed=seed)

    def epoch(seed, workers):  # in order: the same images in the same places
        return _epoch(create_loader(images, labels, aug(seed), 4, False, num_workers=workers, **NORM))

    assert torch.equal(epoch(0, 0), epoch(0, 0)) and not torch.equal(epoch(0, 0), epoch(1, 0))
    # two workers: repeatable, and not the same draws in both (each batch of 4 images is one worker's)
    two = epoch(0, 2)
    assert torch.equal(two, epoch(0, 2))
    identical = aug(0)
    same_images = np.repeat(images[:1], 16, axis=0)  # one image everywhere: only the random draws differ
    by_worker = _epoch(create_loader(same_images, labels, identical, 4, False, num_workers=2, **NORM))
    assert not torch.equal(by_worker[:4], by_worker[4:8])


def test_loader_workers_default_by_device(make_cfg):
    cpu, cuda = Runtime(torch.device("cpu")), Runtime(torch.device("cuda"))
    default, three, none = (make_cfg(f"data.num_workers={n}") for n in ("null", 3, 0))
    assert loader_workers(default, cpu, 4) == 0 and loader_workers(three, cpu, 4) == 3
    assert loader_workers(none, cuda, 4) == 0
    assert loader_workers(default, cuda, 4) == 3 and loader_workers(default, cuda, 16) == 8  # threads less one, <= 8


def test_cpu_threads_follow_trainer_threads_then_the_sweeps_parallel_trials(make_cfg, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert cpu_threads(make_cfg("trainer.threads=3")) == 3
    assert cpu_threads(make_cfg("trainer.threads=null")) == 8
    assert cpu_threads(make_cfg("trainer.threads=null", "trial.n_jobs=4")) == 2
    # data.num_workers defaults follow the run's threads, so trainer.threads reaches the loaders too
    assert loader_workers(make_cfg("data.num_workers=null"), Runtime(torch.device("cuda")), 3) == 2
