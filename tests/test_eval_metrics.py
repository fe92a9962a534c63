"""Metrics against an independent brute-force computation by per-class pixel-set counting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deeplabv1.errors import DeepLabError
from deeplabv1.evaluate.metrics import (
    ConfusionAccumulator,
    class_iou,
    confusion_matrix,
    mean_iou,
    pixel_accuracy,
    summarize,
)


def brute_force(preds, gts, num_classes):
    """IoU per class and pixel accuracy by counting pixel sets over a list of images."""
    inter = [0] * num_classes
    union = [0] * num_classes
    correct = total = 0
    for pred, gt in zip(preds, gts):
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
            if g == 255:
                continue
            total += 1
            correct += p == g
            for c in range(num_classes):
                in_p, in_g = p == c, g == c
                inter[c] += in_p and in_g
                union[c] += in_p or in_g
    ious = [inter[c] / union[c] if union[c] else math.nan for c in range(num_classes)]
    defined = [v for v in ious if not math.isnan(v)]
    return ious, sum(defined) / len(defined), correct / total


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_with_void_and_absent_classes(seed):
    rng = np.random.default_rng(seed)
    num_classes = 7
    preds, gts = [], []
    for _ in range(3):
        shape = tuple(rng.integers(5, 17, size=2))
        # classes 5 and 6 never appear in the ground truth; 6 is never predicted either
        gt = rng.integers(0, 5, size=shape)
        gt[rng.random(shape) < 0.2] = 255
        pred = rng.integers(0, 6, size=shape)
        preds.append(pred)
        gts.append(gt.astype(np.uint8))
    acc = ConfusionAccumulator(num_classes)
    for p, g in zip(preds, gts):
        acc.update(p, g)
    ious, miou, pa = brute_force(preds, gts, num_classes)
    got = class_iou(acc.matrix)
    np.testing.assert_allclose(got[:6], ious[:6], rtol=0, atol=1e-12)
    assert math.isnan(got[6])  # absent from both: undefined, not 0 and not 1
    assert got[5] == 0.0  # predicted but absent from the ground truth: counts as 0
    assert mean_iou(acc.matrix) == pytest.approx(miou, abs=1e-12)
    assert pixel_accuracy(acc.matrix) == pytest.approx(pa, abs=1e-12)
    assert acc.matrix.sum() == sum(int((g != 255).sum()) for g in gts)


def test_void_pixels_never_count():
    gt = np.array([[0, 255], [1, 255]])
    pred_a = np.array([[0, 0], [1, 0]])
    pred_b = np.array([[0, 1], [1, 1]])
    np.testing.assert_array_equal(confusion_matrix(pred_a, gt, 2), confusion_matrix(pred_b, gt, 2))
    assert confusion_matrix(pred_a, gt, 2).tolist() == [[1, 0], [0, 1]]


def test_perfect_and_summary():
    gt = np.array([[0, 1, 2], [2, 255, 0]])
    s = summarize(confusion_matrix(gt.clip(0, 2), gt, 4), ["a", "b", "c", "d"])
    assert s["mean_iou"] == 100.0 and s["pixel_accuracy"] == 100.0
    assert s["per_class_iou"] == {"a": 100.0, "b": 100.0, "c": 100.0, "d": None}
    assert s["num_pixels"] == 5


def test_bad_values_rejected():
    with pytest.raises(DeepLabError):
        confusion_matrix(np.array([3]), np.array([0]), 3)
    with pytest.raises(DeepLabError):
        confusion_matrix(np.array([0]), np.array([7]), 3)
    with pytest.raises(DeepLabError):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 3)
