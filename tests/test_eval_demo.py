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


def _fake_demo(net: float, crf: float, w1: tuple[float, float]) -> dict:
    return {"summary": {
        "network": {"mean_iou": net, "trimap": {1: w1[0], 2: 0.0}},
        "crf": {"mean_iou": crf, "trimap": {1: w1[1], 2: 0.0}},
    }}  # fmt: skip


def test_seed_summary_is_mean_and_sample_spread():
    import numpy as np

    from deeplabv1.demo import seed_summary

    runs = {0: _fake_demo(90.0, 94.0, (70.0, 85.0)), 3: _fake_demo(91.5, 93.0, (72.0, 84.0)),
            7: _fake_demo(89.0, 94.5, (69.0, 88.0))}  # fmt: skip
    got = seed_summary(runs)
    assert got["seeds"] == [0, 3, 7]
    net = np.array([90.0, 91.5, 89.0])
    gain = np.array([94.0, 93.0, 94.5]) - net
    for name, values in (("network mean IoU", net), ("CRF gain (mean IoU)", gain),
                         ("network + CRF trimap w=1", np.array([85.0, 84.0, 88.0]))):  # fmt: skip
        x = got["figures"][name]
        assert x["n"] == 3
        assert np.isclose(x["mean"], values.mean()) and np.isclose(x["sd"], values.std(ddof=1))
        assert (x["min"], x["max"]) == (values.min(), values.max())


def test_seeds_mode_runs_each_seed_into_its_folder(tmp_path, monkeypatch, capsys):
    import deeplabv1.demo as demo

    seen = []

    def fake_run_demo(out, settings, progress=True, threads=1):
        seen.append((out.name, settings.seed, threads))
        return _fake_demo(80.0 + settings.seed, 85.0 + settings.seed, (60.0, 70.0))

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    assert demo.main(["--out", str(tmp_path), "--seeds", "1", "2", "--no-progress"]) == 0
    assert seen == [("seed_1", 1, 1), ("seed_2", 2, 1)]
    saved = json.loads((tmp_path / "seeds.json").read_text())
    assert saved["figures"]["network mean IoU"]["mean"] == 81.5
    assert "network + CRF mean IoU" in capsys.readouterr().out


def test_reproducible_fixes_threads_and_restores_them():
    import torch

    from deeplabv1 import crf
    from deeplabv1.demo import reproducible

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    with reproducible(threads=1):
        assert torch.get_num_threads() == 1 and crf.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
