"""A drop-in for ``pydensecrf.eigen``: the float32 vectors and matrices pydensecrf passes around.

pydensecrf wraps Eigen's ``VectorXf`` / ``MatrixXf``; here they wrap a float32 numpy array, so
``np.array(m)``, ``np.asarray(m)`` and numpy functions see the values, as they do with
pydensecrf's buffers. ``vectorXf`` and ``matrixXf`` copy an array in and are exactly as
strict as pydensecrf's: a C-contiguous float32 array of the right rank, else ValueError
(TypeError for None or an object without a buffer, such as a list).
"""

from __future__ import annotations

import numpy as np

__all__ = ["MatrixXf", "VectorXf", "matrixXf", "vectorXf"]


class _Wrapped:
    """A float32 array behind numpy's ``__array__`` protocol."""

    _empty: tuple[int, ...] = (0,)

    def __init__(self) -> None:
        self.array = np.zeros(self._empty, np.float32)

    def __array__(self, dtype=None, copy=None):
        if dtype is not None and np.dtype(dtype) != self.array.dtype:
            return self.array.astype(dtype)
        return self.array.copy() if copy else self.array

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.array.shape})"


class VectorXf(_Wrapped):
    """A float32 vector (pydensecrf: Eigen::VectorXf); empty when constructed directly."""

    _empty = (0,)


class MatrixXf(_Wrapped):
    """A float32 matrix (pydensecrf: Eigen::MatrixXf); empty (0, 0) when constructed directly."""

    _empty = (0, 0)


def _buffer(arr, ndim: int) -> np.ndarray:
    """A copy of a C-contiguous float32 array of rank ``ndim``, checked as pydensecrf does."""
    if arr is None:
        raise TypeError("expected a float32 array, got None")
    try:
        memoryview(arr)
    except TypeError as exc:
        raise TypeError(f"expected a float32 array, got {type(arr).__name__}") from exc
    a = np.asarray(arr)
    if a.ndim != ndim:
        raise ValueError(f"Buffer has wrong number of dimensions (expected {ndim}, got {a.ndim})")
    if a.dtype != np.float32:
        raise ValueError(f"Buffer dtype mismatch, expected 'float' but got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError("ndarray is not C-contiguous")
    return a.copy()


def vectorXf(arr) -> VectorXf:  # noqa: N802 (pydensecrf's name)
    """A VectorXf holding a copy of a 1-D C-contiguous float32 array."""
    out = VectorXf()
    out.array = _buffer(arr, 1)
    return out


def matrixXf(arr) -> MatrixXf:  # noqa: N802
    """A MatrixXf holding a copy of a 2-D C-contiguous float32 array."""
    out = MatrixXf()
    out.array = _buffer(arr, 2)
    return out
