"""Input checks of the pydensecrf drop-in, by one rule.

Where pydensecrf returns a well-defined result, the drop-in returns the same one (with a
``PydensecrfWarning`` where the input is unusual: a negative standard deviation, surplus
entries pydensecrf ignores, an unknown normalisation it treats as none, ...); where
pydensecrf crashes, segfaults, reads out of bounds or returns NaN, the drop-in raises a
ValueError that says what is wrong. Beyond pydensecrf, any real dtype and non-contiguous
arrays are accepted (converted to float32) where pydensecrf demands C-contiguous float32.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from numbers import Number

import numpy as np

__all__ = [
    "PydensecrfWarning",
    "as_compat",
    "as_float_matrix",
    "as_rgb_image",
    "as_std",
    "as_unary",
    "kernel_type",
    "normalization_mode",
    "warn",
]

_MODES = {0: "none", 1: "before", 2: "after", 3: "symmetric"}
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # deeplabv1/crf


class PydensecrfWarning(UserWarning):
    """Unusual input that pydensecrf accepts: the result is pydensecrf's."""


def warn(message: str) -> None:
    """A PydensecrfWarning attributed to the first caller outside this package (the user's
    line)."""
    level, frame = 1, sys._getframe(0)
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, PydensecrfWarning, stacklevel=level)


def _real_array(a, name: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{name}: complex values are not meaningful")
    return arr


def as_float_matrix(a, name: str, shape: tuple[int | None, int], finite=True, copy=True):
    """A 2-D float32 C-contiguous copy of ``a`` with the given shape (None: any, at least 1),
    finite unless ``finite`` is False; with ``copy=False`` ``a`` itself when it already is
    one (the caller then copies what it keeps)."""
    arr = _real_array(a, name)
    ok = arr.ndim == 2 and all(s is None or s == n for s, n in zip(shape, arr.shape))
    if not ok or (shape[0] is None and arr.shape[0] < 1):
        want = tuple("?" if s is None else s for s in shape)
        raise ValueError(f"Bad shape for {name} (need {want}, got {arr.shape})")
    convert = np.array if copy else np.asarray
    out = convert(arr, dtype=np.float32, order="C")
    if finite and not np.isfinite(out).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return out


def as_unary(u, num_labels: int, num_points: int, name: str = "unary energy") -> np.ndarray:
    """Unary energies (nlabels, nvar) as float32 (``u`` itself when it is one: the caller
    copies what it keeps). +inf is probability 0 (``-log(0)``, what pydensecrf does with it);
    NaN, -inf or a pixel with every label at +inf make pydensecrf's marginals NaN:
    ValueError."""
    out = as_float_matrix(u, name, (num_labels, num_points), finite=False, copy=False)
    if np.isfinite(out).all():  # the common case: one pass
        return out
    if np.isnan(out).any() or np.isneginf(out).any():
        raise ValueError(f"{name}: contains NaN or -inf (pydensecrf's marginals would be NaN)")
    if out.size and np.isposinf(out).any():
        impossible = np.flatnonzero(np.isposinf(out).all(0))
        if impossible.size:
            raise ValueError(
                f"{name}: every label of pixel {int(impossible[0])} (and {impossible.size - 1} "
                "more) has energy +inf, i.e. probability 0 (pydensecrf's marginals would be NaN)"
            )
    return out


def as_compat(compat, num_labels: int):
    """A Potts weight (a number, ``True`` read as 1 as pydensecrf reads it), an (L,) diagonal
    or an (L, L) matrix of energies as float32, from any accepted compat form."""
    value = getattr(compat, "value", compat)  # Potts/Diagonal/MatrixCompatibility
    if isinstance(value, bool | np.bool_):
        warn(f"compat={value}: pydensecrf reads a bool as the Potts weight {int(value)}")
        value = float(value)
    if isinstance(value, Number):
        if not math.isfinite(value):
            raise ValueError(f"compat: must be finite, got {value} (pydensecrf returns NaN)")
        return float(value)
    arr = _real_array(value, "compat")
    if arr.ndim == 0:
        return as_compat(float(arr), num_labels)
    if arr.ndim > 2:
        raise ValueError("LabelCompatibility of dimension >2 not meaningful.")
    want = (num_labels,) * arr.ndim
    if arr.shape != want:
        raise ValueError(f"compat: expected shape {want} for {num_labels} labels, got {arr.shape}")
    arr = np.array(arr, dtype=np.float32, order="C")
    if not np.isfinite(arr).all():
        raise ValueError("compat: contains NaN or infinite values")
    return arr


def as_std(value, n: int, name: str, exact: bool = False) -> tuple:
    """``n`` standard deviations from one number or a sequence, as given (their own type, so
    that the arithmetic on them is pydensecrf's). Zero or NaN make pydensecrf divide by
    zero or return NaN: ValueError; inf makes the feature 0, as in pydensecrf (a warning); a
    negative one flips the sign of that feature, as in pydensecrf (the Gaussian does not
    care): allowed with a warning. A bool counts as 0 or 1, as in pydensecrf (a warning).
    Fewer than ``n``
    entries: ValueError; more: pydensecrf uses the first ``n`` (a warning), or with
    ``exact`` ValueError."""
    if isinstance(value, Number):
        values = (value,) * n
    else:
        try:
            values = tuple(value)
        except TypeError as exc:
            raise ValueError(f"{name}: expected a number or {n} numbers, got {value!r}") from exc
    if len(values) < n or (exact and len(values) != n):
        raise ValueError(f"{name}: expected a number or {n} numbers, got {len(values)}")
    if len(values) > n:
        warn(f"{name}: {len(values)} values given, pydensecrf uses the first {n}")
        values = values[:n]
    if any(isinstance(v, bool | np.bool_) for v in values):
        warn(f"{name}: pydensecrf reads a bool as the number {tuple(int(v) for v in values)}")
        values = tuple(int(v) if isinstance(v, bool | np.bool_) else v for v in values)
    for v in values:
        if not isinstance(v, Number | np.number):
            raise ValueError(f"{name}: expected numbers, got {v!r}")
        if math.isnan(float(v)) or float(v) == 0:
            raise ValueError(f"{name}: standard deviations must be non-zero numbers, got {v}")
    if any(math.isinf(float(v)) for v in values):
        warn(f"{name}: infinite standard deviation {values}; that feature is 0 everywhere (the "
             "term ignores it), as in pydensecrf")  # fmt: skip
    if any(float(v) < 0 for v in values):
        warn(f"{name}: negative standard deviation {values}; its features change sign, as in "
             "pydensecrf")  # fmt: skip
    return values


def as_rgb_image(rgbim, height: int, width: int) -> np.ndarray:
    """An (H, W, 3) uint8 C-contiguous image; integral 0-255 values of other dtypes (and bools:
    0 and 1) converted."""
    if np.asarray(rgbim).dtype == bool:  # pydensecrf reads a bool image as colours 0 and 1
        rgbim = np.asarray(rgbim, np.uint8)
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
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError("rgbim: colour values outside 0-255")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def normalization_mode(normalization) -> str:
    """The mode of a NormalizationType; pydensecrf runs any other integer unnormalised."""
    key = _integer(normalization, "normalization")
    if key not in _MODES:
        warn(f"normalization={normalization} is not a NormalizationType: pydensecrf runs it as "
             "NO_NORMALIZATION")  # fmt: skip
        return "none"
    return _MODES[key]


def kernel_type(kernel) -> int:
    """A KernelType (it matters only for pydensecrf's parameter learning: not used here)."""
    key = _integer(kernel, "kernel")
    if key not in (0, 1, 2):
        warn(f"kernel={kernel} is not a KernelType (pydensecrf ignores it for inference)")
    return key


def _integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Number | np.integer):
        raise ValueError(f"{name}: expected an integer constant, got {value!r}")
    if int(value) != value:
        raise ValueError(f"{name}: expected an integer constant, got {value!r}")
    return int(value)
