"""TrainConfig: the paper's defaults, the shipped YAML files, flags over YAML, init and errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

from deeplabv1.checkpoint import save_checkpoint
from deeplabv1.config import add_config_args, config_from_dict, load_yaml, resolve_config
from deeplabv1.errors import DeepLabError
from deeplabv1.models import build_model
from deeplabv1.train.build import build_training_model
from deeplabv1.train.config import TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "deeplabv1" / "configs"


def test_defaults_are_the_paper_recipe():
    cfg = TrainConfig()
    assert (cfg.base_lr, cfg.momentum, cfg.weight_decay) == (1e-3, 0.9, 5e-4)
    assert (cfg.lr_policy, cfg.gamma, cfg.step_size, cfg.max_iter) == ("step", 0.1, 2000, 6000)
    assert (cfg.batch_size, cfg.classifier_lr_mult, cfg.bias_lr_mult) == (20, 10.0, 2.0)
    assert cfg.resolved_crop_size() == 321
    assert TrainConfig(arch="deeplab").resolved_crop_size() == 306
    assert TrainConfig(arch="deeplab-msc").resolved_msc_train_fc8() is True
    assert TrainConfig(arch="deeplab-msc-largefov").resolved_msc_train_fc8() is False


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = config_from_dict(TrainConfig, load_yaml(path), str(path))
    assert cfg.arch in ("deeplab", "deeplab-largefov", "deeplab-msc", "deeplab-msc-largefov")
    cfg_with_data = TrainConfig(**{**cfg.__dict__, "data_root": "VOC2012"})
    cfg_with_data.validate()


def test_stage2_config_is_the_trainval_fine_tuning():
    cfg = config_from_dict(TrainConfig, load_yaml(CONFIGS / "voc_largefov_stage2_trainval.yaml"))
    assert (cfg.split, cfg.base_lr, cfg.step_size, cfg.max_iter) == (
        "trainval_aug", 1e-3, 2000, 8000)
    assert cfg.init == "runs/voc_largefov_stage1/final.pt"


def test_flags_override_yaml(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("batch_size: 30\nbase_lr: 0.002\nbf16: true\n")
    parser = argparse.ArgumentParser()
    add_config_args(parser, TrainConfig)
    args = parser.parse_args(["--config", str(yaml_file), "--base-lr", "0.005", "--iter-size", "3"])
    cfg = resolve_config(TrainConfig, args)
    assert (cfg.batch_size, cfg.base_lr, cfg.iter_size, cfg.bf16) == (30, 0.005, 3, True)


def test_bad_settings_name_the_problem():
    with pytest.raises(DeepLabError, match="not divisible"):
        TrainConfig(data_root="x", batch_size=20, iter_size=3).validate()
    with pytest.raises(DeepLabError, match="not divisible"):
        TrainConfig(data_root="x", batch_size=20, iter_size=2).validate(world_size=3)
    with pytest.raises(DeepLabError, match="data_root"):
        TrainConfig().validate()
    with pytest.raises(DeepLabError, match="unknown setting"):
        config_from_dict(TrainConfig, {"lr": 0.1})


def test_infinite_rates_and_multipliers_are_refused():
    """`--base-lr inf` (or an infinite decay, gamma or multiplier) passed the `> 0` checks and
    trained into NaN weights; every such value is now refused before anything runs."""
    for key in ("base_lr", "weight_decay", "gamma", "classifier_lr_mult", "bias_lr_mult"):
        with pytest.raises(DeepLabError, match=f"{key} must be a finite number .*got inf"):
            TrainConfig(data_root="x", **{key: float("inf")}).validate()
        with pytest.raises(DeepLabError, match=key):
            TrainConfig(data_root="x", **{key: float("nan")}).validate()
    # finite but beyond float32 once multiplied (x10 x2): a RuntimeError in the optimizer
    with pytest.raises(DeepLabError, match=r"base_lr 1e\+38 times the lr multipliers \(20\) "
                                           "exceeds the largest float32"):
        TrainConfig(data_root="x", base_lr=1e38).validate()


def test_the_joint_crf_stage_settings_are_checked_before_stage_1():
    """The joint stage's settings are refused by validate, before stage 1 trains (and before an
    earlier run in out_dir makes way); also without crf end-to-end, as every command refuses a
    bad setting it would not use (a config.yaml that a later joint stage would refuse)."""
    for bad, match in [
        ({"crf_max_iter": 0}, "crf_max_iter"),
        ({"crf_train_iters": 0}, "crf_train_iters"),
        ({"crf_test_iters": 0}, "crf_test_iters"),
        ({"crf_normalization": "bogus"}, "crf_normalization .*'bogus'"),
        # a traceback from the optimizer after stage 1, or silent gradient ascent, before
        ({"crf_base_lr": -1.0}, "crf_base_lr must be a finite number > 0, got -1.0"),
        ({"crf_base_lr": float("inf")}, "crf_base_lr"),
        ({"crf_lr": -1.0}, "crf_lr must be a finite number >= 0, got -1.0"),
        ({"crf_lr": float("nan")}, "crf_lr"),
    ]:
        with pytest.raises(DeepLabError, match=match):
            TrainConfig(data_root="x", crf="end-to-end", **bad).validate()
        with pytest.raises(DeepLabError, match=match):
            TrainConfig(data_root="x", **bad).validate()


def test_init_copies_trunk_and_renews_a_foreign_classifier(tmp_path):
    src = build_model("deeplab-largefov", width=0.0625, num_classes=5)
    with torch.no_grad():
        for p in src.parameters():
            p.fill_(0.25)
    path = tmp_path / "init.pt"
    save_checkpoint(path, src.state_dict(), arch="deeplab-largefov", num_classes=5, width=0.0625)
    model, notes = build_training_model(TrainConfig(width=0.0625, init=str(path)))
    assert torch.all(model.conv1_1.weight == 0.25) and torch.all(model.fc7.bias == 0.25)
    assert model.fc8.weight.shape[0] == 21 and torch.all(model.fc8.bias == 0)  # fresh fc8
    assert 0.005 < float(model.fc8.weight.detach().std()) < 0.02  # N(0, 0.01)
    assert notes[1] == (f"initialised from {path}: trunk copied; classifier re-initialised as "
                        "released for 21 classes (fc8; the checkpoint has 5 classes, this run 21)")
    with pytest.raises(DeepLabError, match="conv1_1.weight has shape"):
        build_training_model(TrainConfig(width=0.125, init=str(path)))


def test_msc_from_a_largefov_checkpoint_freezes_the_trunk(tmp_path):
    src = build_model("deeplab-largefov", width=0.0625)
    path = tmp_path / "lfov.pt"
    save_checkpoint(path, src.state_dict(), arch="deeplab-largefov", num_classes=21, width=0.0625)
    model, _ = build_training_model(
        TrainConfig(arch="deeplab-msc-largefov", width=0.0625, init=str(path)))
    torch.testing.assert_close(model.fc8.weight, src.fc8.weight)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 30  # the five branches' three convs; fc8 frozen (MSc-LargeFOV)
    assert all(n.split(".")[0] in model.msc_layer_names for n in trainable)


def test_a_lone_value_for_a_list_setting_is_named_not_split():
    from dataclasses import dataclass, field

    @dataclass
    class Cfg:
        only: list[str] = field(default_factory=list)

    assert config_from_dict(Cfg, {"only": ["sbd"]}).only == ["sbd"]
    with pytest.raises(DeepLabError, match="only: expected a list, got 'sbd'"):
        config_from_dict(Cfg, {"only": "sbd"})
