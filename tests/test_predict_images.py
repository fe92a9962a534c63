"""Image loading for `predict`: every mode converted explicitly, EXIF orientation, globs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deeplabv1.errors import DeepLabError
from deeplabv1.predict.images import collect_inputs, load_image, to_rgb


def _rgb(h=6, w=10):
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_and_jpeg_roundtrip(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png"), rgb)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=100)
    out = load_image(tmp_path / "a.jpg")
    assert out.shape == rgb.shape and out.dtype == np.uint8


def test_grayscale_and_bilevel_replicate_channels(tmp_path):
    gray = _rgb()[:, :, 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)
    Image.fromarray(gray > 127).save(tmp_path / "b.png")  # mode "1"
    out = load_image(tmp_path / "b.png")
    np.testing.assert_array_equal(out[:, :, 1], np.where(gray > 127, 255, 0))


def test_16bit_grayscale_scaled_by_257(tmp_path):
    values = np.array([[0, 257, 65535, 128 * 257 + 100], [1000, 40000, 128, 129]], np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")  # a 16-bit PNG
    with Image.open(tmp_path / "d.png") as img:
        assert img.mode.startswith("I")
    out = load_image(tmp_path / "d.png")
    want = np.floor(values.astype(float) / 257 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(out[:, :, 0], want)
    np.testing.assert_array_equal(out[:, :, 2], want)
    assert want[0].tolist() == [0, 1, 255, 128]


@pytest.mark.parametrize("background,fill", [("white", 255), ("black", 0)])
def test_rgba_composited_on_background(tmp_path, background, fill):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, :, 3] = 255  # opaque row
    rgba[1, :, 3] = 0  # transparent row: hidden colour must not leak through
    rgba[2, :, 3] = 128
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "t.png")
    out = load_image(tmp_path / "t.png", background=background).astype(int)
    assert out[0].tolist() == [[200, 100, 50]] * 4
    assert out[1].tolist() == [[fill] * 3] * 4
    want = np.round(np.array([200, 100, 50]) * 128 / 255 + fill * 127 / 255)
    assert np.abs(out[2] - want).max() <= 1


def test_palette_image_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (3, 2))
    pal.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    pal.putdata([0, 1, 0, 1, 1, 0])
    pal.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    assert out[0].tolist() == [[10, 20, 30], [40, 50, 60], [10, 20, 30]]
    pal.save(tmp_path / "pt.png", transparency=0)
    out = load_image(tmp_path / "pt.png", background="black")
    assert out[0].tolist() == [[0, 0, 0], [40, 50, 60], [0, 0, 0]]


def test_la_and_cmyk_modes():
    la = Image.fromarray(np.dstack([np.full((2, 2), 90, np.uint8), np.full((2, 2), 255, np.uint8)]))
    assert la.mode == "LA"
    assert to_rgb(la).tolist() == [[[90] * 3] * 2] * 2
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red
    assert to_rgb(cmyk)[0, 0].tolist() == [255, 0, 0]
    with pytest.raises(DeepLabError, match="unsupported image mode 'F'"):
        to_rgb(Image.new("F", (2, 2)))


def test_exif_orientation_applied(tmp_path):
    rgb = _rgb(6, 10)
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    img.save(tmp_path / "o.jpg", exif=exif, quality=100)
    img.save(tmp_path / "o.png", exif=exif)
    out = load_image(tmp_path / "o.png")
    assert out.shape == (10, 6, 3)
    np.testing.assert_array_equal(out, np.rot90(rgb, k=-1))
    assert load_image(tmp_path / "o.jpg").shape == (10, 6, 3)


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(DeepLabError, match="junk.png: cannot read image"):
        load_image(tmp_path / "junk.png")
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DeepLabError, match="cut.png"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(DeepLabError, match="nope.png: image file not found"):
        load_image(tmp_path / "nope.png")


def test_collect_inputs_files_folders_globs(tmp_path):
    for name in ("b.png", "a.JPG", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    paths, problems = collect_inputs(
        [str(tmp_path), str(tmp_path / "sub" / "*.png"), str(tmp_path / "b.png"),
         str(tmp_path / "c.txt"), str(tmp_path / "missing.png"), str(tmp_path / "empty"),
         str(tmp_path / "*.gif")]
    )  # fmt: skip
    assert [p.name for p in paths] == ["a.JPG", "b.png", "d.png", "c.txt"]
    assert len(problems) == 3
    assert "missing.png: no such file" in problems[0]
    assert "holds no images" in problems[1] and "matches no image" in problems[2]


def test_the_docs_list_the_suffixes_folders_are_read_for():
    import re
    from pathlib import Path

    from deeplabv1.predict.images import IMAGE_SUFFIXES

    text = (Path(__file__).resolve().parents[1] / "docs" / "predict.md").read_text()
    listed = re.search(r"folders \(their `([^`]*)`", text)
    assert listed is not None
    assert listed[1].split() == list(IMAGE_SUFFIXES)
