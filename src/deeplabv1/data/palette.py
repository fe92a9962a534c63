"""PASCAL VOC class names, the VOCdevkit colour map, and label PNG reading and writing.

Labels are palette ("P") PNGs whose pixel values are class indices (0..20, 255 = void). They are
always read with ``np.asarray(Image.open(p))``, never converted to RGB.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from deeplabv1.errors import DeepLabError
from deeplabv1.io import atomic_path, regular_file

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
IGNORE_INDEX = 255


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOCdevkit colour map: class bits interleaved into the high bits of R, G, B."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


VOC_COLORMAP = voc_colormap()


def _cmap(colormap: np.ndarray | None) -> np.ndarray:
    return VOC_COLORMAP if colormap is None else np.asarray(colormap, dtype=np.uint8)


def colorize(labels: np.ndarray, colormap: np.ndarray | None = None) -> np.ndarray:
    """Class-index map (H, W) -> RGB image (H, W, 3) with ``colormap`` (256 x 3; VOC's)."""
    return _cmap(colormap)[np.asarray(labels, dtype=np.uint8)]


def label_to_pil(labels: np.ndarray, colormap: np.ndarray | None = None) -> Image.Image:
    """Class-index map -> palette PNG image with ``colormap`` (256 x 3; default VOC's)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise DeepLabError(f"label map must be 2-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise DeepLabError("label values must lie in 0..255")
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette(_cmap(colormap).reshape(-1).tolist())
    return img


def save_label_png(
    path: str | os.PathLike, labels: np.ndarray, colormap: np.ndarray | None = None
) -> None:
    """Write a class-index map as a palette PNG (``colormap``, default VOC's), atomically."""
    img = label_to_pil(labels, colormap)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def read_label_png(path: str | os.PathLike, num_classes: int | None = 21) -> np.ndarray:
    """Read a label PNG as class indices (uint8, H x W), checking the values.

    Palette and 8-bit grayscale PNGs hold indices directly; a 1-bit PNG reads as 0 and 1.
    Values other than 0..num_classes-1
    and 255 are an error naming the file (pass ``num_classes=None`` to skip the check).
    """
    path = Path(path)
    regular_file(path, "label file")  # a FIFO would be waited on forever
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L", "1"):
                raise DeepLabError(
                    f"{path}: label image has mode {img.mode!r}; expected a palette ('P') or "
                    "8-bit grayscale ('L') PNG of class indices"
                )
            labels = np.asarray(img, dtype=np.uint8).copy()  # a 1-bit mask reads as 0/1
    except FileNotFoundError as exc:
        raise DeepLabError(f"{path}: label file not found") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DeepLabError(f"{path}: cannot read label image ({exc})") from exc
    if num_classes is not None:
        bad = np.unique(labels[(labels >= num_classes) & (labels != IGNORE_INDEX)])
        if bad.size:
            raise DeepLabError(
                f"{path}: label values {bad.tolist()[:10]} outside 0..{num_classes - 1} and 255"
            )
    return labels
