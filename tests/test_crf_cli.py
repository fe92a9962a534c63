"""`deeplabv1 crf` on the real sample images: single pair, batch folders, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from test_crf_deeplab import _torch_path

from deeplabv1.cli import main


def _scores(labels, rng):
    onehot = np.eye(21, dtype=np.float32)[labels.astype(np.int64)].transpose(2, 0, 1)
    return 3.0 * onehot + rng.normal(scale=1.5, size=onehot.shape).astype(np.float32)


def test_single_pair_writes_palette_png(shared_data, tmp_path):
    rng = np.random.default_rng(0)
    image = shared_data / "voc_samples" / "2007_000033.png"
    labels = np.asarray(Image.open(shared_data / "voc_samples" / "2007_000033_label.png"))
    scores = _scores(labels, rng)
    np.save(tmp_path / "s.npy", scores)
    out = tmp_path / "out.png"
    argv = ["crf", "--image", str(image), "--scores", str(tmp_path / "s.npy"), "-o", str(out)]
    assert main([*argv, "--params", "deeplab-msc", "--sb", "4", "--iters", "2"]) == 0
    with Image.open(out) as png:
        assert png.mode == "P" and png.size == (labels.shape[1], labels.shape[0])
        got = np.asarray(png)
    rgb = np.asarray(Image.open(image).convert("RGB"))
    params = {"w1": 3, "sa": 95, "sb": 4, "w2": 3, "sg": 3}
    from deeplabv1.crf import CRFParams

    expected = _torch_path(scores, rgb, CRFParams(**params), iters=2).argmax(0).numpy()
    np.testing.assert_array_equal(got, expected)


def test_single_pair_bad_input_is_reported(shared_data, tmp_path, capsys):
    image = shared_data / "voc_samples" / "2007_000033.png"
    np.save(tmp_path / "small.npy", np.zeros((21, 10, 10), np.float32))
    argv = ["crf", "--image", str(image), "--scores", str(tmp_path / "small.npy")]
    assert main([*argv, "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert "small.npy" in err and "upsample" in err
    assert not (tmp_path / "o.png").exists()
    assert main([*argv]) == 2  # no -o
    assert main([*argv, "-o", str(tmp_path / "o.png"), "--params", "nope"]) == 2


def test_batch_mode_reports_bad_and_missing_files(shared_data, voc_samples, tmp_path, capsys):
    rng = np.random.default_rng(1)
    img_dir, npy_dir, out_dir = tmp_path / "img", tmp_path / "npy", tmp_path / "out"
    img_dir.mkdir()
    npy_dir.mkdir()
    for sid, rgb, labels in voc_samples[:3]:
        Image.fromarray(rgb[:60, :80]).save(img_dir / f"{sid}.png")
        np.save(npy_dir / f"{sid}.npy", _scores(labels[:60, :80], rng))
    bad = voc_samples[2][0]
    np.save(npy_dir / f"{bad}.npy", np.full((21, 60, 80), np.nan, np.float32))  # NaN scores
    Image.fromarray(voc_samples[3][1][:60, :80]).save(img_dir / "lonely.png")  # no scores
    argv = ["crf", "--image-dir", str(img_dir), "--scores-dir", str(npy_dir)]
    status = main([*argv, "--out-dir", str(out_dir), "--workers", "2"])
    err = capsys.readouterr().err
    assert status == 1
    assert f"skipped {npy_dir / bad}.npy: " in err and "NaN" in err
    assert "lonely" in err
    written = sorted(p.stem for p in out_dir.glob("*.png"))
    assert written == sorted(sid for sid, _, _ in voc_samples[:2])
    assert (out_dir / "crf_config.yaml").is_file()
    for sid, _, labels in voc_samples[:2]:
        got = np.asarray(Image.open(out_dir / f"{sid}.png"))
        assert got.shape == (60, 80)
        assert (got == labels[:60, :80]).mean() > 0.9


def test_help_and_mode_errors(tmp_path):
    with pytest.raises(SystemExit):
        main(["crf", "--help"])
    assert main(["crf", "--image-dir", str(tmp_path)]) == 2
    assert main(["crf", "--image", "a.png", "--image-dir", str(tmp_path)]) == 2


_BLOCK_TORCH = """import os
with open(os.environ["TORCH_IMPORTS"], "a") as f:
    f.write(f"{os.getpid()}\\n")
raise ImportError("torch is blocked by test_crf_cli")
"""

_RUN_CLI = """import sys
from deeplabv1.cli import main
single = main(sys.argv[1:8])
batch = main(sys.argv[8:])
assert "torch" not in sys.modules, "torch imported"
print("status", single, batch)
"""


def test_cpu_runs_never_import_torch_and_match_the_torch_path(voc_samples, tmp_path):
    """`deeplabv1 crf --device cpu`, single and batch (2 worker processes): torch is blocked
    (a stand-in package that records the attempt and raises) and the labels are the torch
    path's, on full-size real images, 10 iterations."""
    rng = np.random.default_rng(5)
    block = tmp_path / "block" / "torch"
    block.mkdir(parents=True)
    (block / "__init__.py").write_text(_BLOCK_TORCH)
    img_dir, npy_dir, out_dir = tmp_path / "img", tmp_path / "npy", tmp_path / "out"
    img_dir.mkdir()
    npy_dir.mkdir()
    cases = {}
    for sid, rgb, labels in voc_samples[:2]:  # full size
        cases[sid] = rgb, _scores(labels, rng)
    sid, rgb, labels = voc_samples[2]
    cases["small"] = rgb[:50, :70], _scores(labels[:50, :70], rng)
    for name, (rgb, scores) in cases.items():
        Image.fromarray(rgb).save(img_dir / f"{name}.png")
        np.save(npy_dir / f"{name}.npy", scores)
    single = ["crf", "--image", str(img_dir / "small.png"), "--scores",
              str(npy_dir / "small.npy"), "-o", str(tmp_path / "small.png")]  # fmt: skip
    batch = ["crf", "--image-dir", str(img_dir), "--scores-dir", str(npy_dir),
             "--out-dir", str(out_dir), "--workers", "2"]  # fmt: skip
    env = dict(os.environ, TORCH_IMPORTS=str(tmp_path / "torch_imports.txt"),
               PYTHONPATH=os.pathsep.join([str(block.parent), os.environ.get("PYTHONPATH", "")]),
               NUMBA_NUM_THREADS="1", DEEPLABV1_CRF_NUMBA="1")  # fmt: skip
    run = subprocess.run([sys.executable, "-c", _RUN_CLI, *single, *batch], env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "status 0 0" in run.stdout
    assert not (tmp_path / "torch_imports.txt").exists()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers' thread count: the same float summation order
    try:
        for name, (rgb, scores) in cases.items():
            want = _torch_path(scores, rgb, "deeplab-largefov").argmax(0).numpy()
            np.testing.assert_array_equal(np.asarray(Image.open(out_dir / f"{name}.png")), want)
        got = np.asarray(Image.open(tmp_path / "small.png"))
        np.testing.assert_array_equal(got, np.asarray(Image.open(out_dir / "small.png")))
    finally:
        torch.set_num_threads(threads)


def test_batch_mode_takes_file_names_that_are_not_utf8(voc_samples, tmp_path, capsys):
    """A stem of undecodable bytes (os.fsdecode's surrogates) is processed and resumed like
    any other; its label map equals that of the same pair under a plain name."""
    rng = np.random.default_rng(2)
    img_dir, npy_dir, out_dir = tmp_path / "img", tmp_path / "npy", tmp_path / "out"
    img_dir.mkdir()
    npy_dir.mkdir()
    odd = os.fsdecode(b"caf\xe9 \xff")  # Latin-1 bytes, as an old camera or archive names them
    sid, rgb, labels = voc_samples[0]
    scores = _scores(labels[:60, :80], rng)
    for stem in (odd, "plain"):
        Image.fromarray(rgb[:60, :80]).save(img_dir / f"{stem}.png")
        np.save(npy_dir / f"{stem}.npy", scores)
    argv = ["crf", "--image-dir", str(img_dir), "--scores-dir", str(npy_dir),
            "--out-dir", str(out_dir), "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    assert (out_dir / f"{odd}.png").read_bytes() == (out_dir / "plain.png").read_bytes()
    assert main([*argv, "--resume"]) == 0
    assert "2 skipped" in capsys.readouterr().out


def test_batch_mode_reports_a_stem_with_two_images(voc_samples, tmp_path, capsys):
    """a.png and a.jpg beside a.npy: which one the scores belong to is unknown, so the stem is
    reported by name with both files and left out; the other pairs run (exit status 1)."""
    rng = np.random.default_rng(3)
    img_dir, npy_dir, out_dir = tmp_path / "img", tmp_path / "npy", tmp_path / "out"
    img_dir.mkdir()
    npy_dir.mkdir()
    (sid, rgb, labels), (_, other, _) = voc_samples[:2]
    Image.fromarray(rgb[:60, :80]).save(img_dir / "a.png")
    Image.fromarray(other[:60, :80]).save(img_dir / "a.jpg")
    Image.fromarray(rgb[:60, :80]).save(img_dir / "b.png")
    for stem in ("a", "b"):
        np.save(npy_dir / f"{stem}.npy", _scores(labels[:60, :80], rng))
    argv = ["crf", "--image-dir", str(img_dir), "--scores-dir", str(npy_dir),
            "--out-dir", str(out_dir), "--workers", "1"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"1 stem(s) with more than one image in {img_dir}: a (a.jpg, a.png)" in err, err
    assert sorted(p.name for p in out_dir.glob("*.png")) == ["b.png"]
    summary = json.loads((out_dir / "crf_summary.json").read_text())
    assert summary["processed"] == ["b"]
    assert summary["unmatched"]["stems_with_several_images"] == ["a (a.jpg, a.png)"]


def test_batch_mode_pairs_upper_case_npy_and_reports_two_score_files(voc_samples, tmp_path,
                                                                     capsys):  # fmt: skip
    """Score files pair in any case (b.NPY, as images pair as .PNG): b's labels equal those of
    the same pair named c.npy; a stem with a.npy and a.NPY is named and left out (status 1)."""
    rng = np.random.default_rng(4)
    img_dir, npy_dir, out_dir = tmp_path / "img", tmp_path / "npy", tmp_path / "out"
    img_dir.mkdir()
    npy_dir.mkdir()
    sid, rgb, labels = voc_samples[0]
    scores = _scores(labels[:60, :80], rng)
    for stem in ("a", "b", "c"):
        Image.fromarray(rgb[:60, :80]).save(img_dir / f"{stem}.png")
    np.save(npy_dir / "a.npy", scores)
    (npy_dir / "a.NPY").write_bytes((npy_dir / "a.npy").read_bytes())
    (npy_dir / "b.NPY").write_bytes((npy_dir / "a.npy").read_bytes())
    np.save(npy_dir / "c.npy", scores)
    argv = ["crf", "--image-dir", str(img_dir), "--scores-dir", str(npy_dir),
            "--out-dir", str(out_dir), "--workers", "1"]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"1 stem(s) with more than one score file in {npy_dir}: a (a.NPY, a.npy)" in err, err
    assert "without a score file" not in err and "without an image" not in err, err
    assert (out_dir / "b.png").read_bytes() == (out_dir / "c.png").read_bytes()
    assert not (out_dir / "a.png").exists()
    summary = json.loads((out_dir / "crf_summary.json").read_text())
    assert summary["unmatched"]["stems_with_several_score_files"] == ["a (a.NPY, a.npy)"]
