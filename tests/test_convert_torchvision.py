"""torchvision VGG16 -> DeepLab conversion against an independent torchvision-layout VGG16.

The reference network below is written here (torchvision's numbering of ``features`` and
``classifier``), with small random weights and reduced width; it takes torchvision's input
(RGB / 255 normalised by mean/std) while the converted DeepLab network takes Caffe input.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deeplabv1.checkpoint import load_checkpoint, model_from_checkpoint
from deeplabv1.cli import main
from deeplabv1.convert.torchvision_vgg import (
    VGG16_CONV_NAMES,
    choose_channels,
    torchvision_to_deeplab,
    vgg16_from_torchvision,
)
from deeplabv1.data.caffe_input import to_caffe_input
from deeplabv1.models import build_model

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
TAPS = {3: [0, 3, 6], 4: [0, 2, 4, 6], 7: [0, 1, 2, 3, 4, 5, 6]}


class TorchvisionLayoutVGG16(nn.Module):
    """VGG16 laid out as torchvision's ``vgg16`` (same module indices), channels x width."""

    def __init__(self, width: float) -> None:
        super().__init__()
        layers, c = [], 3
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v * width), 3, padding=1), nn.ReLU(inplace=True)]
                c = int(v * width)
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        f = int(4096 * width)
        self.classifier = nn.Sequential(
            nn.Linear(c * 49, f), nn.ReLU(True), nn.Dropout(),
            nn.Linear(f, f), nn.ReLU(True), nn.Dropout(), nn.Linear(f, 1000),
        )  # fmt: skip

    @staticmethod
    def preprocess(rgb: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        return ((x - mean) / std)[None]


def _convert(tv, arch, width, *, seed=0, num_classes=21):
    model = build_model(arch, num_classes=num_classes, width=width)
    state, record = torchvision_to_deeplab(tv.state_dict(), model.state_dict(), seed=seed)
    model.load_state_dict(state, strict=True)
    return model.eval(), state, record


def _conv_activity(model, x):
    """{conv name: (input, pre-activation output)} of one forward pass."""
    seen = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda mod, inp, out, name=name: seen.__setitem__(name, (inp[0].clone(), out.clone()))
        )
        for name in VGG16_CONV_NAMES
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_folded_network_matches_torchvision_on_a_real_picture(voc_samples):
    _, rgb, _ = voc_samples[0]
    tv = TorchvisionLayoutVGG16(0.125).eval()
    model, _, _ = _convert(tv, "deeplab-largefov", 0.125)
    seen = _conv_activity(model, to_caffe_input(rgb)[None])
    with torch.no_grad():
        ref1 = tv.features[:1](tv.preprocess(rgb))  # conv1_1 on torchvision input
        ref2 = tv.features[:3](tv.preprocess(rgb))  # conv1_1, relu, conv1_2
    got1, got2 = seen["conv1_1"][1], seen["conv1_2"][1]
    assert got1.shape == ref1.shape and got2.shape == ref2.shape
    # equal everywhere except the zero-padding ring (see torchvision_vgg's docstring)
    torch.testing.assert_close(got1[..., 1:-1, 1:-1], ref1[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got2[..., 2:-2, 2:-2], ref2[..., 2:-2, 2:-2], rtol=1e-4, atol=1e-4)
    # every deeper conv computes torchvision's filter (same index) on what it receives
    for name, index in zip(VGG16_CONV_NAMES[1:], (2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)):
        x, y = seen[name]
        conv = getattr(model, name)
        ref = F.conv2d(x, tv.features[index].weight, tv.features[index].bias,
                       padding=conv.padding, dilation=conv.dilation)
        torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-5)
    # negative control: the same weights without folding are far off
    plain = nn.Conv2d(3, got1.shape[1], 3, padding=1)
    plain.load_state_dict(tv.features[0].state_dict())
    with torch.no_grad():
        unfolded = plain(to_caffe_input(rgb)[None])
    assert (unfolded - ref1).abs().max() > 10 * (got1 - ref1)[..., 1:-1, 1:-1].abs().max() + 1


@pytest.mark.parametrize("arch,kernel", [("deeplab-largefov", 3), ("deeplab", 4),
                                         ("deeplab-4x4", 4), ("deeplab-7x7", 7)])
def test_fc6_decimation_keeps_the_original_taps(arch, kernel):
    tv = TorchvisionLayoutVGG16(0.0625)
    _, state, record = _convert(tv, arch, 0.0625, seed=1)
    src = tv.classifier[0].weight.detach().reshape(256, 32, 7, 7)
    keep6 = record["fc6_channels"]
    assert record["fc6_taps"] == TAPS[kernel]
    assert state["fc6.weight"].shape == (len(keep6), 32, kernel, kernel)
    for a, ta in enumerate(TAPS[kernel]):
        for b, tb in enumerate(TAPS[kernel]):
            assert torch.equal(state["fc6.weight"][:, :, a, b], src[keep6][:, :, ta, tb])
    assert torch.equal(state["fc6.bias"], tv.classifier[0].bias.detach()[keep6])
    if arch != "deeplab-largefov":
        assert keep6 == list(range(256))


def test_largefov_subset_is_consistent_between_fc6_and_fc7():
    tv = TorchvisionLayoutVGG16(0.25)  # 1,024 fc6 filters in the source, 256 kept
    model, state, record = _convert(tv, "deeplab-largefov", 0.25, seed=7)
    keep6, keep7 = record["fc6_channels"], record["fc7_channels"]
    assert len(keep6) == len(set(keep6)) == 256 == len(keep7) == len(set(keep7))
    assert keep6 == sorted(keep6) and max(keep6) < 1024 and keep6 != list(range(256))
    assert state["fc6.weight"].shape[0] == state["fc7.weight"].shape[1] == 256
    w7 = tv.classifier[3].weight.detach()
    assert torch.equal(state["fc7.weight"][:, :, 0, 0], w7[keep7][:, keep6])
    # functionally: the subset network = the source fc7 fed with only the kept fc6 units
    h = torch.randn(1024)
    mask = torch.zeros(1024)
    mask[keep6] = 1
    with torch.no_grad():
        src = tv.classifier[3](h * mask)[keep7]
        got = model.fc7(h[keep6].view(1, 256, 1, 1)).flatten()
    torch.testing.assert_close(got, src, rtol=1e-5, atol=1e-5)


def test_choose_channels_full_size_and_seeded():
    def draw(seed):
        return choose_channels(4096, 1024, torch.Generator().manual_seed(seed))

    a = draw(0)
    assert a.shape == (1024,) and a.unique().numel() == 1024
    assert torch.equal(a, a.sort().values) and int(a.min()) >= 0 and int(a.max()) < 4096
    assert torch.equal(a, draw(0)) and not torch.equal(a, draw(1))
    assert torch.equal(choose_channels(4096, 4096, torch.Generator()), torch.arange(4096))


def test_fc8_is_fresh_and_msc_branches_keep_the_model_init():
    tv = TorchvisionLayoutVGG16(0.25)
    model = build_model("deeplab-msc-largefov", num_classes=5, width=0.25)
    template = model.state_dict()
    state, record = torchvision_to_deeplab(tv.state_dict(), template, seed=3)
    assert state["fc8.weight"].shape == (5, 256, 1, 1)
    assert torch.equal(state["fc8.bias"], torch.zeros(5))
    assert 0.008 < float(state["fc8.weight"].std()) < 0.012
    branch_keys = [k for k in template if k.split(".")[0] in model.msc_layer_names]
    assert len(branch_keys) == 30
    for key in branch_keys:
        assert torch.equal(state[key], template[key])
    again, _ = torchvision_to_deeplab(tv.state_dict(), template, seed=3)
    other, _ = torchvision_to_deeplab(tv.state_dict(), template, seed=4)
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not torch.equal(state["fc6.weight"], other["fc6.weight"])
    assert not torch.equal(state["fc8.weight"], other["fc8.weight"])


def test_wrong_inputs_are_named():
    tv = TorchvisionLayoutVGG16(0.125).state_dict()
    with pytest.raises(ValueError, match=r"vgg.pth: not a torchvision VGG16 .*missing features\.0"):
        vgg16_from_torchvision({k: v for k, v in tv.items() if k != "features.0.weight"},
                               "vgg.pth")
    template = build_model("deeplab", width=0.25).state_dict()
    with pytest.raises(ValueError, match="does not fit the model"):
        torchvision_to_deeplab(tv, template)


class NotATensor:
    pass


def test_cli_round_trip_and_pickle_refusal(tmp_path, capsys):
    tv = TorchvisionLayoutVGG16(0.125)
    pth = tmp_path / "vgg16.pth"
    torch.save(tv.state_dict(), pth)
    out = tmp_path / "init.pt"
    rc = main(["convert", "--from", "torchvision-vgg16", str(pth), "--arch", "deeplab-largefov",
               "-o", str(out), "--seed", "5", "--num-classes", "4"])
    assert rc == 0 and out.is_file() and (tmp_path / "init.config.yaml").is_file()
    ckpt = load_checkpoint(out)
    assert ckpt["width"] == 0.125 and ckpt["num_classes"] == 4 and ckpt["source"]["seed"] == 5
    model = model_from_checkpoint(out).eval()
    with torch.no_grad():
        scores = model(torch.randn(1, 3, 65, 65))
    assert scores.shape == (1, 4, 9, 9) and torch.isfinite(scores).all()

    evil = tmp_path / "evil.pth"
    torch.save({"conv": NotATensor()}, evil)
    rc = main(["convert", "--from", "torchvision-vgg16", str(evil), "--arch", "deeplab",
               "-o", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert rc == 2 and "evil.pth: refused" in err and "pickle code (GLOBAL" in err
    assert not (tmp_path / "x.pt").exists()
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x08\x01 not a torch file")
    rc = main(["convert", "--from", "torchvision-vgg16", str(junk), "--arch", "deeplab",
               "-o", str(tmp_path / "x.pt")])
    assert rc == 2 and "junk.pth: not a torch .pth file" in capsys.readouterr().err


@pytest.mark.parametrize(("flags", "words"), [
    (["--seed", "-1"], "seed: must be >= 0, got -1"),
    (["--width", "0"], "width: must be a finite number > 0, got 0.0"),
    (["--num-classes", "0"], "num_classes: must be >= 1, got 0"),
    (["--arch", "deeplab-large"], "argument --arch: invalid choice: 'deeplab-large'"),
])  # fmt: skip
def test_settings_are_checked_before_the_source_is_read(tmp_path, capsys, flags, words):
    # convert accepted a negative --seed (train refuses one) and checked --arch, --width and
    # --num-classes only once the whole source file had been read and parsed
    junk = tmp_path / "not_a_model.pth"
    junk.write_bytes(b"\x08\x01 not a torch file")
    argv = ["convert", "--from", "torchvision-vgg16", str(junk), "-o", str(tmp_path / "x.pt")]
    with pytest.raises(SystemExit) if flags[0] == "--arch" else contextlib.nullcontext():
        assert main(argv + flags) == 2
    err = capsys.readouterr().err
    assert words in err and "not_a_model.pth" not in err and "Traceback" not in err
    assert not (tmp_path / "x.pt").exists()
