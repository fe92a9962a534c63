"""Overlays and the panel strip: exact blended values, legend placement, PNG outputs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deeplabv1.errors import DeepLabError
from deeplabv1.viz.figures import class_name, draw_legend, overlay, side_by_side


def _scene(h=40, w=60):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    labels = np.zeros((h, w), np.uint8)
    labels[10:30, 5:25] = 1  # aeroplane (128, 0, 0)
    labels[5:35, 30:55] = 15  # person (192, 128, 128)
    labels[0, :] = 255  # void (224, 224, 192)
    return rgb, labels


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 1.0])
def test_overlay_blends_exact_voc_colours(alpha):
    rgb, labels = _scene()
    known = {0: (0, 0, 0), 1: (128, 0, 0), 15: (192, 128, 128), 255: (224, 224, 192)}
    out = overlay(rgb, labels, alpha=alpha, legend=False)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    for y, x in [(0, 3), (12, 7), (20, 40), (38, 2), (33, 54)]:
        colour = np.array(known[int(labels[y, x])], float)
        want = np.floor((1 - alpha) * rgb[y, x] + alpha * colour + 0.5)
        np.testing.assert_array_equal(out[y, x], want.astype(np.uint8))
    if alpha == 1.0:
        assert (out[labels == 15] == (192, 128, 128)).all()
    if alpha == 0.0:
        np.testing.assert_array_equal(out, rgb)


def test_overlay_accepts_pil_and_does_not_modify_input():
    rgb, labels = _scene()
    before = rgb.copy()
    a = overlay(Image.fromarray(rgb), labels, legend=False)
    b = overlay(rgb, labels, legend=False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(rgb, before)


def test_legend_lists_present_classes_in_top_left_only():
    rgb, labels = _scene(200, 300)
    plain = overlay(rgb, labels, legend=False)
    with_legend = overlay(rgb, labels, legend=True)
    diff = np.any(plain != with_legend, axis=2)
    ys, xs = np.nonzero(diff)
    assert ys.size > 0
    assert ys.max() < 100 and xs.max() < 150  # the box sits in the top-left corner
    # one swatch per class present, each filled with that class's exact colour
    for colour in [(128, 0, 0), (192, 128, 128), (224, 224, 192)]:
        assert np.all(with_legend[: ys.max() + 1, : xs.max() + 1] == colour, axis=2).sum() >= 9
    # a class that is absent gets no swatch: no pure bicycle green (0, 128, 0) anywhere
    assert not np.all(with_legend == (0, 128, 0), axis=2).any()


def test_legend_grows_with_number_of_classes():
    rgb = np.full((200, 200, 3), 128, np.uint8)
    one = np.any(draw_legend(rgb, [1]) != rgb, axis=2).sum()
    three = np.any(draw_legend(rgb, [1, 2, 3]) != rgb, axis=2).sum()
    assert three > 2 * one


def test_class_names():
    assert class_name(0) == "background" and class_name(20) == "tvmonitor"
    assert class_name(255) == "void" and class_name(42) == "42"


def test_overlay_rejects_bad_input():
    rgb, labels = _scene()
    with pytest.raises(DeepLabError, match="does not match"):
        overlay(rgb, labels[:-1])
    with pytest.raises(DeepLabError, match="opacity"):
        overlay(rgb, labels, alpha=1.5)
    with pytest.raises(DeepLabError, match="RGB uint8"):
        overlay(rgb.astype(np.float32), labels)


def test_side_by_side_writes_png_one_row_and_grid(tmp_path):
    rgb, labels = _scene()
    from deeplabv1.data.palette import colorize

    row = [("image", rgb), ("network", colorize(labels)), ("truth", colorize(labels))]
    p1 = side_by_side(row, tmp_path / "row.png", classes=[0, 1, 15], caption="c")
    p2 = side_by_side([row, row], tmp_path / "grid.png")
    with Image.open(p1) as a, Image.open(p2) as b:
        assert a.format == b.format == "PNG"
        assert a.width > 2.5 * a.height  # three panels side by side (aspect 1.5 each)
        assert b.height > 1.5 * a.height * 0.8  # two rows
    assert not list(tmp_path.glob(".*.tmp"))


def test_side_by_side_rejects_empty(tmp_path):
    with pytest.raises(DeepLabError, match="no panels"):
        side_by_side([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()
