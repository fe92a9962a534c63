"""docs/reproduce.md, command by command, on synthetic data in the real layouts.

Every ``deeplabv1`` command of the document's bash blocks runs (shell variables expanded, globs
too; ``deeplabv1 data`` is skipped: it needs the real archives) in a folder holding what the
document expects: a synthetic VOC2012 root with train_aug / trainval_aug lists and labels, a
synthetic test root without labels, the authors' caffemodels as synthetic files in the
release's exact layout (``release_reference.release_caffemodel``, built from the release's
train prototxts, at 1/32 of the width), a synthetic ``VGG_ILSVRC_16_layers.caffemodel`` and the
packaged configs. The convert, eval and paper-table commands run exactly as written (eval at its
real test size, 513); only the training commands get flags appended (``TINY_TRAIN``: width 1/32,
one iteration of one image), as the document says. Each eval's comment names the paper's row and
number: the number must be the paper's and the row must be in the results it wrote;
``paper-table`` must list every row once per network, and the only thing that keeps a row of
the document's commands from the paper's side is the width this test substitutes.
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
TINY_TRAIN = ["--width", str(WIDTH), "--max-iter", "1", "--batch-size", "1", "--workers", "0",
              "--device", "cpu", "--progress", "false", "--tensorboard", "false",
              "--checkpoint-every", "0"]  # fmt: skip


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
    text = DOC.read_text()
    assert f"(`{' '.join(TINY_TRAIN)}`)" in " ".join(text.split())  # the page lists them all
    commands = doc_commands(text)
    assert sum(argv[0] == "eval" for argv, _ in commands) >= 24
    rows = []
    for argv, comment in commands:
        if argv[0] == "data":
            continue
        run = expand(argv) + (TINY_TRAIN if argv[0] == "train" else [])
        capsys.readouterr()
        assert main(run) == 0, f"deeplabv1 {' '.join(run)}: {capsys.readouterr().err[-2000:]}"
        if argv[0] == "eval":
            results = read_results(argv[argv.index("-o") + 1])
            assert results["config"]["test_size"] == 513  # as written: the released test size
        if argv[0] == "eval" and comment:
            name, published = comment.rsplit(" ", 1)
            split = argv[argv.index("--split") + 1]
            assert PAPER_MEAN_IOU[split][name] == float(published), comment
            arch = results["model"]["arch"]
            assert name in {method_name(arch, m == "crf") for m in results["methods"]}, comment
            rows.append((name, split, argv[argv.index("-o") + 1]))
        if argv[0] == "paper-table":
            table = capsys.readouterr().out
    covered = {(name, split) for split, names in PAPER_MEAN_IOU.items() for name in names}
    covered -= {(n, s) for n, s in covered if "7x7" in n or "4x4" in n}  # not released
    assert {(n, s) for n, s, _ in rows} == covered  # every released row has a command,
    assert len(rows) == 2 * len(covered)  # from both sources
    # paper-table: one line per network and method, every val row of the document in it; the
    # networks here are 1/32 wide, so each row is listed as not comparable for that reason only
    # (and the LargeFOV script's CRF set for its parameters too)
    assert "No result is comparable" in table
    width = "width 1/32 (the paper's networks are full width)"
    lines = [line for line in table.splitlines() if line.startswith("| DeepLab")]
    for name, split, out in rows:
        if split != "val":
            continue
        source = re.compile(rf"[| ]{re.escape(out)}/results\.json[ ,]")
        mine = [line for line in lines if line.startswith(f"| {name} | val |")
                and source.search(line)]  # fmt: skip
        assert len(mine) == 1, (name, out, mine)
        cells = [c.strip() for c in mine[0].split("|")[1:-1]]
        assert cells[5] == width, mine[0]
        if "CRF" in name:
            assert cells[4].split(":")[0] == f"{results_arch(name)} (paper)", mine[0]
    network_lines = [line for line in lines if "| - |" in line]
    assert len(network_lines) == 8  # 4 released + 4 trained networks, each once
    script = [line for line in lines if "largefov-run-densecrf" in line]
    assert len(script) == 1 and "not the paper's set of DeepLab-LargeFOV" in script[0]


def results_arch(name: str) -> str:
    """The arch of a paper row's name: "DeepLab-MSc-CRF-LargeFOV" -> "deeplab-msc-largefov"."""
    return name.replace("-CRF", "").lower()


def paper_results(arch="deeplab-msc-largefov", crf=None, ious=(63.0, 69.2), **changes) -> dict:
    """A results.json as eval writes it for a run like the paper's (VOC 2012 val, 21 classes,
    full width, test size 513, the released test network, the variant's CRF set), with
    ``changes`` (``"model.width": 0.5``, ``crf_iters=5``) applied."""
    from deeplabv1.crf.params import DEEPLAB_CRF_PARAMS
    from deeplabv1.data.palette import VOC_CLASSES

    results = {
        "model": {"arch": arch, "width": 1.0, "num_classes": 21, "class_names": list(VOC_CLASSES),
                  "weights": "models/x.pt", "weights_sha256": "ab" * 32,
                  "test_network": "release"},
        "data": {"root": "VOC2012", "layout": "voc", "split": "val", "val_fraction": None,
                 "num_images": 1449},
        "crf_params": (crf or DEEPLAB_CRF_PARAMS[arch]).to_dict(),
        "crf_iters": 10,
        "crf_normalization": "after",
        "config": {"test_size": 513},
        "num_images": 1449,
        "methods": {"network": {"mean_iou": ious[0]}, "crf": {"mean_iou": ious[1]}},
    }  # fmt: skip
    for key, value in changes.items():
        part, _, name = key.rpartition(".")
        (results[part] if part else results)[name] = value
    return results


def write_json(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(__import__("json").dumps(obj))
    return path


def test_paper_table_rows_and_errors(tmp_path, capsys):
    write_json(tmp_path / "a" / "results.json", paper_results())
    assert main(["paper-table", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "| DeepLab-MSc-LargeFOV | val | 1449 | 63.00 | 64.21 | -1.21 | - |" in out
    assert "| DeepLab-MSc-CRF-LargeFOV | val | 1449 | 69.20 | 68.70 | +0.50 | " in out
    assert "Not comparable" not in out
    assert "over all 1449" not in out  # the full val set: no note
    (tmp_path / "bad.json").write_text("{}")
    assert main(["paper-table", str(tmp_path / "bad.json")]) == 2
    assert "bad.json: not a results.json" in capsys.readouterr().err
    assert main(["paper-table", str(tmp_path / "missing.json")]) == 2
    (tmp_path / "w.json").write_bytes(b"PK\x03\x04\x80\x02torch")  # a checkpoint renamed
    assert main(["paper-table", str(tmp_path / "w.json")]) == 2
    assert "w.json: not a readable results.json (not UTF-8 text)" in capsys.readouterr().err


def test_paper_table_sets_only_like_beside_the_paper(tmp_path, capsys):
    """Own classes, a reduced width, another test size, the LargeFOV script's CRF set: listed
    apart with the reason, never beside the paper's number."""
    from deeplabv1.crf.params import RELEASE_CRF_PARAMS
    from deeplabv1.evaluate.paper import comparison_rows

    own = paper_results("deeplab-largefov", ious=(17.23, 20.0), **{
        "model.num_classes": 5, "model.class_names": ["background", "cat", "dog", "heron", "fish"],
        "model.width": 0.125, "data.layout": "folder", "num_images": 4})  # fmt: skip
    rows = comparison_rows(own)
    assert [r["paper"] for r in rows] == [None, None]
    reasons = "; ".join(rows[0]["not_comparable"])
    assert "5 classes" in reasons and "width 1/8" in reasons and "plain image folder" in reasons
    write_json(tmp_path / "own" / "results.json", own)
    assert main(["paper-table", str(tmp_path / "own")]) == 0
    out = capsys.readouterr().out
    assert "62.25" not in out and "67.64" not in out  # DeepLab-(CRF-)LargeFOV's val numbers
    assert "No result is comparable" in out and "| DeepLab-LargeFOV | val | 4 | 17.23 |" in out

    script = paper_results("deeplab-largefov", crf=RELEASE_CRF_PARAMS["largefov-run-densecrf"],
                           ious=(62.0, 66.0))  # fmt: skip
    network, crf = comparison_rows(script)
    assert network["paper"] == 62.25 and not network["not_comparable"]
    assert crf["paper"] is None and "largefov-run-densecrf" in crf["not_comparable"][0]
    small = paper_results("deeplab-largefov", **{"config.test_size": 0})
    assert all(r["paper"] is None for r in comparison_rows(small))
    assert "test size minimal padding" in comparison_rows(small)[0]["not_comparable"][0]
    rescored = paper_results("deeplab-largefov", **{"model.scores": "s", "model.test_size": 65})
    assert "test size 65" in comparison_rows(rescored)[0]["not_comparable"][0]  # the scores' size
    iters = paper_results("deeplab-largefov", crf_iters=5)
    assert [r["paper"] is None for r in comparison_rows(iters)] == [False, True]


def test_paper_table_lists_one_network_once(tmp_path, capsys):
    """eval/X and eval/X-crf evaluate the same network: its row appears once, naming both."""
    plain = paper_results("deeplab-largefov", ious=(62.0, 0.0))
    del plain["methods"]["crf"]
    plain["crf_params"] = None
    a = write_json(tmp_path / "eval" / "x" / "results.json", plain)
    b = write_json(tmp_path / "eval" / "x-crf" / "results.json",
                   paper_results("deeplab-largefov", ious=(62.0, 66.0)))  # fmt: skip
    other = paper_results("deeplab-largefov", ious=(61.0, 65.0), **{"model.weights_sha256": "cd"})
    c = write_json(tmp_path / "eval" / "y" / "results.json", other)
    assert main(["paper-table", str(a), str(b), str(c)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| Deep")]
    network = [line for line in lines if line.startswith("| DeepLab-LargeFOV |")]
    assert len(network) == 2  # x (from both files) and y
    assert f"{a}, {b}" in network[0] and "62.00" in network[0]
    assert str(c) in network[1] and "61.00" in network[1]
    assert sum(line.startswith("| DeepLab-CRF-LargeFOV |") for line in lines) == 2
