"""`data download` never deletes what it did not create, and extraction stays inside its target
on every Python the package allows: tarfile's ``data`` filter (missing before 3.10.12 / 3.11.4)
is made absent here, so the package's own checks are what is tested."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from robustness_tools import assert_one_line_error

from deeplabv1.cli import main
from deeplabv1.data.archive import extract_archive
from deeplabv1.data.download import ARCHIVES, file_md5
from deeplabv1.errors import DeepLabError

VOC = ARCHIVES["voc2012"].filename


@pytest.fixture(autouse=True)
def no_data_filter(monkeypatch):
    """As on Python < 3.10.12 / 3.11.4: no tarfile.data_filter, no ``filter=`` argument."""
    if hasattr(tarfile, "data_filter"):
        monkeypatch.delattr(tarfile, "data_filter")


def _tar(path: Path, members: list[tuple[str, str, str | bytes]]) -> Path:
    """A tar of (kind, name, data or link target) members, kind in file, dir, sym, hard."""
    with tarfile.open(path, "w") as tar:
        for kind, name, value in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(value)
                tar.addfile(info, io.BytesIO(value))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                         "hard": tarfile.LNKTYPE}[kind]  # fmt: skip
            info.linkname = value if kind in ("sym", "hard") else ""
            tar.addfile(info)
    return path


def _download(tmp_path: Path, root: Path, members, *extra) -> int:
    mirror = tmp_path / "mirror"
    mirror.mkdir(exist_ok=True)
    archive = _tar(mirror / VOC, members)
    (root / VOC).unlink(missing_ok=True)  # fetched again: each call brings another archive
    return main(["data", "download", "--root", str(root), "--source", str(mirror), "--only",
                 "voc2012", "--voc2012-md5", file_md5(archive), *extra])  # fmt: skip


def test_download_never_deletes_an_existing_folder(tmp_path, capsys):
    root = tmp_path / "root"
    (root / "keepme").mkdir(parents=True)
    (root / "keepme" / "important.txt").write_text("precious")
    (root / "other").symlink_to(root / "keepme", target_is_directory=True)
    for top in (("file", "keepme", b"x"), ("sym", "keepme", "elsewhere"), ("file", "other", b"y")):
        members = [("file", "VOCdevkit/VOC2012/JPEGImages/a.jpg", b"jpg"), top]
        for extra in ([], ["--overwrite"]):  # --overwrite never replaces a folder either
            assert _download(tmp_path, root, members, *extra) == 2
            assert_one_line_error(capsys.readouterr().err, "data", "is a folder where the "
                                  "archive has a file")  # fmt: skip
            assert (root / "keepme" / "important.txt").read_text() == "precious"
            assert (root / "other").is_symlink()
            assert not (root / "VOCdevkit").exists()  # nothing half-moved
            assert not list(root.glob(".extract.*"))


def test_files_of_other_contents_need_overwrite(tmp_path, capsys):
    root = tmp_path / "root"
    mine = root / "VOCdevkit" / "VOC2012" / "README.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("my notes")
    members = [("file", "VOCdevkit/VOC2012/JPEGImages/a.jpg", b"jpg"),
               ("file", "VOCdevkit/VOC2012/README.txt", b"theirs")]  # fmt: skip
    assert _download(tmp_path, root, members) == 2
    assert_one_line_error(capsys.readouterr().err, "data", str(mine), "other contents",
                          "--overwrite")  # fmt: skip
    assert mine.read_text() == "my notes" and not (mine.parent / "JPEGImages").exists()
    # the same bytes are no clash (a rerun after an interrupted extraction)
    mine.write_bytes(b"theirs")
    assert _download(tmp_path, root, members) == 0
    assert (mine.parent / "JPEGImages" / "a.jpg").read_bytes() == b"jpg"
    (root / f".{VOC}.extracted").unlink()  # extract again, over a changed file
    mine.write_text("changed")
    assert _download(tmp_path, root, members, "--overwrite") == 0
    assert mine.read_bytes() == b"theirs"


CHAINS = {
    "issue": [("sym", "a", "."), ("sym", "a/b", ".."), ("sym", "b/b2", ".."),
              ("file", "b/b2/file", b"escaped")],
    "dir chain": [("dir", "d", ""), ("sym", "d/up", ".."), ("sym", "d/up/out", ".."),
                  ("file", "d/up/out/file", b"escaped")],
    "through a link to a link": [("sym", "l1", "l2"), ("sym", "l2", "."), ("sym", "x", "l1/.."),
                                 ("file", "x/file", b"escaped")],
    "hard link via symlink": [("sym", "s", ".."), ("hard", "h", "s/secret")],
    "file written through a link": [("sym", "f", "../file"), ("file", "f", b"escaped")],
    "link redirected later": [("sym", "x", "sub/.."), ("sym", "sub", "."),
                              ("file", "ok", b"fine")],
    "link replaces a folder": [("file", "d/in", b"fine"), ("sym", "d", ".."),
                               ("file", "d/file", b"escaped")],
    "loop": [("sym", "p", "q"), ("sym", "q", "p"), ("file", "p/file", b"loop")],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_symlink_chains_are_refused_without_the_data_filter(tmp_path, name):
    assert not hasattr(tarfile, "data_filter")
    (tmp_path / "secret").write_text("outside")
    dest = tmp_path / "x" / "y" / "dest"
    archive = _tar(tmp_path / "evil.tar", CHAINS[name])
    with pytest.raises(DeepLabError, match="evil.tar: refusing member"):
        extract_archive(archive, dest)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dest", "evil.tar", "secret", "x", "y"]
    assert (tmp_path / "secret").read_text() == "outside"


def test_links_inside_the_target_still_extract(tmp_path):
    archive = _tar(tmp_path / "ok.tar", [
        ("file", "top/data/a.txt", b"A"), ("sym", "top/latest", "data"),
        ("sym", "top/data/self", "../data/a.txt"), ("hard", "top/copy.txt", "top/data/a.txt"),
        ("file", "top/latest/b.txt", b"B"),
    ])  # fmt: skip
    assert extract_archive(archive, tmp_path / "dest") == ["top"]
    top = tmp_path / "dest" / "top"
    assert (top / "latest" / "a.txt").read_bytes() == b"A"
    assert (top / "data" / "b.txt").read_bytes() == b"B"
    assert (top / "data" / "self").read_bytes() == b"A" and (top / "copy.txt").read_bytes() == b"A"
