"""`deeplabv1 data ...` typed configs: defaults < --config YAML < flags, saved configs, errors."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from deeplabv1.cli import build_parser, main
from deeplabv1.config import config_from_dict, load_yaml, resolve_config
from deeplabv1.data.config import CheckConfig, DownloadConfig, PrepareConfig, SynthConfig
from deeplabv1.data.download import ARCHIVES, file_md5
from deeplabv1.data.palette import read_label_png
from deeplabv1.data.sbd import write_sbd_mat
from deeplabv1.data.synth import make_synthetic_voc
from deeplabv1.data.voc import read_ids


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes (not the run's lock and list
    of outputs)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in (".deeplabv1.lock", ".deeplabv1-outputs")}  # fmt: skip


def saved(cls: type, path: Path):
    return config_from_dict(cls, load_yaml(path), str(path))


def test_old_flag_spellings_fill_the_configs() -> None:
    parse = build_parser().parse_args
    got = resolve_config(SynthConfig, parse(["data", "synth", "--out", "o", "--size", "40", "32",
                                             "--num-classes", "3", "--val-fraction", "0.5"]))
    assert got == SynthConfig(out="o", size=(40, 32), num_classes=3, val_fraction=0.5)
    got = resolve_config(DownloadConfig, parse(["data", "download", "--root", "r", "--only", "sbd",
                                                "--only", "voc2012", "--no-extract"]))
    assert got == DownloadConfig(root="r", only=["sbd", "voc2012"], extract=False)
    assert got.archive_names() == ["sbd", "voc2012"]
    assert DownloadConfig(root="r").archive_names() == list(ARCHIVES)
    got = resolve_config(PrepareConfig, parse(["data", "prepare", "--voc", "v", "--sbd", "s",
                                               "--strict", "--workers", "3"]))
    assert got == PrepareConfig(voc="v", sbd="s", strict=True, workers=3)
    got = resolve_config(CheckConfig, parse(["data", "check", "--root", "r", "--label-dir", "L"]))
    assert got == CheckConfig(root="r", label_dir="L")
    # the defaults of the flags before the configs existed
    synth = SynthConfig()
    assert (synth.num, synth.size, synth.num_classes, synth.val_fraction) == (200, (160, 120), 6,
                                                                             0.25)  # fmt: skip
    assert (PrepareConfig().workers, PrepareConfig().num_classes) == (1, 21)
    assert (CheckConfig().split, CheckConfig().workers) == ("val", 4)


def test_synth_flags_override_yaml_and_config_round_trips(tmp_path: Path, capsys) -> None:
    out = tmp_path / "synth"
    cfg_file = write_yaml(tmp_path / "s.yaml", {"out": str(out), "num": 3, "size": [32, 24],
                                                "seed": 5, "num_classes": 3})  # fmt: skip
    assert main(["data", "synth", "--config", str(cfg_file), "--seed", "2", "--num", "4"]) == 0
    assert f"config: {out / 'synth_config.yaml'}" in capsys.readouterr().out
    cfg = saved(SynthConfig, out / "synth_config.yaml")
    assert cfg == SynthConfig(out=str(out), num=4, size=(32, 24), seed=2, num_classes=3)
    # the run used the flag's seed and num with the file's size and classes
    ref2 = tree(make_synthetic_voc(tmp_path / "ref2", 4, size=(32, 24), seed=2, num_classes=3))
    ref5 = tree(make_synthetic_voc(tmp_path / "ref5", 4, size=(32, 24), seed=5, num_classes=3))
    got = tree(out)
    assert got.pop("synth_config.yaml")
    assert got == ref2 and got != ref5
    label = read_label_png(out / "SegmentationClass" / "synth_00000.png", num_classes=3)
    assert label.shape == (24, 32)
    # the saved config alone reproduces the dataset elsewhere
    again = tmp_path / "again"
    assert main(["data", "synth", "--config", str(out / "synth_config.yaml"),
                 "--out", str(again)]) == 0  # fmt: skip
    redo = tree(again)
    assert yaml.safe_load(redo.pop("synth_config.yaml"))["out"] == str(again)
    assert redo == ref2


def build_voc_sbd(tmp: Path) -> tuple[Path, Path]:
    """A 6-image VOC root (2-class synthetic labels) and an SBD folder whose labels hold 2."""
    voc = make_synthetic_voc(tmp / "voc", 6, size=(32, 24), num_classes=2)
    ids = read_ids(voc / "ImageSets" / "Segmentation" / "trainval.txt")
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("\n".join(ids[:2]) + "\n")
    (lists / "val.txt").write_text(ids[2] + "\n")
    sbd = tmp / "benchmark_RELEASE" / "dataset"
    for sid in ids[3:]:
        write_sbd_mat(sbd / "cls" / f"{sid}.mat", np.full((24, 32), 2, np.uint8))
    (sbd / "train.txt").write_text("\n".join([ids[1], *ids[3:5]]) + "\n")
    (sbd / "val.txt").write_text(ids[5] + "\n")
    return voc, sbd


def test_prepare_flags_override_yaml_and_config_saved_beside_lists(tmp_path: Path,
                                                                   capsys) -> None:  # fmt: skip
    voc, sbd = build_voc_sbd(tmp_path)
    cfg_file = write_yaml(tmp_path / "p.yaml", {"voc": str(voc), "sbd": str(sbd), "num_classes": 2,
                                                "out": str(tmp_path / "yaml_out")})  # fmt: skip
    # the file's num_classes 2 rejects SBD's label 2 ...
    assert main(["data", "prepare", "--config", str(cfg_file)]) == 2
    assert "outside 0..1" in capsys.readouterr().err
    # ... the flag's 3 accepts it, and the flag's --out wins over the file's
    out = tmp_path / "merged"
    argv = ["data", "prepare", "--config", str(cfg_file), "--num-classes", "3", "--out", str(out)]
    assert main(argv) == 0
    assert "train_aug: 5 ids" in capsys.readouterr().out
    lists = out / "ImageSets" / "Segmentation"
    ids = read_ids(voc / "ImageSets" / "Segmentation" / "trainval.txt")
    assert read_ids(lists / "train_aug.txt") == [ids[0], ids[1], *ids[3:]]  # all but VOC val
    assert not (tmp_path / "yaml_out" / "ImageSets").exists()
    cfg = saved(PrepareConfig, lists / "prepare_config.yaml")
    assert cfg == PrepareConfig(voc=str(voc), sbd=str(sbd), out=str(out), num_classes=3)
    # default output root: the VOC root's own lists folder
    assert main(["data", "prepare", "--voc", str(voc), "--sbd", str(sbd),
                 "--num-classes", "3"]) == 0  # fmt: skip
    voc_cfg = voc / "ImageSets" / "Segmentation" / "prepare_config.yaml"
    assert saved(PrepareConfig, voc_cfg) == dataclasses.replace(cfg, out=None)


def make_mirror(folder: Path) -> dict[str, str]:
    """The two archive files, each holding one file in its real top-level layout; md5s."""
    folder.mkdir(parents=True)
    inside = {"voc2012": "VOCdevkit/VOC2012/x.txt", "sbd": "benchmark_RELEASE/dataset/x.txt"}
    for name, member in inside.items():
        with tarfile.open(folder / ARCHIVES[name].filename, "w") as tar:
            info = tarfile.TarInfo(member)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
    return {name: file_md5(folder / arc.filename) for name, arc in ARCHIVES.items()}


def test_download_flags_override_yaml_and_config_saved_in_root(tmp_path: Path, capsys) -> None:
    md5 = make_mirror(tmp_path / "mirror")
    root = tmp_path / "root"
    cfg_file = write_yaml(tmp_path / "d.yaml", {
        "root": str(root), "source": str(tmp_path / "mirror"), "only": ["voc2012"],
        "voc2012_md5": md5["voc2012"], "sbd_md5": md5["sbd"].upper(), "extract": True,
    })  # fmt: skip
    assert main(["data", "download", "--config", str(cfg_file), "--only", "sbd",
                 "--no-extract"]) == 0  # fmt: skip
    assert sorted(p.name for p in root.iterdir()) == [".deeplabv1-outputs", ".deeplabv1.lock",
                                                     "benchmark.tgz", "download_config.yaml"]
    assert f"sbd: {root / 'benchmark.tgz'}" in capsys.readouterr().out
    cfg = saved(DownloadConfig, root / "download_config.yaml")
    assert cfg == DownloadConfig(root=str(root), source=str(tmp_path / "mirror"), only=["sbd"],
                                 voc2012_md5=md5["voc2012"], sbd_md5=md5["sbd"].upper(),
                                 extract=False)  # fmt: skip
    # the saved config reruns (nothing fetched again); a flag turns extraction back on
    assert main(["data", "download", "--config", str(root / "download_config.yaml"),
                 "--extract"]) == 0  # fmt: skip
    assert (root / "benchmark_RELEASE" / "dataset" / "x.txt").read_bytes() == b"hi"
    assert saved(DownloadConfig, root / "download_config.yaml").extract is True


def test_check_flags_override_yaml_and_write_nothing(tmp_path: Path, capsys) -> None:
    root = make_synthetic_voc(tmp_path / "d", 8, size=(32, 24))  # 6 train, 2 val
    cfg_file = write_yaml(tmp_path / "c.yaml", {"root": str(root), "split": "train",
                                                "workers": 2})  # fmt: skip
    before = tree(tmp_path)
    assert main(["data", "check", "--config", str(cfg_file)]) == 0
    assert "6 images" in capsys.readouterr().out
    # 2 val images miss some classes: warnings only (exit 3)
    assert main(["data", "check", "--config", str(cfg_file), "--split", "val"]) == 3
    assert "2 images" in capsys.readouterr().out
    assert tree(tmp_path) == before


BAD = [
    (["synth", "--out", "{t}/o", "--num-classes", "1"], "num_classes (--num-classes)"),
    (["synth", "--out", "{t}/o", "--num-classes", "22"], "must lie in 2..21"),
    (["synth", "--out", "{t}/o", "--val-fraction", "1.5"], "val_fraction (--val-fraction)"),
    (["synth", "--out", "{t}/o", "--val-fraction", "-0.1"], "must lie in [0, 1), got -0.1"),
    (["synth", "--out", "{t}/o", "--size", "8", "40"], "size (--size)"),
    (["synth", "--out", "{t}/o", "--num", "0"], "num (--num) must be >= 1"),
    (["synth", "--out", "{t}/o", "--seed", "-1"], "seed (--seed) must be >= 0"),
    (["synth", "--out", "{t}/o", "--void-width", "-2"], "void_width (--void-width)"),
    (["synth"], "out (--out) is required"),
    (["prepare", "--voc", "{t}", "--sbd", "{t}", "--workers", "-1"], "workers (--workers)"),
    (["prepare", "--voc", "{t}", "--sbd", "{t}", "--num-classes", "1"], "num_classes"),
    (["prepare", "--sbd", "{t}"], "voc (--voc) is required"),
    (["download", "--root", "{t}/r", "--sbd-md5", "abc"], "sbd_md5 (--sbd-md5)"),
    (["download"], "root (--root) is required"),
    (["check", "--root", "{t}", "--workers", "-3"], "workers (--workers) must be >= 0"),
    (["check", "--root", "{t}", "--num-classes", "0"], "num_classes (--num-classes)"),
    (["synth", "--config", "{t}/bad.yaml"], "unknown setting(s) nmu"),
    (["synth", "--config", "{t}/typed.yaml"], "num: expected an integer, got 'many'"),
    (["download", "--config", "{t}/only.yaml"], "only: expected one of 'voc2012', 'sbd', got"),
    (["prepare", "--config", "{t}/missing.yaml"], "missing.yaml: config file not found"),
]


@pytest.mark.parametrize(("argv", "message"), BAD, ids=[" ".join(a[:2]) + "|" + m[:14]
                                                        for a, m in BAD])  # fmt: skip
def test_bad_values_name_the_setting(tmp_path: Path, capsys, argv, message) -> None:
    write_yaml(tmp_path / "bad.yaml", {"out": str(tmp_path / "o"), "nmu": 3})
    write_yaml(tmp_path / "typed.yaml", {"out": str(tmp_path / "o"), "num": "many"})
    write_yaml(tmp_path / "only.yaml", {"root": str(tmp_path / "r"), "only": ["vocc"]})
    assert main(["data", *(a.format(t=tmp_path) for a in argv)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deeplabv1 data: error: ") and message in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()


def test_console_entry_point_exit_status_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deeplabv1", "data", "synth", "--out", str(tmp_path / "o"),
         "--val-fraction", "2"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "val_fraction (--val-fraction) must lie in [0, 1), got 2.0" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()
