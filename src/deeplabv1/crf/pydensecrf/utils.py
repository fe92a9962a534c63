"""A drop-in for ``pydensecrf.utils``: unaries and feature arrays in pydensecrf's layouts.

    import deeplabv1.crf.utils as utils          # instead of: import pydensecrf.utils as utils

Arrays are labels x pixels (unaries) and features x pixels (pairwise features), float32,
with the pixels of an N-d shape flattened in C order. The arithmetic is pydensecrf's,
operation for operation (the same float32 results); inputs pydensecrf turns into NaN, an
IndexError or a division by zero raise a ValueError instead (see checks.py for the rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Number

import numpy as np

from deeplabv1.crf.pydensecrf.checks import as_std, warn

__all__ = [
    "compute_unary",
    "create_pairwise_bilateral",
    "create_pairwise_gaussian",
    "softmax_to_unary",
    "unary_from_labels",
    "unary_from_softmax",
]


def unary_from_softmax(sm, scale: float | None = None, clip: float | None = 1e-5) -> np.ndarray:
    """Unary energies -log(p) (n_classes, n_pixels) from probabilities (n_classes, ...).

    ``scale`` mixes the probabilities with the uniform distribution (p -> scale p +
    (1 - scale) / n_classes); ``clip`` is the smallest probability kept (avoids log 0; with
    ``clip=None`` a probability of 0 gives the energy +inf, which the CRF accepts). A 1-D
    input is one pixel's probabilities.
    """
    sm = np.asarray(sm)
    numbers = np.issubdtype(sm.dtype, np.number) or sm.dtype == np.bool_  # bool: a one-hot mask
    if sm.ndim < 1 or sm.shape[0] < 1 or not numbers:
        raise ValueError(f"unary_from_softmax: expected (n_classes, ...) numbers, got {sm.shape}")
    if not np.issubdtype(sm.dtype, np.floating):
        sm = sm.astype(np.float64)
    num_classes = sm.shape[0]
    if scale is not None:
        if not 0 < scale <= 1:
            raise ValueError(f"scale: needs to be in (0, 1], got {scale}")
        sm = scale * sm + (1 - scale) * (np.ones(sm.shape) / num_classes)
    if sm.size and (sm.min() < 0 or sm.max() > 1 + 1e-6):
        warn(
            "unary_from_softmax: probabilities outside [0, 1]"
            + (f" are clipped to [{clip}, 1], as pydensecrf clips them" if clip else "")
        )
    if clip is not None:
        sm = np.clip(sm, clip, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        u = -np.log(sm).reshape([num_classes, -1]).astype(np.float32)
    if np.isnan(u).any() or np.isneginf(u).any():
        raise ValueError("unary_from_softmax: NaN, negative or infinite probabilities give "
                         "NaN energies (pydensecrf's marginals would be NaN)")  # fmt: skip
    return u


def softmax_to_unary(sm, GT_PROB=1) -> np.ndarray:  # noqa: N803 (pydensecrf's name)
    """Deprecated in pydensecrf: ``unary_from_softmax`` with ``scale=GT_PROB`` (None when 1)
    and no clipping."""
    warn("softmax_to_unary is deprecated (as in pydensecrf): use unary_from_softmax")
    return unary_from_softmax(sm, None if GT_PROB == 1 else GT_PROB, clip=None)


def unary_from_labels(labels, n_labels: int, gt_prob: float, zero_unsure: bool = True):
    """Unary energies (n_labels, n_pixels) from a label map: probability ``gt_prob`` on the
    given label, the rest spread evenly over the others.

    With ``zero_unsure`` (default) the value 0 means "unknown" (uniform), and labels 1..n_labels
    map to rows 0..n_labels-1; otherwise labels are 0..n_labels-1 with no special value. A
    negative label counts from the end (numpy indexing, as in pydensecrf), with a warning.
    """
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob: must be in (0, 1), got {gt_prob}")
    if int(n_labels) < 2:
        raise ValueError(f"n_labels: must be >= 2, got {n_labels} (pydensecrf divides by zero)")
    labels = np.asarray(labels).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected integers, got {labels.dtype}")
    rows = labels.astype(np.int64) - 1 if zero_unsure else labels.astype(np.int64)
    unsure = labels == 0 if zero_unsure else np.zeros(labels.shape, bool)
    counted = rows[~unsure]
    if counted.size and (counted.min() < -n_labels or counted.max() >= n_labels):
        lo, hi = (1, n_labels) if zero_unsure else (0, n_labels - 1)
        raise ValueError(f"labels: values must lie in {lo}..{hi}"
                         f"{' (0: unknown)' if zero_unsure else ''}, got "
                         f"{labels.min()}..{labels.max()}")  # fmt: skip
    if counted.size and counted.min() < 0:
        warn("unary_from_labels: negative labels count from the last one, as in pydensecrf")
    n_energy = -np.log((1.0 - gt_prob) / (n_labels - 1))
    p_energy = -np.log(gt_prob)
    u = np.full((n_labels, labels.size), n_energy, dtype="float32")
    u[rows, np.arange(labels.size)] = p_energy
    if zero_unsure:
        u[:, unsure] = -np.log(1.0 / n_labels)
    return u


def compute_unary(labels, M, GT_PROB=0.5) -> np.ndarray:  # noqa: N803 (pydensecrf's names)
    """Deprecated in pydensecrf: ``unary_from_labels(labels, M, GT_PROB)``."""
    warn("compute_unary is deprecated (as in pydensecrf): use unary_from_labels")
    return unary_from_labels(labels, M, GT_PROB)


def _scaled_mesh(shape: Sequence[int], sdims, name: str, exact: bool) -> np.ndarray:
    """Coordinates (len(shape), *shape) float32, axis i divided by sdims[i] (axes beyond
    len(sdims) unscaled, as in pydensecrf, unless ``exact``)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or min(shape) < 0:
        raise ValueError(f"shape: expected sizes >= 0, got {shape}")
    if isinstance(sdims, Number):
        scales = as_std(sdims, len(shape), name)
    else:
        given = len(tuple(sdims))
        scales = as_std(sdims, given, name)
        if given > len(shape) or (exact and given != len(shape)):
            raise ValueError(f"{name}: {given} values for {len(shape)} axes")
        if given < len(shape):
            warn(f"{name}: {given} values for {len(shape)} axes; the others are not scaled, "
                 "as in pydensecrf")  # fmt: skip
    mesh = np.indices(shape, dtype=np.float32)
    for i, s in enumerate(scales):
        mesh[i] /= s
    return mesh


def create_pairwise_gaussian(sdims, shape) -> np.ndarray:
    """Position features (len(shape), n_pixels): coordinate along each axis / sdims[axis].

    For an image shape (H, W) the rows are (y / sdims[0], x / sdims[1]). ``sdims`` needs one
    value per axis (pydensecrf's result for fewer is not an array of this shape's pixels).
    """
    mesh = _scaled_mesh(shape, sdims, "sdims", exact=True)
    return mesh.reshape(mesh.shape[0], -1)


def create_pairwise_bilateral(sdims, schan, img, chdim: int = -1) -> np.ndarray:
    """Position + channel features (ndim + n_channels, n_pixels).

    ``img`` has its channels on axis ``chdim`` (``chdim=-1``: a single-channel image without a
    channel axis); ``schan`` is one number or one per channel; ``sdims`` one per spatial axis.
    Channels (axes) beyond ``schan`` (``sdims``) are not scaled, as in pydensecrf (with a
    warning).
    """
    img = np.asarray(img)
    if not np.issubdtype(img.dtype, np.number) and img.dtype != bool:
        raise ValueError(f"img: expected numbers, got {img.dtype}")
    im_feat = img[np.newaxis] if chdim == -1 else np.moveaxis(img, chdim, 0)
    im_feat = im_feat.astype(np.float32)
    if not np.isfinite(im_feat).all():
        raise ValueError("img: contains NaN or infinite values")
    if isinstance(schan, Number):
        (s,) = as_std(schan, 1, "schan")
        im_feat /= s
    else:
        given = len(tuple(schan))
        if given > im_feat.shape[0]:
            raise ValueError(f"schan: {given} values for {im_feat.shape[0]} channels")
        if given < im_feat.shape[0]:
            warn(f"schan: {given} values for {im_feat.shape[0]} channels; the others are not "
                 "scaled, as in pydensecrf")  # fmt: skip
        for i, s in enumerate(as_std(schan, given, "schan")):
            im_feat[i] /= s
    mesh = _scaled_mesh(im_feat.shape[1:], sdims, "sdims", exact=False)
    feats = np.concatenate([mesh, im_feat])
    return feats.reshape([feats.shape[0], -1])
