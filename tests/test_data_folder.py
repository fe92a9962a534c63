"""Plain images/ + masks/ datasets: classes files, layout detection, splits, mask sanity checks."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplabv1.checkpoint import checkpoint_classes, load_checkpoint, save_checkpoint
from deeplabv1.cli import main
from deeplabv1.data.check import check_dataset, label_warnings
from deeplabv1.data.classes import read_classes_file, resolve_classes
from deeplabv1.data.datasets import open_dataset
from deeplabv1.data.folder import fraction_split, list_image_stems
from deeplabv1.data.layout import detect_layout, resolve_split
from deeplabv1.data.palette import VOC_CLASSES, VOC_COLORMAP, save_label_png
from deeplabv1.data.synth import make_synthetic_folder, make_synthetic_voc
from deeplabv1.data.transforms import TestTransform
from deeplabv1.errors import DeepLabError


def write_folder(root: Path, masks: dict[str, np.ndarray], mode: str = "L") -> Path:
    """images/<stem>.png (grey noise) and masks/<stem>.png (``mode`` PNGs of the given arrays)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for stem, mask in masks.items():
        rgb = rng.integers(0, 255, (*mask.shape, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"{stem}.png")
        if mode == "P":  # with the VOC palette
            save_label_png(root / "masks" / f"{stem}.png", mask)
        else:
            Image.fromarray(mask.astype(np.uint8), mode="L").save(root / "masks" / f"{stem}.png")
    return root


def test_classes_txt_names_colours_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("# my classes\nbackground\ncat #FF0000\n\npotted plant\nsky #00ff7f\n")
    got = read_classes_file(path)
    assert got.names == ("background", "cat", "potted plant", "sky")
    assert got.colors.tolist() == [[0, 0, 0], [255, 0, 0], VOC_COLORMAP[2].tolist(), [0, 255, 127]]
    cmap = got.colormap()
    assert cmap[1].tolist() == [255, 0, 0] and cmap[255].tolist() == [224, 224, 192]  # void: VOC's


def test_classes_yaml_list_or_mapping(tmp_path: Path) -> None:
    path = tmp_path / "classes.yaml"
    path.write_text(
        "- background\n- {name: road, color: '#808080'}\n- {name: 7, color: [1, 2, 3]}\n"
    )
    got = read_classes_file(path)
    assert got.names == ("background", "road", "7") and got.source == str(path)
    assert got.colors.tolist() == [[0, 0, 0], [128, 128, 128], [1, 2, 3]]
    path.write_text("classes: [a, b]\n")
    assert read_classes_file(path).names == ("a", "b")


@pytest.mark.parametrize(("text", "message"), [
    ("- a\n- b\n- a\n", "repeated: a"),
    ("- a\n", "1 class.es.; 2..255 are needed"),
    ("- a\n- no\n", "non-empty strings, got False"),
    ("- a\n- {name: b, color: '#12345'}\n", "class 1: colour must be"),
    ("- a\n- {name: b, colour: [1, 2, 300]}\n", "class 1: colour must be"),
    ("- a\n- {nam: b}\n", "class 1: expected keys name"),
    ("a: b\n", "expected a list"),
    ("[a, b\n", "not valid YAML"),
])  # fmt: skip
def test_bad_classes_files_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "classes.yaml"
    path.write_text(text)
    with pytest.raises(DeepLabError, match=message) as err:
        read_classes_file(path)
    assert str(path) in str(err.value)


def test_class_resolution_order(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("bg\nfg #ff0000\n")
    found = read_classes_file(path)
    assert resolve_classes(None, None).names == VOC_CLASSES
    assert resolve_classes(None, 3).names == ("class0", "class1", "class2")
    assert resolve_classes(found, None) is found
    flagged = resolve_classes(found, 2, ["back", "front"])
    assert flagged.names == ("back", "front") and flagged.colors[1].tolist() == [255, 0, 0]
    with pytest.raises(DeepLabError, match="names 2 classes, but num_classes .--num-classes. is 3"):
        resolve_classes(found, 3)
    with pytest.raises(DeepLabError, match="3 class names for 2 classes"):
        resolve_classes(None, 2, ["a", "b", "c"])
    with pytest.raises(DeepLabError, match=r"class_names \(--class-names\): 1 class"):
        resolve_classes(None, None, ["only"])


def test_fraction_split_is_the_sha1_order_and_stable(tmp_path: Path) -> None:
    stems = [f"img{i:03d}" for i in range(20)]
    got = fraction_split(stems, 0.25)
    by_digest = sorted(stems, key=lambda s: hashlib.sha1(s.encode()).hexdigest())
    assert got["val"] == sorted(by_digest[:5]) and len(got["train"]) == 15
    assert sorted(got["train"] + got["val"]) == stems
    assert fraction_split(stems[::-1], 0.25) == got  # input order does not matter
    grown = fraction_split([*stems, "img999"], 0.25)  # 21 images: round(5.25) = 5 val
    moved = set(got["val"]) ^ set(grown["val"])
    assert len(moved - {"img999"}) <= 1
    assert fraction_split(["a", "b"], 0.01)["val"] and fraction_split(["a", "b"], 0.99)["train"]
    with pytest.raises(DeepLabError, match="at least 2 images"):
        fraction_split(["a"], 0.5)
    with pytest.raises(DeepLabError, match=r"must lie in \(0, 1\)"):
        fraction_split(stems, 1.0)


def test_fraction_split_takes_names_that_are_not_utf8() -> None:
    """A stem of undecodable bytes (os.fsdecode's surrogates) is ordered by the SHA-1 of its
    bytes, as the others are by their UTF-8 bytes."""
    import os

    raw = [b"caf\xe9", b"img001", b"\xff\xfe", "\u00e9t\u00e9".encode(), b"img002"]
    stems = sorted(os.fsdecode(r) for r in raw)
    by_digest = [os.fsdecode(r) for r in sorted(raw, key=lambda r: hashlib.sha1(r).hexdigest())]
    got = fraction_split(stems, 0.4)
    assert got["val"] == sorted(by_digest[:2]) and got["train"] == sorted(by_digest[2:])


def test_layout_detection_and_one_line_errors(tmp_path: Path) -> None:
    voc = make_synthetic_voc(tmp_path / "voc", 2, size=(16, 16))
    plain = make_synthetic_folder(tmp_path / "plain", 2, size=(16, 16))
    assert detect_layout(voc) == ("voc", voc) and detect_layout(plain) == ("folder", plain)
    (tmp_path / "no_masks" / "images").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    cases = {
        tmp_path / "missing": "missing: dataset folder not found",
        tmp_path / "other": "other: not a dataset folder: expected images/ [+] masks/",
        tmp_path / "no_masks": "no_masks/masks: mask folder not found",
    }
    for root, message in cases.items():
        with pytest.raises(DeepLabError, match=message) as err:
            resolve_split(root, "all")
        assert "\n" not in str(err.value)
    with pytest.raises(DeepLabError, match="--val-fraction applies to a plain"):
        resolve_split(voc, "train", val_fraction=0.5)
    with pytest.raises(DeepLabError, match="no split list val.txt; .* --val-fraction"):
        resolve_split(plain, "val")
    with pytest.raises(DeepLabError, match="same stem as"):
        Image.new("RGB", (16, 16)).save(plain / "images" / "synth_00000.jpg")
        list_image_stems(plain / "images")


def test_split_lists_win_and_conflict_with_a_fraction(tmp_path: Path) -> None:
    root = make_synthetic_folder(tmp_path / "d", 4, size=(16, 16))
    assert resolve_split(root, "all").ids == [f"synth_{i:05d}" for i in range(4)]
    (root / "val.txt").write_text("synth_00002\nimages/synth_00003.png masks/synth_00003.png\n")
    found = resolve_split(root, "val")
    assert found.ids == ["synth_00002", "synth_00003"] and found.label_dir == root / "masks"
    with pytest.raises(DeepLabError, match="val.txt: a split list exists and --val-fraction"):
        resolve_split(root, "val", val_fraction=0.5)
    assert resolve_split(root, str(root / "val.txt")).ids == found.ids


def test_open_dataset_reads_the_masks_and_names_missing_ones(tmp_path: Path) -> None:
    masks = {"a": np.array([[0, 1], [255, 2]] * 8, np.uint8).reshape(16, 2).repeat(8, 1),
             "b": np.full((16, 16), 1, np.uint8)}  # fmt: skip
    root = write_folder(tmp_path / "d", masks, mode="P")
    ds = open_dataset(root, "all", transform=TestTransform(None), num_classes=3)
    assert ds.ids == ["a", "b"]
    for i, stem in enumerate(ds.ids):
        assert torch.equal(ds[i]["label"], torch.from_numpy(masks[stem].astype(np.int64)))
    (root / "masks" / "b.png").unlink()
    with pytest.raises(DeepLabError, match=r"masks: 1 image\(s\) of split 'all' have no mask \(b"):
        open_dataset(root, "all")


def test_masks_pair_by_stem_in_either_case_as_images_do(tmp_path: Path, capsys) -> None:
    """Images named <stem>.JPG / .PNG paired, but a mask <stem>.PNG was "missing" (the error
    named <stem>.png with the file right there) for data check, train and eval; masks now pair
    as images do."""
    masks = {"a": np.zeros((16, 16), np.uint8), "b": np.full((16, 16), 1, np.uint8)}
    root = write_folder(tmp_path / "d", masks)
    (root / "masks" / "b.png").rename(root / "masks" / "b.PNG")
    (root / "images" / "a.png").rename(root / "images" / "a.PNG")
    ds = open_dataset(root, "all", transform=TestTransform(None), num_classes=2)
    assert ds.label_path(1) == root / "masks" / "b.PNG"
    assert torch.equal(ds[1]["label"], torch.full((16, 16), 1, dtype=torch.int64))
    res = check_dataset(root, "all", num_classes=2)
    assert res.ok and res.pixel_counts == Counter({0: 256, 1: 256})
    assert main(["data", "check", "--root", str(root), "--split", "all",
                 "--num-classes", "2"]) == 0  # fmt: skip
    assert "1 masks without images" not in capsys.readouterr().out
    # any case: a stem listed from images/ as <stem>.Jpg is then found, not "missing"
    (root / "masks" / "b.PNG").rename(root / "masks" / "b.Png")
    (root / "images" / "a.PNG").rename(root / "images" / "a.Jpg")
    Image.open(root / "images" / "a.Jpg").convert("RGB").save(root / "images" / "a.Jpg", "JPEG")
    ds = open_dataset(root, "all", transform=TestTransform(None), num_classes=2)
    assert (ds.image_path(0), ds.label_path(1)) == (root / "images" / "a.Jpg",
                                                     root / "masks" / "b.Png")  # fmt: skip
    assert check_dataset(root, "all", num_classes=2).ok


def test_one_bit_masks_read_as_0_and_1(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "d", {"a": np.zeros((8, 8))})
    mask = np.zeros((8, 8), bool)
    mask[2:5, 3] = True
    Image.fromarray(mask).save(root / "masks" / "a.png")  # mode "1"
    res = check_dataset(root, "all", num_classes=2)
    assert res.ok and res.pixel_counts == Counter({0: 61, 1: 3}) and res.warnings == []


def test_mask_warnings_fire_on_0_255_masks(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(1)
    masks = {f"m{i}": np.where(rng.random((24, 32)) < 0.3, 255, 0) for i in range(4)}
    root = write_folder(tmp_path / "binary", masks)
    res = check_dataset(root, "all", num_classes=2)
    void = sum(int((m == 255).sum()) for m in masks.values())
    assert res.num_problems == 0 and res.pixel_counts == Counter({0: 4 * 24 * 32 - void, 255: void})
    assert res.warnings[0] == "class(es) never present in the masks of split 'all': 1 (class1)"
    assert res.warnings[1].startswith(
        f"void (255) covers {100 * void / (4 * 24 * 32):.1f}% of the pixels of the masks of "
        "split 'all' (no pixel of a class other than 0)")  # fmt: skip
    assert "save them as class index 1 instead" in res.warnings[1]
    assert not res.ok and res.exit_status == 3  # warnings only: not "OK", not exit 0
    assert main(["data", "check", "--root", str(root), "--split", "all", "--num-classes", "2"]) == 3
    out = capsys.readouterr().out
    assert out.count("  warning: ") == 2 and "OK" not in out
    assert out.endswith("  no problems, 2 warnings; label pixels per value: 0 (class0): "
                        f"{4 * 24 * 32 - void:,}, 255 (void): {void:,}\n")  # fmt: skip


def test_check_lists_values_beyond_the_classes(tmp_path: Path, capsys) -> None:
    masks = {"a": np.zeros((8, 8)), "b": np.zeros((8, 8)), "c": np.zeros((8, 8))}
    masks["a"][:2], masks["b"][:3, :1], masks["c"][0, 0] = 7, 7, 3
    root = write_folder(tmp_path / "d", masks)
    (root / "classes.txt").write_text("bg\nthing\nother\n")
    res = check_dataset(root, "all")
    assert res.class_names == ("bg", "thing", "other")
    assert res.problems["label values >= num_classes"] == [
        f"3: 1 pixels in 1 mask(s), e.g. {root}/masks/c.png (classes are 0..2, 255 is void)",
        f"7: 19 pixels in 2 mask(s), e.g. {root}/masks/a.png (classes are 0..2, 255 is void)",
    ]
    assert main(["data", "check", "--root", str(root), "--split", "all"]) == 1
    assert "2 label values >= num_classes:" in capsys.readouterr().out
    assert main(["data", "check", "--root", str(root), "--split", "test", "--num-classes", "3",
                 "--val-fraction", "0.5"]) == 2  # fmt: skip
    assert "--val-fraction makes the splits train and val" in capsys.readouterr().err


def test_label_warnings_stay_quiet_on_sane_histograms() -> None:
    names = ("background", "cat", "dog")
    voc_like = Counter({0: 700, 1: 150, 2: 100, 255: 50})
    assert label_warnings(voc_like, names) == []
    small_objects = Counter({0: 900, 1: 30, 2: 20, 255: 50})  # more void than objects: fine
    assert label_warnings(small_objects, names) == []
    mostly_void = Counter({0: 100, 1: 100, 2: 100, 255: 400})
    assert "(more than half)" in label_warnings(mostly_void, names)[0]
    assert label_warnings(Counter({0: 5, 1: 5}), names) == [
        "class(es) never present in the masks: 2 (dog)"]  # fmt: skip


def test_checkpoints_store_classes_and_old_ones_get_defaults(tmp_path: Path) -> None:
    state = {"w": torch.zeros(1)}
    save_checkpoint(tmp_path / "old21.pt", state, arch="deeplab", num_classes=21)
    save_checkpoint(tmp_path / "old3.pt", state, arch="deeplab", num_classes=3)
    assert checkpoint_classes(load_checkpoint(tmp_path / "old21.pt")).names == VOC_CLASSES
    old3 = checkpoint_classes(load_checkpoint(tmp_path / "old3.pt"))
    assert old3.names == ("class0", "class1", "class2")
    assert old3.palette() == VOC_COLORMAP[:3].tolist()
    save_checkpoint(tmp_path / "new.pt", state, arch="deeplab", num_classes=2,
                    class_names=["bg", "fg"], palette=[[0, 0, 0], [255, 0, 0]])  # fmt: skip
    ckpt = load_checkpoint(tmp_path / "new.pt")
    assert (ckpt["class_names"], ckpt["palette"]) == (["bg", "fg"], [[0, 0, 0], [255, 0, 0]])
    with pytest.raises(DeepLabError, match="3 class names for 2 classes"):
        save_checkpoint(tmp_path / "bad.pt", state, arch="deeplab", num_classes=2,
                        class_names=["a", "b", "c"])  # fmt: skip
    torch.save({**ckpt, "palette": [[0, 0, 0]]}, tmp_path / "bad.pt")
    with pytest.raises(DeepLabError, match="bad.pt: palette must hold 2"):
        load_checkpoint(tmp_path / "bad.pt")
