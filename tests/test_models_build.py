"""Builders, Caffe layer names, exact parameter counts, init statistics, checkpoints."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deeplabv1.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from deeplabv1.errors import DeepLabError
from deeplabv1.models import BUILDERS, MODEL_NAMES, build_model

VGG_CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]  # fmt: skip
# fc6 (kernel, channels) per variant, from the paper's table of the variants
FC6 = {"deeplab": (4, 4096), "deeplab-7x7": (7, 4096), "deeplab-4x4": (4, 4096),
       "deeplab-largefov": (3, 1024), "deeplab-msc": (4, 4096),
       "deeplab-msc-largefov": (3, 1024)}  # fmt: skip
PAPER_MILLIONS = {"deeplab": 65.1, "deeplab-7x7": 134.3, "deeplab-4x4": 65.1,
                  "deeplab-largefov": 20.5}  # fmt: skip


def conv_params(cin: int, cout: int, k: int) -> int:
    return k * k * cin * cout + cout


def expected_params(arch: str, num_classes: int = 21) -> int:
    """Independent count: VGG16 convs + fc6/fc7/fc8 (+ five MSc MLPs on 3, 64, 128, 256, 512 ch)."""
    k, ch = FC6[arch]
    total = sum(conv_params(i, o, 3) for i, o in VGG_CONVS)
    total += conv_params(512, ch, k) + conv_params(ch, ch, 1) + conv_params(ch, num_classes, 1)
    if "msc" in arch:
        for cin in (3, 64, 128, 256, 512):
            total += conv_params(cin, 128, 3) + conv_params(128, 128, 1)
            total += conv_params(128, num_classes, 1)
    return total


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_build(arch: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return build_model(arch, **kwargs)


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_exact_parameter_counts(arch):
    assert count(meta_build(arch)) == expected_params(arch)
    assert count(meta_build(arch, num_classes=5)) == expected_params(arch, 5)


@pytest.mark.parametrize("arch", sorted(PAPER_MILLIONS))
def test_counts_round_to_paper_table2(arch):
    assert round(count(meta_build(arch)) / 1e6, 1) == PAPER_MILLIONS[arch]


def test_msc_branches_add_1_21_million():
    for base, msc in (("deeplab", "deeplab-msc"), ("deeplab-largefov", "deeplab-msc-largefov")):
        extra = count(meta_build(msc)) - count(meta_build(base))
        assert extra == 1_206_121 and round(extra / 1e6, 2) == 1.21


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_caffe_layer_names_and_attributes(arch):
    model = build_model(arch, width=1 / 16, num_classes=7)
    keys = list(model.state_dict())
    trunk = [f"conv{b}_{i}" for b, n in zip(range(1, 6), (2, 2, 3, 3, 3)) for i in range(1, n + 1)]
    expected = [f"{n}.{p}" for n in trunk + ["fc6", "fc7", "fc8"] for p in ("weight", "bias")]
    sources = ("data", "pool1", "pool2", "pool3", "pool4")
    branches = [f"{s}_{kind}" for s in sources for kind in ("conv", "fc", "ms")]
    if "msc" in arch:
        expected += [f"{n}.{p}" for n in branches for p in ("weight", "bias")]
    assert keys == expected
    assert model.arch == arch and model.num_classes == 7 and model.width == 1 / 16
    assert model.fc8.out_channels == 7
    if "msc" in arch:
        assert model.msc_branch_names == sources
        assert model.classifier_names == ("fc8",) + tuple(f"{s}_ms" for s in sources)
    else:
        assert model.msc_branch_names == () and model.classifier_names == ("fc8",)
    for name in model.classifier_names:
        assert getattr(model, name).out_channels == 7


def test_width_scales_channels():
    small = build_model("deeplab-largefov", width=0.125)
    assert small.conv1_1.out_channels == 8 and small.conv5_3.out_channels == 64
    assert small.fc6.out_channels == 128 and small.fc7.in_channels == 128
    msc = build_model("deeplab-msc", width=0.125)
    assert msc.pool3_conv.in_channels == 32 and msc.pool3_conv.out_channels == 16


def test_released_geometry_settings():
    net = meta_build("deeplab")
    assert (net.pool1.kernel_size, net.pool1.stride, net.pool1.padding) == (2, 2, 1)
    assert net.pool4.padding == 0 and meta_build("deeplab", pool4_pad=1).pool4.padding == 1
    assert (net.fc6.kernel_size, net.fc6.dilation, net.fc6.padding) == ((4, 4), (4, 4), (6, 6))
    fov = meta_build("deeplab-largefov")
    assert fov.pool5a.count_include_pad and all(
        getattr(fov, f"pool{i}").ceil_mode for i in range(1, 6)
    )
    assert (fov.fc6.kernel_size, fov.fc6.dilation, fov.fc6.padding) == ((3, 3), (12, 12), (12, 12))
    assert meta_build("deeplab-4x4").fc6.dilation == (8, 8)
    assert meta_build("deeplab-7x7", trunk="2x2").pool1.kernel_size == 2
    assert meta_build("deeplab-msc").data_conv.stride == (8, 8)
    assert [meta_build("deeplab-msc").get_submodule(f"{s}_conv").stride[0]
            for s in ("pool1", "pool2", "pool3", "pool4")] == [4, 2, 1, 1]  # fmt: skip
    assert not hasattr(meta_build("deeplab-largefov", pool5a=False), "pool5a")


def test_init_paper_reading():
    model = build_model("deeplab-msc", width=0.5, msc_init="paper")
    assert abs(model.fc8.weight.std().item() - 0.01) < 0.001
    assert torch.all(model.fc8.bias == 0)
    for src in model.msc_branch_names:
        conv = getattr(model, f"{src}_conv").weight
        tol = 0.2 if conv.numel() > 2000 else 0.4
        assert abs(conv.std().item() - 0.001) < 0.001 * tol
        assert abs(getattr(model, f"{src}_fc").weight.std().item() - 0.001) < 0.0002
        assert abs(getattr(model, f"{src}_ms").weight.std().item() - 0.01) < 0.002
        assert torch.all(getattr(model, f"{src}_ms").bias == 0)
    assert torch.all(model.conv3_1.bias == 0) and model.conv3_1.weight.std() > 0.01


def test_msc_release_init_is_the_default():
    model = build_model("deeplab-msc-largefov", width=0.5)
    assert abs(model.pool4_fc.weight.std().item() - 0.005) < 0.001
    assert torch.all(model.pool3_ms.weight == 0)
    assert abs(model.pool2_fc.weight.std().item() - 0.001) < 0.0002
    assert model.model_kwargs["msc_init"] == "release"
    old = build_model("deeplab-msc", width=0.5, msc_init="prototxt")  # earlier name: release
    assert torch.all(old.pool3_ms.weight == 0)
    assert build_model("deeplab-msc", width=0.5, msc_init="spec").pool3_ms.weight.std() > 0
    with pytest.raises(DeepLabError, match="msc_init"):
        build_model("deeplab-msc", msc_init="xavier")


def test_build_model_errors():
    with pytest.raises(DeepLabError, match="unknown arch"):
        build_model("deeplab-v2")
    with pytest.raises(DeepLabError, match="pool5a"):
        build_model("deeplab", pool5a=False)
    with pytest.raises(DeepLabError, match="pool4_pad"):
        build_model("deeplab", pool4_pad=2)
    with pytest.raises(DeepLabError, match="width"):
        build_model("deeplab", width=0)
    assert set(BUILDERS) == set(MODEL_NAMES)


def test_dropout_only_in_training():
    model = build_model("deeplab-msc-largefov", width=1 / 16).eval()
    x = torch.randn(1, 3, 65, 65)
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize("arch,kwargs", [("deeplab", {"pool4_pad": 1}),
                                         ("deeplab-7x7", {"trunk": "2x2"}),
                                         ("deeplab-msc-largefov", {"pool5a": False}),
                                         ("deeplab-msc", {"msc_init": "prototxt"})])  # fmt: skip
def test_checkpoint_round_trip(tmp_path, arch, kwargs):
    model = build_model(arch, width=1 / 16, num_classes=4, **kwargs).eval()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model.state_dict(), arch=arch, num_classes=4, width=model.width,
                    model_kwargs=model.model_kwargs)  # fmt: skip
    again = model_from_checkpoint(load_checkpoint(path)).eval()
    assert again.model_kwargs == model.model_kwargs
    x = torch.randn(1, 3, 57, 57)
    assert torch.equal(model(x), again(x))
