"""Trimap bands against a brute-force Chebyshev distance and an explicit square dilation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from deeplabv1.evaluate.metrics import confusion_matrix, mean_iou
from deeplabv1.evaluate.trimap import TrimapAccumulator, trimap_band, void_distance


def random_gt(rng, shape, num_classes=4):
    gt = rng.integers(0, num_classes, size=shape).astype(np.uint8)
    # a few void strokes, like VOC's boundary band
    for _ in range(3):
        r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        gt[r, max(0, c - 3) : c + 3] = 255
    return gt


def brute_band(gt, w):
    """Non-void pixels with a void pixel at Chebyshev distance <= w (all pairs)."""
    vy, vx = np.nonzero(gt == 255)
    out = np.zeros(gt.shape, dtype=bool)
    for y in range(gt.shape[0]):
        for x in range(gt.shape[1]):
            if gt[y, x] != 255 and len(vy):
                out[y, x] = np.max(np.abs([vy - y, vx - x]), axis=0).min() <= w
    return out


@pytest.mark.parametrize("seed", range(4))
def test_band_matches_brute_force_distance_and_dilation(seed):
    rng = np.random.default_rng(seed)
    gt = random_gt(rng, (23, 31))
    for w in (1, 2, 3, 5, 40):
        band = trimap_band(gt, w)
        np.testing.assert_array_equal(band, brute_band(gt, w))
        square = np.ones((2 * w + 1, 2 * w + 1), dtype=bool)
        dilated = ndimage.binary_dilation(gt == 255, structure=square)
        np.testing.assert_array_equal(band, dilated & (gt != 255))


def test_no_void_means_empty_band():
    gt = np.zeros((5, 6), dtype=np.uint8)
    assert not trimap_band(gt, 40).any()
    assert (void_distance(gt) > 10**9).all()
    acc = TrimapAccumulator(3, max_width=4)
    acc.update(gt, gt)
    assert acc.counts.sum() == 0 and acc.mean_iou_curve() == [None] * 4


def test_accumulator_curve_matches_masked_mean_iou():
    rng = np.random.default_rng(7)
    gts = [random_gt(rng, (19, 27)), random_gt(rng, (15, 12))]
    preds = [np.where(rng.random(g.shape) < 0.7, g % 255, rng.integers(0, 4, g.shape)) % 4
             for g in gts]  # fmt: skip
    acc = TrimapAccumulator(4, max_width=6)
    for p, g in zip(preds, gts):
        acc.update(p, g)
    curve = acc.mean_iou_curve()
    assert acc.widths() == [1, 2, 3, 4, 5, 6]
    for w, got in zip(acc.widths(), curve):
        bands = [brute_band(g, w) for g in gts]
        conf = sum(confusion_matrix(p[b], g[b], 4) for p, g, b in zip(preds, gts, bands))
        np.testing.assert_array_equal(acc.confusion(w), conf)
        assert got == pytest.approx(100 * mean_iou(conf), abs=1e-3)
    # wider bands hold at least as many pixels
    sizes = [acc.confusion(w).sum() for w in acc.widths()]
    assert sizes == sorted(sizes) and sizes[0] > 0
