"""Odd and bad input files give one clear line naming the file, never a traceback; in a batch the
bad item is reported and skipped while the rest are processed (exit status 1). `crf` and
`predict` read images through one reader (every mode, EXIF, a documented size limit)."""

from __future__ import annotations

import os
import struct
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from robustness_tools import assert_one_line_error, image_and_scores, tiny_checkpoint

from deeplabv1.cli import main
from deeplabv1.predict.images import load_image


def png_header(path, width: int, height: int):
    """A PNG whose header claims ``width`` x ``height`` RGB (its pixel data is empty)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                     chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))  # fmt: skip
    return path


def _npz_named_npy(path, shape=(3, 20, 24)):
    np.savez(path.with_suffix(".npz"), scores=np.zeros(shape, np.float32))
    path.with_suffix(".npz").rename(path)
    return path


@pytest.mark.parametrize("case", ["npz", "object npy", "bomb", "108 megapixels", "tiny limit",
                                  "float tiff"])  # fmt: skip
def test_crf_single_bad_file_is_one_line(tmp_path, capsys, case):
    image, scores = image_and_scores(tmp_path, "a")
    limit = []
    if case == "npz":
        _npz_named_npy(scores)
        bad, words = scores, ".npz archive"
    elif case == "object npy":  # numbers pickled one by one: dtype object
        np.save(scores, np.load(scores).astype(object), allow_pickle=True)
        bad, words = scores, "an array of Python objects (stored with pickle), not of numbers"
    elif case == "tiny limit":
        bad, words = image, "image is 24 x 20 = 480 pixels, over the limit of 100 pixels"
        limit = ["--max-megapixels", "0.0001"]
    elif case == "bomb":
        bad, words = png_header(tmp_path / "bomb.png", 100_000, 100_000), "decompression bomb"
    elif case == "108 megapixels":
        bad, words = png_header(tmp_path / "big.png", 12_000, 9_000), "108.0 megapixels"
    else:
        bad, words = tmp_path / "f.tif", "unsupported image mode 'F'"
        Image.fromarray(np.random.default_rng(0).random((20, 24), np.float32)).save(bad)
    argv = ["crf", "--image", str(image), "--scores", str(scores), "-o", str(tmp_path / "o.png"),
            *limit]  # fmt: skip
    if bad != scores:
        argv[2] = str(bad)
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "crf", str(bad), words)
    assert not (tmp_path / "o.png").exists()


def test_crf_batch_skips_bad_items_and_does_the_rest(tmp_path, capsys):
    images, npys, out = tmp_path / "img", tmp_path / "npy", tmp_path / "out"
    for i, stem in enumerate(("a", "b", "c", "d", "e")):
        image, scores = image_and_scores(images, stem, seed=i)
        npys.mkdir(exist_ok=True)
        scores.rename(npys / scores.name)
    _npz_named_npy(npys / "b.npy")
    png_header(images / "c.png", 100_000, 100_000)
    (images / "d.png").unlink()
    Image.fromarray(np.zeros((20, 24), np.float32)).save(images / "d.tif")
    argv = ["crf", "--image-dir", str(images), "--scores-dir", str(npys), "--out-dir", str(out)]
    assert main([*argv, "--workers", "2"]) == 1
    out_text, err = capsys.readouterr()
    assert "Traceback" not in err
    assert f"skipped {npys / 'b.npy'}: a .npz archive" in err
    assert f"skipped {images / 'c.png'}: refused as a decompression bomb" in err
    assert f"skipped {images / 'd.tif'}: unsupported image mode 'F'" in err
    assert "wrote 2 of 5 label maps" in out_text and "3 failed" in out_text
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "e.png"]


def _rgb_png(path, rgb):
    Image.fromarray(rgb).save(path)
    return path


def _odd_images(tmp_path) -> dict:
    """Files of odd modes, each with the RGB array a correct reader must give."""
    rng = np.random.default_rng(7)
    h, w = 20, 24
    blocks = np.kron(rng.integers(0, 65536, (4, 4)), np.ones((5, 6))).astype(np.uint16)
    cases = {}
    Image.fromarray(blocks).save(tmp_path / "grey16.png")  # a 16-bit grey PNG
    grey = np.floor(blocks / 257 + 0.5).astype(np.uint8)
    cases["grey16.png"] = np.repeat(grey[:, :, None], 3, axis=2)
    rgba = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
    rgba[:, :12, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    want = np.full((h, w, 3), 255, np.uint8)  # transparent pixels white, not their hidden colour
    a = rgba[:, 12:, 3:].astype(np.int64)
    want[:, 12:] = (rgba[:, 12:, :3] * a + 255 * (255 - a) + 127) // 255  # alpha over white
    cases["rgba.png"] = want
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pal = Image.fromarray(rgb).quantize(16)
    pal.save(tmp_path / "palette.png")
    cases["palette.png"] = np.asarray(pal.convert("RGB"))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    Image.fromarray(rgb).save(tmp_path / "exif.png", exif=exif)
    cases["exif.png"] = np.rot90(rgb, k=-1).copy()  # as viewers show it: 24 x 20
    return cases


def test_crf_reads_odd_images_like_predict(tmp_path, capsys):
    """Each odd file gives the labels of its correctly converted RGB (16-bit scaled by 257, not
    clipped; transparency on white; palette expanded; EXIF applied), as `predict` reads it."""
    cases = _odd_images(tmp_path)
    params = ["--w1", "10", "--sa", "5", "--sb", "3", "--w2", "0", "--iters", "5"]
    for name, rgb in cases.items():
        np.testing.assert_array_equal(load_image(tmp_path / name), rgb)  # predict's reader
        rng = np.random.default_rng(1)
        scores = tmp_path / f"{name}.npy"
        np.save(scores, rng.normal(size=(3, *rgb.shape[:2])).astype(np.float32))
        ref = _rgb_png(tmp_path / f"ref_{name}", rgb)
        got, want = tmp_path / f"got_{name}", tmp_path / f"want_{name}"
        for image, out in ((tmp_path / name, got), (ref, want)):
            argv = ["crf", "--image", str(image), "--scores", str(scores), "-o", str(out)]
            assert main([*argv, *params]) == 0, capsys.readouterr().err
        np.testing.assert_array_equal(np.asarray(Image.open(got)), np.asarray(Image.open(want)))
    # the 16-bit case can tell: read clipped to 255 (all white), the labels would differ
    white = _rgb_png(tmp_path / "white.png", np.full_like(cases["grey16.png"], 255))
    argv = ["crf", "--image", str(white), "--scores", str(tmp_path / "grey16.png.npy")]
    assert main([*argv, "-o", str(tmp_path / "white_out.png"), *params]) == 0
    assert not np.array_equal(
        np.asarray(Image.open(tmp_path / "white_out.png")),
        np.asarray(Image.open(tmp_path / "want_grey16.png")),
    )


def test_predict_refuses_oversized_images_with_the_same_message(tmp_path, capsys):
    weights = tiny_checkpoint(tmp_path / "m.pt")
    big = png_header(tmp_path / "big.png", 12_000, 9_000)
    small, _ = image_and_scores(tmp_path, "small")
    assert main(["predict", str(big), str(small), "--weights", str(weights), "-o",
                 str(tmp_path / "out")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert (
        f"skipped {big}: image is 12000 x 9000 = 108.0 megapixels, over the limit of 40 "
        "megapixels (--max-megapixels)" in err
    )
    assert (tmp_path / "out" / "small_net.png").is_file()
    assert not (tmp_path / "out" / "big_net.png").exists()


def test_predict_refuses_a_checkpoint_with_nan_weights(tmp_path, capsys):
    weights = tiny_checkpoint(tmp_path / "nan.pt", nan=True)
    image, _ = image_and_scores(tmp_path, "a")
    assert main(["predict", str(image), "--weights", str(weights), "-o", str(tmp_path / "o")]) == 2
    assert_one_line_error(capsys.readouterr().err, "predict", str(weights), "NaN")
    assert not (tmp_path / "o").exists()  # the folder this failed run created is gone again


@pytest.mark.parametrize("case", ["width", "fc8 cut", "extra weight"])
def test_weight_mismatch_names_the_checkpoint_and_the_weight(tmp_path, capsys, case):
    from deeplabv1.checkpoint import load_checkpoint, save_checkpoint
    from deeplabv1.data.synth import make_synthetic_voc

    state = load_checkpoint(tiny_checkpoint(tmp_path / "m.pt"))["model"]  # width 1/16
    width, words = 0.0625, ()
    if case == "width":
        width = 0.125
        words = ("weight conv1_1.weight has shape (4, 3, 3, 3), "
                 "deeplab-largefov (width 0.125) needs (8, 3, 3, 3)",)  # fmt: skip
    elif case == "fc8 cut":
        state["fc8.weight"] = state["fc8.weight"][:2]
        words = ("weight fc8.weight has shape (2, 64, 1, 1)", "needs (3, 64, 1, 1)")
    else:
        state["fc9.weight"] = torch.zeros(1)
        words = ("holds weight fc9.weight, which deeplab-largefov (width 0.0625) does not",)
    bad = tmp_path / "mismatch.pt"
    save_checkpoint(bad, state, arch="deeplab-largefov", num_classes=3, width=width)
    image, _ = image_and_scores(tmp_path, "a")
    root = make_synthetic_voc(tmp_path / "d", 2, size=(32, 32), num_classes=3)
    for argv in (
        ["predict", str(image), "--weights", str(bad), "-o", str(tmp_path / "o")],
        ["eval", "--weights", str(bad), "--data", str(root), "--split", "train",
         "-o", str(tmp_path / "e")],
        ["export", "--weights", str(bad), "--onnx", str(tmp_path / "m.onnx")],
    ):  # fmt: skip
        assert main(argv) == 2
        assert_one_line_error(capsys.readouterr().err, argv[0], str(bad), *words)
    assert not {"o", "e", "m.onnx"} & {p.name for p in tmp_path.iterdir()}


@pytest.mark.parametrize("command", ["eval", "crf-search"])
@pytest.mark.parametrize("meta", [b"\xff\xfe{}", b"{not json"], ids=["not-utf8", "not-json"])
def test_a_bad_score_folder_meta_is_one_line(tmp_path, capsys, command, meta):
    from deeplabv1.data.synth import make_synthetic_voc

    root = make_synthetic_voc(tmp_path / "d", 2, size=(32, 32), num_classes=3)
    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "meta.json").write_bytes(meta)
    argv = [command, "--scores", str(scores), "--data", str(root), "--split", "train",
            "-o", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, command, str(scores / "meta.json"),
                          "not readable JSON")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_export_without_the_onnx_extra_is_one_line(tmp_path, capsys, monkeypatch):
    weights = tiny_checkpoint(tmp_path / "m.pt")
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx -> ImportError
    assert main(["export", "--weights", str(weights), "--onnx", str(tmp_path / "m.onnx"),
                 "--input-size", "33"]) == 2  # fmt: skip
    assert_one_line_error(capsys.readouterr().err, "export", "onnx is not installed",
                          "deeplabv1[onnx]")  # fmt: skip
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize(("flag", "value", "words"), [
    ("--opset", "3", ("--opset must lie in 7..", "got 3")),
    ("--opset", "1000", ("--opset must lie in 7..", "got 1000")),
    ("--input-size", "0", ("--input-size must be positive, got 0",)),
])  # fmt: skip
def test_export_settings_it_cannot_export_are_one_line(tmp_path, capsys, flag, value, words):
    # an opset torch's exporter does not write was its RuntimeError traceback, exit status 1
    weights = tiny_checkpoint(tmp_path / "m.pt")
    assert main(["export", "--weights", str(weights), "--onnx", str(tmp_path / "m.onnx"),
                 "--input-size", "33", flag, value]) == 2  # fmt: skip
    assert_one_line_error(capsys.readouterr().err, "export", *words)
    assert not (tmp_path / "m.onnx").exists()


def test_deeplab_crf_device_errors_are_clear():
    from deeplabv1.crf import deeplab_crf

    scores, image = torch.randn(3, 8, 8), np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="scores: a meta-device tensor holds no data"):
        deeplab_crf(scores.to("meta"), image)
    with pytest.raises(ValueError, match="image: a meta-device tensor holds no data"):
        deeplab_crf(scores, torch.zeros(8, 8, 3, dtype=torch.uint8, device="meta"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            deeplab_crf(scores, image, device="cuda")


class _Payload:
    """Pickled as a call of os.system: what a malicious checkpoint holds."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("case", ["pickle code", "yaml", "empty", "cut short"])
def test_a_bad_or_malicious_checkpoint_is_one_line(tmp_path, capsys, case):
    weights = tmp_path / "evil.pt"
    marker = tmp_path / "ran"
    if case == "pickle code":
        torch.save({"model": _Payload(marker), "arch": "deeplab-largefov"}, weights)
    elif case == "yaml":
        weights.write_text("arch: deeplab-largefov\nnum_classes: 3\n")
    elif case == "empty":
        weights.write_bytes(b"")
    else:
        weights.write_bytes(tiny_checkpoint(tmp_path / "m.pt").read_bytes()[:5000])
    image, _ = image_and_scores(tmp_path, "a")
    predict = ["predict", str(image), "--weights", str(weights), "-o", str(tmp_path / "o")]
    export = ["export", "--weights", str(weights), "--onnx", str(tmp_path / "m.onnx")]
    for argv in (predict, export):
        assert main(argv) == 2
        err = capsys.readouterr().err
        line = assert_one_line_error(err, argv[0], str(weights), "not a deeplabv1 checkpoint")
        assert "weights_only" not in err and len(line) < 300, line
    assert not marker.exists()  # nothing of the pickle ran


def test_train_init_weight_mismatch_names_the_file(tmp_path, capsys):
    from deeplabv1.data.synth import make_synthetic_voc

    root = make_synthetic_voc(tmp_path / "d", 2, size=(32, 32), num_classes=3)
    init = tiny_checkpoint(tmp_path / "init.pt")  # width 1/16
    argv = ["train", "--data-root", str(root), "--split", "train", "--width", "0.125",
            "--init", str(init), "--max-iter", "1", "--batch-size", "1", "--crop-size", "33",
            "--workers", "0", "--progress", "false",
            "--out-dir", str(tmp_path / "run")]  # fmt: skip
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "train", str(init), "conv1_1.weight", "width")


@pytest.mark.parametrize(("key", "value", "words"), [
    ("arch", "resnet", "unknown arch 'resnet'"),
    ("width", -1.0, "width must be a number > 0, got -1.0"),
    ("width", "wide", "width must be a number > 0"),
    ("model_kwargs", [1], "model_kwargs must be a mapping"),
    ("model_kwargs", {"bogus": 1}, "unexpected keyword argument 'bogus'"),
    ("num_classes", 0, "num_classes must be >= 1"),
])  # fmt: skip
def test_a_checkpoints_bad_network_description_names_the_file(tmp_path, capsys, key, value,
                                                               words):  # fmt: skip
    ckpt = torch.load(tiny_checkpoint(tmp_path / "m.pt"), weights_only=True)
    ckpt[key] = value
    weights = tmp_path / "bad.pt"
    torch.save(ckpt, weights)
    image, _ = image_and_scores(tmp_path, "a")
    assert main(["predict", str(image), "--weights", str(weights), "-o", str(tmp_path / "o")]) == 2
    assert_one_line_error(capsys.readouterr().err, "predict", str(weights), words)


def test_weights_that_are_no_file_say_what_they_are(tmp_path, capsys):
    """--weights naming a folder or a device says so (not "not found"); an empty --from caffe
    model says it is empty (not that it does not match the model)."""
    image, _ = image_and_scores(tmp_path, "a")
    for weights, words in ((tmp_path, "is a folder, not a checkpoint file"),
                           (os.devnull, "is a character device, not a regular checkpoint file"),
                           ):  # fmt: skip
        argv = ["predict", str(image), "--weights", str(weights), "-o", str(tmp_path / "o")]
        assert main(argv) == 2
        line = assert_one_line_error(capsys.readouterr().err, "predict", str(weights), words)
        assert "not found" not in line
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    argv = ["convert", "--from", "caffe", str(empty), "--arch", "deeplab-largefov", "-o",
            str(tmp_path / "m.pt")]  # fmt: skip
    assert main(argv) == 2
    line = assert_one_line_error(capsys.readouterr().err, "convert", str(empty), "empty")
    assert "does not match" not in line


def test_a_failed_write_inside_an_atomic_write_names_the_output(tmp_path, monkeypatch):
    """A writer that itself writes atomically into the temporary it was given (a figure
    inside `predict`'s outputs): a full disk names the output, never a temporary."""
    import errno

    from deeplabv1.errors import DeepLabError
    from deeplabv1.io import atomic_path, atomic_paths

    out = tmp_path / "a_figure.png"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DeepLabError) as err, atomic_paths(tmp_path / "a.png", out) as tmps, \
            atomic_path(tmps[-1]) as inner:  # fmt: skip
        monkeypatch.setattr(os, "fsync", full)
        inner.write_bytes(b"png")
    assert str(err.value).startswith(f"{out}: cannot write (No space left on device")
    assert ".tmp" not in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []
