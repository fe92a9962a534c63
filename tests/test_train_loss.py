"""The loss: cross-entropy over non-255 score-grid pixels, normalised over the whole batch."""

from __future__ import annotations

import math

import pytest
import torch

from deeplabv1.errors import DeepLabError
from deeplabv1.train.loss import check_grid, count_valid, cross_entropy_sum, segmentation_loss


def _hand_loss(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Brute force: mean over non-255 pixels of log(sum exp s) - s[label]."""
    total, count = 0.0, 0
    b, c, h, w = scores.shape
    for i in range(b):
        for y in range(h):
            for x in range(w):
                lab = int(labels[i, y, x])
                if lab == 255:
                    continue
                s = [float(scores[i, k, y, x]) for k in range(c)]
                top = max(s)
                total += top + math.log(sum(math.exp(v - top) for v in s)) - s[lab]
                count += 1
    return total / count


def test_loss_is_the_mean_over_valid_pixels_of_the_batch():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 4, 5, 6, generator=g) * 3
    labels = torch.randint(0, 4, (3, 5, 6), generator=g)
    labels[0, :2] = 255
    labels[2] = 255  # an image with no valid pixel still counts in the batch mean correctly
    labels[1, 4, 5] = 255
    assert int(count_valid(labels)) == 90 - 12 - 30 - 1
    got = segmentation_loss(scores, labels)
    assert float(got) == pytest.approx(_hand_loss(scores, labels), rel=1e-5)
    # not the mean of per-image means: image 0 has fewer valid pixels than image 1
    per_image = [_hand_loss(scores[i:i + 1], labels[i:i + 1]) for i in (0, 1)]
    assert float(got) != pytest.approx(sum(per_image) / 2, rel=1e-4)


def test_accumulated_micro_batches_give_the_full_batch_gradient():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 3, 4, 4, generator=g)
    labels = torch.randint(0, 3, (4, 4, 4), generator=g)
    labels[0, 0] = 255
    labels[3, :3] = 255
    full = logits.clone().requires_grad_(True)
    segmentation_loss(full, labels).backward()
    parts = logits.clone().requires_grad_(True)
    total = count_valid(labels)
    for sl in (slice(0, 1), slice(1, 4)):
        (cross_entropy_sum(parts[sl], labels[sl]) / total.float()).backward()
    torch.testing.assert_close(parts.grad, full.grad)


def test_all_ignored_gives_zero_loss_not_nan():
    scores = torch.randn(1, 3, 2, 2, requires_grad=True)
    labels = torch.full((1, 2, 2), 255)
    loss = segmentation_loss(scores, labels)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(scores.grad == 0)


def test_grid_mismatch_is_a_clear_error():
    labels = torch.zeros(1, 41, 41, dtype=torch.int64)
    with pytest.raises(DeepLabError, match="crop 320"):
        check_grid(labels, torch.zeros(1, 21, 40, 40), 320)
    check_grid(labels, torch.zeros(1, 21, 41, 41), 321)
