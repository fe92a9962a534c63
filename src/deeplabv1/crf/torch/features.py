"""The dense CRF's feature spaces as torch tensors (features.py's arrays, batched, on a device)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from deeplabv1.crf.features import check_std, gaussian_features_np, position_grid

__all__ = ["as_rgb_batch", "bilateral_features", "gaussian_features"]


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
    grid = torch.from_numpy(gaussian_features_np(height, width, sxy)).to(device)
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
    out[:, :, :2] = torch.from_numpy(position_grid(height, width, sx, sy)).to(device)
    colours = images.to(device).reshape(batch, height * width, 3).to(torch.float32)
    out[:, :, 2:] = colours / torch.tensor(scol, dtype=torch.float32, device=device)
    return out
