"""Caffe train/test transforms: exact crop, pad and mirror on tiny arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deeplabv1.data.caffe_input import MEAN_BGR, from_caffe_input, to_caffe_input
from deeplabv1.data.transforms import TestTransform, TrainTransform, pad_bottom_right
from deeplabv1.errors import DeepLabError


class FixedRng:
    """Stands in for np.random.Generator: fixed crop offsets and mirror draw, records calls."""

    def __init__(self, top: int, left: int, flip: float) -> None:
        self.ints = [top, left]
        self.flip = flip
        self.calls: list[tuple] = []

    def integers(self, low: int, high: int) -> int:
        self.calls.append(("integers", low, high))
        value = self.ints.pop(0)
        assert low <= value < high
        return value

    def random(self) -> float:
        self.calls.append(("random",))
        return self.flip


def tiny(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            rng.integers(0, 21, (h, w), dtype=np.uint8))


def test_pad_bottom_right_exact() -> None:
    a = np.arange(6).reshape(2, 3)
    out = pad_bottom_right(a, 3, 4, -1)
    assert out.tolist() == [[0, 1, 2, -1], [3, 4, 5, -1], [-1, -1, -1, -1]]
    assert pad_bottom_right(a, 1, 2, -1) is a  # already large enough: untouched


def test_train_crop_and_offsets_exact() -> None:
    img, lab = tiny(5, 7)
    rng = FixedRng(top=1, left=3, flip=0.9)  # 0.9 >= 0.5: no mirror
    out = TrainTransform(crop_size=3)(img, lab, rng)
    # Caffe draws row offset in [0, H-c], then column offset in [0, W-c], then the mirror coin
    assert rng.calls == [("integers", 0, 3), ("integers", 0, 5), ("random",)]
    assert out["image"].shape == (3, 3, 3) and out["image"].dtype.is_floating_point
    assert out["label"].dtype == torch.int64
    np.testing.assert_array_equal(out["label"].numpy(), lab[1:4, 3:6])
    np.testing.assert_array_equal(out["image"].numpy(), to_caffe_input(img[1:4, 3:6]).numpy())


def test_train_mirror_exact() -> None:
    img, lab = tiny(4, 4, seed=1)
    out = TrainTransform(crop_size=3)(img, lab, FixedRng(top=0, left=1, flip=0.2))
    np.testing.assert_array_equal(out["label"].numpy(), lab[0:3, 1:4][:, ::-1])
    expected = to_caffe_input(np.ascontiguousarray(img[0:3, 1:4][:, ::-1])).numpy()
    np.testing.assert_array_equal(out["image"].numpy(), expected)


def test_train_no_mirror_draws_no_coin() -> None:
    img, lab = tiny(4, 4)
    rng = FixedRng(top=1, left=0, flip=0.0)
    out = TrainTransform(crop_size=3, mirror=False)(img, lab, rng)
    assert [c[0] for c in rng.calls] == ["integers", "integers"]
    np.testing.assert_array_equal(out["label"].numpy(), lab[1:4, 0:3])


def test_train_pads_small_image_with_mean_and_void() -> None:
    img, lab = tiny(2, 3)
    rng = FixedRng(top=0, left=0, flip=0.9)
    out = TrainTransform(crop_size=4)(img, lab, rng)
    assert rng.calls[:2] == [("integers", 0, 1), ("integers", 0, 1)]
    data, label = out["image"].numpy(), out["label"].numpy()
    np.testing.assert_array_equal(data[:, :2, :3], to_caffe_input(img).numpy())
    assert (data[:, 2:, :] == 0).all() and (data[:, :, 3:] == 0).all()
    expected = np.full((4, 4), 255)
    expected[:2, :3] = lab
    np.testing.assert_array_equal(label, expected)
    # the padding is the mean colour in RGB
    mean_rgb = np.rint(np.asarray(MEAN_BGR)[::-1]).astype(np.uint8)
    assert (from_caffe_input(out["image"])[3, 3] == mean_rgb).all()


def test_train_pads_one_axis_and_crops_the_other() -> None:
    img, lab = tiny(2, 6)
    out = TrainTransform(crop_size=3)(img, lab, FixedRng(top=0, left=2, flip=0.9))
    expected = np.full((3, 3), 255)
    expected[:2] = lab[:, 2:5]
    np.testing.assert_array_equal(out["label"].numpy(), expected)


def test_train_with_real_generator_covers_every_offset_and_mirrors_half() -> None:
    img = np.zeros((5, 5, 3), np.uint8)
    lab = np.arange(25, dtype=np.uint8).reshape(5, 5) % 21
    t = TrainTransform(crop_size=3)
    corners, flips = set(), 0
    for seed in range(400):
        out = t(img, lab, np.random.default_rng([seed, 0, 0]))["label"].numpy()
        for top in range(3):
            for left in range(3):
                crop = lab[top : top + 3, left : left + 3]
                if (out == crop).all():
                    corners.add((top, left))
                elif (out == crop[:, ::-1]).all():
                    corners.add((top, left))
                    flips += 1
    assert corners == {(r, c) for r in range(3) for c in range(3)}
    assert 150 < flips < 250


def test_train_same_rng_same_result() -> None:
    img, lab = tiny(9, 8)
    t = TrainTransform(crop_size=5)
    a = t(img, lab, np.random.default_rng([3, 1, 7]))
    b = t(img, lab, np.random.default_rng([3, 1, 7]))
    assert (a["image"] == b["image"]).all() and (a["label"] == b["label"]).all()


def test_test_transform_pads_to_test_size() -> None:
    img, lab = tiny(3, 2)
    out = TestTransform(test_size=5)(img, lab)
    assert out["image"].shape == (3, 5, 5)
    np.testing.assert_array_equal(out["image"][:, :3, :2].numpy(), to_caffe_input(img).numpy())
    assert (out["image"][:, 3:, :] == 0).all() and (out["image"][:, :, 2:] == 0).all()
    np.testing.assert_array_equal(out["label"].numpy(), lab)
    assert (out["height"], out["width"]) == (3, 2)
    np.testing.assert_array_equal(out["rgb"].numpy(), img)


def test_test_transform_keeps_longer_sides_and_zero_or_none_keeps_size() -> None:
    img, lab = tiny(6, 4)
    out = TestTransform(test_size=5)(img, lab)  # 6 > 5 kept, 4 padded to 5
    assert out["image"].shape == (3, 6, 5)
    np.testing.assert_array_equal(out["image"][:, :, :4].numpy(), to_caffe_input(img).numpy())
    assert (out["image"][:, :, 4:] == 0).all()
    for size in (None, 0):
        out = TestTransform(test_size=size)(img, None)
        assert out["image"].shape == (3, 6, 4)
        assert (out["label"] == 255).all()
    with pytest.raises(DeepLabError, match="test size must be >= 0"):
        TestTransform(test_size=-1)


def test_transform_rejects_mismatched_pairs() -> None:
    img, lab = tiny(4, 4)
    with pytest.raises(DeepLabError, match="label shape"):
        TrainTransform(3)(img, lab[:3], np.random.default_rng(0))
    with pytest.raises(DeepLabError, match="RGB uint8"):
        TestTransform(5)(img[..., 0], lab)
