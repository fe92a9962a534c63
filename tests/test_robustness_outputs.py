"""Nothing lost through careless output paths, end to end through the command line: outputs
never replace an input (same path, symbolic or hard link) nor a dataset's folders, existing files
are replaced only when deeplabv1 wrote them and they are unchanged since (or with --overwrite),
never another command's, a run never deletes another's temporaries, read-only and full disks
give one clear line."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys

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
    assert [p.name for p in out.iterdir()] == ["a_net.png"]  # no lock file left behind


def test_a_refused_command_leaves_the_folders_as_they_were(tmp_path, capsys):
    from deeplabv1.cli import main
    from deeplabv1.rundir import LOCK_NAME

    scores = tmp_path / "scores"
    scores.mkdir()
    (scores / "meta.json").write_text('{"num_classes": 3}')
    (tmp_path / "data").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty", tmp_path / "used"):
        if out.name == "empty":
            out.mkdir()
        elif out.name == "used":  # a lock file of an earlier run stays
            out.mkdir()
            (out / LOCK_NAME).write_text("{}")
        before = sorted(p.name for p in out.iterdir()) if out.exists() else None
        argv = ["eval", "--scores", str(scores), "--data", str(tmp_path / "data"),
                "--save-scores", str(out), "-o", str(out)]  # fmt: skip
        assert main(argv) == 2
        line = assert_one_line_error(capsys.readouterr().err, "eval", str(out),
                                     "this very command", "give it different folders")
        assert "wait for it" not in line and "another deeplabv1 run" not in line
        assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before


def test_a_lock_file_removed_by_its_holder_is_not_held(tmp_path, monkeypatch):
    """A run that opened the lock file just before a refused run removed it takes the folder's
    new lock file, so two runs never both hold the folder."""
    from deeplabv1 import rundir
    from deeplabv1.rundir import LOCK_NAME, RunLock

    first = RunLock(tmp_path).acquire()
    stale = os.open(tmp_path / LOCK_NAME, os.O_RDWR)  # a second run's open, before the removal
    (tmp_path / LOCK_NAME).unlink()
    first.release()
    assert rundir._try_lock(stale)  # the removed file's lock is free ...
    assert not rundir._is_file_at(stale, tmp_path / LOCK_NAME)  # ... but no longer the folder's
    opened = []
    real_open = os.open

    def open_stale_first(path, flags, mode=0o777):  # acquire's open lands on the removed file
        opened.append(path)
        return os.dup(stale) if len(opened) == 1 else real_open(path, flags, mode)

    monkeypatch.setattr(rundir.os, "open", open_stale_first)
    second = RunLock(tmp_path).acquire()
    monkeypatch.undo()
    assert len(opened) == 2  # it noticed, and opened the folder's lock file anew
    assert rundir._is_file_at(second._fd, tmp_path / LOCK_NAME)
    with pytest.raises(Exception, match="in use by another deeplabv1 run|this very command"):
        RunLock(tmp_path).acquire()
    second.release()
    os.close(stale)


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


def _host_tag() -> str:
    """The host part of a temporary's name (.<name>.<pid>-<host tag>-<random>.tmp)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_are_those_of_dead_writers_of_this_host_only(tmp_path):
    from deeplabv1.io import remove_stale_temporaries

    host, dead = _host_tag(), _dead_pid()
    live = tmp_path / f".a.png.{os.getpid()}-{host}-abcdefgh.tmp"  # this process still runs
    stale = tmp_path / f".b.png.{dead}-{host}-abcdefgh.tmp"
    elsewhere = tmp_path / f".c.png.{dead}-{'0' * 8 if host != '0' * 8 else '1' * 8}-abcdefgh.tmp"
    user = [tmp_path / ".d.png.a1b2c3d4.tmp", tmp_path / "e.tmp"]  # named like temporaries
    inner = tmp_path / "run" / f".f.png.{dead}-{host}-abcdefgh.tmp"  # a subfolder: not searched
    inner.parent.mkdir()
    for path in (live, stale, elsewhere, *user, inner):
        path.write_text("x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert all(p.exists() for p in (live, elsewhere, *user, inner))


def test_a_run_in_a_parent_folder_leaves_a_live_run_in_a_subfolder_alone(tmp_path):
    from deeplabv1.rundir import RunLock

    par = tmp_path / "par"
    synth = ("data", "synth", "--out", par, "--num", "1", "--size", "16", "16", "--overwrite")
    assert cli(*synth).returncode == 0
    host, dead = _host_tag(), _dead_pid()
    inner = par / "run"
    inner.mkdir()
    # another run holds par/run and is writing a checkpoint; files of a dead writer there belong
    # to that run's folder too (its own start cleans them); a user file named like a temporary
    theirs = [inner / f".checkpoint_000032.pt.{os.getpid()}-{host}-abcdefgh.tmp",
              inner / f".checkpoint_000031.pt.{dead}-{host}-abcdefgh.tmp",
              inner / ".checkpoint_000030.pt.a1b2c3d4.tmp"]  # fmt: skip
    stale = par / f".classes.txt.{dead}-{host}-abcdefgh.tmp"  # in synth's own folder: cleaned
    with RunLock(inner):
        for path in (*theirs, stale):
            path.write_text("in flight")
        proc = cli(*synth)
        assert proc.returncode == 0, proc.stderr
        assert all(path.read_text() == "in flight" for path in theirs)
    assert not stale.exists()


def test_a_file_changed_since_deeplabv1_wrote_it_is_no_longer_ours(tmp_path):
    weights = tiny_checkpoint(tmp_path / "m.pt")
    photos = tmp_path / "photos"
    image, _ = image_and_scores(photos, "a")
    out = tmp_path / "o"
    assert cli("predict", photos, "--weights", weights, "-o", out).returncode == 0
    labels = out / "a_net.png"
    assert labels.is_file()
    Image.open(image).save(labels)  # the user puts a file of their own where predict wrote
    mine = labels.read_bytes()
    proc = cli("predict", photos, "--weights", weights, "-o", out)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "predict", str(labels), "not written by deeplabv1",
                          "--overwrite")  # fmt: skip
    assert labels.read_bytes() == mine
    # the same with a single output file (crf -o)
    image, scores = image_and_scores(tmp_path, "b")
    single = tmp_path / "b_crf.png"
    assert cli("crf", "--image", image, "--scores", scores, "-o", single).returncode == 0
    single.write_bytes(b"the user's own file")
    proc = cli("crf", "--image", image, "--scores", scores, "-o", single)
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "crf", str(single), "not written by deeplabv1")
    assert single.read_bytes() == b"the user's own file"


@pytest.mark.parametrize("layout", ["folder", "voc"])
def test_eval_never_writes_into_the_datasets_folders(tmp_path, capsys, layout):
    from deeplabv1.cli import main
    from deeplabv1.data.synth import make_synthetic_folder, make_synthetic_voc

    data = tmp_path / "data"
    if layout == "folder":
        make_synthetic_folder(data, 3, size=(32, 32))
        inside = [data, data / "images", data / "masks"]
        split = ["--val-fraction", "0.4"]
    else:
        make_synthetic_voc(data, 3, size=(32, 32))
        inside = [data, data / "JPEGImages", data / "SegmentationClass",
                  data / "ImageSets" / "Segmentation"]  # fmt: skip
        split = ["--split", "val"]
    before = sorted(p for p in data.rglob("*"))
    weights = tiny_checkpoint(tmp_path / "m.pt", num_classes=6)
    base = ["eval", "--weights", str(weights), "--data", str(data), *split, "--test-size", "33",
            "--device", "cpu", "--progress", "false"]  # fmt: skip
    for folder in inside:
        for flags in (["-o", str(folder)],
                      ["-o", str(tmp_path / "e"), "--save-scores", str(folder)]):  # fmt: skip
            assert main([*base, *flags, "--overwrite"]) == 2, flags
            assert_one_line_error(capsys.readouterr().err, "eval", str(folder), "--data")
    assert sorted(p for p in data.rglob("*")) == before
    # an output folder beside the dataset is fine
    assert main([*base, "-o", str(tmp_path / "e"), "--save-scores", str(tmp_path / "s")]) == 0


def test_no_command_writes_inside_a_datasets_or_an_input_folder(tmp_path, capsys):
    """`train --out-dir`, `eval -o` and `predict -o` are refused in a dataset's image, mask and
    split-list folders and in any subfolder of them (a `predict` input folder that is a
    dataset's images/ protects the whole dataset), and `predict -o` inside its input folder;
    another subfolder of the dataset's root is fine."""
    from deeplabv1.cli import main
    from deeplabv1.data.synth import make_synthetic_folder

    data = tmp_path / "data"
    make_synthetic_folder(data, 3, size=(32, 32))
    before = sorted(data.rglob("*"))
    weights = tiny_checkpoint(tmp_path / "m.pt", num_classes=6)
    train = ["train", "--data-root", str(data), "--split", "all", "--arch", "deeplab-largefov",
             "--width", "0.0625", "--crop-size", "33", "--batch-size", "1", "--max-iter", "1",
             "--workers", "0", "--device", "cpu", "--progress", "false", "--tensorboard",
             "false"]  # fmt: skip
    evaluate = ["eval", "--weights", str(weights), "--data", str(data), "--val-fraction", "0.4",
                "--test-size", "33", "--device", "cpu", "--progress", "false"]  # fmt: skip
    for folder in (data, data / "masks", data / "masks" / "sub", data / "images" / "a" / "b"):
        assert main([*train, "--out-dir", str(folder)]) == 2, folder
        assert_one_line_error(capsys.readouterr().err, "train", str(folder), "--data-root")
        assert main([*evaluate, "-o", str(folder)]) == 2, folder
        assert_one_line_error(capsys.readouterr().err, "eval", str(folder), "--data")
    predict = ["predict", str(data / "images"), "--weights", str(weights), "--device", "cpu"]
    for folder in (data / "masks", data / "masks" / "sub", data / "images" / "x.png"):
        assert main([*predict, "-o", str(folder)]) == 2, folder
        assert_one_line_error(capsys.readouterr().err, "predict", str(folder))
    assert sorted(data.rglob("*")) == before
    # a photo folder: no output folder inside it (a later `predict photos` would read it)
    photos = tmp_path / "photos"
    image_and_scores(photos, "a")
    (photos / "a.npy").unlink()
    assert main(["predict", str(photos), "--weights", str(weights), "--device", "cpu", "-o",
                 str(photos / "x.png")]) == 2  # fmt: skip
    assert_one_line_error(capsys.readouterr().err, "predict", str(photos / "x.png"), "inside")
    assert not (photos / "x.png").exists()
    # beside the dataset's folders, inside its root: fine
    assert main([*predict, "-o", str(data / "predictions")]) == 0


def test_overwrite_never_replaces_what_is_not_a_regular_file(tmp_path):
    """A FIFO (as a device or a socket) named as an output, directly or through a symbolic
    link, is refused even with --overwrite, and stays what it was."""
    import stat

    image, scores = image_and_scores(tmp_path, "a")
    fifo = tmp_path / "labels.png"
    os.mkfifo(fifo)
    link = tmp_path / "link.png"
    link.symlink_to(fifo)
    for out in (fifo, link):
        proc = cli("crf", "--image", image, "--scores", scores, "-o", out, "--overwrite",
                   timeout=120)  # fmt: skip
        assert proc.returncode == 2
        assert_one_line_error(proc.stderr, "crf", str(out), "named pipe", "not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and link.is_symlink()
