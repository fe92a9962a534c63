"""Per-pixel feature spaces of the dense CRF's Gaussian kernels.

A kernel k(f_i, f_j) = exp(-|f_i - f_j|^2 / 2) acts on features that are already divided by
their standard deviations. Pixels are numbered y * W + x with x the column, and the
features come in Kraehenbuehl's order: (x / sx, y / sy) for the position-only ("Gaussian")
kernel and (x / sx, y / sy, R / sr, G / sg, B / sb) with raw 0-255 colours for the bilateral one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Number

import numpy as np

__all__ = ["bilateral_features_np", "check_std", "divide_features", "gaussian_features_np",
           "position_grid"]


def check_std(value: float | Sequence[float], n: int, name: str) -> tuple[float, ...]:
    """A scalar or an ``n``-sequence of standard deviations as ``n`` positive finite floats."""
    if isinstance(value, Number):
        values = (float(value),) * n
    else:
        values = tuple(float(v) for v in np.asarray(value, dtype=np.float64).reshape(-1))
        if len(values) != n:
            raise ValueError(f"{name}: expected a number or {n} numbers, got {len(values)}")
    for v in values:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name}: standard deviations must be positive and finite, got {v}")
    return values


def divide_features(values: np.ndarray, std, out: np.ndarray | None = None) -> np.ndarray:
    """``values / float32(std)`` in float32 (into ``out`` if given). A standard deviation that
    is 0 in float32 (1e-300) or so small that the quotient leaves float32's range (1e-40) gives
    NaN or infinite features, where pydensecrf divides by zero or crashes: a ValueError naming
    it as given, instead of numpy's RuntimeWarnings."""
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        out = np.divide(values, np.asarray(std, np.float32), out=out, dtype=np.float32)
    if not np.isfinite(out).all():
        shown = ", ".join(f"{float(v):g}" for v in np.atleast_1d(np.asarray(std, np.float64)))
        raise ValueError(f"features: standard deviation {shown} is too small: positions or "
                         "colours divided by it overflow float32; use larger standard "
                         "deviations")  # fmt: skip
    return out


def position_grid(height: int, width: int, sx: float, sy: float) -> np.ndarray:
    """(N, 2) float32 position features (x / sx, y / sy), pixel index y * W + x (float32
    division, bitwise as torch computes it)."""
    out = np.empty((height, width, 2), np.float32)
    out[:, :, 0] = divide_features(np.arange(width, dtype=np.float32), sx)
    out[:, :, 1] = divide_features(np.arange(height, dtype=np.float32), sy)[:, None]
    return out.reshape(height * width, 2)


def gaussian_features_np(height: int, width: int, sxy: float | Sequence[float]) -> np.ndarray:
    """:func:`gaussian_features` of one image as an (H*W, 2) float32 array (no torch)."""
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"gaussian_features: bad size H={height} W={width}")
    sx, sy = check_std(sxy, 2, "sxy")
    return position_grid(int(height), int(width), sx, sy)


def bilateral_features_np(image: np.ndarray, sxy, srgb) -> np.ndarray:
    """:func:`bilateral_features` of one (H, W, 3) uint8 image as an (H*W, 5) float32 array."""
    sx, sy = check_std(sxy, 2, "sxy")
    scol = check_std(srgb, 3, "srgb")
    height, width, _ = image.shape
    out = np.empty((height * width, 5), np.float32)
    out[:, :2] = position_grid(height, width, sx, sy)
    divide_features(image.reshape(-1, 3), scol, out=out[:, 2:])
    return out
