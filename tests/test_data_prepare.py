"""`data prepare`: SBD .mat files in the real format + a small VOC tree -> exact merge."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from deeplabv1.cli import main
from deeplabv1.data import prepare as prep
from deeplabv1.data.palette import read_label_png, save_label_png
from deeplabv1.data.prepare import prepare_aug
from deeplabv1.data.sbd import read_sbd_mat
from deeplabv1.data.sbd import write_sbd_mat as save_sbd_mat
from deeplabv1.data.voc import read_ids
from deeplabv1.errors import DeepLabError

H, W = 6, 8


def label_for(sid: str, source: str) -> np.ndarray:
    """A distinct label map per (id, source): tells which annotation was used."""
    seed = sum(map(ord, sid)) + (1000 if source == "voc" else 0)
    lab = np.random.default_rng(seed).integers(0, 21, (H, W)).astype(np.uint8)
    if source == "voc":
        lab[0] = 255  # VOC's void band
    return lab


# VOC: train a,b,c ; val d,e.  SBD: train b,d,f,g ; val e,h.
VOC_TRAIN, VOC_VAL = ["2008_a", "2008_b", "2008_c"], ["2008_d", "2008_e"]
SBD_TRAIN, SBD_VAL = ["2008_b", "2008_d", "2008_f", "2008_g"], ["2008_e", "2008_h"]


def build(tmp: Path) -> tuple[Path, Path]:
    voc = tmp / "VOCdevkit" / "VOC2012"
    sbd = tmp / "benchmark_RELEASE" / "dataset"
    every = sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))
    for sid in every:
        (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(voc / "JPEGImages" / f"{sid}.jpg")
    for sid in VOC_TRAIN + VOC_VAL:
        save_label_png(voc / "SegmentationClass" / f"{sid}.png", label_for(sid, "voc"))
    for sid in SBD_TRAIN + SBD_VAL:
        save_sbd_mat(sbd / "cls" / f"{sid}.mat", label_for(sid, "sbd"))
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (lists / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    (lists / "trainval.txt").write_text("\n".join(VOC_TRAIN + VOC_VAL) + "\n")
    (sbd / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
    (sbd / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
    return voc, sbd


def test_read_sbd_mat_real_format(tmp_path: Path) -> None:
    seg = label_for("x", "sbd")
    save_sbd_mat(tmp_path / "x.mat", seg)
    np.testing.assert_array_equal(read_sbd_mat(tmp_path / "x.mat"), seg)
    scipy.io.savemat(tmp_path / "other.mat", {"GTinst": {"Segmentation": seg}})
    with pytest.raises(DeepLabError, match="other.mat: no GTcls struct"):
        read_sbd_mat(tmp_path / "other.mat")
    save_sbd_mat(tmp_path / "bad.mat", np.full((H, W), 40))
    with pytest.raises(DeepLabError, match=r"bad.mat: label values \[40\]"):
        read_sbd_mat(tmp_path / "bad.mat")
    (tmp_path / "junk.mat").write_bytes(b"\x00garbage" * 20)
    with pytest.raises(DeepLabError, match="junk.mat: cannot read SBD .mat file"):
        read_sbd_mat(tmp_path / "junk.mat")


def test_merge_exact(tmp_path: Path) -> None:
    voc, sbd = build(tmp_path)
    res = prepare_aug(tmp_path, tmp_path / "benchmark_RELEASE")
    lists = voc / "ImageSets" / "Segmentation"
    # (SBD train + SBD val + VOC train) - VOC val, sorted unique
    assert read_ids(lists / "train_aug.txt") == ["2008_a", "2008_b", "2008_c", "2008_f",
                                                 "2008_g", "2008_h"]
    assert read_ids(lists / "trainval_aug.txt") == sorted(["2008_a", "2008_b", "2008_c",
                                                           "2008_d", "2008_e", "2008_f",
                                                           "2008_g", "2008_h"])
    assert res.counts == {"voc_train": 3, "voc_val": 2, "sbd_train": 4, "sbd_val": 2,
                          "train_aug": 6, "labels": 8}
    assert res.written == 8 and res.skipped == 0 and res.notes
    aug = voc / "SegmentationClassAug"
    assert sorted(p.stem for p in aug.glob("*.png")) == sorted(
        set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL))
    for sid in VOC_TRAIN + VOC_VAL:  # VOC takes precedence (b, d, e are in both)
        np.testing.assert_array_equal(read_label_png(aug / f"{sid}.png"), label_for(sid, "voc"))
    for sid in ("2008_f", "2008_g", "2008_h"):
        np.testing.assert_array_equal(read_label_png(aug / f"{sid}.png"), label_for(sid, "sbd"))
        assert Image.open(aug / f"{sid}.png").mode == "P"


def test_rerun_skips_up_to_date_and_redoes_changed(tmp_path: Path) -> None:
    voc, sbd = build(tmp_path)
    prepare_aug(voc, sbd)
    res = prepare_aug(voc, sbd, workers=2)
    assert (res.written, res.skipped) == (0, 8)
    src = sbd / "cls" / "2008_f.mat"
    new = np.ones((H, W), np.uint8)
    save_sbd_mat(src, new)
    later = (voc / "SegmentationClassAug" / "2008_f.png").stat().st_mtime + 5
    os.utime(src, (later, later))
    res = prepare_aug(voc, sbd)
    assert (res.written, res.skipped) == (1, 7)
    np.testing.assert_array_equal(read_label_png(voc / "SegmentationClassAug" / "2008_f.png"), new)


def test_missing_files_are_named(tmp_path: Path) -> None:
    voc, sbd = build(tmp_path)
    (sbd / "cls" / "2008_g.mat").unlink()
    (voc / "JPEGImages" / "2008_a.jpg").unlink()
    (voc / "SegmentationClass" / "2008_d.png").unlink()
    with pytest.raises(DeepLabError) as info:
        prepare_aug(voc, sbd)
    msg = str(info.value)
    assert "1 missing image file(s):" in msg and "2008_a.jpg" in msg
    assert "1 missing SBD label file(s):" in msg and "2008_g.mat" in msg
    assert "1 missing VOC label file(s):" in msg and "2008_d.png" in msg
    assert not (voc / "SegmentationClassAug").exists()  # nothing half-done


def test_size_mismatch_and_bad_values_name_the_file(tmp_path: Path) -> None:
    voc, sbd = build(tmp_path)
    save_sbd_mat(sbd / "cls" / "2008_h.mat", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(DeepLabError, match="2008_h.mat: label size 8x7 differs from image"):
        prepare_aug(voc, sbd)


def test_counts_against_the_official_releases(monkeypatch) -> None:
    full = {"voc_train": 1464, "voc_val": 1449, "sbd_train": 8498, "sbd_val": 2857,
            "train_aug": 10582, "labels": 12031}
    assert prep.check_counts(full, strict=True) == []
    with pytest.raises(DeepLabError, match="official sizes but train_aug: 10,581 ids where"):
        prep.check_counts({**full, "train_aug": 10581}, strict=False)
    small = {**full, "sbd_val": 2}
    assert any("sbd_val: 2 ids" in n for n in prep.check_counts(small, strict=False))
    with pytest.raises(DeepLabError, match="--strict: sbd_val: 2 ids"):
        prep.check_counts(small, strict=True)


def test_cli_prepare_into_another_folder(tmp_path: Path, capsys) -> None:
    voc, sbd = build(tmp_path)
    out = tmp_path / "merged"
    assert main(["data", "prepare", "--voc", str(voc), "--sbd", str(sbd), "--out", str(out)]) == 0
    assert "train_aug: 6 ids" in capsys.readouterr().out
    assert len(read_ids(out / "ImageSets" / "Segmentation" / "train_aug.txt")) == 6
    assert (out / "JPEGImages" / "2008_a.jpg").is_file()  # a complete VOC-layout root
    assert read_ids(out / "ImageSets" / "Segmentation" / "val.txt") == VOC_VAL
    assert not (voc / "SegmentationClassAug").exists()
    assert main(["data", "check", "--root", str(out), "--split", "train_aug"]) == 0
    assert main(["data", "prepare", "--voc", str(voc), "--sbd", str(tmp_path / "no")]) == 2
    assert "SBD folder not found" in capsys.readouterr().err


def test_corrupt_mat_that_crashes_scipy_is_named(tmp_path: Path) -> None:
    """A bit flip in an uncompressed .mat makes scipy 1.x's loadmat segfault; prepare reads
    in worker processes and names the file (or scipy raises and read_sbd_mat names it)."""
    voc, sbd = build(tmp_path)
    bad = sbd / "cls" / "2008_f.mat"
    save_sbd_mat(bad, np.arange(48, dtype=np.uint8).reshape(6, 8) % 21, compress=False)
    data = bytearray(bad.read_bytes())
    data[584] ^= 5 ^ 0o307  # found by fuzzing: crashes scipy 1.17's mio5 reader
    bad.write_bytes(bytes(data))
    with pytest.raises(DeepLabError, match="2008_f.mat"):
        prepare_aug(voc, sbd, workers=2)
