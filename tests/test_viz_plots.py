"""Trimap, per-class IoU and training-log plots: valid PNGs, bad input, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from deeplabv1.errors import DeepLabError
from deeplabv1.viz import plots


def _is_png(path):
    with Image.open(path) as img:
        return img.format == "PNG" and img.width > 200 and img.height > 150


def test_plot_trimap(tmp_path):
    w = np.arange(1, 41)
    out = plots.plot_trimap(
        {"DeepLab": (w, 40 + w / 2), "CRF": (w, 45 + w / 2)}, tmp_path / "t.png"
    )
    assert _is_png(out)
    with pytest.raises(DeepLabError, match="'bad'"):
        plots.plot_trimap({"bad": ([1, 2], [1.0])}, tmp_path / "bad.png")
    with pytest.raises(DeepLabError):
        plots.plot_trimap({}, tmp_path / "empty.png")
    assert not (tmp_path / "bad.png").exists()


def test_plot_class_iou_handles_missing_classes(tmp_path):
    per_class = {"net": {"background": 90.0, "cat": 50.0}, "crf": {"background": 92.0, "dog": 1}}
    assert _is_png(plots.plot_class_iou(per_class, tmp_path / "iou.png"))


def test_plot_training_log_skips_other_records(tmp_path):
    records = [
        {"iter": i, "loss": 3.0 / (i + 1), "lr": 1e-3 * 0.1 ** (i // 50)} for i in range(120)
    ]
    records.insert(5, {"iter": 10, "val_miou": 40.0})
    assert _is_png(plots.plot_training_log(records, tmp_path / "log.png"))
    with pytest.raises(DeepLabError, match="no records"):
        plots.plot_training_log([{"epoch": 1}], tmp_path / "none.png")


def test_failed_plot_keeps_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "t.png"
    target.write_bytes(b"old")

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError):
        plots.plot_trimap({"a": ([1, 2], [3, 4])}, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["t.png"]
