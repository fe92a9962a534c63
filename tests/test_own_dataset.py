"""End to end on a plain images/ + masks/ folder with 5 named classes: train, eval, predict, plot,
Segmenter; the mask warnings on 0/255 masks; fine-tuning from a checkpoint with other classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deeplabv1.checkpoint import load_checkpoint, save_checkpoint
from deeplabv1.cli import main
from deeplabv1.data.palette import VOC_COLORMAP
from deeplabv1.data.synth import make_synthetic_folder
from deeplabv1.models import build_model
from deeplabv1.predict.segmenter import Segmenter
from deeplabv1.train.build import build_training_model
from deeplabv1.train.config import TrainConfig

NAMES = ["background", "cat", "dog", "heron", "fish"]
CLASSES = ["background", {"name": "cat", "color": "#ff0000"}, "dog",
           {"name": "heron", "color": [0, 0, 255]}, "fish"]  # fmt: skip
TINY = ["--width", "0.0625", "--crop-size", "41", "--batch-size", "2", "--workers", "0",
        "--progress", "false", "--tensorboard", "false", "--log-every", "1"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(dataset root, final.pt) of a 2-iteration run on 12 images, a quarter held out."""
    tmp = tmp_path_factory.mktemp("own")
    root = make_synthetic_folder(tmp / "data", 12, size=(48, 40), classes=CLASSES)
    out = tmp / "run"
    argv = ["train", "--data-root", str(root), "--val-fraction", "0.25", "--max-iter", "2",
            "--out-dir", str(out), *TINY]  # fmt: skip
    assert main(argv) == 0
    return root, out / "final.pt"


def test_the_checkpoint_carries_the_dataset_classes(trained, capsys) -> None:
    root, final = trained
    ckpt = load_checkpoint(final)
    assert ckpt["num_classes"] == 5 and ckpt["class_names"] == NAMES
    assert ckpt["palette"] == [[0, 0, 0], [255, 0, 0], VOC_COLORMAP[2].tolist(), [0, 0, 255],
                               VOC_COLORMAP[4].tolist()]  # fmt: skip
    assert (ckpt["config"]["split"], ckpt["config"]["num_classes"]) == ("train", 5)


def test_eval_table_is_headed_by_the_class_names(trained, tmp_path, capsys) -> None:
    root, final = trained
    argv = ["eval", "--weights", str(final), "--data", str(root), "--val-fraction", "0.25",
            "--device", "cpu", "--progress", "false", "-o", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    md = (tmp_path / "results.md").read_text()
    assert "| Method | bkg | cat | dog | heron | fish | mean |" in md
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["num_images"] == 3  # the held-out quarter of 12
    assert list(results["methods"]["network"]["per_class_iou"]) == NAMES
    assert results["model"]["class_names"] == NAMES
    # plot: the per-class bars are labelled with the same names
    from deeplabv1.cli.plot import collect

    _, per_class, _ = collect([str(tmp_path / "results.json")])
    assert list(next(iter(per_class.values()))) == NAMES


def test_saved_scores_and_crf_search_on_the_folder(trained, tmp_path) -> None:
    root, final = trained
    fraction = ["--data", str(root), "--val-fraction", "0.25", "--progress", "false"]
    scores = tmp_path / "scores"
    argv = ["eval", "--weights", str(final), "--device", "cpu", "--save-scores", str(scores),
            "-o", str(tmp_path / "e1"), *fraction]  # fmt: skip
    assert main(argv) == 0
    assert main(["eval", "--scores", str(scores), "-o", str(tmp_path / "e2"), *fraction]) == 0
    results = json.loads((tmp_path / "e2" / "results.json").read_text())
    assert list(results["methods"]["network"]["per_class_iou"]) == NAMES  # from meta.json
    grid = ["--w1-min", "5", "--w1-max", "5", "--sa-min", "50", "--sa-max", "50", "--sb-min", "3",
            "--sb-max", "3", "--refine-rounds", "0", "--num-images", "2"]  # fmt: skip
    argv = ["crf-search", "--scores", str(scores), "-o", str(tmp_path / "s"), *grid, *fraction]
    assert main(argv) == 0
    best = json.loads((tmp_path / "s" / "best.json").read_text())
    assert best["setup"]["num_images"] == 2 and best["num_points"] == 1


def _forced(final: Path, cls: int, path: Path) -> Path:
    """A copy of the checkpoint whose fc8 bias makes every pixel class ``cls``."""
    ckpt = load_checkpoint(final)
    state = dict(ckpt["model"])
    bias = torch.zeros_like(state["fc8.bias"])
    bias[cls] = 100.0
    state["fc8.bias"] = bias
    save_checkpoint(path, state, arch=ckpt["arch"], num_classes=ckpt["num_classes"],
                    width=ckpt["width"], class_names=ckpt["class_names"],
                    palette=ckpt["palette"])  # fmt: skip
    return path


def test_predict_legend_overlay_and_segmenter_use_the_names(trained, tmp_path) -> None:
    from deeplabv1.viz.figures import overlay

    root, final = trained
    model = _forced(final, 3, tmp_path / "heron.pt")
    image = root / "images" / "synth_00000.png"
    assert main(["predict", str(image), "--weights", str(model), "-o", str(tmp_path / "p")]) == 0
    summary = json.loads((tmp_path / "p" / "predict_summary.json").read_text())
    assert summary["images"][0]["classes"] == {"net": ["heron"]}
    labels = Image.open(tmp_path / "p" / "synth_00000_net.png")
    assert np.all(np.asarray(labels) == 3) and labels.getpalette()[9:12] == [0, 0, 255]
    shown = np.asarray(Image.open(tmp_path / "p" / "synth_00000_net_overlay.png").convert("RGB"))
    rgb = np.asarray(Image.open(image).convert("RGB"))
    seg = Segmenter.from_checkpoint(model)
    assert seg.class_names == tuple(NAMES) and seg.palette[3] == [0, 0, 255]
    # the legend swatch is the checkpoint's colour and the text its name, not VOC's "bird"
    assert shown[5, 5].tolist() == [0, 0, 255]
    lab = np.full(rgb.shape[:2], 3, np.uint8)
    assert np.array_equal(shown, overlay(rgb, lab, class_names=NAMES, colormap=seg.colormap))
    assert not np.array_equal(shown, overlay(rgb, lab, colormap=seg.colormap))  # VOC names


def test_train_warns_about_0_255_masks(tmp_path, capsys) -> None:
    root = make_synthetic_folder(tmp_path / "binary", 4, size=(48, 40))
    for mask in sorted((root / "masks").glob("*.png")):
        binary = np.where(np.asarray(Image.open(mask)) == 0, 0, 255).astype(np.uint8)
        Image.fromarray(binary, mode="L").save(mask)
    argv = ["train", "--data-root", str(root), "--split", "all", "--num-classes", "2",
            "--max-iter", "1", "--out-dir", str(tmp_path / "run"), *TINY]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "warning: class(es) never present in the 4 training masks: 1 (class1)" in out
    assert "warning: void (255) covers" in out and "(no pixel of a class other than 0)" in out
    # a value beyond the classes stops the run before training, naming the mask
    Image.fromarray(np.full((40, 48), 7, np.uint8), mode="L").save(
        root / "masks" / "synth_00002.png"
    )
    assert main([*argv, "--out-dir", str(tmp_path / "run2")]) == 2
    assert "synth_00002.png: label values [7] outside 0..1 and 255" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists()


def test_msc_fine_tuning_to_other_classes_keeps_the_trunk(tmp_path) -> None:
    src = build_model("deeplab-msc-largefov", width=0.0625)  # a 21-class "VOC" model
    with torch.no_grad():
        for p in src.parameters():
            p.uniform_(-1, 1)
    path = tmp_path / "voc.pt"
    save_checkpoint(path, src.state_dict(), arch=src.arch, num_classes=21, width=0.0625)
    root = make_synthetic_folder(tmp_path / "d", 2, size=(32, 32), classes=CLASSES)
    cfg = TrainConfig(arch="deeplab-msc-largefov", width=0.0625, init=str(path),
                      data_root=str(root), seed=3)  # fmt: skip
    model, notes = build_training_model(cfg)
    heads = ("fc8", "data_ms", "pool1_ms", "pool2_ms", "pool3_ms", "pool4_ms")
    assert notes[1] == (f"initialised from {path}: trunk copied; classifier re-initialised as "
                        f"released for 5 classes ({', '.join(heads)}; the checkpoint has 21 "
                        "classes, this run 5)")  # fmt: skip
    torch.manual_seed(3)  # the release initialisation of a fresh 5-class network, same seed
    fresh = build_model("deeplab-msc-largefov", width=0.0625, num_classes=5).state_dict()
    for name, value in model.state_dict().items():
        expected = fresh[name] if name.split(".")[0] in heads else src.state_dict()[name]
        assert torch.equal(value, expected), name
    assert model.class_names == NAMES


def test_same_number_of_other_classes_renews_the_classifier_too(tmp_path) -> None:
    src = build_model("deeplab-largefov", width=0.0625, num_classes=5)
    path = tmp_path / "other.pt"
    save_checkpoint(path, src.state_dict(), arch=src.arch, num_classes=5, width=0.0625,
                    class_names=["bg", "a", "b", "c", "d"])  # fmt: skip
    root = make_synthetic_folder(tmp_path / "d", 2, size=(32, 32), classes=CLASSES)
    model, notes = build_training_model(TrainConfig(width=0.0625, init=str(path),
                                                    data_root=str(root), seed=1))  # fmt: skip
    assert notes[1].endswith("(fc8; the checkpoint's classes are bg, a, b, c, d)")
    assert not torch.equal(model.fc8.weight, src.fc8.weight)
    assert torch.equal(model.conv5_3.weight, src.conv5_3.weight)
    # the same classes (and a checkpoint that names none) keep the classifier
    save_checkpoint(path, src.state_dict(), arch=src.arch, num_classes=5, width=0.0625)
    model, _ = build_training_model(TrainConfig(width=0.0625, init=str(path), data_root=str(root)))
    assert torch.equal(model.fc8.weight, src.fc8.weight)


def test_old_checkpoints_get_generic_names_in_eval(tmp_path) -> None:
    root = make_synthetic_folder(tmp_path / "d", 2, size=(32, 32))  # no classes file
    model = build_model("deeplab-largefov", width=0.0625, num_classes=6)
    save_checkpoint(tmp_path / "m.pt", model.state_dict(), arch=model.arch, num_classes=6,
                    width=0.0625)  # fmt: skip
    argv = ["eval", "--weights", str(tmp_path / "m.pt"), "--data", str(root), "--split", "all",
            "--device", "cpu", "--progress", "false", "-o", str(tmp_path / "e")]  # fmt: skip
    assert main(argv) == 0
    md = (tmp_path / "e" / "results.md").read_text()
    assert "| Method | class0 | class1 | class2 | class3 | class4 | class5 | mean |" in md
    (root / "classes.txt").write_text("a\nb\n")
    assert main(argv) == 2  # the dataset names 2 classes, the model predicts 6


def test_class_names_override_a_classes_file_naming_another_count(tmp_path, capsys) -> None:
    """docs/data.md: `--class-names` names the classes "without a classes file, or to override
    it". Naming another number of classes than the file was refused, blaming a --num-classes
    never given (`names 5 classes, but num_classes (--num-classes) is 2`), and eval then
    refused the model the run wrote; the names now override the file in train and eval."""
    root = make_synthetic_folder(tmp_path / "d", 4, size=(48, 40), classes=CLASSES)
    for mask in sorted((root / "masks").glob("*.png")):  # now a binary task: 0 or 1, 255 void
        labels = np.asarray(Image.open(mask))
        Image.fromarray(np.where(labels == 255, 255, labels > 0).astype(np.uint8)).save(mask)
    out = tmp_path / "run"
    argv = ["train", "--data-root", str(root), "--split", "all", "--max-iter", "1",
            "--class-names", "background", "thing", "--out-dir", str(out), *TINY]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    assert "2 classes (--class-names): background, thing" in capsys.readouterr().out
    ckpt = load_checkpoint(out / "final.pt")
    assert (ckpt["num_classes"], ckpt["class_names"]) == (2, ["background", "thing"])
    argv = ["eval", "--weights", str(out / "final.pt"), "--data", str(root), "--split", "all",
            "--device", "cpu", "--progress", "false", "-o", str(tmp_path / "e")]  # fmt: skip
    assert main(argv) == 0
    note = (f"note: {root / 'classes.yaml'} names 5 classes, the model predicts 2 "
            "(background, thing)")
    assert note in capsys.readouterr().err
    assert "| Method | bkg | thing | mean |" in (tmp_path / "e" / "results.md").read_text()
    # the names still have to agree with --num-classes when both are given
    assert main(["train", "--data-root", str(root), "--split", "all", "--num-classes", "3",
                 "--class-names", "a", "b", "--out-dir", str(tmp_path / "r2"), *TINY]) == 2
    assert "class_names (--class-names): 2 class names for 3 classes" in capsys.readouterr().err
