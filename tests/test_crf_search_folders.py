"""`deeplabv1 crf-search` on any model's plain folders (images, <stem>.npy scores, <stem>.png
labels), 5 classes, where the CRF clearly helps: the search finds the optimum and the gain over
the scores' arg-max that an exhaustive evaluation through the pydensecrf drop-in gives."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from robustness_tools import assert_one_line_error

from deeplabv1.cli import main
from deeplabv1.cli.crf_files import upsample_scores
from deeplabv1.crf import densecrf as dcrf
from deeplabv1.crf import get_num_threads, set_num_threads

NUM_CLASSES = 5
COLOURS = np.array([[30, 30, 30], [220, 40, 40], [40, 200, 60], [50, 60, 220], [230, 220, 50]])
GRID = {"w1": (3.0, 8.0), "sa": (5.0, 20.0), "sb": (10.0, 40.0)}
W2 = SG = 1.0
ITERS = 5
GRID_FLAGS = ["--w1-min", "3", "--w1-max", "8", "--w1-step", "5", "--sa-min", "5", "--sa-max",
              "20", "--sa-step", "15", "--sb-min", "10", "--sb-max", "40", "--sb-step", "30",
              "--w2", "1", "--sg", "1", "--iters", str(ITERS), "--refine-rounds", "0",
              "--progress", "false"]  # fmt: skip


def _scene(rng, h=40, w=56):
    """Ellipses of classes 1-4 on background 0, each class its own colour (plus noise), a void
    band inside each object's rim; coarse scores = class fractions of 8 x 8 cells plus noise,
    so their zoom is blocky where the true boundaries follow the colour edges."""
    labels = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for c in rng.permutation(np.arange(1, NUM_CLASSES))[:3]:
        cy, cx, ry, rx = rng.uniform(8, h - 8), rng.uniform(8, w - 8), *rng.uniform(5, 14, 2)
        labels[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = c
    rgb = np.clip(np.rint(COLOURS[labels] + rng.normal(0, 10, (h, w, 3))), 0, 255).astype(np.uint8)
    hc, wc = -(-h // 8), -(-w // 8)
    cells = np.zeros((hc * 8, wc * 8, NUM_CLASSES))
    cells[..., 0] = 1
    cells[:h, :w] = np.eye(NUM_CLASSES)[labels]
    frac = cells.reshape(hc, 8, wc, 8, NUM_CLASSES).mean((1, 3))
    coarse = (4 * frac + rng.normal(0, 0.6, frac.shape)).transpose(2, 0, 1).astype(np.float32)
    inner = np.zeros_like(labels)
    inner[1:-1, 1:-1] = labels[:-2, 1:-1]
    void = (inner != labels) & (labels > 0) & (rng.random(labels.shape) < 0.5)
    return rgb, np.where(void, 255, labels).astype(np.uint8), coarse


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """img/ + full/ ((C, H, W) scores at the image size) + low/ ((h, w, C) coarse scores) +
    lab/ (palette and grey PNGs); one image without scores, one pair without a label."""
    root = tmp_path_factory.mktemp("folders")
    for name in ("img", "full", "low", "lab"):
        (root / name).mkdir()
    rng = np.random.default_rng(0)
    truth = {}
    for i in range(6):
        stem = f"photo_{i}"
        rgb, labels, coarse = _scene(rng)
        Image.fromarray(rgb).save(root / "img" / f"{stem}.jpg" if i == 0 else
                                  root / "img" / f"{stem}.png", quality=100)  # fmt: skip
        rgb = np.asarray(Image.open(next((root / "img").glob(f"{stem}.*"))).convert("RGB"))
        png = Image.fromarray(labels)  # grey class indices; half of them as palette PNGs
        if i % 2:
            png = png.convert("P")
            png.putpalette(list(range(256)) * 3)
        png.save(root / "lab" / f"{stem}.png")
        np.save(root / "full" / f"{stem}.npy", upsample_scores(coarse, *labels.shape, 8))
        np.save(root / "low" / f"{stem}.npy", coarse.transpose(1, 2, 0))
        truth[stem] = rgb, labels
    Image.fromarray(rgb).save(root / "img" / "no_scores.png")
    for name in ("img", "full", "low"):  # a pair without a label file
        source = root / name / "photo_5"
        (root / name / f"no_label{'.npy' if name != 'img' else '.png'}").write_bytes(
            next(source.parent.glob("photo_5.*")).read_bytes())  # fmt: skip
    return root, truth


@pytest.fixture
def one_thread():
    """The engine on one thread, as in the worker processes (the same summation order)."""
    before = get_num_threads()
    set_num_threads(1)
    yield
    set_num_threads(before)


def _mean_iou(preds, gts):
    """Mean over classes present in either of |pred & gt| / |pred | gt|, void pixels ignored."""
    ious = []
    for c in range(NUM_CLASSES):
        inter = sum(((p == c) & (g == c)).sum() for p, g in zip(preds, gts))
        union = sum((((p == c) | (g == c)) & (g != 255)).sum() for p, g in zip(preds, gts))
        if union:
            ious.append(inter / union)
    return 100 * float(np.mean(ious))


def _exhaustive(root, truth):
    """mean IoU of the unary and of every grid point, through the pydensecrf drop-in."""
    stems = sorted(truth)
    scores = {s: np.load(root / "full" / f"{s}.npy") for s in stems}
    gts = [truth[s][1] for s in stems]
    unary = _mean_iou([scores[s].argmax(0) for s in stems], gts)
    points = {}
    for w1, sa, sb in itertools.product(*GRID.values()):
        preds = []
        for s in stems:
            rgb, c, (h, w) = truth[s][0], NUM_CLASSES, truth[s][1].shape
            d = dcrf.DenseCRF2D(w, h, c)
            d.setUnaryEnergy(np.ascontiguousarray(-scores[s].reshape(c, -1)))
            d.addPairwiseBilateral(sxy=sa, srgb=sb, rgbim=rgb, compat=w1,
                                   normalization=dcrf.NORMALIZE_AFTER)  # fmt: skip
            d.addPairwiseGaussian(sxy=SG, compat=W2, normalization=dcrf.NORMALIZE_AFTER)
            preds.append(np.array(d.inference(ITERS)).reshape(c, h, w).argmax(0))
        points[(w1, sa, sb)] = _mean_iou(preds, gts)
    return unary, points


def _argv(root, scores, out, *extra):
    return ["crf-search", "--image-dir", str(root / "img"), "--scores-dir", str(root / scores),
            "--label-dir", str(root / "lab"), *GRID_FLAGS, "-o", str(out), *extra]  # fmt: skip


def _records(out):
    lines = (out / "points.jsonl").read_text().splitlines()
    return {(r["w1"], r["sa"], r["sb"]): r["mean_iou"] for r in map(json.loads, lines)}


def test_search_finds_the_known_optimum_and_gain(folders, tmp_path, capsys, one_thread):
    root, truth = folders
    unary, points = _exhaustive(root, truth)
    best = max(points, key=lambda p: (points[p], tuple(-v for v in p)))
    assert points[best] - unary > 20  # the CRF clearly helps on these scores
    assert len({round(v, 2) for v in points.values()}) > 4  # and the grid is not flat
    out = tmp_path / "search"
    assert main(_argv(root, "full", out)) == 0
    stdout, err = capsys.readouterr()
    assert "no_scores" in err and "no_label" in err  # partners missing: reported by name
    got = _records(out)
    assert set(got) == set(points)
    for p, value in points.items():
        assert got[p] == pytest.approx(value, abs=1e-3)
    result = json.loads((out / "best.json").read_text())
    assert (result["best"]["w1"], result["best"]["sa"], result["best"]["sb"]) == best
    assert result["unary"]["mean_iou"] == pytest.approx(unary, abs=1e-3)
    assert result["gain"] == pytest.approx(points[best] - unary, abs=2e-3)
    assert result["setup"]["num_images"] == 6 and result["setup"]["num_classes"] == NUM_CLASSES
    assert f"{points[best] - unary:+.2f} points" in (out / "search.md").read_text()
    assert f"{points[best] - unary:+.2f} over the scores' arg-max" in stdout
    # interrupted and resumed: only the missing points run; without --resume: refused
    from deeplabv1.io import atomic_write_text, output_rules

    lines = (out / "points.jsonl").read_text().splitlines()
    with output_rules(command="crf-search"):  # what an interrupted search leaves: its own file
        atomic_write_text(out / "points.jsonl", "\n".join(lines[:5]) + "\n")
    assert main(_argv(root, "full", out, "--resume")) == 0
    assert _records(out) == got
    assert main(_argv(root, "full", out)) == 2
    assert_one_line_error(capsys.readouterr().err, "crf-search", "points.jsonl", "--resume")


def test_low_resolution_channels_last_scores_in_processes_give_the_same_search(
    folders, tmp_path, one_thread
):
    root, _ = folders
    assert main(_argv(root, "full", tmp_path / "full")) == 0
    low = _argv(root, "low", tmp_path / "low", "--upsample", "8", "--channels-last", "--jobs", "2")
    assert main(low) == 0
    assert _records(tmp_path / "low") == _records(tmp_path / "full")


_BLOCK_TORCH = """import os
with open(os.environ["TORCH_IMPORTS"], "a") as f:
    f.write(f"{os.getpid()}\\n")
raise ImportError("torch is blocked by test_crf_search_folders")
"""


def test_folder_search_never_imports_torch(folders, tmp_path):
    """The whole command, with 2 worker processes, while importing torch fails and is
    recorded (a stand-in package first on the path)."""
    root, _ = folders
    block = tmp_path / "block" / "torch"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text(_BLOCK_TORCH)
    env = dict(os.environ, TORCH_IMPORTS=str(tmp_path / "torch_imports.txt"),
               PYTHONPATH=os.pathsep.join([str(block.parent), os.environ.get("PYTHONPATH", "")]),
               DEEPLABV1_CRF_NUMBA="1")  # fmt: skip
    argv = _argv(root, "low", tmp_path / "s", "--upsample", "8", "--channels-last", "--jobs", "2")
    run = subprocess.run([sys.executable, "-m", "deeplabv1", *argv], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "over the scores' arg-max" in run.stdout
    assert not (tmp_path / "torch_imports.txt").exists()


def test_a_bad_item_is_skipped_and_bad_folders_are_one_line(folders, tmp_path, capsys):
    root, truth = folders
    bad = tmp_path / "bad"
    for name in ("img", "full", "lab"):
        (bad / name).mkdir(parents=True)
        for stem in ("photo_0", "photo_1"):
            src = next((root / name).glob(f"{stem}.*"))
            (bad / name / src.name).write_bytes(src.read_bytes())
    runs = iter(range(100))

    def skips(*fragments):
        """photo_1 is reported in one line and left out; the search runs on photo_0."""
        out = tmp_path / f"out{next(runs)}"
        assert main(_argv(bad, "full", out)) == 1
        err = capsys.readouterr().err
        assert "Traceback" not in err, err
        lines = [line for line in err.splitlines() if "skipped" in line]
        assert lines[0].startswith("deeplabv1 crf-search: skipped "), err
        assert all(f in lines[0] for f in fragments), lines[0]
        assert lines[1] == "deeplabv1 crf-search: 1 image(s) skipped (unreadable): photo_1"
        assert json.loads((out / "best.json").read_text())["setup"]["num_images"] == 1
        assert "Left out (unreadable): photo_1." in (out / "search.md").read_text()

    def fails(*fragments, argv=None):
        assert main(argv or _argv(bad, "full", tmp_path / "out")) == 2
        assert_one_line_error(capsys.readouterr().err, "crf-search", *fragments)
        assert not (tmp_path / "out").exists()

    labels = truth["photo_1"][1].copy()
    labels[0, 0] = 7  # a class the 5-class scores do not have
    Image.fromarray(labels).save(bad / "lab" / "photo_1.png")
    skips(str(bad / "lab" / "photo_1.png"), "7")
    labels[0, 0] = 0
    Image.fromarray(labels[:-1]).save(bad / "lab" / "photo_1.png")
    skips(str(bad / "lab" / "photo_1.png"), "39 x 56", "40 x 56")
    Image.fromarray(truth["photo_1"][1]).save(bad / "lab" / "photo_1.png")
    np.save(bad / "full" / "photo_1.npy", np.zeros((4, 40, 56), np.float32))
    skips(str(bad / "full" / "photo_1.npy"), "4 classes")
    np.save(bad / "full" / "photo_1.npy", np.zeros((5, 5, 7), np.float32))
    skips(str(bad / "full" / "photo_1.npy"), "--upsample")
    np.save(bad / "full" / "photo_1.npy", np.load(root / "full" / "photo_1.npy"))
    image = bad / "img" / "photo_1.png"
    whole = image.read_bytes()
    image.write_bytes(whole[: len(whole) // 2])  # a truncated image
    skips(str(image), "cannot read image")
    # nothing usable left: one error line, no folder left behind
    (bad / "img" / "photo_0.png").write_bytes(whole[:100])
    fails("no usable image left", str(bad / "img"))
    (tmp_path / "out").mkdir()  # a folder of the user's: left as it was (empty)
    assert main(_argv(bad, "full", tmp_path / "out")) == 2
    assert list((tmp_path / "out").iterdir()) == []
    (tmp_path / "out").rmdir()
    capsys.readouterr()
    fails("--label-dir", argv=_argv(bad, "full", tmp_path / "out")[:5] + GRID_FLAGS)
    fails("--data", argv=_argv(bad, "full", tmp_path / "out", "--data", str(bad)))
    fails("--scores-dir", str(bad / "full"), argv=_argv(bad, "full", bad / "full"))


def test_probabilities_with_exact_filtering(folders, tmp_path):
    """Softmax outputs (--probabilities) and --method dense: the point equals the exact
    (O(N^2)) CRF of deeplab_crf on the probabilities, scored independently (24 x 32 crops)."""
    import torch

    from deeplabv1.crf import CRFParams, deeplab_crf

    root, truth = folders
    for name in ("img", "lab", "prob"):
        (tmp_path / name).mkdir()
    cases = {}
    for s in sorted(truth)[:2]:
        rgb, labels = truth[s][0][:24, :32], truth[s][1][:24, :32]
        scores = torch.from_numpy(np.load(root / "full" / f"{s}.npy")[:, :24, :32])
        cases[s] = rgb, labels, torch.softmax(scores, 0).numpy()
        Image.fromarray(rgb).save(tmp_path / "img" / f"{s}.png")
        Image.fromarray(labels).save(tmp_path / "lab" / f"{s}.png")
        np.save(tmp_path / "prob" / f"{s}.npy", cases[s][2])
    argv = _argv(tmp_path, "prob", tmp_path / "out", "--probabilities", "--method", "dense",
                 "--w1-max", "3", "--sa-max", "5", "--sb-max", "10")  # fmt: skip
    assert main(argv) == 0
    (point, got), *others = _records(tmp_path / "out").items()
    assert point == (3.0, 5.0, 10.0) and not others
    params = CRFParams(*point, W2, SG)
    preds = [deeplab_crf(p, rgb, params, ITERS, probabilities=True, method="dense").argmax(0)
             for rgb, _, p in cases.values()]  # fmt: skip
    want = _mean_iou([p.numpy() for p in preds], [labels for _, labels, _ in cases.values()])
    assert got == pytest.approx(want, abs=1e-3)


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--iters", "-1"], "--iters"),
        (["--w2", "nan"], "--w2"),
        (["--sg", "0"], "--sg"),
        (["--sg", "-3"], "--sg"),
        (["--sa-min", "-50"], "--sa-min"),
        (["--sb-step", "0"], "--sb-"),
        (["--w1-min", "inf"], "--w1-"),
    ],
)
def test_impossible_settings_are_one_line_before_any_output(folders, tmp_path, capsys, flags,
                                                             fragment):  # fmt: skip
    root, _ = folders
    out = tmp_path / "out"
    assert main([*_argv(root, "full", out), *flags]) == 2
    assert_one_line_error(capsys.readouterr().err, "crf-search", fragment)
    assert not out.exists()


def test_file_names_that_are_not_utf8_are_searched_like_others(folders, tmp_path, capsys):
    """A stem of undecodable bytes (os.fsdecode's surrogates) takes part in the search: the
    points equal those of the same files under plain names."""
    root, _ = folders
    odd = os.fsdecode(b"photo_\xff")
    for tree, rename in (("plain", {}), ("odd", {"photo_1": odd})):
        for name in ("img", "full", "lab"):
            (tmp_path / tree / name).mkdir(parents=True)
            for stem in ("photo_0", "photo_1", "photo_2"):
                src = next((root / name).glob(f"{stem}.*"))
                dest = tmp_path / tree / name / f"{rename.get(stem, stem)}{src.suffix}"
                dest.write_bytes(src.read_bytes())
        assert main(_argv(tmp_path / tree, "full", tmp_path / f"out_{tree}")) == 0
        assert "Traceback" not in capsys.readouterr().err
    assert _records(tmp_path / "out_odd") == _records(tmp_path / "out_plain")


def test_a_stem_with_two_images_is_named_and_left_out(folders, tmp_path, capsys):
    """photo_1.png and photo_1.jpg: the stem is reported with both files and not searched; the
    points equal those of a search without photo_1."""
    root, _ = folders
    for tree, stems in (("two", ("photo_0", "photo_1")), ("one", ("photo_0",))):
        for name in ("img", "full", "lab"):
            (tmp_path / tree / name).mkdir(parents=True)
            for stem in stems:
                src = next((root / name).glob(f"{stem}.*"))
                (tmp_path / tree / name / src.name).write_bytes(src.read_bytes())
    Image.open(tmp_path / "two" / "img" / "photo_1.png").save(tmp_path / "two" / "img" /
                                                              "photo_1.jpg")  # fmt: skip
    assert main(_argv(tmp_path / "two", "full", tmp_path / "out_two")) == 0
    err = capsys.readouterr().err
    assert (f"deeplabv1 crf-search: 1 stem(s) with more than one image in "
            f"{tmp_path / 'two' / 'img'}: photo_1 (photo_1.jpg, photo_1.png)") in err, err
    assert main(_argv(tmp_path / "one", "full", tmp_path / "out_one")) == 0
    assert _records(tmp_path / "out_two") == _records(tmp_path / "out_one")


def test_labels_that_are_all_void_are_one_line(folders, tmp_path, capsys):
    """Label maps with every pixel 255 (void) leave nothing to score: a mean IoU would be NaN
    (it was written as such into best.json), so the search stops in one line, before any
    output."""
    root, truth = folders
    for name in ("img", "full", "lab"):
        (tmp_path / name).mkdir()
    for stem in ("photo_0", "photo_1"):
        for name in ("img", "full"):
            src = next((root / name).glob(f"{stem}.*"))
            (tmp_path / name / src.name).write_bytes(src.read_bytes())
        Image.fromarray(np.full_like(truth[stem][1], 255)).save(tmp_path / "lab" / f"{stem}.png")
    (tmp_path / "full" / "photo_1.npy").write_bytes(b"not an array")  # also named
    assert main(_argv(tmp_path, "full", tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert_one_line_error(err, "crf-search", "255", "void", str(tmp_path / "lab"))
    assert "deeplabv1 crf-search: skipped " in err and "photo_1.npy" in err, err
    assert not (tmp_path / "out").exists()


def test_an_unreadable_file_named_in_bytes_that_are_not_utf8_is_reported(folders, tmp_path,
                                                                        capfd):  # fmt: skip
    """A pair whose image cannot be read and whose name is not UTF-8 is left out as any other:
    search.md names it with its bytes escaped (caf\\xe9), and best.json lists it."""
    root, _ = folders
    odd = os.fsdecode(b"caf\xe9")
    for name in ("img", "full", "lab"):
        (tmp_path / name).mkdir()
        for stem in ("photo_0", "photo_1"):
            src = next((root / name).glob(f"{stem}.*"))
            (tmp_path / name / src.name).write_bytes(src.read_bytes())
        src = next((root / name).glob("photo_1.*"))
        (tmp_path / name / f"{odd}{src.suffix}").write_bytes(src.read_bytes())
    (tmp_path / "img" / f"{odd}.png").write_bytes(b"not a PNG")
    out = tmp_path / "out"
    assert main(_argv(tmp_path, "full", out)) == 1
    assert "Traceback" not in capfd.readouterr().err
    assert "Left out (unreadable): caf\\xe9." in (out / "search.md").read_text(encoding="utf-8")
    assert list(json.loads((out / "best.json").read_text())["skipped"]) == [odd]


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_parameters_the_crf_cannot_take_are_one_line(folders, tmp_path, capsys, jobs):
    """--sg 1e-300 (0 in float32): the CRF's ValueError is one line naming the point, as
    `deeplabv1 crf` reports it, in this process or a worker process."""
    root, _ = folders
    argv = [*_argv(root, "full", tmp_path / "out"), "--sg", "1e-300", "--jobs", jobs]
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "crf-search", "sg 1e-300",
                          "features: standard deviation")  # fmt: skip
