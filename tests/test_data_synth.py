"""Synthetic VOC-layout dataset: layout, determinism, label conventions, void band."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deeplabv1.cli import main
from deeplabv1.data.check import check_dataset
from deeplabv1.data.datasets import voc_dataset
from deeplabv1.data.palette import VOC_COLORMAP, read_label_png
from deeplabv1.data.synth import make_synthetic_voc, synth_sample
from deeplabv1.data.transforms import TrainTransform
from deeplabv1.data.voc import read_ids
from deeplabv1.errors import DeepLabError


def files(root: Path) -> dict[str, bytes]:
    """The dataset's files (not deeplabv1's records of what it wrote: inodes and times)."""
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".deeplabv1-outputs")
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def test_layout_and_lists(tmp_path: Path) -> None:
    root = make_synthetic_voc(tmp_path / "s", 8, size=(64, 48), seed=3)
    lists = root / "ImageSets" / "Segmentation"
    train, val = read_ids(lists / "train.txt"), read_ids(lists / "val.txt")
    assert len(train) == 6 and len(val) == 2 and not set(train) & set(val)
    assert read_ids(lists / "trainval.txt") == train + val
    for sid in train + val:
        img = Image.open(root / "JPEGImages" / f"{sid}.jpg")
        lab = Image.open(root / "SegmentationClass" / f"{sid}.png")
        assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 48)
        assert lab.mode == "P" and lab.size == (64, 48)
        palette = np.asarray(lab.getpalette()[: 256 * 3], np.uint8).reshape(-1, 3)
        np.testing.assert_array_equal(palette, VOC_COLORMAP)
    ds = voc_dataset(root, "train", transform=TrainTransform(32))
    assert ds[0]["image"].shape == (3, 32, 32)


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = files(make_synthetic_voc(tmp_path / "a", 4, size=(48, 40), seed=1))
    b = files(make_synthetic_voc(tmp_path / "b", 4, size=(48, 40), seed=1))
    c = files(make_synthetic_voc(tmp_path / "c", 4, size=(48, 40), seed=2))
    assert a == b
    assert a.keys() == c.keys() and a != c
    # image i does not depend on how many images are made
    d = files(make_synthetic_voc(tmp_path / "d", 2, size=(48, 40), seed=1))
    assert d["JPEGImages/synth_00001.jpg"] == a["JPEGImages/synth_00001.jpg"]


def test_labels_and_void_band() -> None:
    num_classes, width = 6, 4
    seen: set[int] = set()
    for i in range(30):
        rgb, lab = synth_sample(np.random.default_rng([0, i]), (80, 60), num_classes, width)
        assert rgb.shape == (60, 80, 3) and rgb.dtype == np.uint8
        values = set(np.unique(lab).tolist())
        assert values <= set(range(num_classes)) | {255}
        assert 255 in values and values & set(range(1, num_classes))  # an object and its band
        seen |= values
        # no two different classes touch: every label change goes through the void band
        for a, b in ((lab[:, 1:], lab[:, :-1]), (lab[1:], lab[:-1])):
            touch = (a != b) & (a != 255) & (b != 255)
            assert not touch.any()
    assert seen == set(range(num_classes)) | {255}


def test_void_band_is_symmetric_around_the_boundary() -> None:
    """Without the band, the band pixels are exactly those within width/2 of a label change."""
    rgb, no_band = synth_sample(np.random.default_rng([7, 0]), (64, 64), 6, void_width=0)
    _, band = synth_sample(np.random.default_rng([7, 0]), (64, 64), 6, void_width=4)
    h, w = no_band.shape
    expected = np.zeros_like(no_band, dtype=bool)
    for y in range(h):
        for x in range(w):
            win = no_band[max(y - 2, 0) : y + 3, max(x - 2, 0) : x + 3]
            expected[y, x] = (win != no_band[y, x]).any()
    np.testing.assert_array_equal(band == 255, expected)
    np.testing.assert_array_equal(band[~expected], no_band[~expected])


def test_class_colours_are_separable() -> None:
    """Mean object colour is closest to its own class's mean (the data are learnable)."""
    sums: dict[int, list[np.ndarray]] = {}
    for i in range(60):
        rgb, lab = synth_sample(np.random.default_rng([1, i]), (64, 48), 6)
        for c in range(1, 6):
            if (lab == c).sum() > 20:
                sums.setdefault(c, []).append(rgb[lab == c].mean(0))
    means = {c: np.mean(v, 0) for c, v in sums.items()}
    assert len(means) == 5
    hits = total = 0
    for c, vals in sums.items():
        for v in vals:
            best = min(means, key=lambda k: np.linalg.norm(v - means[k]))
            hits += best == c
            total += 1
    assert hits / total > 0.8


def test_bad_arguments() -> None:
    with pytest.raises(DeepLabError, match="at least 1"):
        make_synthetic_voc("/nonexistent", 0)
    with pytest.raises(DeepLabError, match="num_classes"):
        make_synthetic_voc("/nonexistent", 2, num_classes=22)
    with pytest.raises(DeepLabError, match="at least 16x16"):
        make_synthetic_voc("/nonexistent", 2, size=(8, 8))


def test_labels_readable_with_num_classes(tmp_path: Path) -> None:
    root = make_synthetic_voc(tmp_path, 3, size=(40, 32), num_classes=3)
    for p in (root / "SegmentationClass").glob("*.png"):
        assert set(np.unique(read_label_png(p, num_classes=3)).tolist()) <= {0, 1, 2, 255}


def test_cli_synth_then_check(tmp_path: Path, capsys) -> None:
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--num", "6", "--size", "40", "32"]) == 0
    assert "wrote 6 images (40x32)" in capsys.readouterr().out
    assert main(["data", "check", "--root", str(out), "--split", "trainval"]) == 0
    assert "6 images" in capsys.readouterr().out


def test_check_names_every_problem(tmp_path: Path) -> None:
    root = make_synthetic_voc(tmp_path, 6, size=(40, 32))
    lists = root / "ImageSets" / "Segmentation"
    (lists / "trainval.txt").write_text((lists / "trainval.txt").read_text() + "synth_00000\n")
    (root / "JPEGImages" / "synth_00001.jpg").unlink()
    (root / "SegmentationClass" / "synth_00002.png").unlink()
    Image.fromarray(np.full((32, 40), 99, np.uint8)).save(root / "SegmentationClass" /
                                                          "synth_00003.png")
    Image.fromarray(np.zeros((31, 40), np.uint8)).save(root / "SegmentationClass" /
                                                       "synth_00004.png")
    res = check_dataset(root, "trainval")
    assert not res.ok and res.num_images == 7
    p = res.problems
    assert [Path(m).name for m in p["missing images"]] == ["synth_00001.jpg"]
    assert [Path(m).name for m in p["missing labels"]] == ["synth_00002.png"]
    assert p["bad labels"] == []
    assert p["label values >= num_classes"] == [
        f"99: 1,280 pixels in 1 mask(s), e.g. {root}/SegmentationClass/synth_00003.png "
        "(classes are 0..5, 255 is void)"]  # fmt: skip
    assert p["size mismatches"] == [f"{root}/SegmentationClass/synth_00004.png: size 40x31, "
                                    "image 40x32"]
    assert p["duplicate ids"] == ["synth_00000 listed more than once"]
    assert "1 missing images" in res.summary()
    # the class histogram of the readable labels is exact
    fresh = make_synthetic_voc(tmp_path / "fresh", 3, size=(40, 32))
    ok = check_dataset(fresh, "trainval")
    expected: dict[int, int] = {}
    for sid in read_ids(fresh / "ImageSets" / "Segmentation" / "trainval.txt"):
        lab = read_label_png(fresh / "SegmentationClass" / f"{sid}.png")
        for v, n in zip(*np.unique(lab, return_counts=True)):
            expected[int(v)] = expected.get(int(v), 0) + int(n)
    assert ok.ok and dict(ok.pixel_counts) == expected


def test_cli_synth_refuses_a_folder_it_did_not_write(tmp_path: Path, capsys) -> None:
    from deeplabv1.data.layout import detect_layout
    from deeplabv1.data.synth import make_synthetic_folder

    mine = make_synthetic_folder(tmp_path / "mine", 3, size=(32, 32))  # the user's own dataset
    before = files(mine)
    for extra in ([], ["--overwrite"]):
        assert main(["data", "synth", "--out", str(mine), "--num", "2", *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(mine) in err and "did not write" in err, err
        assert files(mine) == before and detect_layout(mine) == ("folder", mine)
    # a folder synth wrote may be written again; an empty one is fine
    out = tmp_path / "synth"
    out.mkdir()
    for _ in range(2):
        assert main(["data", "synth", "--out", str(out), "--num", "2", "--size", "16", "16"]) == 0
    assert detect_layout(out) == ("voc", out)


def test_cli_synth_rewrite_with_fewer_images_leaves_no_stale_ones(tmp_path: Path, capsys) -> None:
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--num", "5", "--size", "16", "16"]) == 0
    mine = out / "JPEGImages" / "synth_00004_notes.jpg"  # not a name synth gives: kept
    mine.write_bytes(b"x")
    assert main(["data", "synth", "--out", str(out), "--num", "3", "--size", "16", "16"]) == 0
    ids = [f"synth_{i:05d}" for i in range(3)]
    assert sorted(p.stem for p in (out / "SegmentationClass").glob("*.png")) == ids
    assert sorted(p.name for p in (out / "JPEGImages").glob("*.jpg")) == sorted(
        [f"{i}.jpg" for i in ids] + [mine.name])
    assert read_ids(out / "ImageSets" / "Segmentation" / "trainval.txt") == ids
    # a file past --num that was changed since synth wrote it is kept, and named
    assert main(["data", "synth", "--out", str(out), "--num", "3", "--size", "16", "16"]) == 0
    assert main(["data", "synth", "--out", str(out), "--num", "5", "--size", "16", "16"]) == 0
    edited = out / "SegmentationClass" / "synth_00004.png"
    with edited.open("ab") as f:
        f.write(b"my annotation work")
    content = edited.read_bytes()
    capsys.readouterr()
    assert main(["data", "synth", "--out", str(out), "--num", "3", "--size", "16", "16"]) == 0
    assert edited.read_bytes() == content
    assert "kept SegmentationClass/synth_00004.png" in capsys.readouterr().err
    assert not (out / "JPEGImages" / "synth_00004.jpg").exists()  # unchanged: deleted


def test_a_folder_with_both_layouts_is_an_error(tmp_path: Path, capsys) -> None:
    from deeplabv1.data.layout import detect_layout
    from deeplabv1.data.synth import make_synthetic_folder

    root = make_synthetic_voc(tmp_path / "both", 2, size=(32, 32))
    make_synthetic_folder(root, 2, size=(32, 32))  # images/ + masks/ beside JPEGImages/
    with pytest.raises(DeepLabError, match="both a plain dataset"):
        detect_layout(root)
    assert main(["data", "check", "--root", str(root), "--split", "val"]) == 2
    assert "both a plain dataset" in capsys.readouterr().err
