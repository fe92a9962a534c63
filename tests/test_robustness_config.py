"""Settings and files that used to be accepted although wrong: each is now refused in one line
naming the setting or the file."""

from __future__ import annotations

import numpy as np
import pytest
from robustness_tools import assert_one_line_error, cli, image_and_scores, tiny_checkpoint

from deeplabv1.cli import main
from deeplabv1.errors import DeepLabError
from deeplabv1.train.config import TrainConfig
from deeplabv1.train.loop import train


@pytest.mark.parametrize(("yaml_text", "flags", "words"), [
    ("", ["--seed", "-1"], "seed must be >= 0, got -1"),
    ("batch_size: true\n", [], "batch_size: expected an integer, got True"),
    ("momentum: 1.5\n", [], "momentum must lie in [0, 1), got 1.5"),
    ("num_classes: twenty-one\n", [], "num_classes: expected an integer"),
    ("base_lr: [0.1]\n", [], "base_lr: expected a number, got [0.1]"),
    ("batch_size: [1, 2\nseed: 3\n", [], "c.yaml:2:5: not valid YAML: while parsing a flow "
     "sequence: expected ',' or ']'"),
    ("seed: 1\n\tmax_iter: 2\n", [], "c.yaml:2:1: not valid YAML"),
    ("batch_size: -3\n", [], "c.yaml: batch_size must be >= 1"),
    ("batch_size: 2\n", ["--seed", "-1"], "train config: seed must be >= 0"),  # the flag's
    ("max_iter: 2\nseed: 1\nmax_iter: 3\n", [],
     "c.yaml:3:1: not valid YAML: duplicate key 'max_iter' (first on line 1)"),
    ("{max_iter: 2, max_iter: 3}\n", [],
     "c.yaml:1:15: not valid YAML: duplicate key 'max_iter' (first on line 1)"),
])  # fmt: skip
def test_train_settings_are_checked_before_anything_runs(tmp_path, capsys, yaml_text, flags,
                                                         words):  # fmt: skip
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    argv = ["train", "--config", str(config), "--data-root", str(tmp_path / "nowhere"),
            "--out-dir", str(tmp_path / "run"), *flags]  # fmt: skip
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "train", words)
    assert not (tmp_path / "run").exists()


def test_train_seed_minus_one_from_the_console(tmp_path):
    proc = cli("train", "--seed", "-1", "--data-root", tmp_path, "--out-dir", tmp_path / "run")
    assert proc.returncode == 2
    assert_one_line_error(proc.stderr, "train", "seed must be >= 0")


def test_python_configs_of_the_wrong_type_name_the_setting(tmp_path):
    cfg = TrainConfig(data_root=str(tmp_path), out_dir=str(tmp_path / "run"), num_classes="21")
    with pytest.raises(DeepLabError, match=r"num_classes must be an integer.*'21' \(str\)"):
        train(cfg)
    with pytest.raises(DeepLabError, match="batch_size must be an integer, got True"):
        TrainConfig(data_root="x", batch_size=True).validate()


def test_a_bad_flag_is_not_blamed_on_the_config_file(tmp_path, capsys):
    config = tmp_path / "p.yaml"
    config.write_text("crf: true\n")  # the file sets crf; --crf-iters comes from the flag
    argv = ["predict", "--config", str(config), "--weights", str(tmp_path / "m.pt"), "-o",
            str(tmp_path / "o"), "--crf-iters", "-1", str(tmp_path / "a.jpg")]  # fmt: skip
    assert main(argv) == 2
    assert_one_line_error(capsys.readouterr().err, "predict",
                          "predict: crf_iters (--crf-iters) must be >= 0")  # fmt: skip


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_negative_test_size_is_refused(tmp_path, capsys, command):
    weights = tiny_checkpoint(tmp_path / "m.pt")
    image, _ = image_and_scores(tmp_path, "a")
    argv = {
        "predict": ["predict", str(image), "-o", str(tmp_path / "o")],
        "eval": ["eval", "--data", str(tmp_path), "-o", str(tmp_path / "o")],
    }[command]
    assert main([*argv, "--weights", str(weights), "--test-size", "-5"]) == 2
    assert_one_line_error(capsys.readouterr().err, command, "test_size (--test-size) must be >= 0")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("yaml_text", "words"), [
    ("crf_params: largefov", "crf_params: unknown variant 'largefov'; expected one of deeplab,"),
    ("crf_param: deeplab", "unknown setting(s) crf_param; known:"),
    ("sa: -50", "sa: must be a positive number (a standard deviation), got -50.0"),
    ("sb: 0", "sb: must be a positive number (a standard deviation), got 0.0"),
    ("sg: .nan", "sg: must be a positive number (a standard deviation), got nan"),
    ("sg: three", "sg: expected a number (or null), got 'three'"),
    ("w1: .inf", "w1: must be a finite number, got inf"),
    ("w2: [3]", "w2: expected a number (or null), got [3]"),
    ("crf_normalization: afterwards", "crf_normalization: expected one of 'after', "),
    ("crf_iters: -1", "crf_iters: must be >= 0, got -1"),
])  # fmt: skip
@pytest.mark.parametrize("crf", [[], ["--crf"]], ids=["", "crf"])
def test_eval_config_crf_settings_are_checked_with_or_without_crf(
    tmp_path, capsys, monkeypatch, yaml_text, words, crf
):
    """Bad CRF settings in `eval --config FILE` are one line naming the file and the setting,
    before anything runs, whether or not --crf asks for the CRF."""
    import deeplabv1.evaluate.run

    monkeypatch.setattr(deeplabv1.evaluate.run, "run_eval", lambda cfg: pytest.fail("ran"))
    weights = tiny_checkpoint(tmp_path / "m.pt")
    image_and_scores(tmp_path, "a")
    config = tmp_path / "eval.yaml"
    config.write_text(yaml_text + "\n")
    argv = ["eval", "--config", str(config), "--weights", str(weights), "--data", str(tmp_path),
            "-o", str(tmp_path / "o"), *crf]  # fmt: skip
    assert main(argv) == 2
    line = assert_one_line_error(capsys.readouterr().err, "eval", words)
    assert line.startswith(f"deeplabv1 eval: error: {config}: "), line
    assert not (tmp_path / "o").exists()


def test_crf_settings_are_checked_alike_by_every_command(tmp_path, capsys):
    """The same CRF setting is refused the same way by `eval`, `predict` and `crf`, from a
    config file (named) or a flag, and in a config built in Python."""
    from deeplabv1.evaluate.config import EvalConfig

    weights = tiny_checkpoint(tmp_path / "m.pt")
    image, scores = image_and_scores(tmp_path, "a")
    config = tmp_path / "c.yaml"
    config.write_text("crf_params: no-such-set\n")
    assert main(["predict", str(image), "--weights", str(weights), "-o", str(tmp_path / "o"),
                 "--config", str(config)]) == 2  # fmt: skip
    assert_one_line_error(capsys.readouterr().err, "predict",
                          f"{config}: crf_params: unknown variant 'no-such-set'")  # fmt: skip
    config.write_text("sb: -5\n")
    assert main(["crf", "--image", str(image), "--scores", str(scores), "-o",
                 str(tmp_path / "o.png"), "--config", str(config)]) == 2  # fmt: skip
    assert_one_line_error(capsys.readouterr().err, "crf", f"{config}: sb: must be a positive "
                          "number (a standard deviation), got -5.0")  # fmt: skip
    assert main(["eval", "--weights", str(weights), "--data", str(tmp_path), "-o",
                 str(tmp_path / "o"), "--sa", "-1"]) == 2  # fmt: skip
    assert_one_line_error(capsys.readouterr().err, "eval", "command line: sa: must be a positive")
    with pytest.raises(DeepLabError, match=r"^eval: sg must be a positive number"):
        EvalConfig(sg=0.0).validate()
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.png").exists()


def test_all_nan_caffemodel_is_refused_by_convert(tmp_path, capsys):
    from test_convert_caffe import _caffe_layers, _write

    from deeplabv1.models import build_model

    ref = build_model("deeplab-largefov", num_classes=5, width=0.0625)
    for p in ref.parameters():
        p.data.fill_(float("nan"))
    src = _write(tmp_path / "nan.caffemodel", _caffe_layers(ref), layout="new",
                 shape_style="shape")  # fmt: skip
    out = tmp_path / "model.pt"
    assert main(["convert", "--from", "caffe", str(src), "--arch", "deeplab-largefov",
                 "-o", str(out)]) == 2  # fmt: skip
    assert_one_line_error(capsys.readouterr().err, "convert", str(src), "NaN")
    assert not out.exists()


def test_prepare_names_every_bad_file_in_one_run(tmp_path, capsys):
    from test_data_prepare import H, W, build

    from deeplabv1.data.sbd import write_sbd_mat

    voc, sbd = build(tmp_path)
    write_sbd_mat(sbd / "cls" / "2008_f.mat", np.zeros((H + 1, W), np.uint8))  # wrong size
    (sbd / "cls" / "2008_g.mat").write_bytes(b"not a mat file")
    bad_png = voc / "SegmentationClass" / "2008_a.png"
    from PIL import Image

    Image.fromarray(np.full((H, W), 40, np.uint8), mode="L").save(bad_png)  # value 40 > 20
    assert main(["data", "prepare", "--voc", str(voc), "--sbd", str(sbd)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "3 bad input file(s)" in err
    for name in ("2008_f.mat", "2008_g.mat", "2008_a.png"):
        assert name in err
    # the good ones were converted; the lists, which would name the bad ids, were not written
    assert (voc / "SegmentationClassAug" / "2008_h.png").is_file()
    assert not (voc / "ImageSets" / "Segmentation" / "train_aug.txt").exists()
