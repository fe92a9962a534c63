"""Nothing lost through careless output paths, end to end through the command line: outputs
never replace an input (same path, symbolic or hard link), existing files are replaced only when
deeplabv1 wrote them (or with --overwrite), read-only and full disks give one clear line."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from robustness_tools import (
    assert_one_line_error,
    cli,
    image_and_scores,
    on_small_disk,
    tiny_checkpoint,
)


def test_crf_output_naming_the_input_image_is_refused(tmp_path):
    image, scores = image_and_scores(tmp_path, "a")
    before = image.read_bytes(), scores.read_bytes()
    proc = cli("crf", "--image", image, "--scores", scores, "-o", image)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "crf", str(image), "inputs")
    # the same file under another name: a symbolic link, a hard link, a path with ..
    (tmp_path / "sym.png").symlink_to(image)
    os.link(image, tmp_path / "hard.png")
    for out in (tmp_path / "sym.png", tmp_path / "hard.png", tmp_path / "x" / ".." / "a.png",
                scores):  # fmt: skip
        (tmp_path / "x").mkdir(exist_ok=True)
        proc = cli("crf", "--image", image, "--scores", scores, "-o", out, "--overwrite")
        assert proc.returncode == 2, out
        assert_one_line_error(proc.stderr, "crf", "input")
    assert (image.read_bytes(), scores.read_bytes()) == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_crf_out_dir_equal_to_the_image_dir_is_refused(tmp_path):
    images = tmp_path / "d"
    pairs = [image_and_scores(images, s, seed=i) for i, s in enumerate(("a", "b"))]
    npys = images / "npys"
    npys.mkdir()
    for _, scores in pairs:
        scores.rename(npys / scores.name)
    before = {p: p.read_bytes() for p in images.iterdir() if p.is_file()}
    proc = cli("crf", "--image-dir", images, "--scores-dir", npys, "--out-dir", images)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "crf", "--image-dir", str(images))
    # the image folder under another name (a symbolic link to it) is the same folder
    (tmp_path / "alias").symlink_to(images)
    proc = cli("crf", "--image-dir", images, "--scores-dir", npys, "--out-dir", tmp_path / "alias")
    assert proc.returncode == 2
    # an output folder holding the inputs' names: the inputs are never written over
    proc = cli("crf", "--image-dir", images, "--scores-dir", npys, "--out-dir", npys,
               "--overwrite")  # fmt: skip
    assert proc.returncode == 2
    assert before == {p: p.read_bytes() for p in images.iterdir() if p.is_file()}
    assert sorted(p.name for p in npys.iterdir()) == ["a.npy", "b.npy"]


def test_existing_outputs_are_replaced_only_when_ours_or_with_overwrite(tmp_path):
    image, scores = image_and_scores(tmp_path, "a")
    out = tmp_path / "labels.png"
    out.write_bytes(b"the user's own file")
    proc = cli("crf", "--image", image, "--scores", scores, "-o", out)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "crf", str(out), "not written by deeplabv1", "--overwrite")
    assert out.read_bytes() == b"the user's own file"
    proc = cli("crf", "--image", image, "--scores", scores, "-o", out, "--overwrite")
    assert proc.returncode == 0
    first = np.asarray(Image.open(out))
    # now it is ours: a second run replaces it without --overwrite
    assert cli("crf", "--image", image, "--scores", scores, "-o", out).returncode == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out)), first)
    assert "labels.png" in (tmp_path / ".deeplabv1-outputs").read_text().split()


def test_predict_output_naming_an_existing_file(tmp_path):
    weights = tiny_checkpoint(tmp_path / "m.pt")
    image, _ = image_and_scores(tmp_path, "a")
    not_a_folder = tmp_path / "out.txt"
    not_a_folder.write_text("keep")
    proc = cli("predict", image, "--weights", weights, "-o", not_a_folder)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "predict", str(not_a_folder), "not a folder")
    assert not_a_folder.read_text() == "keep"
    # -o the image folder itself: refused (outputs would mix with the inputs)
    proc = cli("predict", tmp_path, "--weights", weights, "-o", tmp_path)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "predict", "-o")
    # an output name that is an input image: refused before anything runs
    out = tmp_path / "o"
    out.mkdir()
    victim = out / "a_net.png"
    Image.open(image).save(victim)
    proc = cli("predict", image, victim, "--weights", weights, "-o", out, "--overwrite")
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "predict", "a_net.png", "inputs")
    assert np.array_equal(np.asarray(Image.open(victim)), np.asarray(Image.open(image)))


@pytest.mark.parametrize("mode", ["predict -o", "crf -o", "crf --out-dir"])
def test_read_only_output_gives_one_line(tmp_path, mode):
    image, scores = image_and_scores(tmp_path / "in", "a")
    weights = tiny_checkpoint(tmp_path / "m.pt")
    ro = tmp_path / "ro"
    command = {
        "predict -o": ["predict", image, "--weights", weights, "-o", ro / "out"],
        "crf -o": ["crf", "--image", image, "--scores", scores, "-o", ro / "out" / "a.png"],
        "crf --out-dir": ["crf", "--image-dir", image.parent, "--scores-dir", image.parent,
                          "--out-dir", ro / "out"],
    }[mode]  # fmt: skip
    rc, err, files = on_small_disk(ro, command, read_only=True, before=f"mkdir {ro / 'out'}")
    assert rc == 2
    assert_one_line_error(err, mode.split()[0], str(ro / "out"), "Read-only file system")
    assert files == {}


def test_full_disk_leaves_no_partial_outputs_of_a_failed_image(tmp_path):
    """Each image's outputs are written together: on a full disk the image that failed has
    none of them, the one before is complete, and the run says so (exit status 1)."""
    weights = tiny_checkpoint(tmp_path / "m.pt")
    rng = np.random.default_rng(0)
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(inputs / "a.png")
    # noise does not compress: its overlay PNG (~270 KB) cannot fit on a 64 KiB disk
    Image.fromarray(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(inputs / "b.png")
    disk = tmp_path / "disk"
    rc, err, files = on_small_disk(disk, ["predict", inputs, "--weights", weights, "-o",
                                          disk / "out", "--test-size", "0"])  # fmt: skip
    assert rc == 1, err
    assert "Traceback" not in err
    assert "skipped" in err and "b.png" in err and "the disk is full" in err
    names = {name.removeprefix("out/") for name in files}
    assert {"a_net.png", "a_net_overlay.png"} <= names
    assert not {n for n in names if n.startswith("b_")}
    assert not {n for n in names if n.endswith(".tmp")}


def test_eval_output_folder_may_not_be_the_scores_folder(tmp_path, capsys):
    from deeplabv1.cli import main

    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "meta.json").write_text("{}")
    assert main(["eval", "--scores", str(scores), "--data", str(tmp_path), "-o", str(scores)]) == 2
    assert_one_line_error(capsys.readouterr().err, "eval", "-o", "--scores folder")
    assert sorted(p.name for p in scores.iterdir()) == ["meta.json"]
