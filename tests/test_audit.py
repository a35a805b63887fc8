"""The data audit: each bad member as a real zip fixture, duplicates, the real album covers, training on it."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covers.audit import AnomalyRules, audit_source, plots
from covers.audit.eda import FEATURES
from covers.data import Cover, DuplicateRules, IngestLimits, clean_source, find_duplicates, fingerprint, scan_source
from covers.data.prepare import resolve_manifest
from covers.data.split import read_manifest
from covers.run.audit import run_audit

SPLIT = {"val_fraction": 0.1, "test_fraction": 0.1, "seed": 0}


def _encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(seed: int, size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A random RGB cover: distinct seeds give covers that are nowhere near duplicates."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _huge_header_png() -> bytes:
    """A valid 1x1 PNG whose header claims 30000 x 30000 pixels (a decompression bomb for Pillow)."""
    data = bytearray(_encode(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", 30000, 30000) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _write_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _good(prefix: str = "Rock/", n: int = 3, seed: int = 0) -> dict[str, bytes]:
    return {f"{prefix}good{i}.png": _encode(_noise(seed + i)) for i in range(n)}


GOOD_PNG = _encode(_noise(99))
BAD_MEMBERS = [
    ("unsafe_path", "../evil.png", GOOD_PNG, {}),
    ("unsafe_path", "/abs/evil.png", GOOD_PNG, {}),
    ("junk", "__MACOSX/Rock/._good0.png", b"\x00\x05\x16\x07junk", {}),
    ("junk", "Rock/.DS_Store", b"\x00\x00\x00\x01Bud1", {}),
    ("empty", "Rock/empty.png", b"", {}),
    ("not_image", "Rock/notes.txt", b"liner notes", {}),
    ("not_image", "Rock/fake.jpg", b"this is not a jpeg", {}),
    ("corrupt", "Rock/truncated.png", GOOD_PNG[: len(GOOD_PNG) // 2], {}),
    ("too_large", "Rock/bomb.bmp", b"\x00" * 3_000_000, {}),  # deflates ~1000:1
    ("too_large", "Rock/huge_header.png", _huge_header_png(), {}),
    ("too_large", "Rock/big.png", _encode(_noise(7, (300, 300))), {"max_pixels": 200 * 200}),
    ("too_small", "Rock/tiny.png", _encode(_noise(8, (64, 16))), {}),
]


@pytest.mark.parametrize(
    ("reason", "member", "data", "limits"), BAD_MEMBERS, ids=[f"{r}:{m}" for r, m, _, _ in BAD_MEMBERS]
)
def test_bad_member_yields_exactly_its_reason_and_good_ones_are_kept(tmp_path, reason, member, data, limits):
    _write_zip(tmp_path / "Rock.zip", {**_good(), member: data}, zipfile.ZIP_DEFLATED)
    scan = scan_source(tmp_path, IngestLimits(**limits))
    assert [(r.member, r.reason) for r in scan.rejected] == [(member, reason)], scan.rejected
    assert sorted(c.member for c in scan.covers) == sorted(_good())
    assert scan.rejected[0].detail


class _Terminal(io.StringIO):
    """stderr as a terminal: tqdm draws its bars only there."""

    def isatty(self) -> bool:
        return True


def test_scan_shows_its_progress_archive_by_archive_on_a_terminal(tmp_path, monkeypatch):
    _write_zip(tmp_path / "Rock.zip", _good("Rock/", 3))
    _write_zip(tmp_path / "Jazz.zip", _good("Jazz/", 2, seed=10))
    monkeypatch.setattr(sys, "stderr", _Terminal())
    scan_source(tmp_path)
    shown = sys.stderr.getvalue()
    assert "scan Jazz.zip (1/2)" in shown and "scan Rock.zip (2/2)" in shown and "file" in shown, shown
    monkeypatch.setattr(sys, "stderr", _Terminal())
    scan_source(tmp_path, progress=False)
    assert sys.stderr.getvalue() == ""


def test_archive_wide_problems_skip_only_that_archive(tmp_path):
    _write_zip(tmp_path / "Rock.zip", _good("Rock/", 4))
    _write_zip(tmp_path / "Jazz.zip", _good("Jazz/", 3, seed=10))
    _write_zip(tmp_path / "Pop.zip", {})
    (tmp_path / "Soul.zip").write_bytes(b"PK\x03\x04 but not really a zip")
    (tmp_path / "notes.txt").write_text("not an archive")
    scan = scan_source(tmp_path, IngestLimits(max_members=3))
    reasons = {r.archive: (r.member, r.reason) for r in scan.rejected}
    assert reasons == {
        "Rock.zip": ("", "too_large"),
        "Pop.zip": ("", "empty"),
        "Soul.zip": ("", "broken_archive"),
        "notes.txt": ("", "not_archive"),
    }
    assert [c.label for c in scan.covers] == ["Jazz"] * 3
    jazz_bytes = sum(i.file_size for i in zipfile.ZipFile(tmp_path / "Jazz.zip").infolist())
    too_big = scan_source(tmp_path, IngestLimits(max_total_bytes=jazz_bytes)).rejected
    assert [r.archive for r in too_big if r.reason == "too_large"] == ["Rock.zip"]
    assert "max_total_bytes" in too_big[-2].detail or "max_total_bytes" in str(too_big)
    with pytest.raises(ValueError, match="no usable images"):
        scan_source(tmp_path, IngestLimits(max_total_bytes=jazz_bytes - 1))


def test_layouts_nested_folders_upper_case_no_genre_folder_and_repeated_names(tmp_path):
    members = {
        "deep/er/A.PNG": _encode(_noise(1)),
        "B.JPG": _encode(_noise(2), "JPEG"),
        "c.Jpeg": _encode(_noise(3), "JPEG"),
        "d.png": _encode(_noise(4)),
    }
    _write_zip(tmp_path / "Pop.zip", members)
    with zipfile.ZipFile(tmp_path / "Pop.zip", "a") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("d.png", _encode(_noise(5)))
    scan = scan_source(tmp_path)
    assert sorted(c.member for c in scan.covers) == sorted(members) and {c.label for c in scan.covers} == {"Pop"}
    assert [(r.member, r.reason) for r in scan.rejected] == [("d.png", "duplicate")]
    # the copy that is kept is the one a later read by name returns (zipfile resolves to the last entry)
    kept = next(c for c in scan.covers if c.member == "d.png")
    assert kept.sha256 == hashlib.sha256(_encode(_noise(5))).hexdigest()


def _reasons(clean) -> dict[str, str]:
    return {f"{r.archive}:{r.member}": r.reason for r in clean.rejected}


def test_exact_duplicates_are_same_pixels_not_same_bytes(tmp_path):
    cover = _noise(1000)
    _write_zip(
        tmp_path / "Rock.zip", {**_good(n=10), "Rock/copy.bmp": _encode(cover, "BMP"), "Rock/orig.png": _encode(cover)}
    )
    clean = clean_source(tmp_path)
    (rejected,) = clean.rejected
    assert rejected.reason == "duplicate" and rejected.member in {"Rock/copy.bmp", "Rock/orig.png"}
    (group,) = clean.duplicates.groups
    assert group["kind"] == "exact" and len(group["members"]) == 2
    assert "same pixels" in clean.rejected[0].detail


def _real_cover(album_covers: Path, archive: str, index: int) -> Image.Image:
    with zipfile.ZipFile(album_covers / archive) as zf:
        name = sorted(n for n in zf.namelist() if n.endswith(".png"))[index]
        return Image.open(io.BytesIO(zf.read(name))).convert("RGB")


def _variants(cover: Image.Image) -> dict[str, Image.Image]:
    w, h = cover.size
    jpeg = Image.open(io.BytesIO(_encode(cover.resize((w * 2 // 3, h * 2 // 3)), "JPEG", quality=70)))
    return {"resized_jpeg": jpeg.convert("RGB"), "cropped": cover.crop((3, 3, w - 3, h - 3))}


@pytest.mark.parametrize("variant", ["resized_jpeg", "cropped"])
def test_near_duplicate_found_and_different_covers_are_not(album_covers, variant):
    a, b = _real_cover(album_covers, "Jazz.zip", 0), _real_cover(album_covers, "Jazz.zip", 1)
    copy = _variants(a)[variant]
    covers = [
        Cover("Jazz.zip", f"Jazz/{n}.png", "Jazz", n, im.width, im.height, "RGB", 1)
        for n, im in (("a", a), ("b", b), ("copy", copy))
    ]
    dups = find_duplicates(covers, [fingerprint(im) for im in (a, b, copy)], DuplicateRules())
    assert dups.keep.tolist() == [True, True, False]
    (rejected,) = dups.rejected
    assert rejected.member == "Jazz/copy.png" and rejected.reason == "duplicate"
    assert "near duplicate of Jazz.zip:Jazz/a.png" in rejected.detail


@pytest.mark.parametrize(("policy", "kept"), [("drop", set()), ("keep_first", {"Rock"})])
def test_cross_class_policy(tmp_path, album_covers, policy, kept):
    cover = _real_cover(album_covers, "Rock.zip", 0)
    _write_zip(tmp_path / "Rock.zip", {**_good("Rock/", 10), "Rock/x.png": _encode(cover)})
    _write_zip(
        tmp_path / "Jazz.zip",
        {**_good("Jazz/", 10, seed=10), "Jazz/x.jpg": _encode(_variants(cover)["resized_jpeg"], "JPEG")},
    )
    clean = clean_source(tmp_path, rules=DuplicateRules(cross_class=policy))
    labels_kept = {c.label for c in clean.kept if c.member.endswith(("x.png", "x.jpg"))}
    assert labels_kept == kept
    assert set(_reasons(clean).values()) == {"cross_class_duplicate"}
    assert len(clean.rejected) == 2 - len(kept) and len(clean.kept) == 20 + len(kept)
    assert clean.duplicates.cross_class[0]["labels"] == ["Jazz", "Rock"]


def test_audit_of_hostile_source_writes_only_into_out(tmp_path, make_cfg, monkeypatch):
    src, cwd = tmp_path / "src", tmp_path / "cwd"
    src.mkdir(), cwd.mkdir()
    monkeypatch.chdir(cwd)
    bad = {m: d for _, m, d, lim in BAD_MEMBERS if not lim}
    _write_zip(src / "Rock.zip", {**_good("Rock/", 10), **bad}, zipfile.ZIP_DEFLATED)
    _write_zip(src / "Jazz.zip", _good("Jazz/", 10, seed=10))
    _write_zip(src / "Soul.zip", _good("Soul/", 10, seed=20))
    (src / "Blues.zip").write_bytes(b"garbage")
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "out"
    cfg = make_cfg("data=archives", f"data.source={src}", f"audit.out={out}")
    report = run_audit(cfg)
    created = {p for p in tmp_path.rglob("*")} - before
    allowed = (out, tmp_path / "mlruns", tmp_path / "output")
    assert created and all(any(p.is_relative_to(a) for a in allowed) for p in created), created
    assert not list(cwd.iterdir()) and not (tmp_path / "evil.png").exists()
    expected = {m: r for r, m, _, lim in BAD_MEMBERS if not lim} | {"": "broken_archive"}
    assert {r["member"]: r["reason"] for r in report["rejected"]} == expected
    assert report["kept"] == 30 and report["classes"] == {"Jazz": 10, "Rock": 10, "Soul": 10}
    assert report["members_total"] == report["kept"] + len(report["rejected"])
    assert json.loads((out / "report.json").read_text())["leakage"] == 0
    assert len(read_manifest(out / "manifest.csv")) == 30
    run = mlflow.get_run(report["mlflow_run_id"])
    assert mlflow.get_experiment(run.info.experiment_id).name == "audit"
    assert run.data.metrics["kept"] == 30 and run.data.metrics["rejected_unsafe_path"] == 2
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert {"report.json", "report.md", "manifest.csv", "samples.png"} <= logged


@pytest.fixture(scope="module")
def real_audit(album_covers, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "out"
    report = audit_source(album_covers, out, IngestLimits(), DuplicateRules(), AnomalyRules(), SPLIT)
    return report, out


def test_real_covers_audit_finds_the_duplicate_pair_and_grayscale_covers(real_audit, album_covers):
    report, _ = real_audit
    assert report["members_total"] == 151 and report["kept"] == 150
    (rejected,) = report["rejected"]
    pair = {"Christian_&_Gospel/1000067737.png", "Christian_&_Gospel/1000071139.png"}
    assert rejected["reason"] == "duplicate" and rejected["member"] in pair
    (group,) = report["duplicate_groups"]
    assert group["kind"] == "exact" and {m["member"] for m in group["members"]} == pair
    assert not report["cross_class_duplicates"]
    gray = set()
    for zpath in album_covers.glob("*.zip"):
        with zipfile.ZipFile(zpath) as zf:
            gray |= {(zpath.name, n) for n in zf.namelist() if Image.open(io.BytesIO(zf.read(n))).mode == "L"}
    flagged = {(a["archive"], a["member"]) for a in report["anomalies"] if a["kind"] == "grayscale"}
    assert gray and gray <= flagged
    assert report["closest_pairs"][0]["verdict"] == "exact duplicate"
    assert all(p["verdict"] == "distinct" for p in report["closest_pairs"][1:])


def test_real_covers_manifest_is_leakage_free_and_report_complete(real_audit):
    report, out = real_audit
    manifest = read_manifest(out / "manifest.csv")
    assert list(manifest.columns) == ["archive", "member", "label", "split", "sha256", "group"] and len(manifest) == 150
    assert report["leakage"] == 0 and (manifest.groupby("sha256")["split"].nunique() == 1).all()
    assert (manifest.groupby("group")["split"].nunique() == 1).all(), "look-alike groups, kept for the folds"
    assert set(manifest["split"]) == {"train", "val", "test"}
    assert sum(report["classes"].values()) == 150 and len(report["classes"]) == 10
    for name in report["plots"]:
        assert (out / name).stat().st_size > 1000
    md = (out / "report.md").read_text()
    assert all(f"]({name})" in md for name in report["plots"]) and "leakage: 0" in md
    stats = report["eda"]["(all)"]["features"]
    assert stats["width"]["median"] == 256 and 0 < stats["saturation"]["mean"] < 1


def test_default_training_split_agrees_with_the_audit(real_audit, album_covers, tmp_path):
    _, out = real_audit
    df, _ = resolve_manifest(album_covers, tmp_path)
    audited = read_manifest(out / "manifest.csv")
    pd.testing.assert_frame_equal(df.reset_index(drop=True), audited.reset_index(drop=True))


def test_training_uses_the_audit_manifest(real_audit, album_covers, make_cfg):
    from covers.run.finetune import train

    _, out = real_audit
    cfg = make_cfg(
        "data=archives",
        f"data.source={album_covers}",
        f"data.manifest={out / 'manifest.csv'}",
        "data.image_size=32",
        "trainer.epochs=1",
    )
    result = train(cfg)
    assert np.isfinite(result["summary/best_val_acc"]) and len(result["history"]) == 1
    params = mlflow.get_run(result["run_id"]).data.params
    counts = read_manifest(out / "manifest.csv")["split"].value_counts()
    assert {s: int(params[f"data.n_{s}"]) for s in ("train", "val", "test")} == counts.to_dict()


# the real album covers' genres
GENRES = [
    "Alternative",
    "Blues",
    "Christian_&_Gospel",
    "Classical",
    "Country",
    "Electronic",
    "Hip-Hop",
    "Jazz",
    "Reggae",
    "Rock",
]


def _overlapping_tick_labels(fig) -> list[tuple[str, str]]:
    """Pairs of x tick labels whose drawn boxes overlap, on any axes of ``fig``."""
    fig.canvas.draw()
    pairs = []
    for ax in fig.axes:
        labels = [(t.get_text(), t.get_window_extent()) for t in ax.get_xticklabels() if t.get_text()]
        pairs += [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(labels, 2) if box_a.overlaps(box_b)]
    return pairs


def test_genre_names_on_the_audit_plots_do_not_overlap():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({f: rng.random(10 * len(GENRES)) for f in FEATURES}).assign(label=np.repeat(GENRES, 10))
    counts = pd.DataFrame({"kept": 10, "duplicate": 1}, index=pd.Index(GENRES, name="label"))
    for fig in (plots.plot_by_class(df, FEATURES[:4], "geometry"), plots.plot_stacked_bars(counts, "members", "t")):
        assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == GENRES
        assert not _overlapping_tick_labels(fig)
        plt.close(fig)
