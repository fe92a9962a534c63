"""A miniature of `make demo` end to end: data, real training, crf-search, eval, report."""

from __future__ import annotations

import json

from deeplabv1.demo import QUICK, main


def test_quick_demo_writes_report_and_sane_numbers(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--quick", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "val mean IoU: network" in printed
    demo = json.loads((out / "demo.json").read_text())
    assert set(demo["summary"]) == {"network", "crf"}
    for method in ("network", "crf"):
        s = demo["summary"][method]
        assert 0.0 <= s["mean_iou"] <= 100.0 and 0.0 < s["pixel_accuracy"] <= 100.0
        assert len(s["trimap"]) == QUICK.trimap_max_width
        assert all(v is None or 0.0 <= v <= 100.0 for v in s["trimap"].values())
    assert set(demo["crf_params"]) == {"w1", "sa", "sb", "w2", "sg"}
    assert demo["crf_params"]["w1"] in (3.0, 5.0)  # from the quick search grid
    assert set(demo["crf_improves"]) == {"mean_iou", "trimap_w1_to_5"}
    assert demo["timing"]["total_s"] > 0
    report = (out / "report.md").read_text()
    assert "network + CRF" in report and "DeepLab-CRF-LargeFOV" in report
    for name in ("figure.png", "val/trimap.png", "val/results.json", "crf_search/best.json",
                 "train/final.pt"):  # fmt: skip
        assert (out / name).is_file(), name
    val_ids = (out / "data" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    assert len(val_ids) == QUICK.num_val
    for method in ("network", "crf"):
        assert len(list((out / "val" / "predictions" / method).glob("*.png"))) == QUICK.num_val
