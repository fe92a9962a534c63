"""docs/reproduce.md, command by command, on synthetic data in the real layouts.

Every ``deeplabv1`` command of the document's bash blocks runs as written (shell variables
expanded, globs too; ``deeplabv1 data`` is skipped: it needs the real archives) in a folder
holding what the document expects: a synthetic VOC2012 root with train_aug / trainval_aug lists
and labels, a synthetic test root without labels, the authors' caffemodels as synthetic files in
the release's exact layout (``release_reference.release_caffemodel``, built from the release's
train prototxts), a synthetic ``VGG_ILSVRC_16_layers.caffemodel`` and the packaged configs.
Training commands get tiny-run flags appended (width 1/32, one iteration of one image), eval
commands a test size of 65 (the images are 64 x 48; the full-size test procedure is checked
pixel for pixel by test_release_alignment.py). Each
eval's comment names the paper's row and number: the number must be the paper's and the row must
be in the results it wrote; ``paper-table`` must print every row beside its published number.
"""

from __future__ import annotations

import glob
import re
import shlex
import shutil

import numpy as np
import pytest
from release_files import REPO, VARIANTS, phase_layers, read_release, release_dir
from release_reference import random_weights, release_caffemodel, vgg16_caffemodel

from deeplabv1.cli import main
from deeplabv1.data.synth import make_synthetic_voc
from deeplabv1.data.voc import write_ids
from deeplabv1.evaluate.paper import PAPER_MEAN_IOU, read_results
from deeplabv1.evaluate.report import method_name

DOC = REPO / "docs" / "reproduce.md"
WIDTH = 1 / 32
TINY = {  # flags appended to keep the run small (the images are 64 x 48)
    "train": ["--width", str(WIDTH), "--max-iter", "1", "--batch-size", "1", "--workers", "0",
              "--device", "cpu", "--progress", "false", "--tensorboard", "false",
              "--checkpoint-every", "0"],
    "eval": ["--test-size", "65", "--device", "cpu", "--progress", "false"],
}  # fmt: skip


def doc_commands(text: str) -> list[tuple[list[str], str]]:
    """(argv, trailing comment) of every deeplabv1 command in the bash blocks, variables and
    globs expanded as the shell would (globs at run time: see ``expand``)."""
    out, env = [], {}
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if m := re.fullmatch(r"([A-Z_]+)=(\S+)", line):
                env[m[1]] = m[2]
                continue
            if not line.startswith("deeplabv1 "):
                assert not line, f"unexpected line in a bash block: {line!r}"
                continue
            command, _, comment = line.partition(" #")
            command = re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: env[m[1]], command)
            out.append((shlex.split(command)[1:], comment.strip()))
    return out


def expand(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        out += sorted(glob.glob(arg)) if "*" in arg else [arg]
    return out


def synthetic_voc(root, n, *, test=False):
    make_synthetic_voc(root, n, size=(64, 48), seed=3, val_fraction=0.0 if test else 0.4,
                       num_classes=21)  # the VOC classes, as the released models'  # fmt: skip
    lists = root / "ImageSets" / "Segmentation"
    if test:  # the test archive: images and a test list, no labels
        ids = (lists / "trainval.txt").read_text().split()
        write_ids(lists / "test.txt", ids)
        shutil.rmtree(root / "SegmentationClass")
        return
    shutil.copytree(root / "SegmentationClass", root / "SegmentationClassAug")
    shutil.copy(lists / "train.txt", lists / "train_aug.txt")
    shutil.copy(lists / "trainval.txt", lists / "trainval_aug.txt")


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    release_dir()
    synthetic_voc(tmp_path / "data" / "VOCdevkit" / "VOC2012", 5)
    synthetic_voc(tmp_path / "data" / "test" / "VOCdevkit" / "VOC2012", 1, test=True)
    rng = np.random.default_rng(5)
    for variant, folder in VARIANTS.items():
        test_net = phase_layers(read_release(variant, "test"), "TEST")
        train_net = phase_layers(read_release(variant, "train"), "TRAIN")
        solver2 = read_release(variant, "solver2")
        for name in ("train_iter_6000", f"train2_iter_{solver2.one('max_iter')}"):
            weights = random_weights(test_net, WIDTH, rng)
            path = tmp_path / "models" / folder / f"{name}.caffemodel"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(release_caffemodel(train_net, weights, folder))
    (tmp_path / "VGG_ILSVRC_16_layers.caffemodel").write_bytes(vgg16_caffemodel(WIDTH, rng))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_command_of_reproduce_md(workspace, capsys):
    commands = doc_commands(DOC.read_text())
    assert sum(argv[0] == "eval" for argv, _ in commands) >= 24
    rows = []
    for argv, comment in commands:
        if argv[0] == "data":
            continue
        run = expand(argv) + TINY.get(argv[0], [])
        capsys.readouterr()
        assert main(run) == 0, f"deeplabv1 {' '.join(run)}: {capsys.readouterr().err[-2000:]}"
        if argv[0] == "eval" and comment:
            name, published = comment.rsplit(" ", 1)
            split = argv[argv.index("--split") + 1]
            assert PAPER_MEAN_IOU[split][name] == float(published), comment
            results = read_results(argv[argv.index("-o") + 1])
            arch = results["model"]["arch"]
            assert name in {method_name(arch, m == "crf") for m in results["methods"]}, comment
            rows.append((name, split))
        if argv[0] == "paper-table":
            table = capsys.readouterr().out
    covered = {(name, split) for split, names in PAPER_MEAN_IOU.items() for name in names}
    covered -= {(n, s) for n, s in covered if "7x7" in n or "4x4" in n}  # not released
    assert set(rows) == covered  # every released row has a command, from both sources
    assert len(rows) == 2 * len(covered)
    for name, split in rows:
        if split == "val":
            published = f"{PAPER_MEAN_IOU[split][name]:.2f}"
            assert re.search(rf"\| {re.escape(name)} \| val \| \d+ \| [\d.]+ \| {published} \|",
                             table), name  # fmt: skip


def test_paper_table_rows_and_errors(tmp_path, capsys):
    results = {
        "model": {"arch": "deeplab-msc-largefov"},
        "data": {"split": "val"},
        "num_images": 1449,
        "methods": {"network": {"mean_iou": 63.0}, "crf": {"mean_iou": 69.2}},
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "results.json").write_text(__import__("json").dumps(results))
    assert main(["paper-table", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "| DeepLab-MSc-LargeFOV | val | 1449 | 63.00 | 64.21 | -1.21 |" in out
    assert "| DeepLab-MSc-CRF-LargeFOV | val | 1449 | 69.20 | 68.70 | +0.50 |" in out
    assert "over all 1449" not in out  # the full val set: no note
    (tmp_path / "bad.json").write_text("{}")
    assert main(["paper-table", str(tmp_path / "bad.json")]) == 2
    assert "bad.json: not a results.json" in capsys.readouterr().err
    assert main(["paper-table", str(tmp_path / "missing.json")]) == 2
