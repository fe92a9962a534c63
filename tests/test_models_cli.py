"""``deeplabv1 info`` and ``deeplabv1 rf`` end to end (through the CLI entry point)."""

from __future__ import annotations

import json

import pytest

from deeplabv1.cli import main

EXPECTED = {  # arch: (params, output side for 513, true RF, paper RF)
    "deeplab": (65_140_565, 64, 308, 128),
    "deeplab-7x7": (134_346_581, 65, 419, 224),
    "deeplab-4x4": (65_140_565, 65, 419, 224),
    "deeplab-largefov": (20_505_429, 65, 435, 224),
    "deeplab-msc": (66_346_686, 65, 323, 128),
    "deeplab-msc-largefov": (21_711_550, 65, 435, 224),
}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_info_json(arch, capsys):
    assert main(["info", "--arch", arch, "--input-size", "513", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    got = (info["params"], info["output_size"], info["receptive_field"],
           info["paper_receptive_field"])  # fmt: skip
    assert got == EXPECTED[arch] and info["arch"] == arch
    assert isinstance(info["params"], int)


def test_info_settings_and_errors(capsys):
    assert main(["info", "--arch", "deeplab", "--input-size", "306", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output_size"] == 39
    assert main(["info", "--arch", "deeplab", "--input-size", "306", "--pool4-pad", "1",
                 "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["output_size"] == 41
    assert main(["info", "--arch", "deeplab", "--pool5a", "false"]) == 2
    assert "pool5a" in capsys.readouterr().err
    assert main(["info", "--input-size", "0"]) == 2


@pytest.mark.parametrize("command", ["info", "rf"])
def test_input_size_is_checked_alike_by_info_and_rf(command, tmp_path, capsys):
    # rf did not check --input-size itself: 0 gave "input too small: Conv2d gets side 0"
    assert main([command, "--input-size", "0"]) == 2
    err = capsys.readouterr().err
    assert err == f"deeplabv1 {command}: error: command line: input_size: must be >= 1, got 0\n"
    config = tmp_path / "model.yaml"
    config.write_text("arch: deeplab\ninput_size: -3\n")
    assert main([command, "--config", str(config)]) == 2
    assert f"{config}: input_size: must be >= 1, got -3" in capsys.readouterr().err


def test_rf_table_and_explanation(capsys):
    assert main(["rf", "--arch", "deeplab", "--input-size", "306"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    fc6 = next(line.split() for line in lines if line.startswith("fc6"))
    assert fc6 == ["fc6", "Conv2d", "4", "1", "6", "4", "13", "8", "308", "39"]
    pool4 = next(line.split() for line in lines if line.startswith("pool4"))
    assert pool4 == ["pool4", "MaxPool2d", "2", "1", "0", "1", "2", "8", "100", "39"]
    assert "128 px" in out and "308 px" in out and "180 px" in out


def test_rf_plot_msc_largefov(tmp_path, capsys):
    png = tmp_path / "rf.png"
    assert main(["rf", "--arch", "deeplab-msc-largefov", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "224 px" in out and "435 px" in out and "MSc branch on pool4: receptive field 131" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] > 800 and im.size[1] > 300


def test_rf_plot_never_writes_over_a_file_of_yours(tmp_path, capsys):
    """`rf --plot` replaced any existing file (a photo, a note, a .txt) with its PNG; like
    `plot -o` it now refuses a file deeplabv1 did not write unless --overwrite, and a name
    that is not a .png, each in one line before any work."""
    mine = tmp_path / "figure.png"
    mine.write_bytes(b"my own figure")
    assert main(["rf", "--arch", "deeplab", "--plot", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "figure.png: exists and was not written by deeplabv1" in err
    assert "--overwrite" in err and "Traceback" not in err
    assert mine.read_bytes() == b"my own figure"
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    assert main(["rf", "--arch", "deeplab", "--plot", str(notes)]) == 2
    assert "notes.txt: --plot has suffix '.txt'" in capsys.readouterr().err
    assert notes.read_text() == "keep me"
    # its own PNG is replaced on a rerun; yours with --overwrite
    ours = tmp_path / "rf.png"
    assert main(["rf", "--arch", "deeplab", "--plot", str(ours)]) == 0
    assert main(["rf", "--arch", "deeplab", "--plot", str(ours)]) == 0
    assert main(["rf", "--arch", "deeplab", "--plot", str(mine), "--overwrite"]) == 0
    assert mine.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
