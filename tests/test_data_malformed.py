"""Binary inputs (SBD .mat, label PNGs, tar archives, images) fail cleanly: DeepLabError only."""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deeplabv1.data.archive import extract_archive
from deeplabv1.data.datasets import read_image
from deeplabv1.data.palette import read_label_png, save_label_png
from deeplabv1.data.sbd import read_sbd_mat, write_sbd_mat
from deeplabv1.errors import DeepLabError

# derandomized: the same examples every run. scipy's loadmat is not hardened: a bit flip in an
# *uncompressed* .mat can crash the interpreter (prepare contains that in worker processes, see
# test_data_prepare); SBD's files are zlib-compressed like these, where flips fail cleanly.
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_bytes(kind: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x.{kind}"
        seg = np.arange(48, dtype=np.uint8).reshape(6, 8) % 21
        if kind == "mat":
            write_sbd_mat(path, seg)
        elif kind == "png":
            save_label_png(path, seg)
        else:
            with tarfile.open(path, "w:gz") as tar:
                info = tarfile.TarInfo("benchmark_RELEASE/dataset/train.txt")
                info.size = 12
                tar.addfile(info, io.BytesIO(b"2008_000001\n"))
        return path.read_bytes()


VALID = {k: _valid_bytes(k) for k in ("mat", "png", "tgz")}


def _mutations(kind: str):
    data = VALID[kind]
    truncated = st.integers(0, len(data) - 1).map(lambda n: data[:n])
    flipped = st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)).map(
        lambda t: data[: t[0]] + bytes([data[t[0]] ^ t[1]]) + data[t[0] + 1 :])
    return st.one_of(truncated, flipped, st.binary(max_size=256))


def _run(kind: str, payload: bytes, reader) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f.{kind}"
        path.write_bytes(payload)
        try:
            reader(path, Path(tmp))
        except DeepLabError as exc:
            assert "f." + kind in str(exc)  # the message names the file


@SETTINGS
@given(_mutations("mat"))
def test_sbd_mat_malformed(payload: bytes) -> None:
    _run("mat", payload, lambda p, _: read_sbd_mat(p))


@SETTINGS
@given(_mutations("png"))
def test_label_png_malformed(payload: bytes) -> None:
    _run("png", payload, lambda p, _: read_label_png(p))


@SETTINGS
@given(_mutations("png"))
def test_image_malformed(payload: bytes) -> None:
    _run("png", payload, lambda p, _: read_image(p))


@SETTINGS
@given(_mutations("tgz"))
def test_archive_malformed(payload: bytes) -> None:
    _run("tgz", payload, lambda p, tmp: extract_archive(p, tmp / "out"))
