"""Score-map sizes from running the modules, Caffe pooling semantics, ``output_size``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deeplabv1.models import MODEL_NAMES, build_model
from deeplabv1.models.receptive_field import output_size

SPEC_SIZES = [("deeplab", 306, 39), ("deeplab-largefov", 321, 41), ("deeplab-largefov", 513, 65),
              ("deeplab-msc-largefov", 321, 41), ("deeplab-msc", 513, 65)]  # fmt: skip


@pytest.mark.parametrize("arch,side,expected", SPEC_SIZES)
def test_spec_score_map_sizes_by_running(arch, side, expected):
    model = build_model(arch, width=1 / 32, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, side, side))
    assert tuple(out.shape) == (1, 3, expected, expected)
    assert output_size(arch, side) == expected == output_size(model, side)


def test_deeplab_pool4_pad_train_vs_test():
    assert output_size("deeplab", 306) == 39
    assert output_size("deeplab", 306, pool4_pad=1) == 41
    model = build_model("deeplab", width=1 / 32, pool4_pad=1).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 306, 306)).shape[-1] == 41


@pytest.mark.parametrize("arch", MODEL_NAMES)
def test_output_size_matches_forward_on_small_inputs(arch):
    model = build_model(arch, width=1 / 16, num_classes=2).eval()
    for h, w in ((64, 64), (65, 100), (97, 72), (81, 90)):
        with torch.no_grad():
            out = model(torch.zeros(1, 3, h, w))
        assert tuple(out.shape[-2:]) == (output_size(model, h), output_size(model, w))


def caffe_pool(x: np.ndarray, k: int, s: int, p: int, mode: str) -> np.ndarray:
    """Caffe's PoolingLayer, written from its definition (one channel, square, brute force)."""
    n = x.shape[0]
    out = int(math.ceil((n + 2 * p - k) / s)) + 1
    if p > 0 and (out - 1) * s >= n + p:
        out -= 1
    y = np.zeros((out, out))
    for i in range(out):
        for j in range(out):
            h0, w0 = i * s - p, j * s - p
            h1, w1 = min(h0 + k, n + p), min(w0 + k, n + p)
            size = (h1 - h0) * (w1 - w0)  # AVE divides by the window clipped to the padded input
            hs, ws = slice(max(h0, 0), min(h1, n)), slice(max(w0, 0), min(w1, n))
            y[i, j] = x[hs, ws].max() if mode == "max" else x[hs, ws].sum() / size
    return y


@pytest.mark.parametrize("side", [7, 8, 13, 14])
def test_pooling_layers_are_caffe_exact(side):
    rng = np.random.default_rng(side)
    x = rng.standard_normal((side, side))
    t = torch.from_numpy(x)[None, None]
    fov = build_model("deeplab-largefov", width=1 / 32)
    pad0, pad1 = (build_model("deeplab", width=1 / 32, pool4_pad=p) for p in (0, 1))
    layers = [pad0.pool1, pad0.pool4, pad1.pool4, fov.pool1, fov.pool4, fov.pool5a]
    for layer in layers:
        k, s, p = layer.kernel_size, layer.stride, layer.padding
        mode = "max" if isinstance(layer, torch.nn.MaxPool2d) else "ave"
        np.testing.assert_allclose(layer(t)[0, 0].numpy(), caffe_pool(x, k, s, p, mode), atol=1e-12)


def test_msc_branches_land_on_the_trunk_grid_for_any_side():
    model = build_model("deeplab-msc", width=1 / 16).eval()
    for side in (64, 65, 66, 71, 72, 73):
        with torch.no_grad():
            assert model(torch.zeros(1, 3, side, side)).shape[-1] == output_size(model, side)
