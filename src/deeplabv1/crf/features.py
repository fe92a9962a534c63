"""Per-pixel feature spaces of the dense CRF's Gaussian kernels.

A kernel k(f_i, f_j) = exp(-|f_i - f_j|^2 / 2) acts on features that are already divided by
their standard deviations (SPEC 4a). Pixels are numbered y * W + x with x the column, and the
features come in Kraehenbuehl's order: (x / sx, y / sy) for the position-only ("Gaussian")
kernel and (x / sx, y / sy, R / sr, G / sg, B / sb) with raw 0-255 colours for the bilateral one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Number

import numpy as np
import torch

__all__ = ["bilateral_features", "check_std", "gaussian_features"]


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


def _grid(height: int, width: int, sx: float, sy: float, device) -> torch.Tensor:
    """(N, 2) float32 position features (x / sx, y / sy), pixel index y * W + x."""
    xs = torch.arange(width, dtype=torch.float32, device=device) / sx
    ys = torch.arange(height, dtype=torch.float32, device=device) / sy
    return torch.stack(
        [xs.expand(height, width).reshape(-1), ys[:, None].expand(height, width).reshape(-1)], 1
    )


def gaussian_features(
    height: int,
    width: int,
    sxy: float | Sequence[float],
    batch: int = 1,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Position features (B, H*W, 2) = (x / sx, y / sy) as float32.

    ``sxy`` is one standard deviation in pixels or a pair (sx, sy).
    """
    if int(height) < 1 or int(width) < 1 or int(batch) < 1:
        raise ValueError(f"gaussian_features: bad size H={height} W={width} batch={batch}")
    sx, sy = check_std(sxy, 2, "sxy")
    grid = _grid(int(height), int(width), sx, sy, device)
    return grid.unsqueeze(0).expand(int(batch), -1, -1).contiguous()


def as_rgb_batch(images) -> torch.Tensor:
    """(H, W, 3) or (B, H, W, 3) uint8 RGB (numpy or torch) as a (B, H, W, 3) uint8 tensor."""
    if isinstance(images, np.ndarray):
        images = np.ascontiguousarray(images)
        images = torch.from_numpy(images if images.flags.writeable else images.copy())
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"image: expected a numpy array or tensor, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"image: expected (H, W, 3) or (B, H, W, 3) RGB, got {tuple(images.shape)}"
        )
    if images.dtype != torch.uint8:
        raise ValueError(f"image: expected uint8 colours 0-255, got {images.dtype}")
    return images


def bilateral_features(
    images,
    sxy: float | Sequence[float],
    srgb: float | Sequence[float],
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Position + colour features (B, H*W, 5) = (x/sx, y/sy, R/sr, G/sg, B/sb) as float32.

    ``images`` is (B, H, W, 3) (or a single (H, W, 3)) uint8 RGB, numpy or torch; ``sxy`` one
    number or (sx, sy) in pixels; ``srgb`` one number or three, in 0-255 colour units.
    """
    images = as_rgb_batch(images)
    sx, sy = check_std(sxy, 2, "sxy")
    scol = check_std(srgb, 3, "srgb")
    batch, height, width, _ = images.shape
    device = images.device if device is None else torch.device(device)
    out = torch.empty(batch, height * width, 5, dtype=torch.float32, device=device)
    out[:, :, :2] = _grid(height, width, sx, sy, device)
    colours = images.to(device).reshape(batch, height * width, 3).to(torch.float32)
    out[:, :, 2:] = colours / torch.tensor(scol, dtype=torch.float32, device=device)
    return out
