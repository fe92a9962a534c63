"""`deeplabv1 predict`: outputs (exact palette and values), skip-and-report, exit status."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from deeplabv1.checkpoint import save_checkpoint
from deeplabv1.cli import main
from deeplabv1.data.palette import VOC_COLORMAP
from deeplabv1.models import build_model
from deeplabv1.predict.segmenter import Segmenter
from deeplabv1.viz.figures import overlay


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("deeplab-largefov", width=1 / 16)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model.state_dict(), arch=model.arch, num_classes=21, width=1 / 16,
                    model_kwargs=model.model_kwargs)  # fmt: skip
    return path


def _images(folder, n=2):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = []
    for i in range(n):
        rgb = rng.integers(0, 256, (33 + 8 * i, 41, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(folder / f"img{i}.png")
        arrays.append(rgb)
    return arrays


def test_outputs_exact_palette_values_and_overlay(tmp_path, weights):
    arrays = _images(tmp_path / "in")
    out = tmp_path / "out"
    rc = main(["predict", str(tmp_path / "in"), "--weights", str(weights), "-o", str(out),
               "--alpha", "0.4", "--test-size", "0"])  # fmt: skip
    assert rc == 0
    seg = Segmenter.from_checkpoint(weights, test_size=None)
    for i, rgb in enumerate(arrays):
        with Image.open(out / f"img{i}_net.png") as img:
            assert img.mode == "P"
            palette = np.array(img.getpalette()[: 256 * 3], np.uint8).reshape(-1, 3)
            labels = np.asarray(img)
        np.testing.assert_array_equal(palette, VOC_COLORMAP)
        want = seg.predict(rgb).labels
        np.testing.assert_array_equal(labels, want)
        with Image.open(out / f"img{i}_net_overlay.png") as img:
            blended = np.asarray(img.convert("RGB"))
        np.testing.assert_array_equal(blended, overlay(rgb, want, alpha=0.4, legend=True))
        assert not (out / f"img{i}_crf.png").exists()
    summary = json.loads((out / "predict_summary.json").read_text())
    assert len(summary["images"]) == 2 and summary["failed"] == []
    assert summary["config"]["alpha"] == 0.4
    assert (out / "predict_config.yaml").is_file()


def test_unreadable_file_is_skipped_and_reported(tmp_path, weights, capsys):
    _images(tmp_path / "in", n=2)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    rc = main(["predict", str(tmp_path / "in"), str(tmp_path / "gone.jpg"),
               "--weights", str(weights), "-o", str(out), "--test-size", "0"])  # fmt: skip
    assert rc == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "gone.jpg: no such file" in err
    assert (out / "img0_net.png").is_file() and (out / "img1_net.png").is_file()
    assert not list(out.glob("broken*"))
    summary = json.loads((out / "predict_summary.json").read_text())
    assert [f["input"] for f in summary["failed"]] == [str(tmp_path / "in" / "broken.png")]
    assert len(summary["images"]) == 2 and len(summary["unmatched"]) == 1


def test_crf_side_by_side_with_ground_truth(tmp_path, weights):
    pytest.importorskip("deeplabv1.crf.torch.lattice")
    arrays = _images(tmp_path / "in", n=1)
    gt = np.zeros(arrays[0].shape[:2], np.uint8)
    gt[5:20, 5:30] = 12
    (tmp_path / "gt").mkdir()
    Image.fromarray(gt, mode="L").save(tmp_path / "gt" / "img0.png")
    out = tmp_path / "out"
    rc = main(["predict", str(tmp_path / "in" / "img0.png"), "--weights", str(weights),
               "-o", str(out), "--crf", "--side-by-side", "--gt", str(tmp_path / "gt"),
               "--crf-params", "deeplab", "--test-size", "0"])  # fmt: skip
    assert rc == 0
    names = sorted(p.name for p in out.glob("img0*"))
    assert names == ["img0_crf.png", "img0_crf_overlay.png", "img0_figure.png",
                     "img0_net.png", "img0_net_overlay.png"]  # fmt: skip
    seg = Segmenter.from_checkpoint(weights, test_size=None, crf_params="deeplab")
    want = seg.predict(arrays[0], crf=True)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "img0_crf.png")), want.crf_labels)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "img0_net.png")), want.net_labels)
    with Image.open(out / "img0_figure.png") as fig:
        assert fig.width > 3 * fig.height * 0.8 * 41 / 33  # four panels in a row


def test_setup_errors_exit_2(tmp_path, weights, capsys):
    _images(tmp_path / "in", n=1)
    assert main(["predict", str(tmp_path / "in"), "--weights", str(tmp_path / "no.pt"),
                 "-o", str(tmp_path / "o")]) == 2  # fmt: skip
    assert "no.pt: checkpoint file not found" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "in"), "--weights", str(weights)]) == 2
    assert main(["predict", str(tmp_path / "in"), "--weights", str(weights), "-o",
                 str(tmp_path / "o"), "--alpha", "2"]) == 2  # fmt: skip
    assert "--alpha" in capsys.readouterr().err


def test_missing_ground_truth_is_a_note_not_a_failure(tmp_path, weights, capsys):
    _images(tmp_path / "in", n=1)
    (tmp_path / "gt").mkdir()
    out = tmp_path / "out"
    rc = main(["predict", str(tmp_path / "in"), "--weights", str(weights), "-o", str(out),
               "--side-by-side", "--gt", str(tmp_path / "gt"), "--test-size", "0"])  # fmt: skip
    assert rc == 0
    assert "no ground truth img0_label.png or img0.png" in capsys.readouterr().err
    with Image.open(out / "img0_figure.png") as fig:
        assert fig.width < 2.6 * fig.height  # image | network only


def test_file_names_that_are_not_utf8_are_predicted(tmp_path, weights, capsys):
    """An image named in undecodable bytes (os.fsdecode's surrogates) is predicted and resumed
    like any other: its label map equals that of the same image under a plain name."""
    import os

    folder = tmp_path / "in"
    (rgb,) = _images(folder, n=1)
    odd = os.fsdecode(b"caf\xe9 \xff")  # Latin-1 bytes, as an old camera or archive names them
    Image.fromarray(rgb).save(folder / f"{odd}.png")
    out = tmp_path / "out"
    argv = ["predict", str(folder), "--weights", str(weights), "-o", str(out), "--test-size", "0"]
    assert main(argv) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert (out / f"{odd}_net.png").read_bytes() == (out / "img0_net.png").read_bytes()
    assert main([*argv, "--resume"]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_flags_turn_off_the_switches_a_config_file_turns_on(tmp_path, weights):
    # `--crf` and `--side-by-side` were one-way switches: with `crf: true` in a --config file no
    # flag could turn the CRF off again, though flags override the file
    _images(tmp_path / "in", n=1)
    config = tmp_path / "predict.yaml"
    config.write_text("crf: true\nside_by_side: true\ntest_size: 0\n")
    out = tmp_path / "out"
    rc = main(["predict", "--no-crf", str(tmp_path / "in"), "--weights", str(weights), "-o",
               str(out), "--config", str(config), "--no-side-by-side"])  # fmt: skip
    assert rc == 0
    assert (out / "img0_net.png").is_file()
    assert not (out / "img0_crf.png").exists() and not (out / "img0_figure.png").exists()
    saved = (out / "predict_config.yaml").read_text()
    assert "crf: false" in saved and "side_by_side: false" in saved
    rc = main(["predict", "--crf", str(tmp_path / "in"), "--weights", str(weights), "-o",
               str(tmp_path / "out2"), "--test-size", "0"])  # a switch before an INPUT
    assert rc == 0 and (tmp_path / "out2" / "img0_crf.png").is_file()
