"""Trimap (boundary band) evaluation, as in the paper's Fig. 5.

The band of width w is the void (255) region of the ground truth dilated by a square of side
2w + 1; mean IoU is scored only on the non-void pixels inside it. A pixel lies in that dilation
exactly when its Chebyshev (chessboard) distance to the nearest void pixel is at most w, so one
distance transform per image serves every width: each pixel's (gt, prediction) pair is counted
once in the bin of its distance, and a cumulative sum over distances gives the confusion matrix
of every band. Images without any void pixel contribute nothing.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from deeplabv1.data.palette import IGNORE_INDEX
from deeplabv1.errors import DeepLabError
from deeplabv1.evaluate.metrics import class_iou

DEFAULT_MAX_WIDTH = 40


def void_distance(gt: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Chebyshev distance of every pixel to the nearest void pixel (int64; void pixels are 0).

    Without any void pixel the distance is "infinite": returned as ``np.iinfo(np.int64).max``.
    """
    void = np.asarray(gt) == ignore_index
    if not void.any():
        return np.full(void.shape, np.iinfo(np.int64).max, dtype=np.int64)
    return ndimage.distance_transform_cdt(~void, metric="chessboard").astype(np.int64)


def trimap_band(gt: np.ndarray, width: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Boolean mask of the non-void pixels within ``width`` px (square dilation) of void."""
    if width < 0:
        raise DeepLabError(f"trimap width must be >= 0, got {width}")
    gt = np.asarray(gt)
    return (void_distance(gt, ignore_index) <= width) & (gt != ignore_index)


class TrimapAccumulator:
    """Confusion matrices of the bands w = 1..max_width, accumulated over a split."""

    def __init__(
        self,
        num_classes: int,
        max_width: int = DEFAULT_MAX_WIDTH,
        ignore_index: int = IGNORE_INDEX,
    ):
        if max_width < 1:
            raise DeepLabError(f"trimap max width must be >= 1, got {max_width}")
        self.num_classes = num_classes
        self.max_width = max_width
        self.ignore_index = ignore_index
        # counts[d] = pairs at distance exactly d (d = 0 is unused: void pixels are skipped)
        self.counts = np.zeros((max_width + 1, num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray, dist: np.ndarray | None = None) -> None:
        """Add one image; ``dist`` (from ``void_distance``) may be passed to reuse it."""
        gt = np.asarray(gt)
        pred = np.asarray(pred)
        if pred.shape != gt.shape:
            raise DeepLabError(f"prediction shape {pred.shape} differs from labels {gt.shape}")
        if dist is None:
            dist = void_distance(gt, self.ignore_index)
        near = (dist <= self.max_width) & (gt != self.ignore_index)
        if not near.any():
            return
        c = self.num_classes
        g = gt[near].astype(np.int64)
        p = pred[near].astype(np.int64)
        if g.max() >= c or g.min() < 0 or p.max() >= c or p.min() < 0:
            raise DeepLabError(f"trimap: label values outside 0..{c - 1} (and {self.ignore_index})")
        flat = (dist[near] * c + g) * c + p
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)

    def widths(self) -> list[int]:
        """The band widths 1..max_width."""
        return list(range(1, self.max_width + 1))

    def confusion(self, width: int) -> np.ndarray:
        """Confusion matrix of the band of the given width."""
        return self.counts[: width + 1].sum(axis=0)

    def mean_iou_curve(self) -> list[float | None]:
        """Mean IoU in percent for w = 1..max_width (None where the band is empty)."""
        cumulative = np.cumsum(self.counts, axis=0)
        out: list[float | None] = []
        for w in self.widths():
            iou = class_iou(cumulative[w])
            out.append(round(100.0 * float(np.nanmean(iou)), 4) if np.isfinite(iou).any() else None)
        return out
