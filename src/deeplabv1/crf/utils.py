"""A drop-in for ``pydensecrf.utils``: unaries and feature arrays in pydensecrf's layouts.

    from deeplabv1.crf.utils import unary_from_softmax, create_pairwise_bilateral

Arrays are labels x pixels (unaries) and features x pixels (pairwise features), float32,
with the pixels of an N-d shape flattened in C order.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Number

import numpy as np

from deeplabv1.crf.features import check_std

__all__ = [
    "create_pairwise_bilateral",
    "create_pairwise_gaussian",
    "unary_from_labels",
    "unary_from_softmax",
]


def unary_from_softmax(sm, scale: float | None = None, clip: float | None = 1e-5) -> np.ndarray:
    """Unary energies -log(p) (n_classes, n_pixels) from probabilities (n_classes, ...).

    ``scale`` mixes the probabilities with the uniform distribution (p -> scale p +
    (1 - scale) / n_classes); ``clip`` is the smallest probability kept (avoids log 0).
    """
    sm = np.asarray(sm, dtype=np.float64)
    if sm.ndim < 2 or sm.shape[0] < 1:
        raise ValueError(f"unary_from_softmax: expected (n_classes, ...), got {sm.shape}")
    if not np.isfinite(sm).all() or sm.min() < 0:
        raise ValueError("unary_from_softmax: probabilities must be finite and >= 0")
    num_classes = sm.shape[0]
    if scale is not None:
        if not 0 < scale <= 1:
            raise ValueError(f"scale: needs to be in (0, 1], got {scale}")
        sm = scale * sm + (1 - scale) / num_classes
    if clip is not None:
        sm = np.clip(sm, clip, 1.0)
    with np.errstate(divide="ignore"):
        u = -np.log(sm)
    return u.reshape(num_classes, -1).astype(np.float32)


def unary_from_labels(labels, n_labels: int, gt_prob: float, zero_unsure: bool = True):
    """Unary energies (n_labels, n_pixels) from a label map: probability ``gt_prob`` on the
    given label, the rest spread evenly over the others.

    With ``zero_unsure`` (default) the value 0 means "unknown" (uniform), and labels 1..n_labels
    map to rows 0..n_labels-1; otherwise labels are 0..n_labels-1 with no special value.
    """
    if not 0 < gt_prob < 1:
        raise ValueError(f"gt_prob: must be in (0, 1), got {gt_prob}")
    if int(n_labels) < 2:
        raise ValueError(f"n_labels: must be >= 2, got {n_labels}")
    labels = np.asarray(labels).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected integers, got {labels.dtype}")
    lo, hi = (0, n_labels) if zero_unsure else (0, n_labels - 1)
    if labels.size and (labels.min() < lo or labels.max() > hi):
        raise ValueError(
            f"labels: values must lie in {lo}..{hi}, got {labels.min()}..{labels.max()}"
        )
    n_energy = -np.log((1.0 - gt_prob) / (n_labels - 1))
    u = np.full((n_labels, labels.size), n_energy, dtype=np.float32)
    rows = labels - 1 if zero_unsure else labels
    known = rows >= 0
    u[rows[known], np.flatnonzero(known)] = -np.log(gt_prob)
    if zero_unsure:
        u[:, ~known] = np.log(float(n_labels))
    return u


def _mesh(shape: Sequence[int], sdims) -> np.ndarray:
    shape = tuple(int(s) for s in shape)
    if len(shape) < 1 or min(shape) < 1:
        raise ValueError(f"shape: expected positive sizes, got {shape}")
    scales = check_std(sdims, len(shape), "sdims")
    mesh = np.indices(shape, dtype=np.float32)
    for axis, s in enumerate(scales):
        mesh[axis] /= np.float32(s)
    return mesh


def create_pairwise_gaussian(sdims, shape) -> np.ndarray:
    """Position features (len(shape), n_pixels): coordinate along each axis / sdims[axis].

    For an image shape (H, W) the rows are (y / sdims[0], x / sdims[1]).
    """
    mesh = _mesh(shape, sdims)
    return mesh.reshape(mesh.shape[0], -1)


def create_pairwise_bilateral(sdims, schan, img, chdim: int = -1) -> np.ndarray:
    """Position + channel features (ndim + n_channels, n_pixels).

    ``img`` has its channels on axis ``chdim`` (``chdim=-1``: a single-channel image without a
    channel axis); ``schan`` is one number or one per channel; ``sdims`` one per spatial axis.
    """
    img = np.asarray(img)
    if not np.issubdtype(img.dtype, np.number) or img.dtype == bool:
        raise ValueError(f"img: expected numbers, got {img.dtype}")
    chans = img[np.newaxis] if chdim == -1 else np.moveaxis(img, chdim, 0)
    chans = chans.astype(np.float32)
    if not np.isfinite(chans).all():
        raise ValueError("img: contains NaN or infinite values")
    if isinstance(schan, Number):
        schan = (schan,) * chans.shape[0]
    scales = check_std(schan, chans.shape[0], "schan")
    for c, s in enumerate(scales):
        chans[c] /= np.float32(s)
    mesh = _mesh(chans.shape[1:], sdims)
    feats = np.concatenate([mesh, chans])
    return feats.reshape(feats.shape[0], -1)
