"""Every way in holds to the ingest checks: a given manifest, `predict`/`similar` inputs, class counts, the store."""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covers.__main__ import chunks, main
from covers.data import IngestLimits, build_manifest, prepare_data, read_manifest, scan_source, write_manifest
from covers.data.split import assign_splits
from covers.serving.cover_model import read_image
from covers.serving.inputs import InputItem, iter_inputs, read_cover
from covers.tracking.runs import StoreError, setup_tracking


def _png(seed: int, size: int = 40) -> bytes:
    """A noise cover: no two seeds are near duplicates of each other."""
    noise = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _genre(source: Path, genre: str, n: int, seed: int = 0, **extra: bytes) -> Path:
    return _zip(source / f"{genre}.zip", {**{f"{genre}/{i}.png": _png(seed + i) for i in range(n)}, **extra})


BOMB = zipfile.ZIP_DEFLATED  # 20 MB of zeros deflate to ~20 KB: a ratio of ~1000:1


# -- predict / similar inputs --------------------------------------------------------------------------------------
def test_predict_inputs_hold_to_the_ingest_member_checks(tmp_path):
    good = _png(1)
    _zip(tmp_path / "Rock.zip", {"Rock/good.png": good, "../../x.png": good, "/abs.png": good})
    with zipfile.ZipFile(tmp_path / "Rock.zip", "a", BOMB) as zf:
        zf.writestr("Rock/bomb.png", bytes(20_000_000))
    got = {i.name.removeprefix(f"{tmp_path}/"): (i.data, i.error) for i in iter_inputs([tmp_path / "Rock.zip"])}
    assert got["Rock.zip:Rock/good.png"] == (good, None)
    assert got["Rock.zip:Rock/bomb.png"][0] is None and got["Rock.zip:Rock/bomb.png"][1].startswith("too_large:")
    assert got["Rock.zip:../../x.png"] == (None, got["Rock.zip:/abs.png"][1])
    assert got["Rock.zip:../../x.png"][1].startswith("unsafe_path:")
    # the archive's declared size is checked before anything is read; `similar` reads a member the same way
    big = list(iter_inputs([tmp_path / "Rock.zip"], IngestLimits(max_total_bytes=1_000)))
    assert len(big) == 1 and big[0].error.startswith("too_large:") and "max_total_bytes" in big[0].error
    assert read_cover(f"{tmp_path}/Rock.zip:Rock/bomb.png").error.startswith("too_large:")
    assert read_cover(f"{tmp_path}/Rock.zip:../../x.png").error.startswith("unsafe_path:")


def test_predict_chunks_are_bounded_in_bytes_too():
    items = [InputItem(str(i), bytes(60)) for i in range(5)]
    assert [len(c) for c in chunks(iter(items), 256, max_bytes=100)] == [2, 2, 1]
    assert [len(c) for c in chunks(iter(items), 2, max_bytes=10**9)] == [2, 2, 1]


def test_decoding_a_cover_holds_to_the_pixel_limit():
    buf = io.BytesIO()
    Image.new("1", (7000, 7000)).save(buf, format="PNG")  # 49 Mpx in a few KB: over max_pixels, under Pillow's
    with pytest.raises(Image.DecompressionBombError, match="max_pixels"):
        read_image(buf.getvalue())


def test_inputs_say_why_they_cannot_be_read(tmp_path):
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no covers here")
    paths = [tmp_path / "zero.png", tmp_path / "dangling.png", tmp_path / "empty", tmp_path / "missing.png"]
    got = {i.name.removeprefix(f"{tmp_path}/"): i.error for i in iter_inputs(paths)}
    assert got["zero.png"] == "not a regular file (a character device); not read"
    assert got["dangling.png"].startswith("a dangling link")
    assert got["empty"] == "no image files or zip archives in this folder"
    assert got["missing.png"] == "no such file or directory"
    assert read_cover(str(tmp_path / "empty")).error.startswith("a folder, not one cover")
    assert read_cover(str(tmp_path / "zero.png")).error == got["zero.png"]


# -- member names --------------------------------------------------------------------------------------------------
def _with_bad_utf8_name(path: Path) -> Path:
    """The member ``Rock/bad-é.png`` (flagged UTF-8 by zipfile) renamed to bytes that are not UTF-8."""
    data = path.read_bytes()
    assert data.count("bad-é".encode()) == 2  # its local header and its central-directory record
    path.write_bytes(data.replace("bad-é".encode(), b"bad-\xff\xfe"))
    return path


def test_a_member_with_an_undecodable_name_is_rejected_alone(tmp_path):
    _with_bad_utf8_name(_genre(tmp_path, "Rock", 15, **{"Rock/bad-é.png": _png(99)}))
    _genre(tmp_path, "Jazz", 3, seed=50)
    scan = scan_source(tmp_path)
    assert sum(c.label == "Rock" for c in scan.covers) == 15 and scan.classes == ["Jazz", "Rock"]
    assert [(r.archive, r.reason) for r in scan.rejected] == [("Rock.zip", "bad_name")]
    errors = [i.error for i in iter_inputs([tmp_path / "Rock.zip"])]
    assert errors.count(None) == 15 and sum(e is not None and e.startswith("bad_name:") for e in errors) == 1


# -- a given manifest ----------------------------------------------------------------------------------------------
def test_a_given_manifest_is_checked_against_the_source(tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    _genre(src, "Rock", 12)
    _genre(src, "Jazz", 12, seed=100)
    manifest = build_manifest(scan_source(src).covers)
    _genre(tmp_path, "outside", 1, seed=200)  # a cover beside data.source, not in it
    with zipfile.ZipFile(src / "Rock.zip", "a", BOMB) as zf:
        zf.writestr("Rock/bomb.png", bytes(20_000_000))
    row = manifest[manifest["member"] == "Rock/0.png"].iloc[0].to_dict()
    wrong = manifest["member"] == "Rock/1.png"
    bad = [
        {**row, "archive": "../outside.zip", "member": "outside/0.png"},
        {**row, "archive": str(tmp_path / "outside.zip"), "member": "outside/0.png"},
        {**row, "member": "Rock/../Rock/0.png"},
        {**manifest[wrong].iloc[0].to_dict(), "sha256": "0" * 64},
        {**row, "member": "Rock/bomb.png"},
    ]
    given = manifest[~wrong].reset_index(drop=True)
    path = write_manifest(pd.concat([given, pd.DataFrame(bad)], ignore_index=True), tmp_path / "manifest.csv")
    with caplog.at_level(logging.WARNING, logger="covers.data"):
        bundle = prepare_data("archives", 32, tmp_path / "cache", source=str(src), manifest=str(path))
    assert bundle.manifest.equals(given) and len(bundle.images) == len(given)
    assert bundle.manifest_path != path and read_manifest(bundle.manifest_path).equals(given)  # as trained on
    log = caplog.text
    assert "rejected 5 of 28 manifest rows" in log
    assert all(f"'{r}': {n}" in log for r, n in [("unsafe_path", 3), ("sha256_mismatch", 1), ("too_large", 1)])
    assert "../outside.zip:outside/0.png (unsafe_path" in log and "Rock.zip:Rock/1.png (sha256_mismatch" in log


def test_a_manifest_without_a_usable_row_stops_with_a_clear_error(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _genre(src, "Rock", 12)
    _genre(src, "Jazz", 12, seed=100)
    manifest = build_manifest(scan_source(src).covers).assign(sha256="0" * 64)
    path = write_manifest(manifest, tmp_path / "manifest.csv")
    with pytest.raises(ValueError, match=r"no row of manifest .* passes the ingest checks .*sha256_mismatch"):
        prepare_data("archives", 32, tmp_path / "cache", source=str(src), manifest=str(path))


# -- classes -------------------------------------------------------------------------------------------------------
def test_a_single_class_is_refused(tmp_path):
    _genre(tmp_path, "Rock", 12)
    with pytest.raises(ValueError, match=r"1 class \('Rock'\).*at least 2 classes"):
        prepare_data("archives", 32, tmp_path / "cache", source=str(tmp_path))


def test_a_class_too_small_for_every_split_is_named(caplog):
    labels = np.array(["A"] * 30 + ["B"] * 3)
    with caplog.at_level(logging.WARNING, logger="covers.data"):
        split = assign_splits(labels, np.arange(len(labels)))
    missing = [s for s in ("val", "test") if s not in set(split[labels == "B"])]
    assert missing, "3 images over a 10-fold split cannot reach every split"
    assert f"class 'B' (3 images) has none in {'/'.join(missing)}" in caplog.text
    with pytest.raises(ValueError, match=r"at least 3 images.*'B' has 2"):
        assign_splits(labels[:-1], np.arange(len(labels) - 1))


# -- the MLflow store ----------------------------------------------------------------------------------------------
def test_a_corrupt_store_is_one_line_and_fast(tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    db.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (tmp_path / "a.png").write_bytes(_png(0))
    assert main(["predict", str(tmp_path / "a.png"), "--tracking-uri", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a SQLite database" in err and str(db) in err
    start = time.monotonic()
    with pytest.raises(StoreError, match="is not a SQLite database"):
        setup_tracking(f"sqlite:///{db}", "covers")
    assert time.monotonic() - start < 5, "no retries on a store that cannot work"


def test_a_read_only_store_is_named_so_before_training(tmp_path, monkeypatch):
    db = tmp_path / "mlflow.db"
    with sqlite3.connect(db) as con:
        con.execute("create table t (x)")
    db.chmod(0o444)
    if os.geteuid() == 0:  # root writes anyway: let os.access answer as it does for any other user
        monkeypatch.setattr(os, "access", lambda p, mode: not mode & os.W_OK or bool(os.stat(p).st_mode & 0o200))
    with pytest.raises(StoreError, match=r"mlflow\.db is read-only"):
        setup_tracking(f"sqlite:///{db}", "covers")
