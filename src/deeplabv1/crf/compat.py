"""Label compatibilities and input checks of the pydensecrf drop-in (densecrf.py).

pydensecrf takes ``compat`` as a number (Potts), a 1-D array (diagonal) or a 2-D array (full
matrix); the classes here name those three explicitly and are accepted in the same place.
"""

from __future__ import annotations

from numbers import Number

import numpy as np

__all__ = [
    "ConstUnary",
    "DiagonalCompatibility",
    "MatrixCompatibility",
    "PottsCompatibility",
    "as_compat",
    "as_float_matrix",
    "as_rgb_image",
]


class PottsCompatibility:
    """Potts weight w: adds +w * (filtered Q_l) to label l's logit."""

    def __init__(self, weight: float):
        self.value = float(weight)


class DiagonalCompatibility:
    """Per-label energies v (L,): adds -v_l * (filtered Q_l) to label l's logit."""

    def __init__(self, v):
        self.value = np.asarray(v, dtype=np.float32).reshape(-1)


class MatrixCompatibility:
    """Full energy matrix M (L, L), symmetrised to (M + M^T) / 2, as in pydensecrf."""

    def __init__(self, m):
        self.value = np.asarray(m, dtype=np.float32)


class ConstUnary:
    """A fixed unary energy (nlabels, nvar), for ``DenseCRF.setUnary``."""

    def __init__(self, u):
        self.energy = u


def _real_array(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name}: complex values are not meaningful")
    return arr


def as_float_matrix(a, name: str, shape: tuple[int | None, int]) -> np.ndarray:
    """A finite 2-D float32 C-contiguous copy of ``a`` with the given shape (None: any)."""
    arr = _real_array(a, name)
    ok = arr.ndim == 2 and all(s is None or s == n for s, n in zip(shape, arr.shape))
    if not ok or arr.shape[0] < 1:
        want = tuple("?" if s is None else s for s in shape)
        raise ValueError(f"Bad shape for {name} (need {want}, got {arr.shape})")
    out = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return out


def as_compat(compat, num_labels: int):
    """A number, (L,) or (L, L) float32 array from any accepted compat form."""
    if isinstance(compat, PottsCompatibility | DiagonalCompatibility | MatrixCompatibility):
        compat = compat.value
    if isinstance(compat, Number) and not isinstance(compat, bool):
        if not np.isfinite(compat):
            raise ValueError(f"compat: must be finite, got {compat}")
        return float(compat)
    arr = _real_array(compat, "compat")
    if arr.ndim == 0:
        return as_compat(float(arr), num_labels)
    if arr.ndim > 2:
        raise ValueError("LabelCompatibility of dimension >2 not meaningful.")
    want = (num_labels,) * arr.ndim
    if arr.shape != want:
        raise ValueError(f"compat: expected shape {want} for {num_labels} labels, got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        raise ValueError("compat: contains NaN or infinite values")
    return arr


def as_rgb_image(rgbim, height: int, width: int) -> np.ndarray:
    """An (H, W, 3) uint8 C-contiguous image; integral 0-255 values of other dtypes converted."""
    arr = _real_array(rgbim, "rgbim")
    if arr.ndim != 3 or arr.shape[:2] != (height, width):
        raise ValueError(
            f"Bad shape for pairwise bilateral (Need {(height, width, 3)}, got {arr.shape})"
        )
    if arr.shape[2] != 3:
        raise ValueError(
            "addPairwiseBilateral only works for RGB images; build other features with "
            "utils.create_pairwise_bilateral and add them with addPairwiseEnergy"
        )
    if arr.dtype != np.uint8:
        if not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
            raise ValueError(f"rgbim: expected uint8 colours 0-255, got non-integral {arr.dtype}")
        if arr.min() < 0 or arr.max() > 255:
            raise ValueError("rgbim: colour values outside 0-255")
    return np.ascontiguousarray(arr, dtype=np.uint8)
