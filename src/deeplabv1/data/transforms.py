"""The DeepLab (Caffe ``ImageSegDataLayer``) input pipeline for training and testing.

Training: convert to the Caffe input (BGR, 0-255, minus mean), pad bottom/right up to the crop
size with the mean colour (0 after mean subtraction) and the label with 255, take a random
``crop_size`` crop, mirror with probability 1/2. No scale jitter. The label stays at full crop
resolution; the trainer shrinks it to the score grid with ``shrink_labels``
(``label[o::8, o::8]``: o = 1 for DeepLab's 306 crop, as its train prototxt, 0 for 321 crops).

Testing: pad bottom/right to ``test_size`` (513) with the mean colour (a longer side is kept);
the label and the original RGB image are returned unpadded so that scores can be cropped back.
The test procedure (``deeplabv1.models.inference``) pads further to the side the network's test
prototxt uses (DeepLab: 514; a longer side: the next such side), again with the mean colour.

Randomness comes only from the ``rng`` argument (``np.random.Generator``), so the dataset decides
the seed of every item and training resumes exactly.
"""

from __future__ import annotations

import numpy as np
import torch

from deeplabv1.data.caffe_input import to_caffe_input
from deeplabv1.data.palette import IGNORE_INDEX
from deeplabv1.errors import DeepLabError


def pad_bottom_right(array: np.ndarray, height: int, width: int, value: float) -> np.ndarray:
    """Pad the first two axes of ``array`` at the bottom and right up to (height, width).

    Axes already at least that large are left alone.
    """
    pad_h = max(height - array.shape[0], 0)
    pad_w = max(width - array.shape[1], 0)
    if pad_h == 0 and pad_w == 0:
        return array
    pad = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="constant", constant_values=value)


def _check_pair(image: np.ndarray, label: np.ndarray | None) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DeepLabError(
            f"expected an RGB uint8 image (H, W, 3), got {image.dtype} {image.shape}"
        )
    if label is not None and label.shape != image.shape[:2]:
        raise DeepLabError(f"label shape {label.shape} differs from image shape {image.shape[:2]}")


def crop_offsets(
    height: int, width: int, crop_size: int, rng: np.random.Generator
) -> tuple[int, int]:
    """Random top-left corner of a crop in an image already padded to at least ``crop_size``.

    Uniform over all valid positions, row offset drawn first, as Caffe does.
    """
    top = int(rng.integers(0, height - crop_size + 1))
    left = int(rng.integers(0, width - crop_size + 1))
    return top, left


class TrainTransform:
    """Random crop (padding with the mean colour / label 255) and random mirror.

    ``crop_size`` is 321 for DeepLab-LargeFOV and 306 for DeepLab. Call with an RGB uint8
    image (H, W, 3), a uint8 label map (H, W) and a ``np.random.Generator``; returns
    ``dict(image=(3, c, c) float32 Caffe input, label=(c, c) int64)``.
    """

    def __init__(self, crop_size: int = 321, mirror: bool = True) -> None:
        if crop_size < 1:
            raise DeepLabError(f"crop size must be positive, got {crop_size}")
        self.crop_size = int(crop_size)
        self.mirror = bool(mirror)

    def __repr__(self) -> str:
        return f"TrainTransform(crop_size={self.crop_size}, mirror={self.mirror})"

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> dict:
        _check_pair(image, label)
        c = self.crop_size
        # pad in Caffe-input space: the mean colour is exactly 0 there (not an integer RGB value)
        data = to_caffe_input(image).numpy().transpose(1, 2, 0)
        data = pad_bottom_right(data, c, c, 0.0)
        lab = pad_bottom_right(np.asarray(label, dtype=np.int64), c, c, IGNORE_INDEX)
        top, left = crop_offsets(data.shape[0], data.shape[1], c, rng)
        data = data[top : top + c, left : left + c]
        lab = lab[top : top + c, left : left + c]
        if self.mirror and rng.random() < 0.5:
            data = data[:, ::-1]
            lab = lab[:, ::-1]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1))),
            "label": torch.from_numpy(np.ascontiguousarray(lab)),
        }


class TestTransform:
    """Pad to ``test_size`` squared (bottom/right, mean colour): the paper's test procedure.

    A side longer than ``test_size`` is kept (not padded; the test network then pads it to the
    next side it is made for, as ``predict`` and ``Segmenter`` do: the released procedure
    generalised to images larger than VOC's 500 x 500). ``test_size=None`` or 0 keeps the image
    size (minimal padding, as ``deeplabv1 predict --test-size 0``). Items of different sizes
    are run one size at a time by ``deeplabv1.evaluate.evaluator.network_scores``.
    Returns ``dict(image=(3, max(H, T), max(W, T)) float32, label=(H, W) int64, height, width,
    rgb=(H, W, 3))``.
    """

    __test__ = False  # not a pytest class

    def __init__(self, test_size: int | None = 513) -> None:
        if test_size is not None and test_size < 0:
            raise DeepLabError(f"test size must be >= 0 (0: minimal padding), got {test_size}")
        self.test_size = int(test_size) if test_size else None

    def __repr__(self) -> str:
        return f"TestTransform(test_size={self.test_size})"

    def __call__(
        self, image: np.ndarray, label: np.ndarray | None, rng: np.random.Generator | None = None
    ) -> dict:
        _check_pair(image, label)
        h, w = image.shape[:2]
        data = to_caffe_input(image).numpy().transpose(1, 2, 0)
        if self.test_size is not None:
            data = pad_bottom_right(data, self.test_size, self.test_size, 0.0)
        if label is None:
            label = np.full((h, w), IGNORE_INDEX, dtype=np.uint8)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(data.transpose(2, 0, 1))),
            "label": torch.from_numpy(np.asarray(label, dtype=np.int64)),
            "height": h,
            "width": w,
            "rgb": torch.from_numpy(np.array(image, dtype=np.uint8, copy=True)),
        }
