"""Binary inputs (SBD .mat, label PNGs, tar archives, images) fail cleanly: DeepLabError only."""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
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


def _run(kind: str, payload: bytes, reader, valid) -> str:
    """"read" when the reader returns something ``valid`` accepts, "rejected" when it raises a
    DeepLabError naming the file; any other exception fails the test."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f.{kind}"
        path.write_bytes(payload)
        try:
            out = reader(path, Path(tmp))
        except DeepLabError as exc:
            return "rejected" if "f." + kind in str(exc) else f"unnamed error: {exc}"
        return "read" if valid(out) else f"bad result: {out!r:.200}"


def _labels(a) -> bool:
    """Class indices 0..20 or 255 (void), as the readers promise."""
    ok_dtype = isinstance(a, np.ndarray) and a.ndim == 2 and a.dtype == np.uint8
    return ok_dtype and bool(((a < 21) | (a == 255)).all())


@SETTINGS
@given(_mutations("mat"))
def test_sbd_mat_malformed(payload: bytes) -> None:
    assert _run("mat", payload, lambda p, _: read_sbd_mat(p), _labels) in ("read", "rejected")


@SETTINGS
@given(_mutations("png"))
def test_label_png_malformed(payload: bytes) -> None:
    assert _run("png", payload, lambda p, _: read_label_png(p), _labels) in ("read", "rejected")


@SETTINGS
@given(_mutations("png"))
def test_image_malformed(payload: bytes) -> None:
    def rgb(a) -> bool:
        return a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3

    assert _run("png", payload, lambda p, _: read_image(p), rgb) in ("read", "rejected")


@SETTINGS
@given(_mutations("tgz"))
def test_archive_malformed(payload: bytes) -> None:
    def names(top) -> bool:  # everything extracted stays inside the destination
        return isinstance(top, list) and all(".." not in n and not n.startswith("/") for n in top)

    outcome = _run("tgz", payload, lambda p, tmp: extract_archive(p, tmp / "out"), names)
    assert outcome in ("read", "rejected")


def _png(width: int, height: int) -> bytes:
    """A palette PNG whose header (valid CRC) declares ``width`` x ``height``, with no pixels."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"PLTE", bytes(768))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


# PIL warns between its pixel limit and twice that (a bomb beyond): such a file still reads
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@settings(max_examples=25, deadline=None, derandomize=True)
@given(st.integers(1, 2**31 - 1), st.integers(1, 2**31 - 1))
def test_label_png_declared_size(width: int, height: int) -> None:
    """Any declared size: a decompression bomb's was PIL's DecompressionBombError traceback."""
    outcome = _run("png", _png(width, height), lambda p, _: read_label_png(p), _labels)
    assert outcome in ("read", "rejected")


def test_deeply_nested_yaml_is_one_line(tmp_path) -> None:
    """PyYAML composes recursively: 5,000 nested lists were a RecursionError traceback."""
    from deeplabv1.config import load_yaml
    from deeplabv1.data.classes import read_classes_file

    (tmp_path / "c.yaml").write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(DeepLabError, match="c.yaml: .*nested too deeply"):
        load_yaml(tmp_path / "c.yaml")
    (tmp_path / "classes.yaml").write_text("[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(DeepLabError, match="classes.yaml: .*nested too deeply"):
        read_classes_file(tmp_path / "classes.yaml")
