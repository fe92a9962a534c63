"""Exact O(N^2) Gaussian filtering: the brute-force reference for the permutohedral lattice.

``DenseFilter(features).apply(values)`` computes, for every image b and pixel i,

    out[b, i] = sum_j exp(-|f[b, i] - f[b, j]|^2 / 2) * values[b, j]      (j = i included)

exactly, in row blocks so that memory stays O(block * N) instead of O(N^2). Any floating
dtype (float64 for gradchecks), any device; differentiable w.r.t. ``values`` (and the
features) through ordinary autograd. Meant for tests and small images only.
"""

from __future__ import annotations

import torch

__all__ = ["DenseFilter", "check_features"]

# Elements of one (block, N, d) difference tile; 2**23 float32 = 32 MiB.
_TILE_ELEMENTS = 1 << 23


def check_features(features: torch.Tensor, name: str = "features") -> torch.Tensor:
    """Validate a (B, N, d) floating feature tensor with finite entries and return it."""
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(features).__name__}")
    if features.dim() != 3:
        raise ValueError(f"{name}: expected shape (B, N, d), got {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype, got {features.dtype}")
    b, n, d = features.shape
    if b < 1 or n < 1 or d < 1:
        raise ValueError(f"{name}: empty shape {tuple(features.shape)}")
    if not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return features


def check_values(values: torch.Tensor, batch: int, num_points: int) -> None:
    """Validate a (B, N, C) value tensor against the filter's B and N."""
    if not isinstance(values, torch.Tensor):
        raise ValueError(f"values: expected a torch.Tensor, got {type(values).__name__}")
    if values.dim() != 3 or values.shape[0] != batch or values.shape[1] != num_points:
        raise ValueError(
            f"values: expected shape ({batch}, {num_points}, C), got {tuple(values.shape)}"
        )
    if not values.is_floating_point():
        raise ValueError(f"values: expected a floating dtype, got {values.dtype}")


class DenseFilter:
    """Exact Gaussian filter over per-pixel features (B, N, d); see the module docstring."""

    def __init__(self, features: torch.Tensor, *, tile_elements: int = _TILE_ELEMENTS) -> None:
        self.features = check_features(features)
        self.batch, self.num_points, self.dim = features.shape
        self.block = max(1, tile_elements // (self.num_points * self.dim))

    def kernel_block(self, b: int, start: int, stop: int) -> torch.Tensor:
        """Rows start:stop of image b's exact (N, N) kernel matrix."""
        f = self.features[b]
        # Explicit differences, not |a|^2 + |b|^2 - 2ab: that form cancels badly in float32
        # for large feature values (raw colours / srgb), and this is the reference.
        diff = f[start:stop, None, :] - f[None, :, :]
        return torch.exp(-0.5 * (diff * diff).sum(-1))

    def apply(self, values: torch.Tensor) -> torch.Tensor:
        """Filter values (B, N, C) -> (B, N, C) in the features' dtype and device."""
        check_values(values, self.batch, self.num_points)
        values = values.to(self.features.dtype)
        out = []
        for b in range(self.batch):
            parts = [
                self.kernel_block(b, s, min(s + self.block, self.num_points)) @ values[b]
                for s in range(0, self.num_points, self.block)
            ]
            out.append(torch.cat(parts, 0))
        return torch.stack(out, 0)

    def normalizer(self) -> torch.Tensor:
        """K 1 as (B, N, 1): the per-pixel kernel sums."""
        ones = self.features.new_ones(self.batch, self.num_points, 1)
        return self.apply(ones)
