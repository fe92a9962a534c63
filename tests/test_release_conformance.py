"""Conformance with the authors' release files: every layer, multiplier, filler and solver value.

Each released variant's train / test / solver / solver2 prototxt (``../shared/release``, parsed
by ``release_files.parse_prototxt``) is compared with what this project builds:

- every layer of each phase against the built modules: kernel, stride, pad, dilation (``hole``),
  ceil-mode rounding, pooling type, channels, dropout, and the forward order (test phase: with
  the model's test-time changes, ``test_overrides``);
- blobs_lr / weight_decay against the optimizer's parameter groups of the variant's config;
- weight / bias fillers against the fresh initialisation;
- the label shrink offset, the train crop, batch and mirror against the configs;
- the test input size, the INTERP zooms, the PADDING crop and the MSc fusion;
- every solver (stage 1) and solver2 (stage 2) value against the packaged configs.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from release_files import (
    REPO,
    VARIANTS,
    Message,
    layer_named,
    phase_layers,
    read_release,
    release_dir,
)
from torch import nn

from deeplabv1.config import config_from_dict, load_yaml
from deeplabv1.data.caffe_input import MEAN_BGR
from deeplabv1.models import build_model, inference
from deeplabv1.train.build import build_training_model
from deeplabv1.train.config import TrainConfig
from deeplabv1.train.optim import build_optimizer

# variant -> (stage-1 config, stage-2 config) among the packaged configs
CONFIGS = {
    "deeplab": ("deeplab_voc.yaml", "deeplab_voc_stage2_trainval.yaml"),
    "deeplab-msc": ("deeplab_msc_voc.yaml", "deeplab_msc_voc_stage2_trainval.yaml"),
    "deeplab-largefov": ("voc_largefov_stage1.yaml", "voc_largefov_stage2_trainval.yaml"),
    "deeplab-msc-largefov": (
        "deeplab_msc_largefov_voc.yaml",
        "deeplab_msc_largefov_voc_stage2_trainval.yaml",
    ),
}
PHASES = ("TRAIN", "TEST")
CASES = [(v, p) for v in VARIANTS for p in PHASES]
CONV, POOL = "CONVOLUTION", "POOLING"


def our_name(caffe_name: str) -> str:
    """The released classifier is named after the data set (fc8_pascal, fc8_voc12)."""
    return "fc8" if caffe_name.startswith("fc8_") else caffe_name


def load_config(name: str, **overrides) -> TrainConfig:
    path = REPO / "src" / "deeplabv1" / "configs" / name
    data = {"data_root": "unused", **load_yaml(path), **overrides}
    return config_from_dict(TrainConfig, data, name)


def meta_model(arch: str) -> nn.Module:
    """The full-width network (channels as released) without allocating its weights."""
    with torch.device("meta"):
        return build_model(arch)


def prototxt_net(variant: str, phase: str) -> list[Message]:
    kind = "train" if phase == "TRAIN" else "test"
    return phase_layers(read_release(variant, kind), phase)


def released_test_net(model):
    """(overrides, zooms, crop) of the model's test network; a model without a separate test
    network (earlier versions) runs its training network and zooms fc8 x8."""
    net = getattr(model, "test_net", None)
    return (net.overrides, net.zooms, net.crop) if net else ({}, {"fc8": 8}, 0)


def phase_setting(model, name: str, key: str, value):
    """A module setting as the model runs it in the test network."""
    return released_test_net(model)[0].get(name, {}).get(key, value)


def _param(layer: Message, key: str) -> Message:
    return layer.one(key) or Message()


@pytest.fixture(autouse=True)
def _needs_release():
    release_dir()


@pytest.mark.parametrize("variant,phase", CASES)
def test_every_layer_matches_the_built_modules(variant, phase):
    model = meta_model(variant)
    kinds = (CONV, POOL, "RELU", "DROPOUT")
    layers = [ly for ly in prototxt_net(variant, phase) if ly.one("type") in kinds]
    ours = dict(model.named_modules())
    for layer in layers:
        name, kind = our_name(layer.one("name")), layer.one("type")
        module = ours.get(name)
        assert module is not None, f"{variant} {phase}: no module for layer {name}"
        test = phase == "TEST"
        if kind == CONV:
            p = _param(layer, "convolution_param")
            assert isinstance(module, nn.Conv2d), name
            assert module.out_channels == p.one("num_output"), name
            assert module.kernel_size == (p.one("kernel_size"),) * 2, name
            assert module.dilation == (p.one("hole", 1),) * 2, name
            assert module.padding == (p.one("pad", 0),) * 2, name
            stride = module.stride[0]
            if test:
                stride = phase_setting(model, name, "stride", stride)
            assert stride == p.one("stride", 1), f"{variant} {phase} {name}: stride"
            assert module.groups == 1 and module.bias is not None, name
        elif kind == POOL:
            p = _param(layer, "pooling_param")
            pad = module.padding
            if test:
                pad = phase_setting(model, name, "padding", pad)
            assert (module.kernel_size, module.stride, pad) == (
                p.one("kernel_size"), p.one("stride", 1), p.one("pad", 0)
            ), f"{variant} {phase} {name}: kernel/stride/pad"  # fmt: skip
            assert module.ceil_mode is True, name  # Caffe rounds pooled sizes up
            if p.one("pool", "MAX") == "MAX":
                assert isinstance(module, nn.MaxPool2d), name
            else:
                assert p.one("pool") == "AVE" and isinstance(module, nn.AvgPool2d), name
                assert module.count_include_pad is True, name  # Caffe divides by the padded window
        elif kind == "RELU":
            assert isinstance(module, nn.ReLU), name
        else:
            assert isinstance(module, nn.Dropout), name
            assert module.p == _param(layer, "dropout_param").one("dropout_ratio"), name
    convs = {our_name(ly.one("name")) for ly in layers if ly.one("type") == CONV}
    assert convs == {n for n, m in ours.items() if isinstance(m, nn.Conv2d)}


@pytest.mark.parametrize("variant,phase", CASES)
def test_forward_order_and_wiring(variant, phase):
    """The main path runs the prototxt's layers in order; each MSc branch reads its blob."""
    model = meta_model(variant)
    layers = prototxt_net(variant, phase)
    branches = set(getattr(model, "msc_layer_names", ()))
    path = [
        our_name(ly.one("name")) for ly in layers
        if ly.one("type") in (CONV, POOL, "RELU", "DROPOUT")
        and our_name(ly.one("name")) not in branches
    ]  # fmt: skip
    assert path == list(model.path_names)
    for src in getattr(model, "msc_branch_names", ()):
        assert layer_named(layers, f"{src}_conv").one("bottom") == src


@pytest.fixture(scope="module")
def voc21(tmp_path_factory):
    """A tiny VOC-layout folder with the 21 VOC classes (for settings read from the data)."""
    from deeplabv1.data.synth import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("voc21"), 2, size=(32, 32), num_classes=21)


# MSc stage 1 starts, as released, from the trained plain network (the configs' --init)
MSC_INIT_ARCH = {"deeplab-msc": "deeplab", "deeplab-msc-largefov": "deeplab-largefov"}


@pytest.mark.parametrize("variant", VARIANTS)
def test_learning_rate_and_decay_multipliers(variant, voc21, tmp_path):
    from deeplabv1.checkpoint import save_checkpoint

    init = None
    if variant in MSC_INIT_ARCH:  # without a checkpoint nothing would be frozen (random trunk)
        base = build_model(MSC_INIT_ARCH[variant], num_classes=21, width=1 / 16)
        init = str(tmp_path / "init.pt")
        save_checkpoint(init, base.state_dict(), arch=base.arch, num_classes=21, width=1 / 16)
    cfg = load_config(CONFIGS[variant][0], width=1 / 16, data_root=str(voc21), split="train",
                      label_dir="SegmentationClass", init=init)  # fmt: skip
    model, _ = build_training_model(cfg)
    if init is not None:  # fc8 copied, as from the released initial model: the recipe's freeze
        assert torch.equal(model.fc8.weight, base.fc8.weight)
    groups = {}
    for group in build_optimizer(model, cfg).param_groups:
        for name in group["names"]:
            groups[name] = (group["lr"], group["weight_decay"])
    for layer in prototxt_net(variant, "TRAIN"):
        if layer.one("type") != CONV:
            continue
        name = our_name(layer.one("name"))
        lr_mults, decay_mults = layer["blobs_lr"], layer["weight_decay"]
        for kind, lr_mult, decay_mult in zip(("weight", "bias"), lr_mults, decay_mults):
            key = f"{name}.{kind}"
            if lr_mult == 0:  # frozen in Caffe: no update at all (the decay never acts)
                assert key not in groups, f"{variant}: {key} must be frozen"
                assert not model.get_parameter(key).requires_grad, key
                continue
            assert key in groups, f"{variant}: {key} is not trained"
            lr, decay = groups[key]
            assert lr == pytest.approx(cfg.base_lr * lr_mult), f"{variant}: {key} lr"
            assert decay == pytest.approx(cfg.weight_decay * decay_mult), f"{variant}: {key} decay"


@pytest.mark.parametrize("variant", VARIANTS)
def test_fillers_of_the_fresh_layers(variant):
    """Layers trained from scratch (fc8, MSc branches) start from the prototxt's fillers."""
    torch.manual_seed(0)
    model = build_model(variant, width=0.5)
    fresh = set(model.classifier_names) | set(getattr(model, "msc_layer_names", ()))
    for layer in prototxt_net(variant, "TRAIN"):
        name = our_name(layer.one("name"))
        if layer.one("type") != CONV or name not in fresh:
            continue
        p = _param(layer, "convolution_param")
        conv = model.get_submodule(name)
        weight, bias = conv.weight.detach().double(), conv.bias.detach()
        filler, bias_filler = p.one("weight_filler"), p.one("bias_filler")
        if filler is None:  # Caffe's default filler: constant 0
            assert torch.count_nonzero(weight) == 0, f"{variant}: {name} must start at zero"
        else:
            assert filler.one("type") == "gaussian" and filler.one("mean", 0) == 0
            std, n = filler.one("std"), weight.numel()
            assert abs(weight.std().item() - std) < 5 * std / math.sqrt(2 * n), f"{name} std"
            assert abs(weight.mean().item()) < 5 * std / math.sqrt(n), f"{name} mean"
        value = 0 if bias_filler is None else bias_filler.one("value", 0)
        assert bias_filler is None or bias_filler.one("type") == "constant"
        assert torch.all(bias == value), f"{variant}: {name} bias"


@pytest.mark.parametrize("variant", VARIANTS)
def test_label_shrink_offset_and_grid(variant):
    """INTERP shrink_factor 8, pad_beg P: target i is label[-P + 8 i], one per score cell."""
    cfg = load_config(CONFIGS[variant][0])
    shrink = _param(layer_named(prototxt_net(variant, "TRAIN"), "label_shrink"), "interp_param")
    assert shrink.one("shrink_factor") == 8 and shrink.one("pad_end", 0) == 0
    start = -shrink.one("pad_beg", 0)
    crop = cfg.resolved_crop_size()
    label = torch.arange(crop * crop).reshape(crop, crop)
    small = inference.shrink_labels(label, offset=cfg.resolved_label_offset())
    expect = label[start::8, start::8]
    assert torch.equal(small, expect)
    # Caffe's output size (H - P' - 1) // 8 + 1 is the network's score grid on the crop
    cells = (crop - start - 1) // 8 + 1
    assert small.shape[-1] == cells == inference.output_size(variant, crop)


@pytest.mark.parametrize("variant", VARIANTS)
def test_train_data_layer_matches_the_configs(variant):
    data = layer_named(prototxt_net(variant, "TRAIN"), "data")
    transform, source = _param(data, "transform_param"), _param(data, "image_data_param")
    assert tuple(transform["mean_value"]) == pytest.approx(MEAN_BGR)
    for config in CONFIGS[variant]:
        cfg = load_config(config)
        assert cfg.resolved_crop_size() == transform.one("crop_size"), config
        assert cfg.mirror is (transform.one("mirror") == "true"), config
        assert cfg.batch_size == source.one("batch_size"), f"{config}: batch size"
        assert cfg.iter_size == 1 or cfg.batch_size % cfg.iter_size == 0, config


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("stage", [0, 1])
def test_solver_values_match_the_configs(variant, stage):
    solver = read_release(variant, ("solver", "solver2")[stage])
    cfg = load_config(CONFIGS[variant][stage])
    assert cfg.arch == variant
    assert cfg.split == ("train_aug", "trainval_aug")[stage]
    assert cfg.lr_policy == solver.one("lr_policy")
    assert cfg.base_lr == pytest.approx(solver.one("base_lr"))
    assert cfg.gamma == pytest.approx(solver.one("gamma"))
    assert cfg.step_size == solver.one("stepsize")
    assert cfg.max_iter == solver.one("max_iter")
    assert cfg.momentum == pytest.approx(solver.one("momentum"))
    assert cfg.weight_decay == pytest.approx(solver.one("weight_decay"))
    assert cfg.sgd_variant == "caffe"  # Caffe's momentum update (lr inside the buffer)


@pytest.mark.parametrize("variant", VARIANTS)
def test_test_input_size_zooms_crop_and_fusion(variant):
    """The released test network: input side, INTERP zooms, PADDING crop, the summed maps."""
    model = meta_model(variant)
    layers = prototxt_net(variant, "TEST")
    data = layer_named(layers, "data")
    side = _param(data, "transform_param").one("crop_size")
    # the default test size (513) lands on the release's input side on the model's grid
    test_side = getattr(inference, "input_side_for", lambda m, s, t: t)
    assert test_side(model, 500, 513) == side
    interps = [ly for ly in layers if ly.one("type") == "INTERP"]
    zooms = {
        our_name(ly.one("bottom")): _param(ly, "interp_param").one("zoom_factor") for ly in interps
    }
    tops = {ly.one("top"): our_name(ly.one("bottom")) for ly in interps}
    fusion = [ly for ly in layers if ly.one("type") == "ELTWISE"]
    if fusion:
        (fusion,) = fusion
        assert _param(fusion, "eltwise_param").one("operation") == "SUM"
        summed = [tops.get(b, our_name(b)) for b in fusion["bottom"]]
        zooms.update({name: 1 for name in summed if name not in zooms})  # data_ms: full size
        assert summed == list(released_test_net(model)[1])
    assert zooms == released_test_net(model)[1]
    crops = [_param(ly, "padding_param") for ly in layers if ly.one("type") == "PADDING"]
    crop_beg = -crops[0].one("pad_beg") if crops else 0
    crop_end = -crops[0].one("pad_end") if crops else 0
    assert released_test_net(model)[2] == crop_beg
    # the zoomed map, cropped, is exactly the input side: aligned with the input pixels
    pad = phase_setting(model, "pool4", "padding", None)
    cells = inference.output_size(variant, side, **({} if pad is None else {"pool4_pad": pad}))
    assert (cells - 1) * 8 + 1 - crop_beg - crop_end == side


def _shell_values(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in re.findall(r"^\s*(\w+)=([0-9.]+)\s*$", text, re.M)}


def test_named_crf_sets_carry_the_release_values():
    """run_densecrf.sh and the (commented-out) DENSE_CRF layer of the test prototxts."""
    from deeplabv1.crf.params import get_params

    script = _shell_values((release_dir() / "run_densecrf.sh").read_text())
    assert script["Bi_X_STD"] == script["Bi_Y_STD"] and script["POS_X_STD"] == script["POS_Y_STD"]
    assert len({script[f"Bi_{c}_STD"] for c in "RGB"}) == 1
    expect = (script["Bi_W"], script["Bi_X_STD"], script["Bi_R_STD"], script["POS_W"],
              script["POS_X_STD"])  # fmt: skip
    p = get_params("largefov-run-densecrf")
    assert (p.w1, p.sa, p.sb, p.w2, p.sg) == expect
    for variant in ("deeplab-largefov", "deeplab-msc-largefov"):
        text = (release_dir() / f"{VARIANTS[variant]}_test.prototxt").read_text()
        found = dict(re.findall(r"#\s*(pos_w|pos_xy_std|bi_w|bi_xy_std|bi_rgb_std):\s*(\S+)", text))
        p = get_params("test-prototxt-dense-crf")
        assert (p.w1, p.sa, p.sb, p.w2, p.sg) == tuple(
            float(found[k]) for k in ("bi_w", "bi_xy_std", "bi_rgb_std", "pos_w", "pos_xy_std")
        )
    grid = (release_dir() / "run_densecrf_grid_search.sh").read_text()
    ranges = {k: v.split() for k, v in re.findall(r"^range_(\w+)=\(([^)]*)\)", grid, re.M)}
    assert all(len(v) == 1 for v in ranges.values())  # as released: one point
    defaults = _shell_values(grid)
    p = get_params("largefov-grid-search-script")
    assert (p.w1, p.sa, p.sb, p.w2, p.sg) == tuple(
        float(ranges[k][0]) for k in ("W", "XY_STD", "RGB_STD", "POS_W", "POS_XY_STD")
    )
    p = get_params("test-prototxt-dense-crf")
    assert (p.w1, p.sa, p.sb) == (defaults["Bi_W"], defaults["Bi_X_STD"], defaults["Bi_R_STD"])
    # the paper's per-variant values stay the default of every variant
    assert get_params("deeplab-largefov") != get_params("largefov-run-densecrf")


def test_shrink_is_never_an_average():
    """The label grid takes one pixel per cell (hypothesis-free spot check with 255 borders)."""
    label = np.full((306, 306), 255, np.uint8)
    label[1::8, 1::8] = 7
    small = inference.shrink_labels(torch.from_numpy(label), offset=1)
    assert torch.all(small == 7)


@pytest.mark.parametrize("variant", ["deeplab", "deeplab-largefov"])
def test_the_trainer_uses_the_released_label_pixels(variant, tmp_path, monkeypatch):
    """One real training iteration: the loss sees label[-P + 8i, -P + 8j] of the crop."""
    from PIL import Image

    from deeplabv1.data.synth import make_synthetic_voc
    from deeplabv1.train import loop

    crop = load_config(CONFIGS[variant][0]).resolved_crop_size()
    root = make_synthetic_voc(tmp_path / "voc", 1, size=(crop, crop), val_fraction=0.0,
                              num_classes=21)  # fmt: skip
    yy, xx = np.mgrid[:crop, :crop]
    pattern = ((3 * yy + xx) % 21).astype(np.uint8)  # a different class at every offset
    (sid,) = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    Image.fromarray(pattern).save(root / "SegmentationClass" / f"{sid}.png")
    seen = []

    def spy(scores, labels):
        seen.append(labels.clone())
        return loop_loss(scores, labels)

    loop_loss = loop.cross_entropy_sum
    monkeypatch.setattr(loop, "cross_entropy_sum", spy)
    cfg = load_config(
        CONFIGS[variant][0], data_root=str(root), split="train", label_dir="SegmentationClass",
        width=1 / 32, batch_size=1, max_iter=1, mirror=False, workers=0, device="cpu",
        progress=False, tensorboard=False, checkpoint_every=0, out_dir=str(tmp_path / "run"),
    )  # fmt: skip
    loop.train(cfg)
    shrink = _param(layer_named(prototxt_net(variant, "TRAIN"), "label_shrink"), "interp_param")
    start = -shrink.one("pad_beg", 0)
    expect = torch.from_numpy(pattern[start::8, start::8].astype(np.int64))
    assert len(seen) == 1 and torch.equal(seen[0][0], expect)
