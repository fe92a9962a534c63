"""SegmentationDataset / voc_dataset: reading, errors naming files, seeded augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplabv1.data.datasets import SegmentationDataset, read_image, voc_dataset
from deeplabv1.data.palette import read_label_png, save_label_png
from deeplabv1.data.transforms import TestTransform, TrainTransform
from deeplabv1.data.voc import read_ids, resolve_voc_root
from deeplabv1.errors import DeepLabError


def make_tree(root: Path, n: int = 4, size: tuple[int, int] = (12, 10)) -> list[str]:
    """A tiny VOCdevkit/VOC2012 tree with PNG-lossless images (exact pixel checks)."""
    voc = root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    ids = [f"2007_{i:06d}" for i in range(n)]
    for sid in ids:
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        img = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(img).save(voc / "JPEGImages" / f"{sid}.png")
        lab = rng.integers(0, 21, (size[1], size[0]), dtype=np.uint8)
        lab[0, :] = 255
        save_label_png(voc / "SegmentationClass" / f"{sid}.png", lab)
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in ids[:3]))
    (lists / "val.txt").write_text(f"{ids[3]}\n")
    return ids


def test_read_ids_both_formats(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("2007_000032\n\n2007_000039\n")
    line = "/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\n"
    (tmp_path / "b.txt").write_text(line)
    assert read_ids(tmp_path / "a.txt") == ["2007_000032", "2007_000039"]
    assert read_ids(tmp_path / "b.txt") == ["2007_000032"]
    with pytest.raises(DeepLabError, match="missing.txt: image list not found"):
        read_ids(tmp_path / "missing.txt")


def test_voc_root_resolution(tmp_path: Path) -> None:
    make_tree(tmp_path)
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for given in (tmp_path, tmp_path / "VOCdevkit", voc):
        assert resolve_voc_root(given) == voc
    with pytest.raises(DeepLabError, match="not a VOC2012-layout folder"):
        resolve_voc_root(voc / "ImageSets")


def test_voc_dataset_test_items_exact(tmp_path: Path) -> None:
    ids = make_tree(tmp_path)
    ds = voc_dataset(tmp_path, "val", transform=TestTransform(16))
    assert len(ds) == 1 and ds.ids == ids[3:]
    item = ds[0]
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    rgb = np.asarray(Image.open(voc / "JPEGImages" / f"{ids[3]}.png"))
    lab = np.asarray(Image.open(voc / "SegmentationClass" / f"{ids[3]}.png"))
    assert item["id"] == ids[3] and (item["height"], item["width"]) == (10, 12)
    assert item["image"].shape == (3, 16, 16)
    np.testing.assert_array_equal(item["label"].numpy(), lab)
    np.testing.assert_array_equal(item["rgb"].numpy(), rgb)


def test_train_items_are_seeded_per_epoch_and_index(tmp_path: Path) -> None:
    make_tree(tmp_path, size=(20, 16))
    ds = voc_dataset(tmp_path, "train", transform=TrainTransform(8), seed=5)
    first = [ds[i] for i in range(3)]
    again = [ds[i] for i in (2, 0, 1)]  # order does not matter
    for a, b in zip(first, [again[1], again[2], again[0]]):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert first[0]["label"].shape == (8, 8) and first[0]["label"].dtype == torch.int64
    ds.set_epoch(1)
    changed = [not torch.equal(first[i]["image"], ds[i]["image"]) for i in range(3)]
    assert any(changed)
    # the generator of item i is exactly default_rng([seed, epoch, i])
    rgb, lab = ds.load(1)
    expected = TrainTransform(8)(rgb, lab, np.random.default_rng([5, 1, 1]))
    assert torch.equal(ds[1]["label"], expected["label"])


def test_dataloader_workers_give_the_same_items(tmp_path: Path) -> None:
    make_tree(tmp_path, size=(20, 16))
    ds = voc_dataset(tmp_path, "train", transform=TrainTransform(8), seed=1)
    serial = torch.stack([ds[i]["image"] for i in range(3)])
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2)
    batch = next(iter(loader))
    assert torch.equal(batch["image"], serial) and batch["id"] == ds.ids


def test_errors_name_the_file(tmp_path: Path) -> None:
    ids = make_tree(tmp_path)
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    bad_img = voc / "JPEGImages" / f"{ids[0]}.png"
    bad_img.write_bytes(b"not an image")
    with pytest.raises(DeepLabError, match=f"{bad_img}: cannot read image"):
        read_image(bad_img)
    with pytest.raises(DeepLabError, match="nothing.jpg: image file not found"):
        read_image(voc / "nothing.jpg")
    lab_path = voc / "SegmentationClass" / f"{ids[1]}.png"
    Image.fromarray(np.full((10, 12), 30, np.uint8)).save(lab_path)  # 8-bit grayscale
    ds = voc_dataset(tmp_path, "train")
    with pytest.raises(DeepLabError, match=rf"{lab_path}: label values \[30\]"):
        ds[1]
    save_label_png(lab_path, np.zeros((9, 12), np.uint8))
    with pytest.raises(DeepLabError, match="label size 12x9 differs from image"):
        ds[1]
    with pytest.raises(DeepLabError, match="no list for split 'train_aug'.*data prepare"):
        voc_dataset(tmp_path, "train_aug")


def test_unlabelled_dataset_gives_void_labels(tmp_path: Path) -> None:
    ids = make_tree(tmp_path)
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    ds = SegmentationDataset(voc / "JPEGImages", None, ids, TestTransform(None))
    assert (ds[2]["label"] == 255).all() and ds[2]["label"].shape == (10, 12)


def test_real_voc_samples_round_trip(voc_samples, tmp_path: Path) -> None:
    """Real VOC images and label maps survive the dataset unchanged (labels never go via RGB)."""
    voc = tmp_path / "VOC2012"
    ids = []
    for sid, rgb, lab in voc_samples[:3]:
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(voc / "JPEGImages" / f"{sid}.png")
        save_label_png(voc / "SegmentationClass" / f"{sid}.png", lab)
        ids.append(sid)
    ds = SegmentationDataset(voc / "JPEGImages", voc / "SegmentationClass", ids, TestTransform())
    for i, (sid, rgb, lab) in enumerate(voc_samples[:3]):
        item = ds[i]
        np.testing.assert_array_equal(item["label"].numpy(), lab)
        np.testing.assert_array_equal(item["rgb"].numpy(), rgb)
        assert item["image"].shape == (3, 513, 513)
        np.testing.assert_array_equal(read_label_png(voc / "SegmentationClass" / f"{sid}.png"), lab)
