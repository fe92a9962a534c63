"""`deeplabv1 plot`: training logs and eval results files to PNGs."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from deeplabv1.cli import main
from deeplabv1.data.palette import VOC_CLASSES


def _log(path, torn=False):
    lines = [json.dumps({"iter": i, "loss": 3.0 / (i + 1), "lr": 1e-3, "images_per_s": 2.0,
                         "time": i}) for i in range(0, 200, 10)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n" + ('{"iter": 2' if torn else ""))
    return path


def _results(path, trimap=True):
    res = {"format": "deeplabv1-eval", "model": {"arch": "deeplab-largefov"}, "num_images": 3,
           "methods": {m: {"mean_iou": 50.0, "per_class_iou": {c: 40.0 + i for i, c in
                                                              enumerate(VOC_CLASSES)}}
                       for m in ("network", "crf")}}  # fmt: skip
    if trimap:
        res["trimap"] = {"widths": [1, 2, 3], "network": [30.0, 35.0, None], "crf": [32, 36, 38]}
    path.write_text(json.dumps(res))
    return path


def _size(path):
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def test_log_and_results_stacked_into_one_png(tmp_path, capsys):
    log = _log(tmp_path / "log.jsonl", torn=True)
    res = _results(tmp_path / "results.json")
    assert main(["plot", str(log), "-o", str(tmp_path / "log.png")]) == 0
    assert "torn last line" in capsys.readouterr().err
    assert main(["plot", str(log), str(res), "-o", str(tmp_path / "all.png")]) == 0
    (w1, h1), (w2, h2) = _size(tmp_path / "log.png"), _size(tmp_path / "all.png")
    assert h2 > 2.5 * h1 and w2 >= w1  # log + IoU bars + trimap, stacked


def test_separate_outputs(tmp_path):
    res = _results(tmp_path / "results.json")
    assert main(["plot", str(res), "-o", str(tmp_path / "ev.png"), "--separate"]) == 0
    assert sorted(p.name for p in tmp_path.glob("ev*")) == ["ev_iou.png", "ev_trimap.png"]
    res2 = _results(tmp_path / "r2.json", trimap=False)
    assert main(["plot", str(res2), "-o", str(tmp_path / "x.png"), "--separate"]) == 0
    assert [p.name for p in tmp_path.glob("x*")] == ["x_iou.png"]


@pytest.mark.parametrize(
    "content,message",
    [("{}", "not a deeplabv1 eval results"), ("[1, 2", "not a readable JSON")],
)
def test_bad_files_exit_2(tmp_path, capsys, content, message):
    (tmp_path / "bad.json").write_text(content)
    assert main(["plot", str(tmp_path / "bad.json"), "-o", str(tmp_path / "o.png")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_bad_log_line_and_missing_file(tmp_path, capsys):
    (tmp_path / "l.jsonl").write_text('{"iter": 1, "loss": 2}\nnot json\n{"iter": 2, "loss": 1}\n')
    assert main(["plot", str(tmp_path / "l.jsonl"), "-o", str(tmp_path / "o.png")]) == 2
    assert "l.jsonl: line 2 is not JSON" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nope.jsonl"), "-o", str(tmp_path / "o.png")]) == 2


@pytest.mark.parametrize("name,content", [("w.json", b"PK\x03\x04\x80\x02torch"),
                                          ("l.jsonl", b'{"iter": 1}\n\xff\xfe\n')],
                         ids=["checkpoint-renamed", "log-not-utf8"])  # fmt: skip
def test_binary_file_is_one_line(tmp_path, capsys, name, content):
    (tmp_path / name).write_bytes(content)
    assert main(["plot", str(tmp_path / name), "-o", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err
    assert f"{name}: not a training log or results file" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_log_without_records_names_the_log(tmp_path, capsys):
    (tmp_path / "l.jsonl").write_text('{"iter": 1}\n{"epoch": 2}\n')
    assert main(["plot", str(tmp_path / "l.jsonl"), "-o", str(tmp_path / "o.png")]) == 2
    assert f"{tmp_path / 'l.jsonl'}: no records with 'iter'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "l.jsonl"]


@pytest.mark.parametrize("out", ["x.jpg", "x.xyz", "x"])
def test_output_must_be_png(tmp_path, capsys, out):
    log = _log(tmp_path / "log.jsonl")
    assert main(["plot", str(log), "-o", str(tmp_path / out)]) == 2
    assert "plot writes PNG images" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [log]


def test_folders_stand_for_their_log_and_results(tmp_path, capsys):
    # a folder was refused as "file not found", though it exists and paper-table takes one
    run, ev, empty = tmp_path / "run", tmp_path / "ev", tmp_path / "empty"
    for folder in (run, ev, empty):
        folder.mkdir()
    _log(run / "log.jsonl")
    _results(ev / "results.json")
    assert main(["plot", str(run), str(ev), "-o", str(tmp_path / "a.png"), "--separate"]) == 0
    assert {p.name for p in tmp_path.glob("a_*.png")} == {"a_log.png", "a_iou.png", "a_trimap.png"}
    assert main(["plot", str(empty), "-o", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err
    assert err.endswith(f"deeplabv1 plot: error: {empty}: a folder holding no log.jsonl or "
                        "results.json\n") and "file not found" not in err  # fmt: skip
    assert not (tmp_path / "b.png").exists()
