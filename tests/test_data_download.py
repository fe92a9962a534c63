"""`data download`: local archives in the real layout, checksums, HTTP Range resume, safe tar."""

from __future__ import annotations

import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplabv1.cli import main
from deeplabv1.data.archive import extract_archive
from deeplabv1.data.download import ARCHIVES, download_datasets, fetch, file_md5
from deeplabv1.data.palette import save_label_png
from deeplabv1.data.prepare import prepare_aug
from deeplabv1.data.sbd import write_sbd_mat as save_sbd_mat
from deeplabv1.data.voc import read_ids
from deeplabv1.errors import DeepLabError


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_archives(folder: Path) -> dict[str, str]:
    """VOCtrainval_11-May-2012.tar and benchmark.tgz in the real layouts; returns md5s."""
    folder.mkdir(parents=True, exist_ok=True)
    jpg = io.BytesIO()
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(jpg, format="JPEG")
    lab_path = folder / "lab.png"
    save_label_png(lab_path, np.ones((4, 5), np.uint8))
    ids = ["2008_000001", "2008_000002", "2008_000003"]
    with tarfile.open(folder / "VOCtrainval_11-May-2012.tar", "w") as tar:
        for sid in ids:
            _add(tar, f"VOCdevkit/VOC2012/JPEGImages/{sid}.jpg", jpg.getvalue())
        for sid in ids[:2]:
            _add(tar, f"VOCdevkit/VOC2012/SegmentationClass/{sid}.png", lab_path.read_bytes())
        _add(tar, "VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt", b"2008_000001\n")
        _add(tar, "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt", b"2008_000002\n")
    mat = folder / "m.mat"
    save_sbd_mat(mat, np.full((4, 5), 3, np.uint8))
    with tarfile.open(folder / "benchmark.tgz", "w:gz") as tar:
        for sid in ids:
            _add(tar, f"benchmark_RELEASE/dataset/cls/{sid}.mat", mat.read_bytes())
            _add(tar, f"benchmark_RELEASE/dataset/img/{sid}.jpg", jpg.getvalue())
        _add(tar, "benchmark_RELEASE/dataset/train.txt", b"2008_000002\n2008_000003\n")
        _add(tar, "benchmark_RELEASE/dataset/val.txt", b"2008_000001\n")
    lab_path.unlink()
    mat.unlink()
    return {name: file_md5(folder / arc.filename) for name, arc in ARCHIVES.items()}


def test_download_from_local_folder_then_prepare(tmp_path: Path) -> None:
    md5 = make_archives(tmp_path / "mirror")
    root = tmp_path / "data"
    out = download_datasets(root, source=str(tmp_path / "mirror"), md5=md5)
    assert out == {"voc2012": root / "VOCdevkit" / "VOC2012",
                   "sbd": root / "benchmark_RELEASE" / "dataset"}
    assert (root / "VOCtrainval_11-May-2012.tar").is_file()
    assert not list(root.glob("*.part")) and not list(root.glob(".extract.*"))
    res = prepare_aug(out["voc2012"], out["sbd"])
    lists = out["voc2012"] / "ImageSets" / "Segmentation"
    assert read_ids(lists / "train_aug.txt") == ["2008_000001", "2008_000003"]
    assert res.counts["labels"] == 3
    # a second run finds everything in place: nothing fetched or extracted again
    (tmp_path / "mirror" / "benchmark.tgz").unlink()
    assert download_datasets(root, source=str(tmp_path / "mirror"), md5=md5) == out


def test_default_checksums_are_the_official_ones(tmp_path: Path) -> None:
    make_archives(tmp_path / "mirror")
    with pytest.raises(DeepLabError, match="differs from the expected 6cd6e144f989b92b"):
        download_datasets(tmp_path / "d", ["voc2012"], source=f"file://{tmp_path / 'mirror'}")
    part = tmp_path / "d" / "VOCtrainval_11-May-2012.tar.part"
    assert part.is_file()  # kept: a wrong checksum parameter costs no new download


def test_file_url_resume_from_part(tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = np.random.default_rng(0).bytes(300_000)
    src.write_bytes(data)
    dest = tmp_path / "out" / "x.bin"
    dest.parent.mkdir()
    (tmp_path / "out" / "x.bin.part").write_bytes(data[:123_456])
    fetch(src.as_uri(), dest, file_md5(src))
    assert dest.read_bytes() == data
    # a corrupted .part gives a checksum error naming it, never a silently wrong file
    (tmp_path / "out" / "y.bin.part").write_bytes(b"\x00" * 1000)
    with pytest.raises(DeepLabError, match=r"y.bin.part: md5 .* differs"):
        fetch(str(src), tmp_path / "out" / "y.bin", file_md5(src))
    assert not (tmp_path / "out" / "y.bin").exists()


class RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    honour_range = True
    seen: list = []

    def do_GET(self) -> None:  # noqa: N802
        rng = self.headers.get("Range")
        type(self).seen.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if (rng and self.honour_range) else 0
        body = self.payload[start:]
        if start >= len(self.payload) and rng:
            self.send_response(416)
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("honour_range", [True, False])
def test_http_range_resume(tmp_path: Path, honour_range: bool) -> None:
    data = np.random.default_rng(1).bytes(200_000)
    handler = type("H", (RangeHandler,), {"payload": data, "honour_range": honour_range,
                                          "seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/f.bin"
        dest = tmp_path / "f.bin"
        (tmp_path / "f.bin.part").write_bytes(data[:50_000])
        fetch(url, dest, hashlib_md5(data))
        assert dest.read_bytes() == data
        assert handler.seen == ["bytes=50000-"]
        # complete .part: the server answers 416 and the file is verified and kept
        dest.rename(tmp_path / "g.bin.part")
        if honour_range:
            fetch(url, tmp_path / "g.bin", hashlib_md5(data))
            assert (tmp_path / "g.bin").read_bytes() == data
    finally:
        server.shutdown()
        server.server_close()


def hashlib_md5(data: bytes) -> str:
    import hashlib

    return hashlib.md5(data).hexdigest()


def _evil_tar(path: Path, member: tarfile.TarInfo) -> None:
    with tarfile.open(path, "w") as tar:
        _add(tar, "ok/file.txt", b"fine")
        tar.addfile(member, io.BytesIO(b"evil") if member.isfile() else None)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink"])
def test_extract_rejects_path_traversal(tmp_path: Path, kind: str) -> None:
    info = tarfile.TarInfo({"dotdot": "ok/../../evil.txt", "absolute": "/tmp/evil.txt"}
                           .get(kind, "ok/link"))
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "../../outside"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "../outside.txt"
    else:
        info.size = 4
    archive = tmp_path / "evil.tar"
    _evil_tar(archive, info)
    dest = tmp_path / "dest"
    with pytest.raises(DeepLabError, match="evil.tar: refusing member"):
        extract_archive(archive, dest)
    assert not (tmp_path / "evil.txt").exists() and not (dest / "ok").exists()


def test_extract_merges_into_existing_tree(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        _add(tar, "VOCdevkit/VOC2012/x.txt", b"new")
    (tmp_path / "dest" / "VOCdevkit" / "VOC2007").mkdir(parents=True)
    assert extract_archive(archive, tmp_path / "dest") == ["VOCdevkit"]
    assert (tmp_path / "dest" / "VOCdevkit" / "VOC2007").is_dir()
    assert (tmp_path / "dest" / "VOCdevkit" / "VOC2012" / "x.txt").read_bytes() == b"new"
    (tmp_path / "bad.tgz").write_bytes(b"not a tar")
    with pytest.raises(DeepLabError, match="bad.tgz: not a readable tar archive"):
        extract_archive(tmp_path / "bad.tgz", tmp_path / "dest")


def test_cli_download(tmp_path: Path, capsys) -> None:
    md5 = make_archives(tmp_path / "mirror")
    args = ["data", "download", "--root", str(tmp_path / "d"), "--source",
            str(tmp_path / "mirror"), "--voc2012-md5", md5["voc2012"], "--sbd-md5", md5["sbd"]]
    assert main(args) == 0
    assert "benchmark_RELEASE/dataset" in capsys.readouterr().out
    bad = ["data", "download", "--root", str(tmp_path / "e"), "--source", str(tmp_path / "no"),
           "--only", "sbd"]
    assert main(bad) == 2
    assert "archive not found" in capsys.readouterr().err
