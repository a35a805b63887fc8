"""What `python -m covers predict` reads: files, folders (recursively, junk skipped), zips, and clear failures."""

from __future__ import annotations

import zipfile

from covers.serving.inputs import iter_inputs, read_cover


def test_files_folders_and_zips(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.png").write_bytes(b"A")
    (tmp_path / "d" / "sub" / "b.JPG").write_bytes(b"B")
    (tmp_path / "d" / "._a.png").write_bytes(b"junk")
    (tmp_path / "d" / "notes.txt").write_text("not a cover")
    with zipfile.ZipFile(tmp_path / "d" / "Rock.zip", "w") as zf:
        zf.writestr("Rock/r1.png", b"R1")
        zf.writestr("__MACOSX/Rock/._r1.png", b"junk")
        zf.writestr("Rock/readme.md", b"#")
    (tmp_path / "broken.zip").write_bytes(b"PK not a zip")
    items = list(iter_inputs([tmp_path / "d", tmp_path / "broken.zip", tmp_path / "missing.png"]))
    got = {i.name.replace(str(tmp_path), ""): (i.data, i.error) for i in items}
    assert got["/d/a.png"] == (b"A", None) and got["/d/sub/b.JPG"] == (b"B", None)
    assert got["/d/Rock.zip:Rock/r1.png"] == (b"R1", None)
    assert got["/broken.zip"][1].startswith("broken_archive: cannot open the archive")
    assert got["/missing.png"][1] == "no such file or directory"
    assert len(items) == 5


def test_read_cover_from_file_or_archive_member(tmp_path):
    with zipfile.ZipFile(tmp_path / "Jazz.zip", "w") as zf:
        zf.writestr("Jazz/j.png", b"J")
    assert read_cover(f"{tmp_path}/Jazz.zip:Jazz/j.png").data == b"J"
    assert "no member" in read_cover(f"{tmp_path}/Jazz.zip:Jazz/x.png").error
    assert read_cover(f"{tmp_path}/nope.png").error == "no such file or directory"
