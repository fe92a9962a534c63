"""`deeplabv1 convert --from caffe / caffe-vgg16` on caffemodel files written by Google's protobuf.

The files come from ``encode_net`` (test_convert_caffe_proto.py: an independent encoder built
from descriptor protos), never from project code. Width-reduced models keep the tests small.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_convert_caffe_proto import encode_net
from test_convert_torchvision import TAPS, TorchvisionLayoutVGG16

from deeplabv1.checkpoint import load_checkpoint, model_from_checkpoint
from deeplabv1.cli import main
from deeplabv1.convert.caffe import fit_blob
from deeplabv1.errors import DeepLabError
from deeplabv1.models import build_model

WIDTH = 0.0625


def _caffe_layers(model, *, fc_as_inner_product=False, names=None):
    """The model's weights as Caffe layers in forward order, with parameter-free layers between."""
    names = names or {}
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    layers = [("data", "Data", [])]
    for prefix in dict.fromkeys(k.rpartition(".")[0] for k in state):
        weight, bias = state[f"{prefix}.weight"], state[f"{prefix}.bias"]
        kind = "Convolution"
        if fc_as_inner_product and prefix in ("fc6", "fc7", "fc8"):
            weight, kind = weight.reshape(weight.shape[0], -1), "InnerProduct"
        layers.append((names.get(prefix, prefix), kind, [weight, bias]))
        layers.append((f"relu_{prefix}", "ReLU", []))
    return layers


def _write(path, layers, **kw):
    path.write_bytes(encode_net(layers, **kw))
    return path


@pytest.mark.parametrize("arch,layout,shape_style,inner", [
    ("deeplab-largefov", "new", "shape", False),
    ("deeplab", "v1", "legacy", True),
    ("deeplab-msc-largefov", "v1", "shape", True),
    ("deeplab-msc", "new", "legacy", False),
])  # fmt: skip
def test_caffe_round_trip(tmp_path, arch, layout, shape_style, inner):
    torch.manual_seed(1)
    ref = build_model(arch, num_classes=5, width=WIDTH).eval()
    for p in ref.parameters():  # non-trivial values everywhere (biases too)
        p.data.normal_(0, 0.05)
    layers = _caffe_layers(ref, fc_as_inner_product=inner, names={"fc8": "fc8_voc12"})
    src = _write(tmp_path / "train_iter_6000.caffemodel", layers, layout=layout,
                 shape_style=shape_style)
    out = tmp_path / "model.pt"
    rc = main(["convert", "--from", "caffe", str(src), "--arch", arch, "-o", str(out)])
    assert rc == 0
    ckpt = load_checkpoint(out)
    assert ckpt["num_classes"] == 5 and ckpt["width"] == WIDTH  # read from the file
    model = model_from_checkpoint(out).eval()
    for key, value in ref.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    x = torch.randn(1, 3, 49, 49)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_missing_extra_and_mismatched_layers_are_named(tmp_path, capsys):
    ref = build_model("deeplab-largefov", num_classes=3, width=WIDTH)
    layers = [layer for layer in _caffe_layers(ref) if layer[0] != "conv3_2"]
    layers.append(("fc9_extra", "Convolution", [np.ones((3, 3, 1, 1)), np.zeros(3)]))
    layers = [(n, t, [np.ones((7, 2)), b[1]] if n == "fc7" else b) for n, t, b in layers]
    src = _write(tmp_path / "bad.caffemodel", layers)
    args = ["convert", "--from", "caffe", str(src), "--arch", "deeplab-largefov",
            "-o", str(tmp_path / "m.pt")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "bad.caffemodel: does not match the model" in err
    assert "missing: conv3_2" in err and "extra: fc9_extra" in err
    assert "fc7.weight: file (7, 2) != model (64, 64, 1, 1)" in err
    assert not (tmp_path / "m.pt").exists()

    torch.manual_seed(0)
    assert main(args + ["--strict", "false"]) == 0
    assert "missing (kept the model's init / skipped): conv3_2" in capsys.readouterr().out
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["source"]["missing"] == ["conv3_2"] and ckpt["source"]["extra"] == ["fc9_extra"]
    assert torch.equal(ckpt["model"]["conv3_1.weight"], ref.state_dict()["conv3_1.weight"])
    model_from_checkpoint(ckpt)


def test_rename_option(tmp_path):
    ref = build_model("deeplab", num_classes=2, width=WIDTH)
    src = _write(tmp_path / "r.caffemodel",
                 _caffe_layers(ref, names={"conv1_1": "conv1_1_new", "fc8": "score"}))
    out = tmp_path / "r.pt"
    assert main(["convert", "--from", "caffe", str(src), "--arch", "deeplab", "-o", str(out),
                 "--num-classes", "2", "--rename", "conv1_1_new=conv1_1", "score=fc8"]) == 0
    assert torch.equal(load_checkpoint(out)["model"]["conv1_1.weight"],
                       ref.state_dict()["conv1_1.weight"])
    assert main(["convert", "--from", "caffe", str(src), "--arch", "deeplab", "-o", str(out),
                 "--rename", "nothere=conv1_1"]) == 2


def test_imagenet_vgg16_caffemodel_to_init(tmp_path):
    tv = TorchvisionLayoutVGG16(0.125)
    state = {k: v.detach().numpy() for k, v in tv.state_dict().items()}
    conv_idx = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    names = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
             "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
    layers = [(n, "Convolution", [state[f"features.{i}.weight"], state[f"features.{i}.bias"]])
              for n, i in zip(names, conv_idx)]
    layers += [(n, "InnerProduct", [state[f"classifier.{i}.weight"], state[f"classifier.{i}.bias"]])
               for n, i in (("fc6", 0), ("fc7", 3), ("fc8", 6))]
    src = _write(tmp_path / "VGG_ILSVRC_16_layers.caffemodel", layers, layout="v1",
                 shape_style="legacy")
    out = tmp_path / "init.pt"
    assert main(["convert", "--from", "caffe-vgg16", str(src), "--arch", "deeplab-largefov",
                 "-o", str(out), "--seed", "2"]) == 0
    ckpt = load_checkpoint(out)
    assert ckpt["num_classes"] == 21 and ckpt["width"] == 0.125
    got = ckpt["model"]
    assert torch.equal(got["conv1_1.weight"], tv.features[0].weight.detach())  # no folding
    keep6 = ckpt["source"]["fc6_channels"]
    fc6 = tv.classifier[0].weight.detach().reshape(512, 64, 7, 7)[keep6]
    for a, ta in enumerate(TAPS[3]):
        for b, tb in enumerate(TAPS[3]):
            assert torch.equal(got["fc6.weight"][:, :, a, b], fc6[:, :, ta, tb])
    model_from_checkpoint(out)


def test_fit_blob_rules():
    w = np.arange(24, dtype=np.float32)
    assert fit_blob(w.reshape(1, 1, 1, 24), (24,)) is not None  # legacy bias
    assert fit_blob(w.reshape(1, 1, 2, 12), (2, 3, 2, 2)) is not None  # legacy InnerProduct
    assert fit_blob(w.reshape(2, 12), (2, 3, 2, 2)) is not None  # InnerProduct as conv
    assert fit_blob(w.reshape(4, 6), (2, 3, 2, 2)) is None  # same count, wrong layout
    assert fit_blob(w.reshape(2, 3, 2, 2), (2, 3, 2, 2)).shape == (2, 3, 2, 2)
    assert fit_blob(w.reshape(24), (25,)) is None


@pytest.mark.parametrize("fmt", ["caffe", "caffe-vgg16"])
@pytest.mark.parametrize("shape", [(), (0, 3, 3, 3)])
def test_conv1_1_without_filters_is_refused(tmp_path, capsys, fmt, shape):
    """A conv1_1 weight of shape () (an empty BlobShape) or with no values was an IndexError
    traceback or a width of 0 taken from the file."""
    src = tmp_path / "m.caffemodel"
    _write(src, [("conv1_1", "Convolution", [np.zeros(shape, np.float32), np.zeros(4)])])
    assert main(["convert", "--from", fmt, str(src), "-o", str(tmp_path / "o.pt")]) == 2
    assert f"m.caffemodel: conv1_1 weight has shape {shape}, no filters" in capsys.readouterr().err


def test_vgg16_scalar_weight_is_refused():
    from deeplabv1.convert.caffe import vgg16_from_caffe
    from deeplabv1.convert.torchvision_vgg import VGG16_CONV_NAMES

    named = {n: [np.zeros((4, 4, 3, 3), np.float32), np.zeros(4, np.float32)]
             for n in (*VGG16_CONV_NAMES, "fc6", "fc7")}  # fmt: skip
    named["conv5_3"][0] = np.zeros((), np.float32)  # was an IndexError
    with pytest.raises(DeepLabError, match="v.caffemodel: conv5_3 weight has shape"):
        vgg16_from_caffe(named, "v.caffemodel")
