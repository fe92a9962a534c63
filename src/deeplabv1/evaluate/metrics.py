"""Segmentation metrics from a confusion matrix: mean IoU, per-class IoU, pixel accuracy.

Conventions (those of the PASCAL VOC devkit, ``VOCevalseg.m``):

- One confusion matrix is accumulated over the whole split (not a mean of per-image scores).
  Rows are ground-truth classes, columns predicted classes.
- Pixels whose ground truth is void (255) are ignored; they never count, whatever is predicted.
- IoU of class c = TP / (TP + FP + FN) = C[c,c] / (row_c + col_c - C[c,c]).
- A class absent from both the ground truth and the prediction has no IoU (0/0): it is reported
  as ``NaN`` (``null`` in JSON) and left out of the mean. On the full VOC val set every class is
  present, so this only matters for subsets. A class that is predicted but absent from the ground
  truth has IoU 0 and does count (it is a false positive everywhere).
"""

from __future__ import annotations

import numpy as np

from deeplabv1.data.palette import IGNORE_INDEX
from deeplabv1.errors import DeepLabError


def confusion_matrix(
    pred: np.ndarray, gt: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """(num_classes, num_classes) int64 counts: rows = ground truth, columns = prediction.

    ``gt == ignore_index`` pixels are skipped. Other ground-truth or predicted values outside
    0..num_classes-1 are an error (they would otherwise be silently dropped).
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise DeepLabError(f"prediction shape {pred.shape} differs from ground truth {gt.shape}")
    keep = gt != ignore_index
    g = gt[keep].astype(np.int64)
    p = pred[keep].astype(np.int64)
    if g.size and (g.min() < 0 or g.max() >= num_classes):
        raise DeepLabError(f"ground-truth values outside 0..{num_classes - 1} and {ignore_index}")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise DeepLabError(f"predicted values outside 0..{num_classes - 1}")
    counts = np.bincount(g * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def class_iou(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU in [0, 1]; NaN for classes absent from both ground truth and prediction."""
    conf = np.asarray(conf, dtype=np.float64)
    tp = np.diag(conf)
    union = conf.sum(axis=1) + conf.sum(axis=0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """Mean of the defined per-class IoUs (NaN if no class is defined)."""
    iou = class_iou(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(conf: np.ndarray) -> float:
    """Fraction of non-void pixels labelled correctly (NaN when there are none)."""
    conf = np.asarray(conf)
    total = conf.sum()
    return float(np.trace(conf) / total) if total else float("nan")


def mean_class_accuracy(conf: np.ndarray) -> float:
    """Mean over ground-truth classes present of the per-class recall."""
    conf = np.asarray(conf, dtype=np.float64)
    rows = conf.sum(axis=1)
    present = rows > 0
    if not present.any():
        return float("nan")
    return float(np.mean(np.diag(conf)[present] / rows[present]))


def _pct(x: float) -> float | None:
    """Fraction -> percent rounded for reports; NaN -> None (JSON null)."""
    return None if not np.isfinite(x) else round(100.0 * float(x), 4)


def summarize(conf: np.ndarray, class_names: tuple[str, ...] | list[str]) -> dict:
    """All metrics of one confusion matrix as a JSON-ready dict (values in percent)."""
    conf = np.asarray(conf, dtype=np.int64)
    if len(class_names) != conf.shape[0]:
        raise DeepLabError(f"{len(class_names)} class names for {conf.shape[0]} classes")
    iou = class_iou(conf)
    return {
        "mean_iou": _pct(mean_iou(conf)),
        "pixel_accuracy": _pct(pixel_accuracy(conf)),
        "mean_class_accuracy": _pct(mean_class_accuracy(conf)),
        "num_pixels": int(conf.sum()),
        "per_class_iou": {name: _pct(v) for name, v in zip(class_names, iou)},
        "confusion_matrix": conf.tolist(),
    }


class ConfusionAccumulator:
    """Sums confusion matrices over the images of a split."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        """Add one image; returns that image's own confusion matrix."""
        conf = confusion_matrix(pred, gt, self.num_classes, self.ignore_index)
        self.matrix += conf
        return conf

    def mean_iou(self) -> float:
        """Mean IoU (fraction) of everything added so far."""
        return mean_iou(self.matrix)
