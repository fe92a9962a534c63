"""`deeplabv1 crf` for any model's scores: .npy marginals, (H, W, C) scores, low-resolution
scores zoomed as DeepLab zooms them, refused output suffixes, batch output formats."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import requires_cuda
from PIL import Image
from robustness_tools import assert_one_line_error

from deeplabv1.cli import main
from deeplabv1.cli.crf_files import upsample_scores
from deeplabv1.crf import CRFParams, deeplab_crf_np
from deeplabv1.crf import densecrf as dcrf

PARAMS = CRFParams(w1=5, sa=20, sb=15, w2=3, sg=2)
FLAGS = ["--w1", "5", "--sa", "20", "--sb", "15", "--w2", "3", "--sg", "2", "--iters", "4"]


def _pair(folder, stem, size=(30, 44), classes=5, seed=0):
    """A blocky image and (C, H, W) scores that follow it loosely, saved as <stem>.png/.npy."""
    rng = np.random.default_rng(seed)
    h, w = size
    blocks = rng.integers(0, classes, (3, 4))
    labels = np.kron(blocks, np.ones((h // 3 + 1, w // 4 + 1), np.int64))[:h, :w]
    rgb = np.clip(40 * labels[..., None] + rng.normal(60, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    scores = 2 * np.eye(classes, dtype=np.float32)[labels].transpose(2, 0, 1)
    scores += rng.normal(0, 1.5, scores.shape).astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(folder / f"{stem}.png")
    np.save(folder / f"{stem}.npy", scores)
    return folder / f"{stem}.png", folder / f"{stem}.npy", rgb, scores


def _dropin(scores, rgb, params, iters):
    """The same CRF through the pydensecrf drop-in's API, DeepLab's "after" normalisation."""
    c, h, w = scores.shape
    d = dcrf.DenseCRF2D(w, h, c)
    d.setUnaryEnergy(np.ascontiguousarray(-scores.reshape(c, -1)))
    d.addPairwiseBilateral(sxy=params.sa, srgb=params.sb, rgbim=rgb, compat=params.w1,
                           normalization=dcrf.NORMALIZE_AFTER)  # fmt: skip
    d.addPairwiseGaussian(sxy=params.sg, compat=params.w2, normalization=dcrf.NORMALIZE_AFTER)
    return np.array(d.inference(iters)).reshape(c, h, w)


def test_npy_output_is_the_marginals_and_png_the_labels(tmp_path):
    image, npy, rgb, scores = _pair(tmp_path / "in", "a")
    argv = ["crf", "--image", str(image), "--scores", str(npy), *FLAGS]
    assert main([*argv, "-o", str(tmp_path / "q.npy")]) == 0
    assert main([*argv, "-o", str(tmp_path / "labels.PNG")]) == 0
    q = np.load(tmp_path / "q.npy", allow_pickle=False)
    assert q.dtype == np.float32 and q.shape == scores.shape
    np.testing.assert_array_equal(q, deeplab_crf_np(scores, rgb, PARAMS, 4))
    np.testing.assert_allclose(q, _dropin(scores, rgb, PARAMS, 4), atol=1e-6)
    np.testing.assert_allclose(q.sum(0), 1, atol=1e-5)
    with Image.open(tmp_path / "labels.PNG") as png:
        assert png.mode == "P"
        np.testing.assert_array_equal(np.asarray(png), q.argmax(0))
    assert {"q.npy", "labels.PNG"} <= set((tmp_path / ".deeplabv1-outputs").read_text().split())


@pytest.mark.parametrize("name", ["out.jpg", "out.npz", "out", "out.png.tmp"])
def test_other_output_suffixes_are_refused_before_any_work(tmp_path, capsys, name):
    image, npy, _, _ = _pair(tmp_path / "in", "a")
    out = tmp_path / name
    assert main(["crf", "--image", str(image), "--scores", str(npy), "-o", str(out)]) == 2
    line = assert_one_line_error(capsys.readouterr().err, "crf", str(out), ".png", ".npy")
    assert "suffix" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # nothing written


def test_channels_last_scores_equal_the_transposed_input(tmp_path, capsys):
    image, npy, _, scores = _pair(tmp_path / "in", "a", classes=7, seed=3)
    np.save(tmp_path / "hwc.npy", scores.transpose(1, 2, 0))
    argv = ["crf", "--image", str(image), *FLAGS]
    assert main([*argv, "--scores", str(npy), "-o", str(tmp_path / "chw.npy")]) == 0
    hwc = ["--scores", str(tmp_path / "hwc.npy"), "-o", str(tmp_path / "q.npy")]
    assert main([*argv, *hwc, "--channels-last"]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), np.load(tmp_path / "chw.npy"))
    capsys.readouterr()
    # without the flag the (H, W, C) file does not fit: one line naming it and both flags
    assert main([*argv, *hwc]) == 2
    assert_one_line_error(capsys.readouterr().err, "crf", "hwc.npy", "--channels-last",
                          "--upsample")  # fmt: skip


def _reference_zoom(coarse, height, width, mode):
    """Independent: scipy's map_coordinates (linear, edges replicated) at the coordinates the
    definition gives (factor N: (y / N, x / N); "image": y (h-1)/(H-1), x (w-1)/(W-1))."""
    from scipy.ndimage import map_coordinates

    c, h, w = coarse.shape
    if mode == "image":
        ry = (h - 1) / (height - 1) if height > 1 else 0.0
        rx = (w - 1) / (width - 1) if width > 1 else 0.0
    else:
        ry = rx = 1.0 / mode
    yy, xx = np.meshgrid(np.arange(height) * ry, np.arange(width) * rx, indexing="ij")
    return np.stack([map_coordinates(coarse[k].astype(np.float64), [yy, xx], order=1,
                                     mode="nearest") for k in range(c)])  # fmt: skip


def _brute_force_zoom(coarse, height, width, factor):
    """DeepLab's zoom pixel by pixel: an h-cell map spans (h-1) * factor + 1 pixels; cell i
    sits at pixel i * factor, values in between are linear in y and in x; beyond the last cell
    the last row / column is repeated."""
    c, h, w = coarse.shape
    out = np.empty((c, height, width))
    for y in range(height):
        for x in range(width):
            i, a = divmod(min(y, (h - 1) * factor), factor)
            j, b = divmod(min(x, (w - 1) * factor), factor)
            i1, j1 = min(i + 1, h - 1), min(j + 1, w - 1)
            ty, tx = a / factor, b / factor
            top = (1 - tx) * coarse[:, i, j] + tx * coarse[:, i, j1]
            bottom = (1 - tx) * coarse[:, i1, j] + tx * coarse[:, i1, j1]
            out[:, y, x] = (1 - ty) * top + ty * bottom
    return out


@pytest.mark.parametrize(
    "coarse_shape, size",
    [((3, 5, 7), (33, 49)),  # exactly (h - 1) * 8 + 1
     ((3, 5, 7), (40, 56)),  # 7 pixels short: the last row / column repeated
     ((2, 9, 6), (30, 20)),  # a padded input: the zoomed map is cut to the image
     ((4, 1, 3), (5, 17))],  # one row of cells
)  # fmt: skip
def test_upsample_x8_matches_independent_references(coarse_shape, size):
    pytest.importorskip("scipy")
    coarse = np.random.default_rng(1).normal(size=coarse_shape).astype(np.float32)
    got = upsample_scores(coarse, *size, 8)
    assert got.dtype == np.float32 and got.shape == (coarse_shape[0], *size)
    np.testing.assert_allclose(got, _reference_zoom(coarse, *size, 8), atol=2e-6)
    np.testing.assert_allclose(got, _brute_force_zoom(coarse, *size, 8), atol=2e-6)
    np.testing.assert_array_equal(got[:, ::8, ::8][:, : coarse_shape[1], : coarse_shape[2]],
                                  coarse[:, : -(-size[0] // 8), : -(-size[1] // 8)])  # fmt: skip


@pytest.mark.parametrize("size", [(23, 31), (40, 9), (1, 12), (12, 1)])
def test_upsample_to_the_image_size_matches_scipy(size):
    pytest.importorskip("scipy")
    coarse = np.random.default_rng(2).normal(size=(3, 4, 6)).astype(np.float32)
    got = upsample_scores(coarse, *size, "image")
    np.testing.assert_allclose(got, _reference_zoom(coarse, *size, "image"), atol=2e-6)
    if size[0] > 1 and size[1] > 1:  # the corners are the map's corners
        corners = np.ix_(range(3), [0, -1], [0, -1])
        np.testing.assert_array_equal(got[corners], coarse[corners])


def test_low_resolution_scores_through_the_command(tmp_path, capsys):
    pytest.importorskip("scipy")
    image, _, rgb, _ = _pair(tmp_path / "in", "a", size=(30, 44))
    coarse = np.random.default_rng(4).normal(0, 2, (5, 4, 6)).astype(np.float32)
    np.save(tmp_path / "low.npy", coarse)
    argv = ["crf", "--image", str(image), "--scores", str(tmp_path / "low.npy"), *FLAGS]
    for mode in ("8", "image"):
        out = tmp_path / f"q{mode}.npy"
        assert main([*argv, "--upsample", mode, "-o", str(out)]) == 0
        ref = _reference_zoom(coarse, 30, 44, 8 if mode == "8" else "image").astype(np.float32)
        np.testing.assert_allclose(np.load(out), deeplab_crf_np(ref, rgb, PARAMS, 4), atol=1e-4)
    capsys.readouterr()
    assert main([*argv, "-o", str(tmp_path / "x.png")]) == 2  # no --upsample
    assert_one_line_error(capsys.readouterr().err, "crf", "low.npy", "4 x 6", "30 x 44",
                          "--upsample 8", "--upsample image")  # fmt: skip
    assert main([*argv, "--upsample", "4", "-o", str(tmp_path / "x.png")]) == 2  # too coarse
    assert_one_line_error(capsys.readouterr().err, "crf", "low.npy", "x4")
    full = ["--scores", str(tmp_path / "in" / "a.npy"), "--upsample", "8"]
    assert main(["crf", "--image", str(image), *full, "-o", str(tmp_path / "x.png")]) == 2
    assert_one_line_error(capsys.readouterr().err, "crf", "a.npy", "already the image's size")
    assert main([*argv, "--upsample", "0", "-o", str(tmp_path / "x.png")]) == 2
    assert_one_line_error(capsys.readouterr().err, "crf", "--upsample", "'0'")
    assert not (tmp_path / "x.png").exists()


def test_batch_out_formats(tmp_path, capsys):
    pairs = {s: _pair(tmp_path / "in", s, seed=i) for i, s in enumerate(("a", "b"))}
    (tmp_path / "in" / "b.npy").write_bytes(b"not an array")  # b fails, a goes on
    argv = ["crf", "--image-dir", str(tmp_path / "in"), "--scores-dir", str(tmp_path / "in"),
            *FLAGS, "--workers", "1"]  # fmt: skip
    assert main([*argv, "--out-dir", str(tmp_path / "both"), "--out-format", "both"]) == 1
    out, err = capsys.readouterr()
    assert "b.npy: not a .npy array file" in err
    assert "wrote 1 of 2 label map + marginals pairs" in out
    assert sorted(p.name for p in (tmp_path / "both").glob("[ab].*")) == ["a.npy", "a.png"]
    _, _, rgb, scores = pairs["a"]
    q = np.load(tmp_path / "both" / "a.npy")
    np.testing.assert_array_equal(q, deeplab_crf_np(scores, rgb, PARAMS, 4))
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "both" / "a.png")),
                                  q.argmax(0))  # fmt: skip
    assert main([*argv, "--out-dir", str(tmp_path / "npy"), "--out-format", "npy"]) == 1
    assert sorted(p.name for p in (tmp_path / "npy").glob("[ab].*")) == ["a.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "npy" / "a.npy"), q)
    with pytest.raises(SystemExit):
        main([*argv, "--out-dir", str(tmp_path / "x"), "--out-format", "jpg"])


@requires_cuda
def test_cuda_marginals_match_the_cpu(tmp_path):
    image, npy, rgb, scores = _pair(tmp_path / "in", "a")
    argv = ["crf", "--image", str(image), "--scores", str(npy), *FLAGS, "--device", "cuda"]
    assert main([*argv, "-o", str(tmp_path / "q.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "q.npy"), deeplab_crf_np(scores, rgb, PARAMS, 4),
                               atol=1e-4)  # fmt: skip


def test_garbage_npy_is_not_an_array_file(tmp_path, capsys):
    from deeplabv1.cli.crf_files import load_scores
    from deeplabv1.errors import DeepLabError

    bad = tmp_path / "x.npy"
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(DeepLabError, match="x.npy: not a .npy array file") as info:
        load_scores(bad)
    assert "trust" not in str(info.value)


def test_upsample_factor_far_too_large_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "i.png")
    np.save(tmp_path / "s.npy", rng.normal(size=(3, 7, 9)).astype(np.float32))
    argv = ["crf", "--image", str(tmp_path / "i.png"), "--scores", str(tmp_path / "s.npy"),
            "-o", str(tmp_path / "o.png"), "--upsample"]  # fmt: skip
    assert main([*argv, "100"]) == 2
    assert_one_line_error(capsys.readouterr().err, "crf", "s.npy", "x100", "601 x 801")
    assert not (tmp_path / "o.png").exists()
    assert main([*argv, "8"]) == 0  # 49 x 65: DeepLab's zoom of a 48 x 64 input
    # a padded input (513) of a smaller image: its zoom is cut to the image, as before
    np.save(tmp_path / "s.npy", rng.normal(size=(3, 65, 65)).astype(np.float32))
    assert main([*argv, "8", "--overwrite"]) == 0
