"""Score files from elsewhere (``crf --scores X.npy``, ``eval --scores-dir``'s ``<id>.npz``):
malformed headers, values and sizes are one DeepLabError naming the file, never another
exception, a huge allocation or a hang."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deeplabv1.cli.crf_files import load_scores as load_npy
from deeplabv1.errors import DeepLabError
from deeplabv1.evaluate.scores import load_scores as load_npz
from deeplabv1.evaluate.scores import save_scores


def _npy(shape, descr: str = "<f4", data: bytes = b"") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    header = header.ljust(118) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + data


def _arr(a) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


GOOD = {"scores": _arr(np.zeros((3, 4, 4), np.float32)), "height": _arr(np.int64(30)),
        "width": _arr(np.int64(30)), "factor": _arr(np.int64(8))}  # fmt: skip


def _write_npz(folder: Path, **members: bytes) -> None:
    with zipfile.ZipFile(folder / "x.npz", "w") as z:
        for key, value in {**GOOD, **members}.items():
            z.writestr(key + ".npy", value)


def test_valid_score_file_reads(tmp_path):
    save_scores(tmp_path, "x", np.zeros((3, 4, 4), np.float32), 30, 30)
    assert load_npz(tmp_path, "x")[1:] == (30, 30, 8, 0)


@pytest.mark.parametrize("members,why", [
    ({"scores": _npy((10**6, 10**6, 3))}, "header declares shape"),  # was MemoryError
    ({"scores": _npy((21, 40000, 40000))}, "header declares shape"),
    ({"height": _arr(np.array([1, 2]))}, "height is not an integer"),  # was TypeError
    ({"height": _arr(np.float64("inf"))}, "height is not an integer"),  # was OverflowError
    ({"height": _arr(np.int64(-5))}, "bad image size"),  # was accepted
    ({"factor": _arr(np.int64(10**9))}, "do not fit"),  # was a torch RuntimeError
    ({"crop": _arr(np.int64(10**12))}, "do not fit"),  # was a torch RuntimeError
    ({"scores": _arr(np.zeros((0, 4, 4), np.float32))}, "must be"),  # was a RuntimeError
    ({"scores": _arr(np.full((3, 4, 4), np.nan, np.float32))}, "NaN"),  # was accepted
    ({"scores": _arr(np.zeros((3, 4, 4), np.complex64))}, "complex64"),  # cast silently
])  # fmt: skip
def test_malformed_npz_is_one_line(tmp_path, members, why):
    _write_npz(tmp_path, **members)
    with pytest.raises(DeepLabError, match=f"x.npz: .*{why}"):
        load_npz(tmp_path, "x")


def test_huge_declared_npy_is_refused(tmp_path):
    path = tmp_path / "s.npy"
    path.write_bytes(_npy((10**6, 10**6, 3)))  # was numpy's MemoryError (10.9 TiB)
    with pytest.raises(DeepLabError, match=r"s.npy: .*header declares shape"):
        load_npy(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_fifo_is_refused_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "s.npy")  # reading it waited for a writer forever
    with pytest.raises(DeepLabError, match="s.npy: is a named pipe"):
        load_npy(tmp_path / "s.npy")
    os.mkfifo(tmp_path / "x.npz")
    with pytest.raises(DeepLabError, match="x.npz: is a named pipe"):
        load_npz(tmp_path, "x")


_DIMS = st.integers(-3, 3) | st.integers(0, 2**62)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(_DIMS, max_size=4), st.sampled_from(["<f4", "<f2", ">f8", "<c8", "|b1", "<i8"]),
       st.binary(max_size=64), st.sampled_from(["scores", "height", "factor", "crop"]))
def test_fuzz_declared_headers(shape, descr, data, member):
    """Any declared shape and dtype, in a .npy or as any member of a score .npz."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        raw = _npy(tuple(shape), descr, data)
        (tmp / "s.npy").write_bytes(raw)
        _write_npz(tmp, **{member: raw})
        for read, name in ((lambda: load_npy(tmp / "s.npy"), "s.npy"),
                           (lambda: load_npz(tmp, "x"), "x.npz")):  # fmt: skip
            try:
                read()
            except DeepLabError as exc:
                assert name in str(exc)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")
def test_fifos_as_images_labels_and_checkpoints_are_refused(tmp_path):
    """Reading a FIFO waits for a writer forever: every reader of an image (the training
    data's, predict's and crf's), a label PNG or a checkpoint refuses one in a line instead."""
    from deeplabv1.checkpoint import load_checkpoint
    from deeplabv1.data.datasets import read_image
    from deeplabv1.data.palette import read_label_png
    from deeplabv1.predict.images import load_image

    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    for read, what in [(read_image, "image file"), (load_image, "image file"),
                       (read_label_png, "label file"), (load_checkpoint, "checkpoint file")]:
        with pytest.raises(DeepLabError, match=f"x.png: is a .*, not a regular {what}"):
            read(fifo)
