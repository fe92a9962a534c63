"""Caffe test procedure (pad, score, align-corners zoom x8, crop) and the label shrink."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from deeplabv1.errors import DeepLabError
from deeplabv1.models import build_model
from deeplabv1.models.inference import crop_zoomed, predict_scores, shrink_labels, zoom_scores
from deeplabv1.models.receptive_field import output_size


def zoom_reference(s: np.ndarray, f: int) -> np.ndarray:
    """Align-corners bilinear zoom from its definition: output p sits at input p / f."""
    h, w = s.shape[-2:]
    out = np.zeros(s.shape[:-2] + ((h - 1) * f + 1, (w - 1) * f + 1))
    for p in range(out.shape[-2]):
        for q in range(out.shape[-1]):
            y, x = p / f, q / f
            y0, x0 = min(int(y), h - 1), min(int(x), w - 1)
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            a, b = y - y0, x - x0
            out[..., p, q] = ((1 - a) * (1 - b) * s[..., y0, x0] + (1 - a) * b * s[..., y0, x1]
                              + a * (1 - b) * s[..., y1, x0] + a * b * s[..., y1, x1])  # fmt: skip
    return out


@pytest.mark.parametrize("method", ["interpolate", "transposed"])
@pytest.mark.parametrize("factor", [8, 3])
def test_zoom_matches_reference(method, factor):
    s = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    z = zoom_scores(s, factor, method)
    assert tuple(z.shape) == (2, 3, 4 * factor + 1, 3 * factor + 1)
    np.testing.assert_allclose(z.numpy(), zoom_reference(s.numpy(), factor), atol=1e-12)
    assert torch.equal(z[..., ::factor, ::factor], s)  # score cells land on pixels 8i exactly


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 12), w=st.integers(1, 12), c=st.integers(1, 4), seed=st.integers(0, 99))
def test_transposed_zoom_equals_interpolation(h, w, c, seed):
    s = torch.randn(1, c, h, w, generator=torch.Generator().manual_seed(seed))
    a, b = zoom_scores(s), zoom_scores(s, method="transposed")
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_zoom_rejects_bad_input():
    with pytest.raises(DeepLabError):
        zoom_scores(torch.zeros(3, 4, 4))
    with pytest.raises(DeepLabError):
        zoom_scores(torch.zeros(1, 3, 4, 4), method="nearest")


def test_predict_scores_is_the_caffe_test_procedure():
    model = build_model("deeplab-largefov", width=1 / 16, num_classes=4).eval()
    images = torch.randn(2, 3, 70, 90)
    scores = predict_scores(model, images, test_size=97)
    assert tuple(scores.shape) == (2, 4, 70, 90)
    padded = torch.zeros(2, 3, 97, 97)
    padded[..., :70, :90] = images
    with torch.no_grad():
        raw = model(padded)
    assert raw.shape[-1] == output_size(model, 97) == 13
    full = F.interpolate(raw, size=(97, 97), mode="bilinear", align_corners=True)
    torch.testing.assert_close(scores, full[..., :70, :90])
    torch.testing.assert_close(predict_scores(model, images, 97, zoom_method="transposed"), scores)


def test_predict_scores_without_padding_and_short_maps():
    # DeepLab with its training geometry at test time: pool4 pad 0, no crop; 306 -> 39 cells
    model = build_model("deeplab", width=1 / 16, num_classes=3, test_pool4_pad=0).eval()
    images = torch.randn(1, 3, 306, 306)
    scores = predict_scores(model, images, test_size=None)  # 306 = 8k + 2: not padded
    assert tuple(scores.shape) == (1, 3, 306, 306)  # (39 - 1) * 8 + 1 = 305: last row repeated
    torch.testing.assert_close(scores[..., 305, :], scores[..., 304, :])
    with torch.no_grad():
        full = F.interpolate(model(images), size=(305, 305), mode="bilinear", align_corners=True)
    torch.testing.assert_close(scores[..., :305, :305], full)
    short = crop_zoomed(torch.randn(1, 3, 39, 39), 306, 306)
    torch.testing.assert_close(short[..., :, 305], short[..., :, 304])
    # a side longer than test_size is padded to the next 8k + 2 (here 306 itself), not refused
    torch.testing.assert_close(predict_scores(model, images, test_size=300), scores, rtol=0, atol=0)


@pytest.mark.parametrize("arch", ["deeplab-largefov", "deeplab-msc"])
def test_predict_scores_runs_in_eval_mode_and_keeps_the_callers_mode(arch):
    """A model in training mode (as model_from_checkpoint and torch.hub return it) gives the
    same scores on every call, equal to eval mode's: dropout is off inside predict_scores, and
    the caller's modes (the model's and each module's) are restored afterwards."""
    model = build_model(arch, width=1 / 16, num_classes=4)
    model.train()
    model.drop6.eval()  # a caller's mixed modes come back as they were
    images = torch.randn(1, 3, 40, 30)
    first = predict_scores(model, images, test_size=41)
    second = predict_scores(model, images, test_size=41)
    assert model.training and not model.drop6.training and model.drop7.training
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    reference = predict_scores(model.eval(), images, test_size=41)
    torch.testing.assert_close(first, reference, rtol=0, atol=0)
    with torch.no_grad():  # and training mode really is noisy: the test can tell them apart
        model.train()
        assert not torch.equal(model(images), model(images))


@pytest.mark.parametrize("side,expected", [(321, 41), (306, 39), (513, 65)])
def test_shrink_matches_score_grid(side, expected):
    labels = torch.arange(side * side).reshape(side, side)
    small = shrink_labels(labels)
    assert tuple(small.shape) == (expected, expected)
    assert int(small[1, 1]) == 8 * side + 8  # label at pixel (8, 8): score cell (1, 1)
    if side != 306:
        assert output_size("deeplab-largefov", side) == expected
    else:
        assert output_size("deeplab", side) == expected


@settings(max_examples=60, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40)),
              elements=st.sampled_from([0, 3, 15, 20, 255])))  # fmt: skip
def test_shrink_never_invents_labels(labels):
    small = shrink_labels(labels)
    assert set(np.unique(small)) <= set(np.unique(labels))
    np.testing.assert_array_equal(small, labels[::8, ::8])
    batch = torch.from_numpy(np.stack([labels, labels[::-1].copy()]).astype(np.int64))
    shrunk = shrink_labels(batch)
    assert set(shrunk.unique().tolist()) <= set(np.unique(labels).tolist())
    assert tuple(shrunk.shape) == (2, (labels.shape[0] + 7) // 8, (labels.shape[1] + 7) // 8)
